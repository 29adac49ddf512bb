"""The results store as a team's shared PostgreSQL database: what SQLite cannot show. A server
killed mid-run, passwords never shown, other URL schemes refused, the CLI writing and reading it,
and one runner's measurement reused by another with the same environment fingerprint."""

import json
import multiprocessing as mp
import re
import sys
import time

import pytest
from _tools import load_tool

from deploykit.cli import main
from deploykit.errors import InputError, StoreError
from deploykit.store import Store
from deploykit.store_backends import mask_url, parse_location
from onnx_models import conv_relu_gemm
from test_store import make_report

FAST = ["--max-time", "0.3", "--warmup-max", "0.1", "--min-samples", "10", "--no-roofline",
        "--no-per-op", "-q", "--no-strict"]
SECRET = "s3cr3t-pw"


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    return conv_relu_gemm(tmp_path_factory.mktemp("m") / "m.onnx")


def _dead_url(user_pw: str = f"ci:{SECRET}") -> str:
    port = load_tool("pg_cluster").free_port()  # nothing listens there
    return f"postgresql://{user_pw}@127.0.0.1:{port}/results"


def test_location_parsing_and_masking(tmp_path):
    assert parse_location(str(tmp_path / "r.sqlite")).path == tmp_path / "r.sqlite"
    url = f"postgresql://ci:{SECRET}@db.lab:5432/results"
    loc = parse_location(url)
    assert loc.url == url and loc.path is None
    assert str(loc) == loc.shown == "postgresql://ci:***@db.lab:5432/results"
    assert mask_url(f"postgres://db/r?sslmode=require&password={SECRET}") == \
        "postgres://db/r?sslmode=require&password=***"
    assert mask_url("postgresql://ci@db:5432/r") == "postgresql://ci@db:5432/r"
    for bad in ("mysql://u:pw@h/db", "sqlite:///tmp/x.sqlite", "https://example.com/r"):
        with pytest.raises(InputError, match="unsupported results store") as e:
            parse_location(bad)
        assert "pw@" not in str(e.value)


def test_unreachable_server_is_one_masked_line(capsys, onnx_file, tmp_path):
    url = _dead_url()
    with pytest.raises(StoreError, match="cannot connect to results store "
                                         r"postgresql://ci:\*\*\*@127\.0\.0\.1") as e:
        Store(url)
    assert SECRET not in str(e.value)
    out = tmp_path / "r.json"
    assert main(["profile", str(onnx_file), "--store", url, "--json", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deploykit: error: cannot connect to results "
                                                   "store postgresql://ci:***@")
    assert SECRET not in err and not out.exists()  # nothing written when the store fails


def test_other_scheme_is_refused_before_any_work(capsys, onnx_file, tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    assert main(["profile", str(onnx_file), "--store", f"mysql://ci:{SECRET}@h/db",
                 "--json", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unsupported results store 'mysql://ci:***@h/db'" in err
    assert not out.exists()
    monkeypatch.setenv("DEPLOYKIT_STORE", f"redis://:{SECRET}@cache:6379/0")
    assert main(["history"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unsupported results store 'redis://:***@cache" in err


def test_profile_then_history_from_the_shared_database(pg_cluster, onnx_file, tmp_path, capsys,
                                                       monkeypatch):
    url = pg_cluster.create_db()
    # trust authentication ignores the password: it must still never be printed or stored
    with_pw = url.replace("postgresql://dk@", f"postgresql://dk:{SECRET}@")
    out = tmp_path / "r.json"
    assert main(["profile", str(onnx_file), "--store", with_pw, "--json", str(out),
                 "--label", "runner-a", *FAST]) == 0
    monkeypatch.setenv("DEPLOYKIT_STORE", url)  # a second runner configured by environment
    assert main(["profile", str(onnx_file), "--label", "runner-b", *FAST]) == 0
    capsys.readouterr()
    assert main(["history", "--store", with_pw, "--json", "--model", str(onnx_file)]) == 0
    printed = capsys.readouterr()
    rows = json.loads(printed.out)["runs"]
    assert [r["label"] for r in rows] == ["runner-b", "runner-a"]
    assert all(r["n"] >= 10 and r["median_ms"] > 0 for r in rows)
    assert SECRET not in out.read_text() and SECRET not in printed.out + printed.err
    with Store(url) as st:
        rep = st.report(rows[1]["id"])
        assert rep.samples_ms == tuple(json.loads(out.read_text())["samples_ms"])
        dump = json.dumps([st.report(r["id"]).to_dict() for r in rows], default=str)
    assert SECRET not in dump and "postgresql://" not in dump


def _runner_a(url: str, key: str) -> None:
    with Store(url) as st:
        st.put_measurement(key, make_report(seed=42))


def test_a_measurement_stored_by_one_runner_is_reused_by_another(pg_cluster):
    """search keys a measurement by what was timed and the comparable part of the environment
    fingerprint; a runner with the same fingerprint finds another runner's measurement."""
    from deploykit.backends import registry as targets
    from deploykit.core import TimingPlan
    from deploykit.search.engine import measurement_key

    url = pg_cluster.create_db()
    plan = TimingPlan(max_time_s=1.0)
    key_a = measurement_key("whole", "m" * 64, targets.get("ort-cpu", threads=1), plan, "f")
    p = mp.get_context("spawn").Process(target=_runner_a, args=(url, key_a))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    same = measurement_key("whole", "m" * 64, targets.get("ort-cpu", threads=1), plan, "f")
    other = measurement_key("whole", "m" * 64, targets.get("ort-cpu", threads=2), plan, "f")
    assert same == key_a and other != key_a  # threads are part of the fingerprint
    with Store(url) as st:
        got = st.get_measurement(same)
        assert got is not None and got.samples_ms == make_report(seed=42).samples_ms
        assert st.get_measurement(other) is None


def _endless_writer(url: str, errors) -> None:
    with Store(url) as st:
        i = 0
        while True:
            try:
                st.record_report(make_report(seed=i, n=5000), label=str(i))
            except StoreError as e:
                errors.put(str(e))
                sys.exit(3)
            i += 1


def test_server_killed_mid_run_fails_cleanly_and_keeps_committed_runs(onnx_file, tmp_path,
                                                                     capsys):
    cluster = load_tool("pg_cluster").PgCluster()  # its own server: this test kills it
    try:
        url = cluster.create_db()
        secret_url = url.replace("postgresql://dk@", f"postgresql://dk:{SECRET}@")
        Store(url).close()
        ctx = mp.get_context("spawn")
        errors = ctx.Queue()
        proc = ctx.Process(target=_endless_writer, args=(secret_url, errors))
        proc.start()
        seen, deadline = 0, time.time() + 60
        # long searches hold their connection across the crash
        idle_r, idle_w = Store(url), Store(url)
        with Store(url) as st:
            while seen < 20 and time.time() < deadline:
                seen = len(st.runs())
                time.sleep(0.02)
        cluster.kill()
        proc.join(60)
        assert proc.exitcode == 3  # the writer got a StoreError, not a traceback or a hang
        msg = errors.get(timeout=5)
        assert "\n" not in msg and SECRET not in msg
        # killed mid-transaction, or between two (then reconnecting is refused)
        assert re.match(r"cannot (write to|connect to) results store " +
                        re.escape(secret_url.replace(SECRET, "***") + ": "), msg), msg
        # the CLI while the server is down: one line, exit 2, no output file
        capsys.readouterr()
        assert main(["profile", str(onnx_file), "--store", secret_url, "--json",
                     str(tmp_path / "r.json"), *FAST]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and SECRET not in err, err
        assert err.startswith("deploykit: error: cannot connect to results store")
        assert not (tmp_path / "r.json").exists()
        cluster.start()  # crash recovery: only committed runs, each complete
        with Store(url) as st:
            assert st.integrity_ok()
            rows = st.runs(oldest_first=True)
            assert len(rows) >= seen >= 20
            assert [r.label for r in rows] == [str(i) for i in range(len(rows))]
            for row in (rows[0], rows[-1]):
                assert len(st.report(row.id).samples_ms) == 5000
        # idle connections were dropped by the crash: the next read or write reconnects
        assert len(idle_r.runs()) == len(rows)
        idle_w.record_report(make_report(seed=1), label="after-restart")
        assert idle_r.runs(limit=1)[0].label == "after-restart"
        idle_r.close()
        idle_w.close()
    finally:
        cluster.remove()
