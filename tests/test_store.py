"""The results store: round trips, lineage, the measurement cache, concurrent writers, crashes."""

import multiprocessing as mp
import os
import signal
import sqlite3
import time

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


def test_round_trip_keeps_raw_samples_and_per_op(tmp_path):
    rep = make_report(seed=1)
    with Store(tmp_path / "r.sqlite") as st:
        rid = st.record_report(rep, label="first")
        back = st.report(rid)
        rows = st.runs()
    assert back.samples_ms == rep.samples_ms  # bit-exact float64
    assert back.per_op == rep.per_op and back.blocks == rep.blocks
    assert back.env == rep.env and back.labels == rep.labels and back.created == rep.created
    assert len(rows) == 1 and rows[0].label == "first" and rows[0].n == 200
    assert rows[0].median_ms == pytest.approx(rep.median_ms)
    assert rows[0].ci95_ms == pytest.approx(rep.ci95_ms)


def test_filters_and_series_order(tmp_path):
    with Store(tmp_path / "r.sqlite") as st:
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


def test_lineage_is_recorded_from_model_refs(tmp_path):
    root = ModelRef(path=tmp_path / "m.onnx", sha256="0" * 64)
    q = ModelRef(path=tmp_path / "q.onnx", sha256="1" * 64, parent_sha256=root.sha256,
                 transform="quantize", config={"per_channel": True})
    p = ModelRef(path=tmp_path / "p.onnx", sha256="2" * 64, parent_sha256=q.sha256,
                 transform="prune", config={"ratio": 0.5})
    with Store(tmp_path / "r.sqlite") as st:
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


def test_measurement_cache_survives_reopen(tmp_path):
    path = tmp_path / "r.sqlite"
    with Store(path) as st:
        assert st.get_measurement("k1") is None
        st.put_measurement("k1", make_report(seed=3))
    with Store(path) as st:
        got = st.get_measurement("k1")
        assert got is not None and got.samples_ms == make_report(seed=3).samples_ms
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
    db = sqlite3.connect(path)  # what an older deploykit wrote: no state column
    db.execute("ALTER TABLE runs DROP COLUMN state")
    db.commit()
    db.close()
    with Store(path) as st:
        (row,) = st.runs()
        assert row.state == "contaminated"  # computed from the stored report
        st.record_report(make_report(seed=7))
        assert [r.state for r in st.runs(oldest_first=True)] == ["contaminated", "clean"]


def test_newer_schema_and_corrupt_file_are_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        Store(bad)


def _writer(path: str, worker: int, count: int) -> None:
    with Store(path) as st:
        for i in range(count):
            st.record_report(make_report(seed=worker * 10_000 + i, n=300,
                                         sha=f"{worker:x}" * 64), label=f"w{worker}-{i}")


def test_two_processes_writing_concurrently_lose_nothing(tmp_path):
    path = str(tmp_path / "r.sqlite")
    Store(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 200)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with Store(path) as st:
        assert st.integrity_ok()
        rows = st.runs()
        assert len(rows) == 400
        assert {r.label for r in rows} == {f"w{w}-{i}" for w in (1, 2) for i in range(200)}
        assert all(r.n == 300 for r in rows)
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


def test_sigkill_mid_write_loses_at_most_the_run_in_progress(tmp_path):
    path = str(tmp_path / "r.sqlite")
    Store(path).close()
    proc = mp.get_context("spawn").Process(target=_endless_writer, args=(path,))
    proc.start()
    seen = 0
    with Store(path) as st:
        deadline = time.time() + 60
        while seen < 30 and time.time() < deadline:
            seen = len(st.runs())
            time.sleep(0.01)
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
