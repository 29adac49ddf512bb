"""The timing mode's command line (`selftest.py BUNDLE --time OUT.json ...`): a bundle's timed
session (ORT or OpenVINO, as deploykit's backends make it), one timed run or the gate's
interleaved rounds against an older bundle, and the JSON document deploykit reads back."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .device import fingerprint, peak_rss_kb
from .method import LoadMonitor, _median, _time_once, time_blocks, time_until, warm_up

SCHEMA = "deploykit-device-timing/1"


def session_options(config: Mapping[str, Any], threads: int | None):
    """The target's session options as backends/ort.py sets them for local profiling."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or config.get("threads", 2))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts = config.get("options", {})
    spin = "1" if config.get("allow_spinning", opts.get("allow_spinning", True)) else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.log_severity_level = 3
    return so


def _parse(argv: Sequence[str]) -> dict[str, Any]:
    import argparse

    p = argparse.ArgumentParser(prog="selftest.py BUNDLE --time")
    p.add_argument("bundle")
    p.add_argument("--time", required=True, metavar="OUT.json")
    p.add_argument("--max-time", type=float, default=30.0)
    p.add_argument("--block", type=float, default=0.5)
    p.add_argument("--rel-ci", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--against", metavar="OLD_BUNDLE")
    p.add_argument("--round-time", type=float, default=1.0)
    p.add_argument("--sub-block", type=float, default=0.05)
    p.add_argument("--min-rounds", type=int, default=10)
    p.add_argument("--warmup-max", type=float, default=0.5)
    a = p.parse_args(list(argv))
    if not (a.max_time > 0 and a.block > 0 and a.rel_ci > 0) or (a.threads or 1) < 1:
        p.error("--max-time, --block, --rel-ci and --threads must be positive")
    return vars(a)


class _Bundle:
    """A bundle's manifest, golden feeds and a way to make a timed session of it."""

    def __init__(self, folder: Path, threads: int | None):
        import numpy as np

        self.folder = folder
        self.manifest = json.loads((folder / "manifest.json").read_text())
        self.backend = self.manifest["runtime"]["backend"]
        if self.backend not in ("ort", "openvino"):
            raise SystemExit("selftest: error: this timing mode runs ORT and OpenVINO bundles")
        self.config = (self.manifest.get("target") or {}).get("config") or {}
        self.threads = threads
        with np.load(folder / self.manifest["golden"]["inputs"], allow_pickle=False) as data:
            self.feeds = {k: data[k] for k in data.files}

    def session(self):
        """(callable running one inference, threads it uses, creation ms)."""
        if self.backend == "openvino":
            return self._ov_session()
        import onnxruntime as ort

        so = session_options(self.config, self.threads)
        t0 = time.perf_counter_ns()
        sess = ort.InferenceSession(str(self.folder / self.manifest["runtime"]["model"]), so,
                                    providers=["CPUExecutionProvider"])
        init_ms = (time.perf_counter_ns() - t0) / 1e6
        names, feeds, run = [o.name for o in sess.get_outputs()], self.feeds, sess.run

        def fn() -> None:
            run(names, feeds)

        return fn, so.intra_op_num_threads, init_ms

    def _ov_session(self):
        """The IR compiled with the bundle's properties (threads overridden by --threads), one
        infer request with the feeds bound once, as backends/openvino.py times it."""
        import openvino as ov

        props = dict((self.manifest.get("openvino") or {}).get("properties") or {})
        if self.threads:
            props["INFERENCE_NUM_THREADS"] = int(self.threads)
        t0 = time.perf_counter_ns()
        compiled = ov.Core().compile_model(str(self.folder / self.manifest["runtime"]["model"]),
                                           "CPU", props)
        req = compiled.create_infer_request()
        init_ms = (time.perf_counter_ns() - t0) / 1e6
        for name, a in self.feeds.items():
            req.set_tensor(compiled.input(name), ov.Tensor(a, shared_memory=True))
        threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))

        def fn() -> None:
            req.infer(share_outputs=True)

        return fn, threads, init_ms

    def document(self, threads, phases, samples, blocks, reason, plan) -> dict[str, Any]:
        first = next(iter(self.feeds.values()), None)
        m = self.manifest
        return {"schema": SCHEMA, "manifest_sha256": m.get("manifest_sha256"),
                "artifact_id": m.get("artifact_id"),
                "model_sha256": (m.get("model") or {}).get("sha256"),
                "threads": threads, "plan": plan, "phases": phases,
                "batch": int(first.shape[0]) if first is not None and first.ndim else 1,
                "samples_ms": samples, "blocks": blocks, "stop_reason": reason,
                "peak_rss_kb": peak_rss_kb(), "device": fingerprint(self.backend),
                "created": time.time()}


def _write(dest: Path, doc: Any) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, dest)  # whole or not at all


def rounds(old: _Bundle, new: _Bundle, a: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The gate's interleaved rounds of fresh sessions; [old document, new document]."""
    series = [([], [], {}), ([], [], {})]  # samples, blocks, phases
    mon = LoadMonitor()
    t_start, n, clock = time.perf_counter(), 0, time.perf_counter_ns
    nthreads = [0, 0]
    while True:
        made = []
        for i, b in enumerate((old, new)):
            fn, nthreads[i], init_ms = b.session()
            first = _time_once(fn)
            warm = warm_up(fn, min_s=0.05, max_s=a["warmup_max"])
            if not series[i][2]:
                series[i][2].update(init_ms=init_ms, first_inference_ms=first,
                                    warmup_samples=warm)
            made.append(fn)
        starts = [len(s[0]) for s in series]
        t_round = clock() + int(a["round_time"] * 1e9)
        mon.start()  # one reading per round: both bundles run in this process
        k = 0
        while clock() < t_round:
            order = (0, 1) if k % 2 == 0 else (1, 0)
            for i in order:  # each bundle ~sub_block/2 s, alternating which goes first
                time_until(made[i], series[i][0], clock() + int(a["sub_block"] / 2 * 1e9))
            k += 1
        load = mon.stop()
        for i in (0, 1):
            series[i][1].append([starts[i], len(series[i][0]) - starts[i], load])
        n += 1
        del made
        if n >= a["min_rounds"] and time.perf_counter() - t_start >= a["max_time"]:
            break
    plan = {"rounds": n, "round_time_s": a["round_time"], "sub_block_s": a["sub_block"],
            "max_time_s": a["max_time"]}
    return [b.document(nthreads[i], series[i][2], series[i][0], series[i][1], "time-cap",
                       plan)
            for i, b in enumerate((old, new))]


def main(argv: Sequence[str]) -> int:
    a = _parse(argv)
    new = _Bundle(Path(a["bundle"]), a["threads"])
    if a["against"]:
        import selftest as st  # the bundle's own copy, beside this file

        other = Path(a["against"])
        problems, rows = st.selftest(other)
        if problems or not rows or not all(r["ok"] for r in rows):
            print("\n".join(st.report_lines(problems, rows)))
            print(f"selftest: error: --against {other} failed its self-test", file=sys.stderr)
            return 1
        docs = rounds(_Bundle(other, a["threads"]), new, a)
        _write(Path(a["time"]), {"schema": SCHEMA, "rounds": docs})
        print(f"timed in {docs[0]['plan']['rounds']} interleaved rounds -> {a['time']}")
        return 0
    fn, threads, init_ms = new.session()
    first_ms = _time_once(fn)
    warm = warm_up(fn)
    samples, blocks, reason = time_blocks(fn, block_s=a["block"], max_time_s=a["max_time"],
                                          rel_ci=a["rel_ci"])
    plan = {"block_s": a["block"], "max_time_s": a["max_time"], "rel_ci": a["rel_ci"]}
    phases = {"init_ms": init_ms, "first_inference_ms": first_ms, "warmup_samples": warm}
    _write(Path(a["time"]), new.document(threads, phases, samples, blocks, reason, plan))
    print(f"timed: {len(samples)} samples in {len(blocks)} blocks ({reason}), "
          f"median {_median(samples):.4g} ms -> {a['time']}")
    return 0
