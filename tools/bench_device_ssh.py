#!/usr/bin/env python3
"""Does timing on a device over ssh agree with timing here? `deploykit profile MODEL` (local) and
`deploykit profile MODEL --device ssh://...` (the ORT bundle timing itself behind a throwaway
loopback sshd, tests/_sshd.py) on the same machine, same onnxruntime, same threads, alternated
for --rounds rounds so that drift of a shared machine hits both; prints each median and the
ratio of the medians of the rounds (target: within 5%).

    python tools/bench_device_ssh.py MODEL.onnx [--target ort-cpu] [--threads 2] [--rounds 3]
        [--max-time 10] [--shape x=1,3,224,224]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def _profile(model: str, extra: list[str], out: Path, env: dict) -> dict:
    cmd = [sys.executable, "-m", "deploykit", "profile", model, "--no-store", "--no-per-op",
           "--no-roofline", "--no-strict", "--quiet", "--json", str(out), *extra]
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    return json.loads(out.read_text())


def main() -> int:
    from _sshd import sshd
    from deploykit.backends import registry
    from deploykit.core import LatencyReport  # noqa: F401  (import check before the runs)

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--target", default="ort-cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-time", type=float, default=10.0)
    ap.add_argument("--shape", action="append", default=[])
    a = ap.parse_args()
    src = Path(a.target) if a.target.endswith(".toml") else \
        Path(registry.load_all()[a.target]["_file"])
    with tempfile.TemporaryDirectory(prefix="bench-device-") as tmp:
        tmp = Path(tmp)
        # the same target, with the device's python being this interpreter (numpy + onnxruntime)
        target = tmp / src.name
        target.write_text(src.read_text() + f'\n[device]\npython = "{sys.executable}"\n')
        shapes = [x for s in a.shape for x in ("--shape", s)]
        common = ["--threads", str(a.threads), "--max-time", str(a.max_time), *shapes]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        rows = []
        with sshd(tmp / "sshd") as (url, client, _):
            env["DEPLOYKIT_SSH_OPTIONS"] = f"-F {client}"
            for r in range(a.rounds):
                local = _profile(a.model, ["-t", str(target), *common], tmp / "l.json", env)
                dev = _profile(a.model, ["-t", str(target), "--device", f"{url}{tmp / 'dev'}",
                                         *common], tmp / "d.json", env)
                lm, dm = local["median_ms"], dev["median_ms"]
                rows.append((lm, dm))
                print(f"round {r + 1}: local median {lm:.3f} ms ({local['state']}), over ssh "
                      f"{dm:.3f} ms ({dev['state']}), ratio {dm / lm:.3f}", flush=True)
    lm = statistics.median(x for x, _ in rows)
    dm = statistics.median(y for _, y in rows)
    print(f"median of rounds: local {lm:.3f} ms, over ssh {dm:.3f} ms, ratio {dm / lm:.3f} "
          f"({'within' if abs(dm / lm - 1) <= 0.05 else 'OUTSIDE'} 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
