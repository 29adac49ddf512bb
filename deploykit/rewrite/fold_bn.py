"""Fold BatchNormalization into the Conv / ConvTranspose / Gemm before it, with onnxscript's
rewrite rules (pattern: BN(Conv(x, W, b)); check: W, b and BN statistics are constant and not
shared; rewrite: Conv(x, W*s, (b-mean)*s+beta)). Exact up to fp32 rounding; removes one
memory-bound pass over every activation it touches.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from . import StepPass


@dataclass(frozen=True)
class Config:
    include_gemm: bool = True
    include_conv_transpose: bool = True


class FoldBnPass(StepPass, ir.passes.InPlacePass):
    """BatchNormalization folded into the op before it, in place (onnxscript's rules)."""

    def call(self, model):
        import onnx_ir.passes.common as common
        from onnxscript.rewriter import RewriteRuleSet
        from onnxscript.rewriter.rules.common import (fuse_batchnorm_into_conv_rule,
                                                      fuse_batchnorm_into_conv_transpose_rule,
                                                      fuse_batchnorm_into_gemm_rule)

        rules = [fuse_batchnorm_into_conv_rule]
        if self.cfg.include_conv_transpose:
            rules.append(fuse_batchnorm_into_conv_transpose_rule)
        if self.cfg.include_gemm:
            rules.append(fuse_batchnorm_into_gemm_rule)
        bn_before = sum(n.op_type == "BatchNormalization" for n in model.graph)
        if not bn_before:
            return self.skip(model, "no BatchNormalization node")
        fired = RewriteRuleSet(rules).apply_to_model(model)
        if not fired:
            return self.skip(model, f"none of {bn_before} BatchNormalization node(s) follows "
                                    "a Conv/Gemm with constant, unshared weights")
        common.RemoveUnusedNodesPass()(model)
        return self.done(model, details={"fired": fired, "batchnorm_before": bn_before,
                                         "batchnorm_after": bn_before - fired})
