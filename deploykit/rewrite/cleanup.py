"""Graph clean-up with onnx-ir passes and onnxscript's constant folder: fold constant
subgraphs, drop identities, dead nodes, unused initializers/functions/opsets and duplicate
initializers. Exact; often the first step, so later steps see a simpler graph.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import StepContext, StepResult


@dataclass(frozen=True)
class Config:
    fold_constants: bool = True
    deduplicate_initializers: bool = True


def _counts(model) -> tuple[int, int]:
    return len(model.graph.node), len(model.graph.initializer)


def step(model, cfg: Config, ctx: StepContext) -> StepResult:
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript.optimizer import fold_constants

    nodes0, inits0 = _counts(model)
    m = ir.serde.deserialize_model(model)
    folded = bool(fold_constants(m).modified) if cfg.fold_constants else False
    passes = [common.IdentityEliminationPass(), common.RemoveUnusedNodesPass(),
              common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass()]
    if cfg.deduplicate_initializers:
        passes.insert(0, common.DeduplicateInitializersPass())
    result = ir.passes.PassManager(passes)(m)
    if not (folded or result.modified):
        return StepResult(None, skipped="nothing to clean (no dead nodes, constants to fold, "
                                        "identities or unused initializers)")
    out = ir.serde.serialize_model(result.model)
    nodes1, inits1 = _counts(out)
    return StepResult(out, details={"nodes": [nodes0, nodes1], "initializers": [inits0, inits1],
                                    "constants_folded": folded})
