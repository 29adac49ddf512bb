"""Measurement over a pool of boards: three emulated aarch64 RPC servers (qemu-user) registered
with one tracker under one key; a search spread over them while one is killed, profiles on
several boards at once, comparisons kept on one board, and the usage errors."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager

import pytest

from conftest import kill_group
from deploykit import cli
from deploykit.backends.tvm import rpc
from deploykit.backends.tvm.pool import PoolConfig

KEY = "aarch64-emu-pool"  # "emu" in a key: timings labelled emulated


@pytest.fixture(scope="module")
def boards(arm_device, tracker):
    """Three emulated boards of key KEY, started at once (each costs tens of seconds)."""
    arm = arm_device[0]
    started, errors = [], []

    def start():
        try:
            started.append(arm.start(port=rpc.free_port(), tracker=tracker, key=KEY))
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        yield {"tracker": tracker, "servers": {f"127.0.0.1:{port}": proc
                                               for proc, port in started}}
    finally:
        for proc, _ in started:
            kill_group(proc)


def _search_in_thread(model, out, tracker, store, holder: list, got: list,
                      final: threading.Event) -> None:
    """The search, run in this thread (its store is this thread's); the Search object goes to
    `holder` for the test to watch, the result or exception to `got`; `final` is set when the
    recommendation's interleaved confirmation starts."""
    from dataclasses import replace

    from deploykit.api import prepare_inputs
    from deploykit.core import TimingPlan
    from deploykit.search.engine import Search, SearchConfig
    from deploykit.store import Store

    short = TimingPlan(warmup_min_s=0.05, warmup_max_s=0.2, min_samples=10, max_time_s=0.5,
                       block_s=0.1)  # emulated timings only need to exist here, not to be good
    cfg = SearchConfig(min_fidelity=0.5, families=("prune",), target_options=False,
                       netadapt=False, experts=False, time_limit_s=300, whole_plan=short,
                       final_plan=replace(short, max_time_s=6.0))  # ~2 s a board
    try:
        _, feeds, calib, synthetic = prepare_inputs(model)
        with Store(store) as s:
            search = Search(model, "tvm-aarch64", cfg, out, s, feeds=feeds, calibration=calib,
                            calibration_is_synthetic=synthetic,
                            pool=PoolConfig(tracker, KEY, 3))
            compare = search.measure.compare

            def confirm(*a, **k):
                final.set()
                return compare(*a, **k)

            search.measure.compare = confirm
            holder.append(search)
            got.append(search.run())
    except BaseException as e:  # the test's thread reports it
        got.append(e)


def test_pooled_search_survives_a_board_killed_mid_confirmation(boards, tmp_path):
    """The recommendation's confirmation runs on every board at once, both models on each;
    one board is killed while it compares: its share is measured again on another board, the
    search completes on the other two, and the verdict rests on every share."""
    from _search_models import residual_cnn

    model = residual_cnn(tmp_path / "m.onnx", c=8, hw=16, head=32)
    holder: list = []
    got: list = []
    final = threading.Event()
    runner = threading.Thread(target=_search_in_thread, args=(
        model, tmp_path / "out", boards["tracker"], tmp_path / "r.sqlite", holder, got, final))
    runner.start()
    try:
        # mid-confirmation: a board busy with its share of the interleaved comparison (the
        # boards start their shares at different times: waiting for all three busy at once
        # missed the window on a quiet machine)
        deadline = time.monotonic() + 240
        victim = None
        while victim is None and runner.is_alive():
            assert time.monotonic() < deadline, "the search never reached its confirmation"
            pool = holder[0].measure.pool if holder else None
            if final.is_set() and pool is not None and len(pool.devices) == 3:
                victim = next((d for d in reversed(pool.devices) if d.busy), None)
            time.sleep(0.02)
        assert victim is not None, f"the search ended before a board could be killed: {got}"
        kill_group(boards["servers"].pop(victim.server))
    finally:
        runner.join(timeout=300)
    assert got and not isinstance(got[0], BaseException), got
    result = got[0]
    devices = result.cost["devices"]
    assert devices["lost"] == [victim.server]  # dropped out, its job retried elsewhere
    assert victim.server not in devices["servers"] and len(devices["servers"]) == 2
    assert result.recommendation is not None and result.cost["measured_whole"] >= 2
    from deploykit.report.search_text import summary_lines

    said = [ln for ln in summary_lines(result.to_dict()) if ln.startswith("Measured on 2 ")]
    assert said and f"dropped out: {victim.server}" in said[0]
    db = sqlite3.connect(tmp_path / "r.sqlite")
    runs = [(label, json.loads(env)["remote"]["server"])
            for label, env in db.execute("SELECT label, env FROM runs ORDER BY id")]
    used = {server for _, server in runs}
    assert used <= set(boards["servers"]) | {victim.server} and len(used) >= 2
    # the confirmation: three shares (the killed board's measured again on a live one), both
    # models on each board, the rounds pooled; each board's own speed-up reported
    finals = [json.loads(env)["remote"]["boards"] for label, env in
              db.execute("SELECT label, env FROM runs ORDER BY id") if ":final:" in label]
    assert len(finals) == 2 and finals[0] == finals[1]  # both models, board by board
    assert len(finals[0]) == 3 and {b["server"] for b in finals[0]} == set(devices["servers"])
    rec = result.recommendation  # one row per board: the one that measured two shares once
    assert [b["server"] for b in rec["boards"]] == list(dict.fromkeys(
        b["server"] for b in finals[0])) and len(rec["boards"]) == 2
    assert all(b["rounds"] >= 2 and b["speedup"] > 0 for b in rec["boards"])
    assert sum(b["rounds"] for b in rec["boards"]) >= 8  # a paired test's worth, pooled
    assert any(ln.startswith("  confirmed on every board") for ln in
               summary_lines(result.to_dict()))
    assert set(result.cost["phases_s"]) >= {"units", "baseline", "whole", "final"}


def test_profile_spreads_models_and_compare_stays_on_one_board(boards, tmp_path, capsys):
    from tvm_models import cnn

    a, b = cnn(tmp_path / "a.onnx", seed=0), cnn(tmp_path / "b.onnx", seed=1)
    tracker = boards["tracker"]
    common = ["--target", "tvm-aarch64", "--device", KEY, "--tracker", tracker, "--max-time",
              "0.5", "--min-samples", "5", "--no-store", "-q", "--no-strict"]
    out = tmp_path / "p.json"
    assert cli.main(["profile", str(a), str(b), *common, "--parallel", "9",
                     "--json", str(out)]) == 0
    assert f"--parallel 9: only {len(boards['servers'])} device(s)" in capsys.readouterr().err
    reps = json.loads(out.read_text())["reports"]
    assert [r["model_path"] for r in reps] == [str(a), str(b)]  # each alone, in order
    assert all(r["env"]["remote"]["server"] in boards["servers"] for r in reps)
    assert all("emulated" in r["labels"] for r in reps)
    for extra in (["--parallel", "2"], []):  # without --parallel: one board too
        out = tmp_path / "c.json"
        assert cli.main(["profile", str(a), str(b), *common, *extra, "--compare",
                         "--json", str(out)]) == 0
        servers = {i["report"]["env"]["remote"]["server"]
                   for i in json.loads(out.read_text())["items"]}
        assert len(servers) == 1  # interleaved on one board, not a ratio of two boards


@pytest.mark.parametrize("argv, message", [
    (["--parallel", "2"], "--parallel measures on several devices of one key: it needs "
                          "--tracker HOST:PORT --device KEY"),
    (["--parallel", "0", "--tracker", "127.0.0.1:9", "--device", "k"],
     "--parallel must be a positive integer"),
    (["--parallel", "2", "--tracker", "nohost", "--device", "k"], "bad --tracker 'nohost'"),
])
def test_pool_usage_errors_are_one_line(argv, message, tmp_path, capsys):
    from tvm_models import cnn

    m = str(cnn(tmp_path / "m.onnx"))
    for verb in (["profile", m, "--target", "tvm-aarch64"],
                 ["search", m, "--target", "tvm-aarch64", "-o", str(tmp_path / "s")]):
        assert cli.main([*verb, *argv, "--no-store"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_pool_needs_a_remote_tvm_target(tmp_path, capsys):
    from tvm_models import cnn

    m = str(cnn(tmp_path / "m.onnx"))
    assert cli.main(["search", m, "--target", "ort-cpu", "--device", "k", "--tracker",
                     "127.0.0.1:9", "--parallel", "2", "-o", str(tmp_path / "s")]) == 2
    assert "not a remote TVM target" in capsys.readouterr().err


def test_pool_aside_and_giving_up_in_one_line_when_no_board_is_left(tracker, cnn_onnx,
                                                                     tmp_path):
    """Three native x86 boards (fast to start). `aside` (a search's baseline measured whole
    beside its layer units): its board is out of the pool while `map` runs on the others and
    comes back after; when it dies mid-job, the job is measured again on another board and the
    board is reported lost. Then the third job of a `map` kills the two left: the results made
    before are kept (handed out as they finished), the rest is one error naming what happened."""
    from deploykit.backends.tvm.pool import DevicePool, pinned
    from deploykit.errors import TargetError

    with _x86_boards(tracker, "x86-pool", 3) as servers:
        timed = _x86_timed(tmp_path, tracker, "x86-pool", cnn_onnx)
        runs: list[str] = []

        def aside_job(kill: bool = False) -> str:
            runs.append(pinned().server)
            if kill and len(runs) == 1:  # the aside job's board dies under it
                kill_group(servers[runs[0]])
            return timed().env["remote"]["server"]

        kept: list[int] = []

        def job(i):
            if i == 2:  # once jobs 0 and 1 are in: the boards die
                deadline = time.monotonic() + 120
                while len(kept) < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
                for proc in servers.values():
                    kill_group(proc)
            return timed()

        said: list[str] = []
        with DevicePool(PoolConfig(tracker, "x86-pool", 3), notify=said.append) as pool:
            assert len(pool.devices) == 3 and len(set(pool.summary()["servers"])) == 3
            beside = pool.aside(aside_job)
            assert len(pool.devices) == 2
            here = pool.map(lambda _: timed().env["remote"]["server"], [0, 1])
            there = beside.result()
            assert there not in here and len(pool.devices) == 3 and not pool.lost
            runs.clear()
            got = pool.aside(lambda: aside_job(kill=True)).result()
            assert pool.lost == [runs[0]] and got == runs[-1] != runs[0]
            assert len(pool.devices) == 2 and runs[0] not in pool.summary()["servers"]
            assert any(runs[0] in m and "dropped out" in m for m in said), said
            with pytest.raises(TargetError, match=r"every device of key 'x86-pool' dropped out "
                               r"\(.*\); \d of 5 measurements not made \(the \d made are "
                               r"kept\)") as e:
                pool.map(job, range(5), on_result=lambda i, rep: kept.append(i))
            assert {0, 1} <= set(kept) and f"the {len(kept)} made are kept" in str(e.value)
            assert len(pool.lost) == 3 and "\n" not in str(e.value)


def test_map_takes_over_the_aside_board_when_its_own_boards_drop_out(tracker, cnn_onnx,
                                                                   tmp_path):
    """Two native x86 boards, one running an `aside` job (a search's baseline beside its layer
    units): when the board `map` runs on dies, the jobs left are measured on the aside board
    once its job is done (that job's result kept), not given up while a board is still there."""
    from deploykit.backends.tvm.pool import DevicePool, pinned

    with _x86_boards(tracker, "x86-aside", 2) as servers:
        timed = _x86_timed(tmp_path, tracker, "x86-aside", cnn_onnx)
        killed: list[str] = []

        def job(i):
            if i == 1 and not killed:  # the map's only board dies under its second job
                killed.append(pinned().server)
                kill_group(servers[killed[0]])
            return timed().env["remote"]["server"]

        said: list[str] = []
        with DevicePool(PoolConfig(tracker, "x86-aside", 2), notify=said.append) as pool:
            beside = pool.aside(lambda: timed().env["remote"]["server"])
            got = pool.map(job, range(3))
            there = beside.result()
            assert got[0] == killed[0] != there and got[1] == got[2] == there
            assert pool.lost == [killed[0]] and pool.summary()["servers"] == [there]
            assert any(killed[0] in m and "dropped out" in m for m in said), said


@contextmanager
def _x86_boards(tracker: str, key: str, n: int):
    """`n` native x86 RPC servers of `key` registered with `tracker` (fast to start): yields
    {"127.0.0.1:PORT": process}; every one is stopped on exit."""
    started = [rpc.start_server(key=key, tracker=tracker) for _ in range(n)]
    servers = {f"127.0.0.1:{port}": proc for proc, port in started}
    try:
        _wait_registered(tracker, key, n)
        yield servers
    finally:
        for proc in servers.values():
            kill_group(proc)


def _x86_timed(tmp_path, tracker: str, key: str, onnx_path):
    """A function timing `onnx_path` briefly on a native x86 board of `key` (the pinned one in
    a pool's job); returns its LatencyReport."""
    from deploykit.backends import registry as targets
    from deploykit.core import ModelRef, TimingPlan
    from deploykit.onnxio import make_feeds

    toml = tmp_path / "tvm-x86-rpc.toml"
    toml.write_text('name = "tvm-x86-rpc"\nbackend = "tvm"\nthreads = 1\nremote = true\n'
                    '[tvm_target]\nkind = "llvm"\nmcpu = "host"\n')
    t = targets.get(str(toml), device=key, tracker=tracker)
    model = ModelRef.from_path(onnx_path)

    def timed():
        art = t.compile(model)
        try:
            return t.profile(art, make_feeds(list(art.inputs)),
                             TimingPlan(max_time_s=0.2, min_samples=3), per_op=False)
        finally:
            art.close()

    return timed


def _wait_registered(tracker: str, key: str, n: int, timeout: float = 60) -> None:
    """Until the tracker lists `n` servers of `key`: a TVM server that has just registered can
    drop off the tracker's list for a moment while its tracker connection is re-made."""
    deadline = time.monotonic() + timeout
    while True:
        total = {d.key: d.total for d in rpc.tracker_devices(tracker)}.get(key, 0)
        if total >= n:
            return
        assert time.monotonic() < deadline, f"only {total} of {n} servers of '{key}' registered"
        time.sleep(0.2)


def test_check_over_the_pool_runs_old_and_new_on_every_board(boards, tmp_path, capsys):
    """`baseline` then `check --parallel` with --tracker: every board runs its own rounds of
    the old and the new model (a ratio across two boards would compare the boards), the rounds
    are pooled into one verdict, and each board's own ratio is reported."""
    from tvm_models import cnn

    old, new = cnn(tmp_path / "old.onnx", seed=0), cnn(tmp_path / "new.onnx", seed=1)
    base, out = tmp_path / "base.json", tmp_path / "check.json"
    pool = ["--device", KEY, "--tracker", boards["tracker"], "--max-time", "0.5",
            "--warmup-max", "0.1", "--no-store", "-q"]
    assert cli.main(["baseline", str(old), "--target", "tvm-aarch64", "-o", str(base),
                     *pool, "--no-strict"]) == 0
    code = cli.main(["check", str(new), "--baseline", str(base), "--against", str(old),
                     "--parallel", "3", "--json", str(out), *pool])
    assert code in (0, 1), capsys.readouterr().err  # pass or regression: a verdict either way
    got = json.loads(out.read_text())
    assert got["status"] in ("regression", "improvement", "within-threshold", "no-change") \
        and got["mode"] and got["ratio"] > 0
    # every board ran its own rounds of old and new; the rounds pooled, each board's ratio kept
    sides = [got[k]["env"]["remote"]["boards"] for k in ("old_report", "new_report")]
    assert sides[0] == sides[1] and {b["server"] for b in sides[0]} == set(boards["servers"])
    assert [b["server"] for b in got["boards"]] == [b["server"] for b in sides[0]]
    assert all(b["rounds"] >= 10 and b["ratio"] > 0 for b in got["boards"])
    assert got["n_units"] >= 8  # rounds with foreign load may be dropped, never below that
    assert all(got[k]["samples_ms"] for k in ("old_report", "new_report"))


def test_a_hung_board_is_cut_off_and_its_job_measured_on_another(boards, tmp_path):
    """A board whose server is stopped (SIGSTOP: its connection stays up, nothing answers)
    during a job: past the time budget + hang_s the pool cuts it off, reports it lost, and the
    job is measured on another board. Last in the module: the stopped board is killed."""
    import os
    import signal

    from tvm_models import cnn

    from deploykit.backends import registry as targets
    from deploykit.backends.tvm.pool import DevicePool, pinned
    from deploykit.core import ModelRef, TimingPlan
    from deploykit.onnxio import make_feeds

    model = ModelRef.from_path(cnn(tmp_path / "m.onnx"))
    t = targets.get("tvm-aarch64", device=KEY, tracker=boards["tracker"])
    plan = TimingPlan(warmup_min_s=0.05, warmup_max_s=0.1, max_time_s=0.3, min_samples=3)
    stopped: list[str] = []
    said: list[str] = []

    def job(i):
        dev = pinned()
        if i == 0 and not stopped:  # its board stops answering before the upload
            stopped.append(dev.server)
            os.killpg(boards["servers"][dev.server].pid, signal.SIGSTOP)
        art = t.compile(model)
        try:
            rep = t.profile(art, make_feeds(list(art.inputs)), plan, per_op=False)
            return rep.env["remote"]["server"]
        finally:
            art.close()

    try:
        t0 = time.monotonic()
        with DevicePool(PoolConfig(boards["tracker"], KEY, 3, hang_s=3), notify=said.append,
                        budget_s=1) as pool:
            assert pool.builder is not None  # several boards: builds in build processes
            deadline = time.monotonic() + 120
            while not pool.builder.ready():  # (the jobs build here until the workers are up)
                assert time.monotonic() < deadline, "the build processes never started"
                time.sleep(0.1)
            got = pool.map(job, range(3))
            lost = list(pool.lost)
        took = time.monotonic() - t0
    finally:
        for server in stopped:
            kill_group(boards["servers"].pop(server))
    assert lost == stopped and got[0] != stopped[0] and got[0] in boards["servers"]
    assert any("no answer for" in m and "hung" in m and stopped[0] in m for m in said), said
    assert took < 120


def test_build_processes_fail_as_the_in_process_build_does(tmp_path):
    """A pool's build process: a model that cannot be built is the same one-line error as
    in-process; a worker killed mid-build is a TargetError (no hang, no traceback), and so is
    every later build of that pool."""
    import os
    import signal

    import onnx
    from onnx import TensorProto, helper
    from tvm_models import cnn

    from deploykit.backends import registry as targets
    from deploykit.backends.tvm import build as tvm_build
    from deploykit.backends.tvm.pool_build import BuildPool
    from deploykit.core import ModelRef
    from deploykit.errors import DeployKitError, TargetError

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in "xy"]
    bad = helper.make_model(helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])],
                                              "g", io[:1], io[1:]),
                            opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(bad, tmp_path / "bad.onnx")
    bad_ref = ModelRef.from_path(tmp_path / "bad.onnx")
    good = ModelRef.from_path(cnn(tmp_path / "m.onnx"))
    t = targets.get("tvm-aarch64")
    with pytest.raises(DeployKitError) as here:
        tvm_build.build(bad_ref, t)
    builds = BuildPool(1)
    try:
        with pytest.raises(DeployKitError) as there:
            builds.build(bad_ref, t)
        assert (type(there.value), str(there.value)) == (type(here.value), str(here.value))
        threading.Timer(0.3, lambda: [os.kill(p, signal.SIGKILL) for p in builds.pids()]).start()
        for _ in range(2):  # the killed build, then any later one
            with pytest.raises(TargetError, match=r"a build process died while building m\.onnx"):
                builds.build(good, t)
    finally:
        builds.close()
