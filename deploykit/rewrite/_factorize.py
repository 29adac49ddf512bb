"""What the per-layer factorization steps (lowrank, tucker, compact) share: the record their
onnxscript rules keep while matching, the Conv rule's common gate (`ConvFactorRule`), and
applying a rule set as one in-place pass (drop what it orphaned, skip with the refusals when
nothing fired, report per-layer errors).

A weight several nodes share (ALBERT's layers, a reused conv) is decomposed once and its factors
are one set of initializers all those nodes read (`RuleLog.once`, `RuleLog.factor`): factorizing
it per use would repeat the decomposition (minutes on 4096 x 16384 weights) and give onnxscript
initializers of the same name, which it cannot add twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from onnxscript.rewriter import MatchResult, RewriteRuleClassBase


@dataclass
class RuleLog:
    """Filled by a rule set as it matches: one dict per rewritten node (with
    rel_frobenius_error), refusals (node name -> reason), the weights the step made (never
    matched again) and the unnamed nodes it named."""

    layers: list[dict[str, Any]] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    created: set[str] = field(default_factory=set)
    named: list[tuple[Any, Any]] = field(default_factory=list)  # (ir.Node, its name before)
    memo: dict[Any, Any] = field(default_factory=dict)  # (weight value, ...) -> decomposition
    factors: dict[Any, Any] = field(default_factory=dict)  # (key, name) -> initializer value

    def once(self, key, compute: Callable[[], Any]) -> Any:
        """`compute()` the first time `key` (the weight ir.Value, and whatever else the result
        depends on) is asked for, its result afterwards: shared weights are decomposed once."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def factor(self, op, key, name: str, array) -> Any:
        """The initializer `name` holding `array` for the decomposition `key`: created by the
        first rewrite of a shared weight, the same value for the later ones (a name another
        decomposition of the same weight took gets a suffix)."""
        if (key, name) not in self.factors:
            import onnx_ir as ir

            unique = name
            while unique in self.created:
                unique += "_"
            self.created.add(unique)
            self.factors[(key, name)] = op.initializer(ir.tensor(array), name=unique)
        return self.factors[(key, name)]

    def label(self, node, w) -> str:
        """The node's name; an unnamed node is named "Op(weight)" here, before the rule set's
        own name fixing, so a refusal names a node the output has (`unname` undoes it when
        nothing fired)."""
        if not node.name:
            self.named.append((node, node.name))
            node.name = f"{node.op_type}({w.name})"
        return node.name

    def unname(self) -> None:
        for node, name in self.named:
            node.name = name

    def refuse(self, name: str, reason: str):
        self.refused[name] = reason
        return MatchResult().fail(reason)


class ConvFactorRule(RewriteRuleClassBase):
    """Conv(x, W[, b]) with a constant weight of a standard 2-D convolution (group 1), not one
    the step made: the gate tucker and compact share. A subclass gives `refusal(node, arr, x,
    out)` -> a reason to leave this conv alone, or None, and `rewrite`."""

    def __init__(self, cfg, log: RuleLog):
        super().__init__()
        self.cfg, self.log = cfg, log

    def pattern(self, op, x, w):
        return op.Conv(x, w, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, x, w, out, **_):
        node = out.producer()
        if w.name in self.log.created:
            return MatchResult().fail("made by this step")
        name = self.log.label(node, w)
        if w.const_value is None or w.is_graph_input():
            return self.log.refuse(name, "weight is not a constant")
        arr = w.const_value.numpy()
        if arr.ndim != 4 or node.attributes.get_int("group", 1) != 1:
            return self.log.refuse(name, "not a standard 2-D convolution (group 1)")
        reason = self.refusal(node, arr, x, out)
        return self.log.refuse(name, reason) if reason else MatchResult()

    def refusal(self, node, arr, x, out) -> str | None:
        raise NotImplementedError

    @staticmethod
    def conv(op, node, x, w, **attrs):
        """Conv(x, w) with the matched node's bias, if it has one."""
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            return op.Conv(x, w, node.inputs[2], **attrs)
        return op.Conv(x, w, **attrs)


def apply_rules(step_pass, model, rules, log: RuleLog, nothing: str, source=None):
    """Run `rules` on `model` in place for `step_pass`: its PassResult, with the per-layer
    details; `nothing` is the skip reason when none fired. A functional pass that rewrites a
    prepared copy passes its input as `source`: a skip returns that, unchanged."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    fired = rules.apply_to_model(model)
    if not fired:
        log.unname()
        why = "; ".join(f"{k}: {v}" for k, v in list(log.refused.items())[:3])
        return step_pass.skip(model if source is None else source,
                              nothing + (f" ({why})" if why else ""))
    RemoveUnusedNodesPass()(model)
    done = {d["node"] for d in log.layers}
    return step_pass.done(model, details={
        "fired": fired, "layers": log.layers,
        "refused": {k: v for k, v in log.refused.items() if k not in done},
        "max_rel_frobenius_error": max(d["rel_frobenius_error"] for d in log.layers)})
