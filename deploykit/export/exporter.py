"""torch factory or ONNX file -> a checked, simplified ONNX file verified against its source.

Export is where silent errors are born (a traced branch frozen in, an op lowered wrongly), so
verification is part of it: torch and ONNX Runtime run the same seeded inputs, which differ from
the tracing inputs so that frozen data-dependent paths show up, and the export fails beyond fp32
tolerance. The dynamo exporter is tried first; the TorchScript exporter is the fallback, with
the reason recorded. Nothing is written unless every check passed.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..core import ModelRef, Result, TensorSpec
from ..errors import ExportError, InputError, VerificationError
from ..fsutil import atomic_path, sha256_file
from ..onnxio import quiet
from .checks import (OutputCheck, check_model, compare_outputs, fmt_shapes, maybe_simplify,
                     raise_if_failed, verify_torch)
from .exporters import node_modules, root_cause, run_exporter, set_node_modules
from .torch_source import (load_factory, load_weights, make_example_inputs, one_line, run_torch,
                           state_dict_sha256)


@dataclass(frozen=True)
class ExportResult(Result):
    model: ModelRef
    exporter: str  # "dynamo" | "torchscript" | "onnx" (the source already was ONNX)
    exporter_note: str | None  # why the fallback was used
    checks: tuple[OutputCheck, ...]
    reference: str  # what the ONNX outputs were compared with
    facts: Mapping[str, Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    simplified: bool
    warnings: tuple[str, ...] = ()

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in self.inputs)
        worst = max((c.max_rel for c in self.checks), default=0.0)
        return (f"ExportResult({self.model.path}, exporter {self.exporter}, inputs {ins}, "
                f"{len(self.checks)} output checks vs {self.reference} passed, max rel error "
                f"{worst:.1e})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = {"path": str(self.model.path), "sha256": self.model.sha256,
                      "parent_sha256": self.model.parent_sha256,
                      "transform": self.model.transform, "config": dict(self.model.config)}
        d["checks"] = [{**asdict(c), "ok": c.ok} for c in self.checks]
        return d


# ---------------------------------------------------------------------------------------------
# Entry point


def export_model(source: str | os.PathLike, output: str | os.PathLike, *,
                 input_shapes: Mapping[str, Sequence[int]] | None = None,
                 dynamic_batch: bool = False,
                 dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
                 opset: int | None = None, simplify: bool = True, seed: int = 0,
                 weights: str | os.PathLike | None = None,
                 trust_pickle: bool = False) -> ExportResult:
    """Export `source` ("file.py:factory" or an .onnx file) to `output`, verified.

    `dynamic_batch` makes axis 0 of every input a symbolic "batch" dim; `dynamic_axes` names
    others ({"x": {0: "batch", 2: "seq"}}). With dynamic axes the model is verified a second time
    at different sizes. Raises InputError / ExportError / VerificationError; writes nothing then.
    """
    shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    src = str(source)
    if src.endswith(".onnx"):
        if weights is not None or dynamic_batch or dynamic_axes:
            raise InputError("--weights / dynamic axes apply to torch sources, not .onnx files")
        return _from_onnx(Path(src), Path(output), shapes, opset, simplify, seed)
    return _from_torch(src, Path(output), shapes, dynamic_batch, dynamic_axes, opset, simplify,
                       seed, None if weights is None else Path(weights), trust_pickle)


def _from_torch(source, output, shapes, dynamic_batch, dynamic_axes, opset, simplify, seed,
                weights, trust_pickle) -> ExportResult:
    factory, example, path = load_factory(source)
    import torch

    try:
        with torch.random.fork_rng(devices=[]):  # seeded init, caller's RNG state untouched
            torch.manual_seed(seed)
            model = factory()
    except Exception as e:  # noqa: BLE001
        raise InputError(f"factory {source} raised {one_line(e)}") from None
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"factory {source} returned {type(model).__name__}, "
                         "not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights, trust_pickle)
    origin = {"source": source, "source_sha256": sha256_file(path),
              "weights_sha256": None if weights is None else sha256_file(weights)}
    return _export_module(model, example, origin, output, shapes, dynamic_batch, dynamic_axes,
                          opset, simplify, seed)


def export_module(module, example_inputs, output: str | os.PathLike, *,
                  dynamic_batch: bool = False,
                  dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
                  opset: int | None = None, simplify: bool = True, seed: int = 0
                  ) -> ExportResult:
    """Export an in-memory `torch.nn.Module` called with `example_inputs` (a tensor or a tuple of
    tensors) to `output`, verified like a factory's export. The lineage records the module's class
    and a hash of its parameters and buffers, so the same weights give the same config."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise InputError(f"export needs a torch.nn.Module, got {type(module).__name__}")
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    origin = {"source": f"<module {type(module).__module__}.{type(module).__qualname__}>",
              "source_sha256": state_dict_sha256(module), "weights_sha256": None}
    return _export_module(module, lambda: args, origin, Path(output), {}, dynamic_batch,
                          dynamic_axes, opset, simplify, seed)


def _export_module(model, example, origin, output, shapes, dynamic_batch, dynamic_axes, opset,
                   simplify, seed) -> ExportResult:
    source = origin["source"]
    model.eval()
    args, names = make_example_inputs(model, example, shapes, seed)
    try:
        ref = run_torch(model, args)
    except Exception as e:  # noqa: BLE001 - the model rejects these inputs
        given = fmt_shapes({n: a.shape for n, a in zip(names, args)})
        raise InputError(f"model rejects inputs {given}: {one_line(e)[:300]}") from None
    if not ref:
        raise InputError(f"factory {source}'s model returns no tensors")
    axes = {n: dict(dynamic_axes.get(n, {})) for n in names} if dynamic_axes else {}
    unknown = set(dynamic_axes or {}) - set(names)
    if unknown:
        raise InputError(f"dynamic axes name unknown input(s) {sorted(unknown)}; inputs: {names}")
    if dynamic_batch:
        axes = {n: {0: "batch", **axes.get(n, {})} for n in names}
    for n, a in zip(names, args):
        for ax in axes.get(n, {}):
            if not -a.dim() <= ax < a.dim():
                raise InputError(f"input '{n}' has {a.dim()} dims, no axis {ax} to make dynamic")
    axes = {n: {ax % a.dim(): d for ax, d in axes.get(n, {}).items()}
            for n, a in zip(names, args) if axes.get(n)}

    # An exporter "works" when its model passes the checker and agrees with torch.
    failures: list[str] = []
    verification_errors: list[str] = []
    for exporter in ("dynamo", "torchscript"):
        try:
            proto, warns = run_exporter(exporter, model, args, names, axes, opset, len(ref))
        except Exception as e:  # noqa: BLE001 - any exporter failure means: try the next one
            failures.append(f"{exporter} exporter failed ({root_cause(e)})")
            continue
        modules = node_modules(proto)
        proto, simplified = maybe_simplify(proto, simplify, warns)
        set_node_modules(proto, modules)  # onnxsim keeps node names but not their metadata
        data = _serialize(proto)
        try:
            checks = verify_torch(model, data, args, names,
                                   [o.name for o in proto.graph.output], axes, seed)
            raise_if_failed(checks, "torch", [w for w in warns if w.startswith("tracer:")])
            break
        except VerificationError as e:
            verification_errors.append(f"{exporter} exporter: {e}")
            failures.append(f"{exporter} exporter's model failed verification")
    else:
        if verification_errors:  # each exporter's own reason (the tracer's hints are its own)
            others = [f for f in failures if "failed verification" not in f]
            raise VerificationError("; ".join(verification_errors + others)) from None
        raise ExportError("; ".join(failures))
    note = f"{'; '.join(failures)}; used the {exporter} exporter" if failures else None
    warns += subnormal_warning([o.name for o in proto.graph.output], ref)
    config = {"source": source, "source_sha256": origin["source_sha256"], "exporter": exporter,
              "opset": opset, "dynamic_axes": {n: {str(k): v for k, v in a.items()}
                                               for n, a in axes.items()},
              "simplify": simplify, "seed": seed, "weights_sha256": origin["weights_sha256"]}
    return _finish(proto, data, output, None, config, exporter, note, checks, "torch",
                   simplified, warns,
                   dim_values={d: int(a.shape[ax]) for n, a in zip(names, args)
                               for ax, d in axes.get(n, {}).items()})


def _from_onnx(path: Path, output: Path, shapes, opset, simplify, seed) -> ExportResult:
    from ..onnxio import check_feedable, check_shape, io_specs, load_onnx, make_feeds
    from ..fidelity import run_ort

    original = load_onnx(path)
    ins, _ = io_specs(original)
    check_feedable(ins, path)  # what deploykit could not verify (or later feed) is refused now
    unknown = set(shapes) - {s.name for s in ins}
    if unknown:
        raise InputError(f"--shape names unknown input(s) {sorted(unknown)}; inputs are "
                         f"{[s.name for s in ins]}")
    for s in ins:
        if s.name in shapes:
            check_shape(s, shapes[s.name])
    model = check_model(original, "onnx")
    if opset is not None:
        model = _convert_opset(model, opset)
    warns: list[str] = []
    model, simplified = maybe_simplify(model, simplify, warns)
    data = _serialize(model)
    checks: list[OutputCheck] = []
    if data != original.SerializeToString():
        feeds = make_feeds(ins, seed, shapes)
        try:
            with quiet():
                ref = run_ort(original, feeds)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"ONNX Runtime cannot run {path} at input shapes "
                             f"{fmt_shapes({k: v.shape for k, v in feeds.items()})}: "
                             f"{one_line(e)[:300]}") from None
        try:
            with quiet():
                got = run_ort(data, feeds)
        except Exception as e:  # noqa: BLE001
            raise VerificationError(f"ONNX Runtime cannot run the processed model: "
                                    f"{one_line(e)[:300]}") from None
        where = f"at input shapes {fmt_shapes({k: v.shape for k, v in feeds.items()})}"
        checks = compare_outputs([o.name for o in model.graph.output], ref, got, where)
        raise_if_failed(checks, "the original ONNX model")
    config = {"source": str(path), "opset": opset, "simplify": simplify, "seed": seed}
    return _finish(model, data, output, sha256_file(path), config, "onnx", None, checks,
                   "the original ONNX model (ONNX Runtime)", simplified, warns,
                   dim_values={d: shapes[s.name][i] for s in ins if s.name in shapes
                               for i, d in enumerate(s.shape) if isinstance(d, str)})


def _convert_opset(model, opset: int):
    import onnx

    try:
        converted = onnx.version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted, full_check=True)  # the converter can emit bad nodes
        return converted
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot convert the model to opset {opset}: {one_line(e)}") from None


def subnormal_warning(names, outs) -> list[str]:
    """A warning when an output is entirely subnormal: it is compared as zeros (fidelity.py), so
    the export verified its shape and finiteness, not its values."""
    from ..fidelity import subnormal_outputs

    found = subnormal_outputs(names, outs)
    if not found:
        return []
    return [f"output(s) {', '.join(repr(n) for n in found[:3])} are entirely subnormal "
            "(below the dtype's smallest normal, 1.2e-38 in fp32), compared as "
            "zeros: their values are not verified (random weights whose activations decay "
            "through the layers?)"]


def _serialize(model) -> bytes:
    if model.ByteSize() > 2**31 - 1:
        raise ExportError("models over 2 GB (ONNX external data) are not supported by export yet")
    return model.SerializeToString()


def _finish(model, data: bytes, output: Path, parent_sha: str | None, config, exporter, note,
            checks, reference, simplified, warns, dim_values) -> ExportResult:
    from ..measure.facts import model_facts
    from ..onnxio import io_specs

    facts = model_facts(model, dim_values=dim_values)
    facts["file_bytes"] = len(data)
    with atomic_path(output) as tmp:
        tmp.write_bytes(data)
    ins, outs = io_specs(model)
    ref = ModelRef.from_path(output, parent_sha256=parent_sha, transform="export", config=config)
    return ExportResult(model=ref, exporter=exporter, exporter_note=note, checks=tuple(checks),
                        reference=reference, facts=facts, inputs=tuple(ins), outputs=tuple(outs),
                        simplified=simplified, warnings=tuple(warns))
