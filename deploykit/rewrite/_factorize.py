"""What the per-layer factorization steps (lowrank, tucker, compact) share: apply a rule set,
drop what it orphaned, skip with the refusals when nothing fired, report per-layer errors."""

from __future__ import annotations

from typing import Any

from . import StepResult


def apply_rules(irm, rules, layers: list[dict[str, Any]], refused: dict[str, str],
                nothing: str) -> StepResult:
    """`rules` fill `layers` (one dict per rewritten node, with rel_frobenius_error) and
    `refused` (node -> reason) as they match; `nothing` is the skip reason when none fired."""
    import onnx
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    fired = rules.apply_to_model(irm)
    RemoveUnusedNodesPass()(irm)
    if not fired:
        why = "; ".join(f"{k}: {v}" for k, v in list(refused.items())[:3])
        return StepResult(None, skipped=nothing + (f" ({why})" if why else ""))
    out = ir.to_proto(irm)
    onnx.checker.check_model(out, full_check=True)
    done = {d["node"] for d in layers}
    return StepResult(out, fidelity_kind="lossy", details={
        "rule_firings": fired, "layers": layers,
        "refused": {k: v for k, v in refused.items() if k not in done},
        "max_rel_frobenius_error": max(d["rel_frobenius_error"] for d in layers)})


def conv_weight(w, node, refuse):
    """(weight array, None) for a group-1 2-D Conv with a constant weight, else
    (None, refusal) — the common gate of the Conv factorization rules."""
    if w.const_value is None or w.is_graph_input():
        return None, refuse("weight is not a constant")
    arr = w.const_value.numpy()
    if arr.ndim != 4 or node.attributes.get_int("group", 1) != 1:
        return None, refuse("not a standard 2-D convolution (group 1)")
    return arr, None
