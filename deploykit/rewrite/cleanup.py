"""Graph clean-up with onnx-ir passes and onnxscript's constant folder: fold constant
subgraphs, drop identities, dead nodes, unused initializers/functions/opsets and duplicate
initializers. Exact; often the first step, so later steps see a simpler graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from . import StepPass


@dataclass(frozen=True)
class Config:
    fold_constants: bool = True
    deduplicate_initializers: bool = True


def _counts(model) -> tuple[int, int]:
    return len(model.graph), len(model.graph.initializers)


class CleanupPass(StepPass, ir.passes.InPlacePass):
    """onnx-ir's clean-up passes (and onnxscript's constant folder) in one pass manager."""

    def call(self, model):
        import onnx_ir.passes.common as common
        from onnxscript.optimizer import fold_constants

        nodes0, inits0 = _counts(model)
        folded = bool(fold_constants(model).modified) if self.cfg.fold_constants else False
        passes = [common.IdentityEliminationPass(), common.RemoveUnusedNodesPass(),
                  common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass()]
        if self.cfg.deduplicate_initializers:
            passes.insert(0, common.DeduplicateInitializersPass())
        result = ir.passes.PassManager(passes)(model)
        if not (folded or result.modified):
            return self.skip(model, "nothing to clean (no dead nodes, constants to fold, "
                                    "identities or unused initializers)")
        nodes1, inits1 = _counts(model)
        return self.done(model, details={"nodes": [nodes0, nodes1],
                                         "initializers": [inits0, inits1],
                                         "constants_folded": folded})
