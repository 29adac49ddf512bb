"""torch factory or ONNX file -> a checked, simplified ONNX file verified against its source.

Export is where silent errors are born (a traced branch frozen in, an op lowered wrongly), so
verification is part of it: torch and ONNX Runtime run the same seeded inputs, which differ from
the tracing inputs so that frozen data-dependent paths show up, and the export fails beyond fp32
tolerance. The dynamo exporter is tried first; the TorchScript exporter is the fallback, with
the reason recorded. Nothing is written unless every check passed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import io
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..core import ModelRef, Result, TensorSpec
from ..errors import ExportError, InputError, VerificationError
from ..fsutil import atomic_path, sha256_file
from ..onnxio import quiet

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class OutputCheck:
    """One output of the exported model against its reference, at one set of input shapes."""

    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # max |onnx - ref| / max |ref|
    cosine: float
    failure: str | None = None  # None when within tolerance

    @property
    def ok(self) -> bool:
        return self.failure is None


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
# Loading the torch side


def _load_factory(source: str) -> tuple[Callable, Callable | None, Path]:
    path_s, sep, name = source.rpartition(":")
    if not sep or not path_s.endswith(".py") or not name.isidentifier():
        raise InputError(f"bad model source {source!r}: expected path/to/file.py:factory or an "
                         ".onnx file")
    path = Path(path_s)
    if not path.is_file():
        raise InputError(f"factory file not found: {path}")
    mod_name = "deploykit_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # sibling imports of the user's file
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure of user code is an input problem
        raise InputError(f"cannot import {path}: {_one_line(e)}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    factory = getattr(module, name, None)
    if not callable(factory):
        raise InputError(f"{path} has no callable '{name}'")
    example = getattr(module, "example_inputs", None)
    return factory, example if callable(example) else None, path


def _one_line(e: BaseException) -> str:
    msg = _ANSI.sub("", str(e)).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def _load_weights(model, weights: Path, trust_pickle: bool) -> None:
    """Checkpoints load with weights_only=True; a pickle needs the user's explicit trust."""
    import pickle

    import torch

    if not weights.is_file():
        raise InputError(f"checkpoint not found: {weights}")
    try:
        obj = torch.load(weights, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError:
        raise InputError(f"checkpoint {weights} is not plain tensors (it needs pickle to load); "
                         "pass --trust-pickle only if you trust where it came from") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise InputError(f"cannot read checkpoint {weights}: {_one_line(e)}") from None
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"checkpoint {weights} holds no state dict of tensors")
    try:
        model.load_state_dict(obj, strict=True)
    except RuntimeError as e:
        raise InputError(f"checkpoint {weights} does not fit the model: "
                         f"{' '.join(str(e).split())[:300]}") from None


def _forward_params(model) -> list:
    return [p for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _input_names(model, n: int) -> list[str]:
    names = [p.name for p in _forward_params(model)[:n]]
    return names + [f"input_{i}" for i in range(len(names), n)]


def _example_inputs(model, example: Callable | None, shapes: Mapping[str, Sequence[int]],
                    seed: int) -> tuple[tuple, list[str]]:
    import torch

    if example is not None:
        try:
            with torch.random.fork_rng(devices=[]):
                args = example()
        except Exception as e:  # noqa: BLE001
            raise InputError(f"example_inputs() raised {_one_line(e)}") from None
        args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
        if not all(isinstance(a, torch.Tensor) for a in args):
            raise InputError("example_inputs() must return a tensor or a tuple of tensors")
        names = _input_names(model, len(args))
    elif shapes:
        params = _forward_params(model)
        names = [p.name for p in params if p.name in shapes or p.default is p.empty]
        missing = [n for n in names if n not in shapes]
        if missing:
            raise InputError(f"no --shape for input(s) {missing} (forward takes {names})")
        args = ()
    else:
        raise InputError("the factory's file has no example_inputs(); give input shapes with "
                         "--shape NAME=D0,D1,...")
    unknown = set(shapes) - set(names)
    if unknown:
        raise InputError(f"--shape names unknown input(s) {sorted(unknown)}; inputs are {names}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, name in enumerate(names):
        if name in shapes:  # same dtype (and integer range) as the example, new shape
            like = args[i] if args else torch.empty(0)
            out.append(_random_like(like, tuple(shapes[name]), gen))
        else:
            out.append(args[i])
    return tuple(out), names


def _random_like(t, shape: tuple[int, ...], gen):
    """Seeded values of `t`'s dtype; integers stay within t's range (token ids, indices)."""
    import torch

    if t.dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(t.dtype)
    if t.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    lo, hi = (int(t.min()), int(t.max()) + 1) if t.numel() else (0, 2)
    return torch.randint(lo, max(hi, lo + 1), shape, generator=gen, dtype=t.dtype)


def _flat_outputs(out) -> list[np.ndarray]:
    import torch
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten(out)
    return [leaf.detach().cpu().numpy() for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _run_torch(model, args) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return _flat_outputs(model(*args))


# ---------------------------------------------------------------------------------------------
# Exporters


def _output_names(n: int) -> list[str]:
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def _export_dynamo(model, args, names, dynamic_axes, opset, n_outputs):
    import torch

    dynamic_shapes = None
    if dynamic_axes:
        dims: dict[str, Any] = {}
        dynamic_shapes = tuple({ax: dims.setdefault(dim, torch.export.Dim(dim))
                                for ax, dim in dynamic_axes.get(n, {}).items()} or None
                               for n in names)
    prog = torch.onnx.export(model, args, None, dynamo=True, input_names=names,
                             output_names=_output_names(n_outputs), opset_version=opset,
                             dynamic_shapes=dynamic_shapes, external_data=False)
    proto = prog.model_proto
    _name_nodes_by_module(proto)
    if opset is not None and _opset(proto) != opset:  # dynamo emits opset >= 18 only
        import onnx

        proto = onnx.version_converter.convert_version(proto, opset)
    return proto


def _name_nodes_by_module(proto) -> None:
    """Rename dynamo's nodes ("node_Conv_182") after the torch module they came from
    ("layers.0.conv2/Conv"), so per-op tables and traces say where the time goes. A node fused
    by dynamo's optimizer (Conv+BatchNorm) carries the scope of one of its parts only, so it is
    named after the enclosing module ("layers.0/Conv") rather than after the wrong layer."""
    import ast

    used: dict[str, int] = {}
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            scopes = []
        depth = 3 if "pkg.onnxscript.rewriter.rule_name" in meta else 2
        module = scopes[-depth] if len(scopes) >= depth else ""
        base = f"{module}/{node.op_type}" if module else node.name
        if module:  # kept for the per-op tables (backends/op_names.py), whatever renames nodes
            entry = node.metadata_props.add()
            entry.key, entry.value = _MODULE_KEY, module
        used[base] = used.get(base, 0) + 1
        node.name = base if used[base] == 1 else f"{base}_{used[base] - 1}"


_MODULE_KEY = "deploykit.module"  # read by backends/op_names.py


def _node_modules(proto) -> dict[str, str]:
    return {n.name: p.value for n in proto.graph.node for p in n.metadata_props
            if p.key == _MODULE_KEY}


def _set_node_modules(proto, modules: dict[str, str]) -> None:
    for n in proto.graph.node:
        if n.name in modules and not any(p.key == _MODULE_KEY for p in n.metadata_props):
            entry = n.metadata_props.add()
            entry.key, entry.value = _MODULE_KEY, modules[n.name]


def _opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _export_torchscript(model, args, names, dynamic_axes, opset, n_outputs):
    import torch

    out_names = _output_names(n_outputs)
    axes = dict(dynamic_axes or {})
    batch_dims = {dim for spec in axes.values() for ax, dim in spec.items() if ax == 0}
    if batch_dims:  # outputs carry the batch dim of the inputs
        axes.update({o: {0: sorted(batch_dims)[0]} for o in out_names})
    buf = io.BytesIO()
    torch.onnx.export(model, args, buf, dynamo=False, input_names=names, output_names=out_names,
                      opset_version=opset, dynamic_axes=axes or None)
    import onnx

    return onnx.load_from_string(buf.getvalue())


def _run_exporter(exporter: str, model, args, names, dynamic_axes, opset, n_outputs):
    """(checked ModelProto with inferred shapes, warnings worth showing) from one exporter."""
    import torch

    fn = _export_dynamo if exporter == "dynamo" else _export_torchscript
    with quiet() as cap:
        proto = fn(model, args, names, dynamic_axes, opset, n_outputs)
    tracer = [str(w.message).split(". ")[0] for w in cap
              if issubclass(w.category, torch.jit.TracerWarning)]
    return _check(proto, "torch"), list(dict.fromkeys(f"tracer: {t}" for t in tracer))


def _root_cause(e: BaseException) -> str:
    """The root cause, not torch.onnx's 'step 1/3' banner."""
    while e.__cause__ is not None:
        e = e.__cause__
    return _one_line(e)[:240]


# ---------------------------------------------------------------------------------------------
# Post-processing and verification


def _check(model, source_kind: str):
    import onnx

    err = ExportError if source_kind == "torch" else InputError
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - ValidationError / InferenceError
        raise err(f"model fails onnx.checker: {_one_line(e)}") from None
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, data_prop=True)
    except Exception as e:  # noqa: BLE001
        raise err(f"ONNX shape inference failed: {_one_line(e)}") from None


def _maybe_simplify(model, simplify: bool, warns: list[str]) -> tuple[Any, bool]:
    """(onnxsim's result, True), or (the input, False) with the reason appended to `warns` when
    onnxsim fails: a failed simplification is a warning, not an error."""
    import onnx
    import onnxsim

    if not simplify:
        return model, False
    try:
        with quiet():
            simple, _ = onnxsim.simplify(model, check_n=0)
        onnx.checker.check_model(simple)
        return simple, True
    except Exception as e:  # noqa: BLE001 - onnxsim raises many types
        warns.append(f"onnxsim failed, kept the unsimplified model: {_one_line(e)[:200]}")
        return model, False




def compare_outputs(names: Sequence[str], ref: Sequence[np.ndarray], got: Sequence[np.ndarray],
                    where: str) -> list[OutputCheck]:
    """Per-output comparison judged by dtype tolerance (deploykit.verify); integer outputs must
    match exactly."""
    from ..fidelity import DTYPE_KIND, compare, judge

    if len(ref) != len(got):
        raise VerificationError(f"ONNX model has {len(got)} outputs, the reference {len(ref)}")
    checks = []
    for name, r, g in zip(names, ref, got):
        fid = compare([r], [g])
        if not np.issubdtype(r.dtype, np.floating):
            failure = None if fid.shapes_match and np.array_equal(r, g) else \
                "integer outputs differ"
        else:
            failure = judge(fid, DTYPE_KIND.get(str(r.dtype), "fp32"))
        checks.append(OutputCheck(name, tuple(np.shape(g)), fid.max_abs, fid.max_rel,
                                  fid.cosine, None if failure is None else f"{failure} {where}"))
    return checks


def _second_shapes(args, names, dynamic_axes) -> dict[str, tuple[int, ...]]:
    """Input shapes with every dynamic axis grown by 2 (a size the tracer never saw)."""
    shapes = {}
    for a, n in zip(args, names):
        s = list(a.shape)
        for ax in dynamic_axes.get(n, {}):
            s[ax] += 2
        shapes[n] = tuple(s)
    return shapes


def _verify_torch(model, proto_bytes: bytes, args, names, out_names, dynamic_axes,
                  seed: int) -> list[OutputCheck]:
    import torch

    from ..fidelity import run_ort

    shape_sets = [{n: tuple(a.shape) for a, n in zip(args, names)}]
    if dynamic_axes:
        shape_sets.append(_second_shapes(args, names, dynamic_axes))
    checks = []
    for k, shapes in enumerate(shape_sets):
        gen = torch.Generator().manual_seed(seed + 1 + k)
        inputs = tuple(_random_like(a, shapes[n], gen) for a, n in zip(args, names))
        try:
            ref = _run_torch(model, inputs)
        except Exception as e:  # noqa: BLE001 - e.g. a batch size baked into the model
            why = " (needed to verify the dynamic axes)" if k else ""
            raise InputError(f"the torch model itself fails on seeded inputs of shapes "
                             f"{_fmt_shapes(shapes)}{why}: {_one_line(e)[:300]}") from None
        try:
            with quiet():
                got = run_ort(proto_bytes, {n: t.numpy() for n, t in zip(names, inputs)})
        except Exception as e:  # noqa: BLE001
            raise VerificationError(f"ONNX Runtime cannot run the exported model at input shapes "
                                    f"{_fmt_shapes(shapes)}: {_one_line(e)[:300]}") from None
        checks += compare_outputs(out_names, ref, got, f"at input shapes {_fmt_shapes(shapes)}")
    return checks


def _fmt_shapes(shapes: Mapping[str, Sequence[int]]) -> str:
    return ", ".join(f"{n}={'x'.join(map(str, s))}" for n, s in shapes.items())


def _raise_if_failed(checks: Sequence[OutputCheck], reference: str,
                     hints: Sequence[str] = ()) -> None:
    bad = [c for c in checks if not c.ok]
    if bad:
        hint = f" (exporter said: {hints[0]})" if hints else ""
        raise VerificationError(f"output '{bad[0].output}' disagrees with {reference}: "
                                f"{bad[0].failure}{hint}")


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
    factory, example, path = _load_factory(source)
    import torch

    try:
        with torch.random.fork_rng(devices=[]):  # seeded init, caller's RNG state untouched
            torch.manual_seed(seed)
            model = factory()
    except Exception as e:  # noqa: BLE001
        raise InputError(f"factory {source} raised {_one_line(e)}") from None
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"factory {source} returned {type(model).__name__}, "
                         "not a torch.nn.Module")
    if weights is not None:
        _load_weights(model, weights, trust_pickle)
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
    digest = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes() if t.numel() else b"")
    origin = {"source": f"<module {type(module).__module__}.{type(module).__qualname__}>",
              "source_sha256": digest.hexdigest(), "weights_sha256": None}
    return _export_module(module, lambda: args, origin, Path(output), {}, dynamic_batch,
                          dynamic_axes, opset, simplify, seed)


def _export_module(model, example, origin, output, shapes, dynamic_batch, dynamic_axes, opset,
                   simplify, seed) -> ExportResult:
    source = origin["source"]
    model.eval()
    args, names = _example_inputs(model, example, shapes, seed)
    try:
        ref = _run_torch(model, args)
    except Exception as e:  # noqa: BLE001 - the model rejects these inputs
        given = _fmt_shapes({n: a.shape for n, a in zip(names, args)})
        raise InputError(f"model rejects inputs {given}: {_one_line(e)[:300]}") from None
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
    verification_error = None
    for exporter in ("dynamo", "torchscript"):
        try:
            proto, warns = _run_exporter(exporter, model, args, names, axes, opset, len(ref))
        except Exception as e:  # noqa: BLE001 - any exporter failure means: try the next one
            failures.append(f"{exporter} exporter failed ({_root_cause(e)})")
            continue
        modules = _node_modules(proto)
        proto, simplified = _maybe_simplify(proto, simplify, warns)
        _set_node_modules(proto, modules)  # onnxsim keeps node names but not their metadata
        data = _serialize(proto)
        try:
            checks = _verify_torch(model, data, args, names,
                                   [o.name for o in proto.graph.output], axes, seed)
            _raise_if_failed(checks, "torch", [w for w in warns if w.startswith("tracer:")])
            break
        except VerificationError as e:
            verification_error = e
            failures.append(f"{exporter} exporter's model failed verification")
    else:
        if verification_error is not None:
            others = [f for f in failures if "failed verification" not in f]
            raise VerificationError(str(verification_error) + "".join(
                f"; {f}" for f in others)) from None
        raise ExportError("; ".join(failures))
    note = f"{'; '.join(failures)}; used the {exporter} exporter" if failures else None
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
    model = _check(original, "onnx")
    if opset is not None:
        model = _convert_opset(model, opset)
    warns: list[str] = []
    model, simplified = _maybe_simplify(model, simplify, warns)
    data = _serialize(model)
    checks: list[OutputCheck] = []
    if data != original.SerializeToString():
        feeds = make_feeds(ins, seed, shapes)
        try:
            with quiet():
                ref = run_ort(original, feeds)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"ONNX Runtime cannot run {path} at input shapes "
                             f"{_fmt_shapes({k: v.shape for k, v in feeds.items()})}: "
                             f"{_one_line(e)[:300]}") from None
        try:
            with quiet():
                got = run_ort(data, feeds)
        except Exception as e:  # noqa: BLE001
            raise VerificationError(f"ONNX Runtime cannot run the processed model: "
                                    f"{_one_line(e)[:300]}") from None
        where = f"at input shapes {_fmt_shapes({k: v.shape for k, v in feeds.items()})}"
        checks = compare_outputs([o.name for o in model.graph.output], ref, got, where)
        _raise_if_failed(checks, "the original ONNX model")
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
        raise InputError(f"cannot convert the model to opset {opset}: {_one_line(e)}") from None


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
