"""The two torch -> ONNX exporters (dynamo first, TorchScript as the fallback), each returning an
ONNX ModelProto whose nodes are named by the torch module that made them."""

from __future__ import annotations

import io
from typing import Any

from ..onnxio import MODULE_KEY, quiet
from .checks import check_model
from .torch_source import one_line


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
            entry.key, entry.value = MODULE_KEY, module
        used[base] = used.get(base, 0) + 1
        node.name = base if used[base] == 1 else f"{base}_{used[base] - 1}"


def node_modules(proto) -> dict[str, str]:
    """{node name: torch module path} from the nodes' metadata."""
    return {n.name: p.value for n in proto.graph.node for p in n.metadata_props
            if p.key == MODULE_KEY}


def set_node_modules(proto, modules: dict[str, str]) -> None:
    """Put the torch module paths back on the nodes (by name) where they were lost."""
    for n in proto.graph.node:
        if n.name in modules and not any(p.key == MODULE_KEY for p in n.metadata_props):
            entry = n.metadata_props.add()
            entry.key, entry.value = MODULE_KEY, modules[n.name]


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


def run_exporter(exporter: str, model, args, names, dynamic_axes, opset, n_outputs):
    """(checked ModelProto with inferred shapes, warnings worth showing) from one exporter."""
    import torch

    fn = _export_dynamo if exporter == "dynamo" else _export_torchscript
    with quiet() as cap:
        proto = fn(model, args, names, dynamic_axes, opset, n_outputs)
    tracer = [str(w.message).split(". ")[0] for w in cap
              if issubclass(w.category, torch.jit.TracerWarning)]
    return check_model(proto, "torch"), list(dict.fromkeys(f"tracer: {t}" for t in tracer))


def root_cause(e: BaseException) -> str:
    """The root cause, not torch.onnx's 'step 1/3' banner."""
    while e.__cause__ is not None:
        e = e.__cause__
    return one_line(e)[:240]


