"""The recipes a deployment engineer reaches for first on each runtime; the runtimes of a search.

A search must never recommend something slower than what an expert would have shipped by hand, so
these candidates are built first and measured whole early, whatever the layer-table predictor says
about them (a predictor borrowed or mis-scaled for a runtime must not hide the obvious answer):

- ONNX Runtime: calibrated static int8, per-channel weights, uint8 activations / int8 weights (U8S8,
  the combination ORT's x86 kernels are fastest on); for Linear-heavy models also dynamic int8
  per-channel, and `quantize_dynamic` exactly as users call it (its defaults: per-tensor, no
  pre-processing; a cheap build, no calibration). On the 4 x Linear(4096) MLP the latter ran 4.00x
  vs fp32 where per-channel ran 3.80x (BENCHMARKS.md, quiet); on MiniLM it misses a 0.99 cosine
  floor and the fidelity check drops it. Static per-tensor stays an ordinary candidate: a
  calibrated build costs minutes on a large model, and the suite's picks found it where it won.
- OpenVINO: NNCF int8 (OpenVINO's own placement of quantizers); for Linear-heavy models also NNCF's
  int8 weight compression.

Runtime discipline: the recommendation runs on the runtime of `--target`; other runtimes are
searched only when the user names them (`--runtimes` / `--any-runtime`), and then reported as alternatives.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

# CPU runtimes a search may compare (registry names); fidelity is verified on ORT, so fp32 ones only
CPU_RUNTIMES = ("ort-cpu", "ov-cpu")

_STEP = tuple[str, tuple[tuple[str, Any], ...]]


def linear_heavy(model) -> bool:
    """Most of the constant weights feed MatMul/Gemm (transformers, MLPs), not Conv."""
    inits = {t.name: t for t in model.graph.initializer}
    size = {"conv": 0, "linear": 0}
    for n in model.graph.node:
        kind = "conv" if n.op_type == "Conv" else "linear" if n.op_type in ("MatMul", "Gemm") \
            else None
        if kind is None:
            continue
        for i in n.input[:2]:
            t = inits.get(i)
            if t is not None and len(t.dims) >= 2:
                n_el = 1
                for d in t.dims:
                    n_el *= d
                size[kind] += n_el
    return size["linear"] > 0 and size["linear"] >= size["conv"]


def expert_steps(model, backend: str, have: set[str]) -> list[tuple[_STEP, str]]:
    """[(recipe step, why an expert picks it)] for a runtime backend ("ort", "openvino")."""
    from .candidates import _step, model_traits

    t = model_traits(model)
    if t["quantized"] or not (t["conv"] or t["linear"]):
        return []
    heavy = t["linear"] and linear_heavy(model)
    out: list[tuple[_STEP, str]] = []
    if backend == "ort":
        if "quantize-static" in have:
            out.append((_step("quantize-static", {}),
                        "ORT expert: calibrated static int8, per-channel U8S8"))
        if heavy and "quantize-dynamic" in have:
            out.append((_step("quantize-dynamic", {}),
                        "ORT expert: dynamic int8 (weights int8) for a Linear-heavy model"))
            out.append((_step("quantize-dynamic", {"per_channel": False, "preprocess": False}),
                        "ORT expert: quantize_dynamic as users call it (its defaults: per-tensor, "
                        "no pre-processing) for a Linear-heavy model"))
    elif backend == "openvino":
        if "nncf-int8" in have:
            out.append((_step("nncf-int8", {}), "OpenVINO expert: NNCF int8"))
        if heavy and "nncf-weights" in have:
            out.append((_step("nncf-weights", {}),
                        "OpenVINO expert: NNCF int8 weight compression for a Linear-heavy model"))
    return out


def other_runtimes(target, names: Sequence[str] | None) -> tuple[str, ...]:
    """The runtimes searched besides `target`'s own: `names` as the user gave them (None:
    every CPU runtime installed here, for `--any-runtime`). Unknown or unavailable names are an
    InputError; the target's own runtime is dropped from the list."""
    from ..backends import registry as targets
    from ..errors import InputError, TargetError

    own = target.config.get("backend"), _provider(target.config)
    if names is None:
        out = []
        for name in CPU_RUNTIMES:
            try:
                t = targets.get(name, threads=target.threads)
            except TargetError:
                continue
            if (t.config.get("backend"), _provider(t.config)) != own:
                out.append(name)
        return tuple(out)
    out = []
    for name in names:
        try:
            t = targets.get(name, threads=target.threads)
        except TargetError as e:
            raise InputError(f"--runtimes: {e}") from None
        if t.config.get("backend") == "tvm":
            raise InputError(f"--runtimes: {name} compiles per model (TVM); search it with "
                             "--target instead")
        if (t.config.get("backend"), _provider(t.config)) != own and name not in out:
            out.append(name)
    return tuple(out)


def runtimes_info(target, runtimes: Sequence[str]) -> dict[str, Any]:
    """Which runtime the recommendation is on, which were searched, and which not (informative)."""
    try:
        installed = other_runtimes(target, None)
    except Exception:  # only informative
        installed = ()
    return {"recommendation": target.name, "searched": [target.name, *runtimes],
            "not_searched": [n for n in installed if n not in runtimes]}


def _provider(config: Mapping[str, Any]) -> str | None:
    provs = config.get("options", {}).get("providers")
    return list(provs)[0] if provs else None
