"""Concurrent writers into the results store: N processes x M runs each, into a SQLite file and
into a real PostgreSQL server (a throwaway local cluster with fsync on, tools/pg_cluster.py).
Prints, per back end, the runs stored, the runs lost (expected - stored, must be 0), whether
every stored run is complete, and the write throughput.

What is timed: from the moment every writer has its store open (a barrier, so interpreter start-up
and imports are not counted) to the last writer's last commit. Each run is a LatencyReport with
`--samples` raw samples and 2 per-op rows, written in one transaction as `deploykit profile` does.

    python tools/bench_store.py --writers 4 --runs 50
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _report(seed: int, n: int, sha: str):
    import numpy as np

    from deploykit.core import Block, LatencyReport, OpTime

    rng = np.random.default_rng(seed)
    return LatencyReport(
        samples_ms=tuple(float(x) for x in 5.0 * rng.lognormal(0, 0.1, n)), target="ort-cpu",
        target_config={"threads": 2}, artifact_id=f"art-{sha[:8]}", model_sha256=sha,
        model_path=f"/m/{sha[:4]}.onnx", env={"cpu_model": "bench", "threads": 2},
        stop_reason="ci-reached", blocks=(Block(0, n, 0.01, False),),
        per_op=(OpTime("conv", "Conv", 3.0, 0.6), OpTime("relu", "Relu", 2.0, 0.4)),
        labels=("bench",), created=time.time())


def _writer(location: str, worker: int, runs: int, samples: int, barrier, times) -> None:
    from deploykit.store import Store

    reports = [_report(worker * 100_000 + i, samples, f"{worker:x}" * 64) for i in range(runs)]
    reports[0].to_dict()  # its lazy imports (scipy, for the CI) are start-up, not writing
    with Store(location) as st:
        barrier.wait()
        t0 = time.perf_counter()
        for i, rep in enumerate(reports):
            st.record_report(rep, label=f"w{worker}-{i}")
        times.put((worker, t0, time.perf_counter()))


def bench(location: str, shown: str, writers: int, runs: int, samples: int) -> dict:
    from deploykit.store import Store

    Store(location).close()
    ctx = mp.get_context("spawn")
    barrier, times = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(location, w, runs, samples, barrier, times))
             for w in range(1, writers + 1)]
    for p in procs:
        p.start()
    spans = [times.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    wall = max(s[2] for s in spans) - min(s[1] for s in spans)
    with Store(location) as st:
        rows = st.runs()
        complete = st.integrity_ok()
    expected = {f"w{w}-{i}" for w in range(1, writers + 1) for i in range(runs)}
    stored = {r.label for r in rows} & expected
    return {"store": shown, "expected": len(expected), "stored": len(stored),
            "lost": len(expected - stored), "complete": complete, "wall_s": wall,
            "runs_per_s": len(stored) / wall, "exit_codes": [p.exitcode for p in procs]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=50, help="runs per writer")
    ap.add_argument("--samples", type=int, default=1000, help="raw samples per run")
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("pg_cluster", REPO / "tools" / "pg_cluster.py")
    pg_cluster = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pg_cluster)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.sqlite")
        results.append(("sqlite", bench(path, "SQLite file", args.writers, args.runs,
                                        args.samples)))
    cluster = pg_cluster.PgCluster(durable=True)
    try:
        url = cluster.create_db()
        results.append(("postgresql", bench(url, "PostgreSQL (local throwaway cluster)",
                                            args.writers, args.runs, args.samples)))
    finally:
        cluster.remove()
    ok = True
    print(f"{args.writers} writers x {args.runs} runs ({args.samples} samples each)")
    for _, r in results:
        print(f"  {r['store']}: {r['stored']}/{r['expected']} stored, {r['lost']} lost, "
              f"complete={r['complete']}, {r['wall_s']:.2f} s, {r['runs_per_s']:.0f} runs/s, "
              f"writer exit codes {r['exit_codes']}")
        ok &= r["lost"] == 0 and r["complete"] and r["exit_codes"] == [0] * args.writers
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
