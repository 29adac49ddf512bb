"""The JSON a bundle's timing mode wrote on a device (runners/timing/ for ORT bundles, the C++
runner's runners/dk_timing.h for TVM bundles), read back into a LatencyReport with the same
statistics as a local run.

It comes from outside (a device, a copy over the network): every field a number rests on is
checked -- schema, the bundle it claims to time, finite positive samples, blocks that tile the
samples exactly -- and anything else is a one-line error, never a report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from ..core import Block, LatencyReport, TimingPlan
from ..errors import VerificationError
from .runners.timing import SCHEMA

MIN_SAMPLES = 10


def _num(x: Any, what: str, *, positive: bool = True) -> float:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    if not ok or (positive and x <= 0) or (not positive and x < 0):
        raise VerificationError(f"device timing: {what} is not a finite "
                                f"{'positive' if positive else 'non-negative'} number: {x!r}")
    return float(x)


def parse(text: str | bytes, manifest: Mapping[str, Any], *, where: str,
          labels: tuple[str, ...] = ()) -> LatencyReport:
    """The device's timing JSON as a LatencyReport of the bundle with `manifest`."""
    return parse_doc(_load(text, where), manifest, where=where, labels=labels)


def _load(text: str | bytes, where: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise VerificationError(f"device timing from {where} is not JSON: {e}") from None


def parse_rounds(text: str | bytes, old: Mapping[str, Any], new: Mapping[str, Any], *,
                 where: str, labels: tuple[str, ...] = ()) -> tuple[LatencyReport, LatencyReport]:
    """The interleaved rounds of `selftest.py --time --against` (block k of each = round k)."""
    d = _load(text, where)
    docs = d.get("rounds") if isinstance(d, dict) and d.get("schema") == SCHEMA else None
    if not isinstance(docs, list) or len(docs) != 2:
        raise VerificationError(f"device timing from {where} is not an interleaved-rounds "
                                f"{SCHEMA} document")
    o = parse_doc(docs[0], old, where=where, labels=labels)
    n = parse_doc(docs[1], new, where=where, labels=labels)
    if len(o.blocks) != len(n.blocks):
        raise VerificationError(f"device timing from {where}: {len(o.blocks)} rounds of the old "
                                f"bundle, {len(n.blocks)} of the new")
    return o, n


def parse_doc(d: Any, manifest: Mapping[str, Any], *, where: str,
              labels: tuple[str, ...] = ()) -> LatencyReport:
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise VerificationError(f"device timing from {where} is not a {SCHEMA} document")
    if d.get("manifest_sha256") != manifest.get("manifest_sha256"):
        raise VerificationError(f"device timing from {where} is of another bundle (manifest "
                                f"digest {str(d.get('manifest_sha256'))[:12]}, expected "
                                f"{str(manifest.get('manifest_sha256'))[:12]})")
    samples, blocks = d.get("samples_ms"), d.get("blocks")
    if not isinstance(samples, list) or len(samples) < MIN_SAMPLES:
        raise VerificationError(f"device timing from {where}: fewer than {MIN_SAMPLES} samples")
    samples_ms = tuple(_num(x, "a sample") for x in samples)
    if not isinstance(blocks, list) or not blocks:
        raise VerificationError(f"device timing from {where}: no blocks")
    out, pos = [], 0
    plan = TimingPlan()
    for b in blocks:
        if not (isinstance(b, list) and len(b) == 3 and b[0] == pos and isinstance(b[1], int)
                and not isinstance(b[1], bool) and b[1] > 0):
            raise VerificationError(f"device timing from {where}: blocks do not tile the "
                                    f"samples (at sample {pos}: {b!r})")
        foreign = _num(b[2], "a block's foreign load", positive=False)
        if foreign > 1:
            raise VerificationError(f"device timing from {where}: foreign load {foreign} > 1")
        out.append(Block(pos, b[1], foreign, foreign > plan.contamination_threshold))
        pos += b[1]
    if pos != len(samples_ms):
        raise VerificationError(f"device timing from {where}: blocks cover {pos} samples of "
                                f"{len(samples_ms)}")
    ph = d.get("phases")
    dev = d.get("device")
    if not isinstance(ph, dict) or not isinstance(dev, dict):
        raise VerificationError(f"device timing from {where}: no phases or device fingerprint")
    init_ms = _num(ph.get("init_ms"), "init_ms")
    first_ms = _num(ph.get("first_inference_ms"), "first_inference_ms")
    warm = ph.get("warmup_samples")
    if not isinstance(warm, int) or isinstance(warm, bool) or warm < 0:
        raise VerificationError(f"device timing from {where}: bad warmup_samples {warm!r}")
    threads = d.get("threads")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise VerificationError(f"device timing from {where}: bad threads {threads!r}")
    rss = d.get("peak_rss_kb")
    if rss is not None:
        _num(rss, "peak_rss_kb")
    reason = d.get("stop_reason")
    if reason not in ("ci-reached", "time-cap", "sample-cap"):
        raise VerificationError(f"device timing from {where}: bad stop_reason {reason!r}")
    batch = d.get("batch", 1)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise VerificationError(f"device timing from {where}: bad batch {batch!r}")
    tgt = manifest.get("target") or {}
    config = {**(tgt.get("config") or {}), "threads": threads}
    env = {"where": where, "device": dict(dev), "threads": threads, "peak_rss_kb": rss,
           "cpu_model": dev.get("cpu_model"), "machine": dev.get("machine"),
           "onnxruntime": dev.get("onnxruntime"), "plan": d.get("plan"),
           "bundle_manifest_sha256": manifest.get("manifest_sha256")}
    if dev.get("runtime") == "tvm":  # the C++ runner of a TVM bundle (runners/dk_timing.h)
        env.update(tvm=dev.get("tvm"), runner=dev.get("runner"))
    elif dev.get("runtime") == "openvino":
        env["openvino"] = dev.get("openvino")
    return LatencyReport(
        samples_ms=samples_ms, target=str(tgt.get("name", "?")), target_config=config,
        artifact_id=str(manifest.get("artifact_id", "")),
        model_sha256=str((manifest.get("model") or {}).get("sha256", "")),
        model_path=str((manifest.get("model") or {}).get("source", "")), env=env,
        stop_reason=reason, session_create_ms=init_ms, first_inference_ms=first_ms,
        warmup_samples=warm, batch=batch, blocks=tuple(out), labels=tuple(labels))


def read(path: str | Path, manifest: Mapping[str, Any], **kw: Any) -> LatencyReport:
    return parse(Path(path).read_bytes(), manifest, where=kw.pop("where", str(path)), **kw)
