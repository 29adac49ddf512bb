#!/usr/bin/env python3
"""The device pool's targets, measured: the same `deploykit search` over 1 board and over N boards
of one key (wall time of its measurements, and the recommendation of each), and a pooled search
with one board killed mid-run (does it complete on the others?).

    python tools/bench_pool.py [--boards 3] [--pairs 1] [--kill] [--model M.onnx]
                               [--profile-models K] [--out tools/bench_out/pool.json]

It starts its own RPC tracker and N emulated aarch64 boards (tools/arm_device.py, qemu-user) on
loopback, runs each search as the CLI command it prints, in a fresh store and output folder, and
alternates the 1-board and N-board runs (pairs) so that the machine's load drifts over both alike.
Emulated boards give correctness, not latency: their timings are qemu's on this machine's cores,
which the boards share with each other and with the host's TVM builds; the figure is the wall
time of the pooled machinery, not of real boards. Each search's line also says how much CPU it
used (the search with its build processes, and the boards), and what share of the machine's
cores that was over its wall time: on a machine where the boards share the cores, that share, not
the number of boards, bounds the speed-up; and its measuring by phase (search.json's
cost.phases_s: layer units, the baseline, candidates measured whole, the final confirmation).
The figures go to tools/bench_out/pool.json (the README's table is read from it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "tvm"))
KEY = "aarch64-emu-bench"
SEARCH = ["--target", "tvm-aarch64", "--families", "prune,lowrank", "--min-fidelity", "0.9",
          "--no-target-options", "--no-netadapt", "--time-limit", "10m", "-q"]


def start_boards(n: int):
    """A tracker and n emulated boards of KEY, started at once."""
    from deploykit.backends.tvm import rpc
    from _tools import load_tool

    arm = load_tool("arm_device")
    arm.setup()
    tracker_proc, port = rpc.start_tracker()
    tracker = f"127.0.0.1:{port}"
    boards: list = []
    threads = [threading.Thread(target=lambda: boards.append(
        arm.start(port=rpc.free_port(), tracker=tracker, key=KEY))) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(boards) != n:
        sys.exit(f"bench_pool: only {len(boards)} of {n} boards started")
    return tracker_proc, tracker, boards


def kill(proc) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def cpu_seconds(pgids: set[int]) -> float:
    """CPU seconds used so far by the processes of these process groups (the boards: their
    servers and the session processes they fork), from /proc; 0 where there is no /proc."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in (p for p in os.listdir("/proc") if p.isdigit()) if os.path.isdir("/proc") else ():
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(f[2]) in pgids:  # utime stime cutime cstime
            total += sum(int(x) for x in f[11:15]) / tick
    return total


def search(model: Path, tracker: str, parallel: int, work: Path, tag: str, on_first=None,
           boards=()):
    """One `deploykit search` (printed), its search.json's cost and recommendation, and the CPU
    it used: on the host (the search and its build processes) and in the boards."""
    import resource

    out, store = work / f"out-{tag}", work / f"store-{tag}.sqlite"
    cmd = [sys.executable, "-m", "deploykit", "search", str(model), *SEARCH, "--device", KEY,
           "--tracker", tracker, "--parallel", str(parallel), "--store", str(store), "-o",
           str(out)]
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pgids = {p.pid for p, _ in boards}
    ru, board0 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_seconds(pgids)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if on_first is not None:  # once the first measurement is stored: mid-run
        while proc.poll() is None and not _stored(store):
            time.sleep(0.2)
        if proc.poll() is None:
            on_first()
    stdout, stderr = proc.communicate()
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    host_cpu = ru1.ru_utime + ru1.ru_stime - ru.ru_utime - ru.ru_stime
    board_cpu = cpu_seconds(pgids) - board0
    if proc.returncode not in (0, 1):
        sys.exit(f"bench_pool: search failed ({proc.returncode}): {stderr.strip()[-500:]}")
    res = json.loads((out / "search.json").read_text())
    rec = res.get("recommendation") or {}
    return {"parallel": parallel, "wall_s": wall, "measuring_s": res["cost"]["measuring_s"],
            "search_s": res["cost"]["seconds"], "recommendation": rec.get("name"),
            "speedup": rec.get("speedup"), "speedup_ci95": rec.get("speedup_ci95"),
            "boards": rec.get("boards"), "phases_s": res["cost"].get("phases_s") or {},
            "devices": res["cost"]["devices"], "stderr": stderr.strip().splitlines(),
            "host_cpu_s": host_cpu, "board_cpu_s": board_cpu, "load_after": os.getloadavg()}


def profile(models: list[Path], tracker: str, parallel: int) -> float:
    """Wall seconds of one `deploykit profile` of `models`, each timed alone for 3 s on a board
    (the time cap, not the board's speed, ends each one: device-bound work)."""
    cmd = [sys.executable, "-m", "deploykit", "profile", *map(str, models), "--target",
           "tvm-aarch64", "--device", KEY, "--tracker", tracker, "--parallel", str(parallel),
           "--max-time", "3", "--min-samples", "100000", "--no-per-op", "--no-store", "-q",
           "--no-strict"]
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.monotonic()
    r = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                       text=True)
    if r.returncode:
        sys.exit(f"bench_pool: profile failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return time.monotonic() - t0


def _stored(store: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--boards", type=int, default=3)
    p.add_argument("--pairs", type=int, default=1, help="(1 board, N boards) runs, alternated")
    p.add_argument("--kill", action="store_true", help="also: a pooled search, one board killed")
    p.add_argument("--model", default=None, help="default: tests' residual CNN (16 ch, 24x24)")
    p.add_argument("--no-search", action="store_true", help="skip the searches")
    p.add_argument("--profile-models", type=int, default=0, metavar="K",
                   help="also: `deploykit profile` of K small models, each timed for 3 s, on 1 "
                        "board and on N boards (device-bound work)")
    p.add_argument("--out", type=Path, default=REPO / "tools" / "bench_out" / "pool.json",
                   help="where the figures are recorded (default tools/bench_out/pool.json; "
                        "--no-out: nowhere)")
    p.add_argument("--no-out", dest="out", action="store_const", const=None)
    args = p.parse_args()
    load = os.getloadavg()[0]
    record: dict = {"command": "python tools/bench_pool.py " + " ".join(
                        shlex.quote(a) for a in sys.argv[1:]),
                    "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "boards": args.boards, "pairs": args.pairs, "cores": os.cpu_count(),
                    "load_start": os.getloadavg(), "emulated": True}
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        work = Path(tmp)
        model = Path(args.model) if args.model else None
        if model is None:
            from _search_models import residual_cnn

            model = residual_cnn(work / "residual_cnn.onnx")
        tracker_proc, tracker, boards = start_boards(args.boards)
        try:
            rows = []
            for i in range(0 if args.no_search else args.pairs):
                order = (1, args.boards) if i % 2 == 0 else (args.boards, 1)
                for n in order:
                    rows.append(search(model, tracker, n, work, f"{n}-{i}", boards=boards))
                    r = rows[-1]
                    cpu = r["host_cpu_s"] + r["board_cpu_s"]
                    print(f"  {n} board(s): measuring {r['measuring_s']:.1f} s, search "
                          f"{r['search_s']:.1f} s, recommendation {r['recommendation']}, "
                          f"servers {r['devices']['servers']}; CPU {r['host_cpu_s']:.1f} s host "
                          f"+ {r['board_cpu_s']:.1f} s boards in {r['wall_s']:.1f} s wall = "
                          f"{cpu / r['wall_s']:.2f} cores, load {os.getloadavg()[0]:.1f}",
                          flush=True)
                    print("    measuring by phase (wall s; phases may overlap): " + ", ".join(
                        f"{k} {v:.1f}" for k, v in r["phases_s"].items())
                        + ("; confirmation per board: " + ", ".join(
                            f"{b['server']} {b['speedup'] or float('nan'):.2f}x/{b['rounds']} "
                            "rounds"
                            + (" DISAGREES" if b["disagrees"] else "") for b in r["boards"])
                           if r["boards"] else ""), flush=True)
            one = [r["measuring_s"] for r in rows if r["parallel"] == 1]
            many = [r["measuring_s"] for r in rows if r["parallel"] == args.boards]
            recs = {r["recommendation"] for r in rows}
            record["searches"] = [{k: v for k, v in r.items() if k != "stderr"} for r in rows]
            if rows:
                record["search_summary"] = {
                    "measuring_s_1": sum(one) / len(one),
                    "measuring_s_n": sum(many) / len(many), "ratio": sum(one) / sum(many),
                    "recommendations": sorted(recs), "same": len(recs) == 1}
                print(f"measuring wall time, 1 board / {args.boards} boards: "
                      f"{sum(one) / len(one):.1f} / {sum(many) / len(many):.1f} s = "
                      f"{sum(one) / sum(many):.2f}x; recommendations {sorted(recs)} "
                      f"({'the same' if len(recs) == 1 else 'DIFFERENT'}); emulated boards, "
                      f"load average {load:.1f} at the start")
            if args.profile_models:
                from tvm_models import cnn

                models = [cnn(work / f"cnn{i}.onnx", seed=i) for i in range(args.profile_models)]
                walls: dict[int, list[float]] = {1: [], args.boards: []}
                for i in range(args.pairs):
                    for n in ((1, args.boards) if i % 2 == 0 else (args.boards, 1)):
                        walls[n].append(profile(models, tracker, n))
                        print(f"  {n} board(s): {walls[n][-1]:.1f} s", flush=True)
                a, b = sum(walls[1]), sum(walls[args.boards])
                print(f"profile of {args.profile_models} models, 1 board / {args.boards} boards: "
                      f"{a / args.pairs:.1f} / {b / args.pairs:.1f} s = {a / b:.2f}x", flush=True)
                record["profile"] = {"models": args.profile_models, "walls_s": walls,
                                     "ratio": a / b}
            if args.kill:
                victim = boards[-1][0]
                r = search(model, tracker, args.boards, work, "kill",
                           on_first=lambda: kill(victim))
                record["kill"] = {k: v for k, v in r.items() if k != "stderr"}
                record["kill"]["dropped"] = [ln for ln in r["stderr"] if "dropped out" in ln]
                print(f"killed board pid {victim.pid} mid-run: search completed, recommendation "
                      f"{r['recommendation']}, lost {r['devices']['lost']}, measured on "
                      f"{r['devices']['servers']}; "
                      + " | ".join(ln for ln in r["stderr"] if "dropped out" in ln), flush=True)
        finally:
            for proc, _ in boards:
                kill(proc)
            kill(tracker_proc)
    if args.out is not None:  # the record the README's figures are read from
        from deploykit.fsutil import write_text_atomic

        record["load_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, json.dumps(record, indent=1) + "\n")
        print(f"recorded in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
