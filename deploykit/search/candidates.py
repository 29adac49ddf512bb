"""The candidate space of a search: recipes (step names + configs of `deploykit.rewrite.recipe.STEPS`) and
target options. Nothing here transforms a model: a candidate is only the recipe text that the
recipe runner applies, so the search explores exactly what `deploykit compress` can produce."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..core import stable_hash

# (family, [(step name, fields), ...]); a family applies when the model has the ops it needs.
_QUANT_STATIC = [
    {},  # per-channel, uint8 activations / int8 weights (U8S8: the fast one on x86)
    {"per_channel": False},
    {"method": "percentile"},
]
# preprocess=false: onnxruntime's quantize_dynamic as users call it (no quant_pre_process), whose
# rounding can land on either side of the pre-processed graph's
_QUANT_DYNAMIC = [{}, {"per_channel": False}, {"preprocess": False}]
_NNCF_WEIGHTS = [{}, {"mode": "int8_sym"}]
_PRUNE = [{"ratio": 0.25}, {"ratio": 0.5}, {"ratio": 0.5, "scope": "global"}]
_PRUNE_FFN = [{"ratio": 0.25}, {"ratio": 0.5}]
_PRUNE_HEADS = [{"ratio": 0.25}]
_PRUNE_HIDDEN = [{"ratio": 0.25}]
_LOWRANK = [{"ratio": 0.5}, {"ratio": 0.25}, {"ratio": 0.125}]


@dataclass(frozen=True)
class Candidate:
    """A point of the search space: a recipe (empty = the model as given) on a target variant."""

    family: str  # "baseline", "int8", "prune", "lowrank", "compact", "prune+int8", ...
    steps: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()  # target overrides: threads, graph_optimization_level

    @property
    def recipe(self) -> str:
        """The recipe in `deploykit compress` syntax."""
        parts = []
        for name, fields in self.steps:
            spec = ",".join(f"{k}={_fmt(v)}" for k, v in fields)
            parts.append(name + (":" + spec if spec else ""))
        return "; ".join(parts)

    @property
    def model_id(self) -> str:
        return stable_hash("model", self.recipe)

    @property
    def id(self) -> str:
        return stable_hash("candidate", self.recipe, list(self.options))

    @property
    def name(self) -> str:
        base = self.recipe or "baseline"
        if self.options:
            base += " @ " + ",".join(f"{k}={v}" for k, v in self.options)
        return base

    def with_options(self, options: tuple[tuple[str, Any], ...]) -> "Candidate":
        return Candidate(self.family, self.steps, options)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "recipe": self.recipe, "options": dict(self.options),
                "name": self.name, "id": self.id}


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "|".join(map(str, v))
    return str(v)


def _step(name: str, fields: Mapping[str, Any]) -> tuple[str, tuple[tuple[str, Any], ...]]:
    return name, tuple(sorted(fields.items()))


def model_traits(model) -> dict[str, bool]:
    """Which families can apply, read from the op types and constant weights."""
    inits = {t.name: t for t in model.graph.initializer}
    conv = kxk = linear = False
    for n in model.graph.node:
        if n.op_type == "Conv":
            conv = True
            w = inits.get(n.input[1]) if len(n.input) > 1 else None
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            if w is not None and len(w.dims) == 4 and w.dims[2] * w.dims[3] > 1 and group == 1:
                kxk = True
        elif n.op_type in ("MatMul", "Gemm") and any(i in inits for i in n.input[:2]):
            linear = True
    from ..fidelity import QUANTIZED_OPS

    quantized = any(n.op_type in QUANTIZED_OPS for n in model.graph.node)
    return {"conv": conv, "kxk": kxk, "linear": linear, "quantized": quantized}


def available_steps(names: Sequence[str]) -> set[str]:
    """Steps whose modules import here (a missing optional package removes a family)."""
    from ..errors import InputError
    from ..rewrite.recipe import step_module

    ok = set()
    for n in names:
        try:
            step_module(n)
            ok.add(n)
        except InputError:
            pass
    return ok


def openvino_tools() -> bool:
    """NNCF and OpenVINO both installed: the NNCF steps are worth trying (their files run on
    ORT too, but what they are made for is OpenVINO's CPU plugin)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("nncf", "openvino"))


FAMILIES = ("int8", "prune", "lowrank", "tucker", "compact")


def model_candidates(model, min_fidelity: float | None = None,
                     families: Sequence[str] = ()) -> list[Candidate]:
    """Every recipe worth trying on this model, cheapest families first; the baseline is first.
    `families` (empty: all) keeps the candidates made only of those families."""
    from ..errors import InputError

    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise InputError(f"unknown search families {sorted(unknown)} (known: {', '.join(FAMILIES)})")
    out = _all_candidates(model, min_fidelity)
    if families:
        out = [c for c in out if c.family == "baseline" or set(c.family.split("+")) <= set(families)]
    return out


def _all_candidates(model, min_fidelity: float | None) -> list[Candidate]:
    t = model_traits(model)
    have = available_steps(["quantize-static", "quantize-dynamic", "prune-channels", "prune-ffn",
                            "prune-heads", "prune-hidden", "lowrank", "tucker", "compact"])
    out = [Candidate("baseline")]
    if t["quantized"]:
        return out  # an int8 model is not quantized again, nor pruned through its QDQ pairs
    static: list[tuple[str, tuple]] = []
    dynamic: list[tuple[str, tuple]] = []
    # keep the most sensitive nodes in fp32 until the fidelity floor is met (as a cosine target;
    # an --eval floor of 1 or more has no cosine counterpart)
    keep = {"target_cosine": min(math.ceil(round(min_fidelity * 1e6, 3)) / 1e6, 0.999999)} \
        if min_fidelity and min_fidelity < 1 else None
    if "quantize-static" in have and (t["conv"] or t["linear"]):
        static += [_step("quantize-static", f) for f in _QUANT_STATIC]
    if "quantize-dynamic" in have and t["linear"]:
        dynamic += [_step("quantize-dynamic", f) for f in _QUANT_DYNAMIC]
    if openvino_tools():  # OpenVINO's int8 placement, and int8 weights it runs with int8 kernels
        static += [_step("nncf-int8", {})] if t["conv"] or t["linear"] else []
        # data-free and the quickest build: first of its kind
        dynamic[:0] = [_step("nncf-weights", f) for f in _NNCF_WEIGHTS] if t["linear"] else []
    # the kind that suits the model first (builds stop at the time limit): calibrated static
    # int8 for CNNs; for Linear-only models (transformers) weight-int8 with activations quantized
    # at run time, which needs no calibration and keeps their outlier activations. The
    # sensitivity searches (target_cosine: one quantization per node kept in fp32) cost most, last.
    quant = static + dynamic if t["conv"] else dynamic + static
    if keep:
        quant += [_step(name, keep) for name in ("quantize-static", "quantize-dynamic")
                  if any(q[0] == name for q in quant)]
    out += [Candidate("int8", (q,)) for q in quant]

    structural: list[tuple[str, tuple]] = []
    if "prune-channels" in have and t["conv"]:
        structural += [("prune", _step("prune-channels", f)) for f in _PRUNE]
    if "prune-ffn" in have and t["linear"] and _has_ffn(model):
        structural += [("prune", _step("prune-ffn", f)) for f in _PRUNE_FFN]
    if "prune-heads" in have and t["linear"] and _has_attention(model):
        structural += [("prune", _step("prune-heads", f)) for f in _PRUNE_HEADS]
    if "prune-hidden" in have and t["linear"] and _has_stream(model):
        structural += [("prune", _step("prune-hidden", f)) for f in _PRUNE_HIDDEN]
    if "lowrank" in have and t["linear"]:
        structural += [("lowrank", _step("lowrank", f)) for f in _LOWRANK]
    if "tucker" in have and t["kxk"]:
        structural.append(("tucker", _step("tucker", {})))
    if "compact" in have and t["kxk"]:
        structural.append(("compact", _step("compact", {})))
    out += [Candidate(fam, (s,)) for fam, s in structural]

    # compositions: each structural step followed by the default int8 of the model's kind
    finish = int8_finish(t, have)
    for fam, s in structural:
        out += [Candidate(f"{fam}+int8", (s, q)) for q in finish]
    return out


def _has_ffn(model) -> bool:
    """A feed-forward block prune-ffn can shrink (transformers, MLPs)."""
    from ..rewrite.prune_ffn import prunable_layers

    return bool(prunable_layers(model))


def _has_attention(model) -> bool:
    """Multi-head attention prune-heads can shrink."""
    from ..rewrite.prune_heads import prunable_layers

    return any(n.op_type == "Softmax" for n in model.graph.node) and bool(prunable_layers(model))


def _has_stream(model) -> bool:
    """A residual stream prune-hidden can narrow (an embedding read by projections, not itself a
    graph output)."""
    from ..rewrite.prune_hidden import prunable_streams

    return any(n.op_type == "Gather" for n in model.graph.node) and bool(prunable_streams(model))


def int8_finish(traits: Mapping[str, bool], have: set[str]) -> list[tuple[str, tuple]]:
    """The int8 step that ends a structural composition: static QDQ for CNNs, dynamic for
    Linear-only models (empty when neither applies or is installed)."""
    if "quantize-static" in have and traits["conv"]:
        return [_step("quantize-static", {})]
    if "quantize-dynamic" in have and traits["linear"]:
        return [_step("quantize-dynamic", {})]
    return []


def option_variants(target, runtimes: Sequence[str] = ()) -> list[tuple[tuple[str, Any], ...]]:
    """Target options worth trying: fewer threads (a shared or SMT machine can favour them), on
    ORT the graph optimisation level below "all" (layout rewrites do not always pay), and the other
    runtimes the user asked to compare (`runtimes`, registry names checked by
    search/experts.py:other_runtimes); then each of the latter combined with fewer threads (what
    wins alone need not win together)."""
    fewer = [(("threads", 1),)] if target.threads > 1 else []
    other: list[tuple[tuple[str, Any], ...]] = []
    opts = target.config.get("options", {})
    if target.config.get("backend") == "ort" and opts.get("graph_optimization_level",
                                                          "all") == "all":
        other.append((("graph_optimization_level", "extended"),))
    other += [(("target", name),) for name in runtimes]
    return [(), *fewer, *other, *(tuple(sorted(o + f)) for o in other for f in fewer)]


def target_for(spec: str, base_config: Mapping[str, Any], options: tuple[tuple[str, Any], ...]):
    """The target of a variant (`spec`: registry name or .toml path): `threads` and
    `allow_spinning` are top-level keys, the rest are backend options."""
    from ..backends import registry as targets

    opts = dict(options)
    if "target" in opts:  # another runtime: its own configuration, the same thread count
        return targets.get(opts.pop("target"), threads=opts.pop("threads", base_config.get(
            "threads")), **opts)
    over = {k: opts.pop(k) for k in ("threads", "allow_spinning") if k in opts}
    # the same boards: a tracker's device key (a --device/--tracker override of the spec)
    over.update({k: base_config[k] for k in ("device", "tracker")
                 if isinstance(base_config.get(k), str)})
    if opts:
        over["options"] = {**base_config.get("options", {}), **opts}
    return targets.get(spec, **over)

