"""Peak memory of one model in a fresh process, for the gate (`python -m deploykit.gate.memory_probe`).

Why a fresh process per measurement: inside one process, memory that an earlier session freed
stays with the allocator and is reused by the next one, so the RSS delta of the second model
loaded understates it (and depends on what ran before). A new process starts from the same
state every time, so its peak RSS is nearly deterministic and the runs of old and new models
compare like for like. Each run prints one JSON line: measure.memory.memory_dict of
load / first inference / steady phases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Mapping, Sequence

from ..errors import InputError


def probe(target_spec: str, threads: int | None, model_path: str,
          feeds_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """In this process: load `model_path` on the gate's target, run it once and then steadily,
    and return the per-phase memory (measure.memory)."""
    from ..measure import memory as mem
    from .rounds import feeds_for, gate_target

    mem.preload()
    target = gate_target(target_spec, threads)
    from ..core import ModelRef

    art = target.compile(ModelRef.from_path(model_path))
    feeds = feeds_for(art, feeds_cfg)
    fn = art.timed_runner(feeds)
    with mem.RssSampler() as first:
        fn()
    steady = mem.steady_pass(fn)
    load = art.load_memory
    out = mem.memory_dict(load.start_bytes if load else first.start_bytes, load, first.phase,
                          steady, model_path)
    art.close()
    return out


def probe_command(target_spec: str, threads: int | None, model_path: str,
                  feeds_cfg: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of `probe` in a new Python process (this interpreter, this
    deploykit); tools/bench_memory.py runs the same command under `/usr/bin/time -v`."""
    arg = json.dumps({"target": target_spec, "threads": threads, "model": str(model_path),
                      "feeds": dict(feeds_cfg)})
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in [env.get("PYTHONPATH")] if p])
    return [sys.executable, "-m", "deploykit.gate.memory_probe", arg], env


def run_fresh(target_spec: str, threads: int | None, model_path: str,
              feeds_cfg: Mapping[str, Any], timeout_s: float = 600) -> dict[str, Any]:
    """`probe` in a new Python process (this interpreter, this deploykit)."""
    argv, env = probe_command(target_spec, threads, model_path, feeds_cfg)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)
    return parse_probe_output(r.returncode, r.stdout, r.stderr, model_path)


def parse_probe_output(returncode: int, stdout: str, stderr: str,
                       model_path: str) -> dict[str, Any]:
    """The probe's JSON line, or a one-line InputError with the last line it printed."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if returncode != 0 or not lines:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        raise InputError(f"the memory measurement of {model_path} failed in its fresh process: "
                         f"{last}")
    return json.loads(lines[-1])


def measure_memory(target_spec: str, threads: int | None, models: Sequence[str],
                   feeds_cfg: Mapping[str, Any], runs: int) -> list[list[dict[str, Any]]]:
    """`runs` fresh-process measurements of every model, alternating between the models (so a
    change of the machine's state during the check hits them alike); one list per model."""
    out: list[list[dict[str, Any]]] = [[] for _ in models]
    for k in range(runs):
        order = list(range(len(models)))
        if k % 2:
            order.reverse()
        for i in order:
            out[i].append(run_fresh(target_spec, threads, str(models[i]), feeds_cfg))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    a = json.loads((argv if argv is not None else sys.argv[1:])[0])
    from ..measure.memory import own_process

    own_process()  # a fresh process of deploykit's own: the kernel's mark may be reset per phase
    print(json.dumps(probe(a["target"], a["threads"], a["model"], a["feeds"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
