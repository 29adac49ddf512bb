"""Model intake: the one stage every verb that takes an .onnx file runs first.

Models users bring are not shaped like the ones our exporter writes. The onnx package's model-zoo
files are IR 3 / opset 9 and build every weight with `ConstantOfShape` from an initializer that is
also a graph input; to every rewrite such a weight "is not a constant", and ORT's quantizer asks for
those inputs in its feed. Per-channel QDQ (`DequantizeLinear` with `axis`) needs opset >= 13.

Intake checks the file (`load_onnx`), then, only where needed:
1. treats initializers that are also graph inputs as constants (drops them from the inputs),
2. folds the constant subgraphs that produce weights (onnxsim, as `deploykit export` does),
3. upgrades the opset with onnx's version_converter when a later stage needs a newer one,
and verifies the normalized model against the file as given on ONNX Runtime (fp32 tolerance)
before anything else runs. A model that needs none of this is passed through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import InputError, VerificationError
from .rewrite import OpsetNeed, strictest_need  # noqa: F401 - re-exported: what a stage needs

# input slots that hold weights: a computed value here makes every rewrite refuse the node
_WEIGHT_SLOTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,),
                 "BatchNormalization": (1, 2, 3, 4), "Gather": (0,), "PRelu": (1,),
                 "InstanceNormalization": (1, 2), "LayerNormalization": (1, 2)}
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli"}


@dataclass(frozen=True)
class IntakeResult:
    source: Path  # the file as given
    path: Path  # the model every later stage reads (== source when nothing changed)
    changed: bool
    notes: tuple[str, ...] = ()
    opset: int | None = None  # default-domain opset of `path`
    max_rel: float | None = None  # verified error of `path` vs `source` (None: unchanged)
    details: Mapping[str, object] = field(default_factory=dict)


def default_opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _initializer_inputs(model) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name in inits]


def _computed_weights(model) -> int:
    """How many weight slots are fed by a subgraph computed from constants alone."""
    const = {t.name for t in model.graph.initializer}
    const_nodes = 0
    for node in model.graph.node:  # nodes are topologically sorted (onnx.checker)
        if node.domain not in ("", "ai.onnx") or node.op_type in _NONDETERMINISTIC:
            continue
        if all(not i or i in const for i in node.input):
            const.update(o for o in node.output if o)
            const_nodes += node.op_type != "Constant"
    if not const_nodes:
        return 0
    computed = const - {t.name for t in model.graph.initializer} - {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return sum(1 for n in model.graph.node for i in _WEIGHT_SLOTS.get(n.op_type, ())
               if i < len(n.input) and n.input[i] in computed)


def _drop_initializer_inputs(model, names: list[str]) -> None:
    import onnx

    keep = [v for v in model.graph.input if v.name not in set(names)]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.ir_version = max(model.ir_version, 4)  # IR 4 lets initializers stand outside inputs
    onnx.checker.check_model(model)


def _fold(model):
    """onnxsim's constant folding (and its other exact simplifications); (model, error).
    Duplicate initializers stay apart: the zoo files' weights are all equal (0.02), and merged
    into one shared tensor no rewrite could slice them separately. BatchNormalization stays too:
    folding it is the `fold-bn` step's job, which a user asks for (or not)."""
    import onnx
    import onnxsim

    from .onnxio import quiet

    try:
        with quiet():
            simple, _ = onnxsim.simplify(
                model, check_n=0, skip_fuse_bn=True,
                skipped_optimizers=["eliminate_duplicate_initializer"])
        onnx.checker.check_model(simple)
        return simple, None
    except Exception as e:  # noqa: BLE001 - onnxsim raises many types
        return model, (str(e).splitlines() or [type(e).__name__])[0][:200]


def _upgrade(model, need: OpsetNeed):
    import onnx

    try:
        out = onnx.version_converter.convert_version(model, need.opset)
        out.ir_version = max(out.ir_version, onnx.helper.find_min_ir_version_for(
            list(out.opset_import), ignore_unknown=True))
        onnx.checker.check_model(out, full_check=True)  # the converter can emit bad nodes
        return out
    except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError/ValidationError
        raise InputError(f"intake: cannot upgrade the model from opset {default_opset(model)} to "
                         f"{need.opset} ({need.why}): "
                         f"{(str(e).splitlines() or [type(e).__name__])[0][:200]}") from None


def intake(path: str | Path, workdir: str | Path, *, need: OpsetNeed | None = None,
           feeds: Mapping[str, np.ndarray] | None = None,
           name: str = "00-intake.onnx") -> IntakeResult:
    """Normalize the model at `path` for the stages after it; a changed model is written to
    `workdir`/`name` and verified against `path` on ORT with `feeds` (default: seeded inputs of
    the model's own shapes)."""
    from .onnxio import load_onnx

    source = Path(path)
    model = load_onnx(source)
    original_bytes = model.SerializeToString()
    notes: list[str] = []
    details: dict[str, object] = {}
    init_inputs = _initializer_inputs(model)
    if init_inputs:
        _drop_initializer_inputs(model, init_inputs)
        details["initializer_inputs"] = len(init_inputs)
        notes.append(f"intake: {len(init_inputs)} initializer(s) were also graph inputs "
                     f"(e.g. '{init_inputs[0]}'); treated as constants, as ONNX Runtime does "
                     "when they are not fed")
    computed = _computed_weights(model)
    if computed:
        model, err = _fold(model)
        details["computed_weights"] = computed
        if err:
            notes.append(f"intake: {computed} weight(s) are computed from constants and onnxsim "
                         f"could not fold them ({err}); steps needing constant weights will say so")
        else:
            left = _computed_weights(model)
            notes.append(f"intake: folded the constant subgraphs producing {computed} weight(s) "
                         "(onnxsim)" + (f"; {left} remain computed" if left else ""))
    opset = default_opset(model)
    if need is not None and opset is not None and opset < need.opset:
        model = _upgrade(model, need)
        notes.append(f"intake: upgraded opset {opset} -> {need.opset} (onnx version_converter) "
                     f"because {need.why}")
        details["opset_from"], opset = opset, need.opset
    if model.SerializeToString() == original_bytes:
        return IntakeResult(source, source, False, (), opset, None, details)
    out = Path(workdir) / name
    max_rel = _verify(source, model, out, feeds)
    notes.append(f"intake: normalized model verified against {source.name} on ONNX Runtime "
                 f"(max rel error {max_rel:.1e})")
    return IntakeResult(source, out, True, tuple(notes), opset, max_rel, details)


def _verify(source: Path, model, out: Path, feeds) -> float:
    """Write `model` to `out` (whole or not at all) and compare it with `source` on ORT."""
    import onnx

    from .fsutil import atomic_path
    from .onnxio import io_specs, load_onnx, make_feeds, quiet
    from .fidelity import compare, judge, run_ort

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    if feeds is None:
        feeds = make_feeds(io_specs(load_onnx(source, load_external=False))[0])
    try:
        with quiet():
            ref = run_ort(str(source), feeds)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise InputError(f"ONNX Runtime cannot run {source}: "
                         f"{(str(e).splitlines() or [type(e).__name__])[0][:300]}") from None
    try:
        with quiet():
            got = run_ort(str(out), feeds)
    except Exception as e:  # noqa: BLE001
        raise VerificationError(f"intake: ONNX Runtime cannot run the normalized model: "
                                f"{(str(e).splitlines() or [type(e).__name__])[0][:300]}") from None
    fid = compare(ref, got)
    reason = judge(fid, "fp32")
    if reason:
        raise VerificationError(f"intake: the normalized model differs from {source.name}: "
                                f"{reason}")
    return fid.max_rel


