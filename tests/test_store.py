"""The results store contract, on both back ends (a SQLite file and a real PostgreSQL server):
round trips, lineage, the measurement cache, schema versions, concurrent writers, crashes."""

import multiprocessing as mp
import os
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from deploykit.core import Block, LatencyReport, ModelRef, OpTime
from deploykit.errors import StoreError
from deploykit.store import SCHEMA_VERSION, Store


def make_report(seed: int = 0, n: int = 200, sha: str = "a" * 64, target: str = "ort-cpu",
                created: float | None = None, scale: float = 5.0) -> LatencyReport:
    rng = np.random.default_rng(seed)
    samples = tuple(float(x) for x in scale * rng.lognormal(0, 0.1, n))
    return LatencyReport(
        samples_ms=samples, target=target, target_config={"threads": 2},
        artifact_id=f"art-{sha[:8]}-{target}", model_sha256=sha, model_path=f"/m/{sha[:4]}.onnx",
        env={"cpu": {"model": "EPYC"}, "threads": 2}, stop_reason="ci-reached",
        blocks=(Block(0, n, 0.01, False),),
        per_op=(OpTime("conv1", "Conv", 3.0, 0.6), OpTime("relu", "Relu", 2.0, 0.4, 2)),
        labels=("test",), created=time.time() if created is None else created)


def raw_execute(location: str, *statements) -> list:
    """Run (sql, params) statements in one transaction behind deploykit's back (as a user or an
    older deploykit could); returns the last statement's rows."""
    rows: list = []
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location) as c:  # one transaction, committed on exit
            for sql, params in statements:
                cur = c.execute(sql.replace("?", "%s"), params)
                rows = cur.fetchall() if cur.description else []
    else:
        db = sqlite3.connect(location)
        for sql, params in statements:
            rows = db.execute(sql, params).fetchall()
        db.commit()
        db.close()
    return rows


def test_round_trip_keeps_raw_samples_and_per_op(store_location):
    rep = make_report(seed=1)
    with Store(store_location) as st:
        rid = st.record_report(rep, label="first")
        back = st.report(rid)
        rows = st.runs()
    assert back.samples_ms == rep.samples_ms  # bit-exact float64
    assert back.per_op == rep.per_op and back.blocks == rep.blocks
    assert back.env == rep.env and back.labels == rep.labels and back.created == rep.created
    assert len(rows) == 1 and rows[0].label == "first" and rows[0].n == 200
    assert rows[0].median_ms == pytest.approx(rep.median_ms)
    assert rows[0].ci95_ms == pytest.approx(rep.ci95_ms)


def test_filters_and_series_order(store_location):
    with Store(store_location) as st:
        for i in range(6):
            sha = ("a" if i % 2 else "b") * 64
            st.record_report(make_report(seed=i, sha=sha, target="ort-cpu" if i < 4 else "x",
                                         created=1000.0 + i))
        assert [r.created for r in st.runs(model="aaaa")] == [1005.0, 1003.0, 1001.0]
        assert [r.created for r in st.runs(target="x")] == [1005.0, 1004.0]
        assert [r.created for r in st.runs(since=1003.5)] == [1005.0, 1004.0]
        assert len(st.runs(limit=2)) == 2
        assert [r.created for r in st.series("b" * 64, "ort-cpu")] == [1000.0, 1002.0]
        assert [r.created for r in st.series(model_path="/m/aaaa.onnx", target="ort-cpu")] == \
            [1001.0, 1003.0]


def test_lineage_is_recorded_from_model_refs(tmp_path, store_location):
    root = ModelRef(path=tmp_path / "m.onnx", sha256="0" * 64)
    q = ModelRef(path=tmp_path / "q.onnx", sha256="1" * 64, parent_sha256=root.sha256,
                 transform="quantize", config={"per_channel": True})
    p = ModelRef(path=tmp_path / "p.onnx", sha256="2" * 64, parent_sha256=q.sha256,
                 transform="prune", config={"ratio": 0.5})
    with Store(store_location) as st:
        st.record_model(root)
        st.record_model(q)
        st.record_report(make_report(sha=p.sha256), model=p)
        st.record_report(make_report(sha=p.sha256))  # a run without lineage keeps it
        chain = st.lineage(p.sha256)
        with pytest.raises(StoreError):
            st.record_report(make_report(sha="9" * 64), model=p)
    assert [m.sha256 for m in chain] == [p.sha256, q.sha256, root.sha256]
    assert [m.transform for m in chain] == ["prune", "quantize", None]
    assert chain[1].config == {"per_channel": True}


def test_measurement_cache_survives_reopen(store_location):
    with Store(store_location) as st:
        assert st.get_measurement("k1") is None
        st.put_measurement("k1", make_report(seed=3))
        st.put_measurement("k9", make_report(seed=4))
        st.put_measurement("k9", make_report(seed=5))  # a re-measurement replaces the entry
    with Store(store_location) as st:
        got = st.get_measurement("k1")
        assert got is not None and got.samples_ms == make_report(seed=3).samples_ms
        assert st.get_measurement("k9").samples_ms == make_report(seed=5).samples_ms
        assert st.get_measurement("k2") is None


def test_contaminated_measurement_is_never_reused_and_runs_carry_their_state(tmp_path):
    from dataclasses import replace

    path = tmp_path / "r.sqlite"
    loaded = replace(make_report(seed=4), blocks=(Block(0, 200, 0.6, True),))
    with Store(path) as st:
        st.put_measurement("k", loaded)
        assert st.get_measurement("k") is None  # measured again, not reused as if clean
        assert st.get_measurement("k", allow_contaminated=True).validity.state == "contaminated"
        st.put_measurement("k", make_report(seed=5))  # the new (clean) run replaces it
        assert st.get_measurement("k").samples_ms == make_report(seed=5).samples_ms
        assert [r.state for r in st.runs(oldest_first=True)] == ["contaminated", "clean"]


def test_store_written_before_states_opens_and_derives_them(tmp_path):
    from dataclasses import replace

    path = tmp_path / "old.sqlite"
    with Store(path) as st:
        st.record_report(replace(make_report(seed=6), blocks=(Block(0, 200, 0.6, True),)))
    db = sqlite3.connect(path)  # what deploykit with schema 2 wrote: no state column
    db.execute("ALTER TABLE runs DROP COLUMN state")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with Store(path) as st:  # migrated to schema 3 on opening
        (row,) = st.runs()
        assert row.state == "contaminated"  # computed from the stored report
        st.record_report(make_report(seed=7))
        assert [r.state for r in st.runs(oldest_first=True)] == ["contaminated", "clean"]


def test_newer_schema_is_refused(store_location):
    Store(store_location).close()
    raw_execute(store_location, ("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                                 (str(SCHEMA_VERSION + 1),)))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this "
                                         f"deploykit understands \\({SCHEMA_VERSION}\\)"):
        Store(store_location)


def test_version_1_store_is_migrated_in_place(store_location):
    """A store written by deploykit 0.1 (schema 1: per_op rows ordered by rowid only) is upgraded
    when opened: its runs read back whole, per-op order kept, and new runs go in after them."""
    import json

    from deploykit.store_schema import _SCHEMA
    from deploykit.store_backends import PostgresBackend

    ddl = PostgresBackend.ddl if store_location.startswith("postgresql") else (lambda s: s)
    old = make_report(seed=7)
    ops = [("z_last_by_name", "Conv", 3.0, 0.5, 1), ("a_first_by_name", "Relu", 2.0, 0.3, 1),
           ("m_middle", "Gemm", 1.0, 0.2, 2)]
    d = old.to_dict()
    d.pop("samples_ms")
    raw_execute(store_location,
                *[(ddl(stmt), ()) for stmt in filter(str.strip, _SCHEMA.split(";"))],
                ("INSERT INTO meta VALUES ('schema_version', '1')", ()),
                ("INSERT INTO models (sha256, path, created) VALUES (?, ?, ?)",
                 (old.model_sha256, old.model_path, 1.0)),
                ("INSERT INTO artifacts VALUES (?, ?, ?, ?)",
                 (old.artifact_id, old.model_sha256, old.target, "{}")),
                ("INSERT INTO runs (artifact_id, model_sha256, model_path, target, env, "
                 "created, n, median_ms, stop_reason, labels, label, report) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (old.artifact_id, old.model_sha256, old.model_path, old.target,
                  json.dumps(dict(old.env)), old.created, len(old.samples_ms), old.median_ms,
                  old.stop_reason, "[]", "v1", json.dumps(d))),
                ("INSERT INTO samples VALUES ((SELECT max(id) FROM runs), ?, ?)",
                 (len(old.samples_ms), np.asarray(old.samples_ms, "<f8").tobytes())),
                *[("INSERT INTO per_op VALUES ((SELECT max(id) FROM runs), ?, ?, ?, ?, ?)", op)
                  for op in ops])
    with Store(store_location) as st:
        (old_row,) = st.runs()
        back = st.report(old_row.id)
        new_id = st.record_report(make_report(seed=8), label="v2")
        assert [r.label for r in st.runs()] == ["v2", "v1"] and new_id > old_row.id
        assert st.integrity_ok()
    assert back.samples_ms == old.samples_ms
    assert [o.name for o in back.per_op] == [op[0] for op in ops]
    assert raw_execute(store_location, ("SELECT value FROM meta WHERE key = 'schema_version'",
                                        ()))[0][0] == str(SCHEMA_VERSION)


def test_corrupt_file_is_refused(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a readable SQLite database.*move"):
        Store(bad)


def _writer(path: str, worker: int, count: int) -> None:
    """Half the runs are of a model every writer shares (its lineage row upserted by all at
    once, as runners profiling the same model do), half of the writer's own."""
    shared = ModelRef(path=Path("/m/shared.onnx"), sha256="c" * 64, transform="quantize",
                      parent_sha256="0" * 64)
    with Store(path) as st:
        for i in range(count):
            sha = shared.sha256 if i % 2 else f"{worker:x}" * 64
            st.record_report(make_report(seed=worker * 10_000 + i, n=300, sha=sha),
                             label=f"w{worker}-{i}", model=shared if i % 2 else None)


def test_four_processes_writing_concurrently_lose_nothing(store_location):
    """4 writers x 50 runs, from separate processes, into one store: 200 runs, 0 lost. The
    store does not exist yet: the writers race to create its schema too."""
    path = store_location
    ctx = mp.get_context("spawn")
    workers = (1, 2, 3, 4)
    procs = [ctx.Process(target=_writer, args=(path, w, 50)) for w in workers]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with Store(path) as st:
        assert st.integrity_ok()
        rows = st.runs()
        assert len(rows) == 200
        assert {r.label for r in rows} == {f"w{w}-{i}" for w in workers for i in range(50)}
        assert all(r.n == 300 for r in rows)
        assert len(st.runs(model="c" * 64)) == 100
        assert st.model("c" * 64).transform == "quantize"
        # every run has its samples, and they are the ones written
        some = st.report(rows[17].id)
        w, i = (int(x) for x in rows[17].label[1:].split("-"))
        assert some.samples_ms == make_report(seed=w * 10_000 + i, n=300).samples_ms


def _endless_writer(path: str) -> None:
    with Store(path) as st:
        i = 0
        while True:
            st.record_report(make_report(seed=i, n=5000), label=str(i))
            i += 1


def test_sigkill_mid_write_loses_at_most_the_run_in_progress(store_location):
    path = store_location
    Store(path).close()
    proc = mp.get_context("spawn").Process(target=_endless_writer, args=(path,))
    proc.start()
    seen = 0
    try:
        with Store(path) as st:
            deadline = time.time() + 60
            while seen < 30 and time.time() < deadline:
                seen = len(st.runs())
                time.sleep(0.01)
    finally:  # the endless writer never outlives the test, whatever failed above
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    with Store(path) as st:
        assert st.integrity_ok()
        rows = st.runs(oldest_first=True)
        assert len(rows) >= seen >= 30
        # committed runs are numbered without gaps and each is complete
        assert [r.label for r in rows] == [str(i) for i in range(len(rows))]
        for r in (rows[0], rows[-1]):
            assert len(st.report(r.id).samples_ms) == 5000
