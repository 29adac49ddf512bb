"""The graphs `deploykit debug` runs: a model with the tensors asked for exposed as outputs, the
reference with a tensor cut into an input (to inject a candidate layer's output), and a chunk's
candidate layers side by side in one graph, each fed the reference's values of its inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .match import Layer

_NP = {1: np.float32, 10: np.float16, 11: np.float64}


def _value_info(name: str, infos: Mapping[str, Any], rename: str | None = None):
    """The inferred ValueInfo of `name` (as `rename`), else its element type with an empty shape
    (runtimes merge the real shape leniently; onnx.checker wants a type)."""
    import onnx

    vi = onnx.ValueInfoProto()
    if name in infos:
        vi.CopyFrom(infos[name])
    else:
        vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        vi.type.tensor_type.shape.SetInParent()
    vi.name = rename or name
    return vi


class Exposed:
    """One model file whose outputs are replaced by the tensors asked for, compiled on a target."""

    def __init__(self, model, types, names: Sequence[str], target, path: Path):
        import onnx

        from ..core import ModelRef

        saved = list(model.graph.output)
        del model.graph.output[:]
        model.graph.output.extend(_value_info(n, types) for n in names)
        try:
            onnx.save(model, str(path))
        finally:
            del model.graph.output[:]
            model.graph.output.extend(saved)
        self.art = target.compile(ModelRef.from_path(path))
        self.names = [s.name for s in self.art.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        wanted = {s.name for s in self.art.inputs}
        return dict(zip(self.names, self.art.run({k: v for k, v in feeds.items() if k in wanted})))

    def close(self) -> None:
        self.art.close()


class Injected(Exposed):
    """The reference with some tensors cut into graph inputs (their producers write to a dead
    name): fed the reference's own values for all but one, and the candidate layer's output for
    that one, its outputs show what that layer's error alone does to the model."""

    def __init__(self, model, tensors: Sequence[str], infos, target, path: Path):
        import onnx

        from ..core import ModelRef

        cut = set(tensors)
        touched = [(n, list(n.output)) for n in model.graph.node if cut & set(n.output)]
        for n, outs in touched:
            n.output[:] = [o + "__dk_cut" if o in cut else o for o in outs]
        n_in = len(model.graph.input)
        model.graph.input.extend(_value_info(t, infos) for t in tensors)
        try:
            onnx.save(model, str(path))
        finally:
            for n, outs in touched:
                n.output[:] = outs
            del model.graph.input[n_in:]
        self.art = target.compile(ModelRef.from_path(path))
        self.names = [s.name for s in self.art.outputs]


def probe_model(cand, layers: Sequence[Layer], ref_vals: Mapping[str, np.ndarray],
                 cand2ref: Mapping[str, str], feeds: Mapping[str, np.ndarray],
                 infos: Mapping[str, Any]):
    """One graph holding every layer of a chunk side by side (tensors prefixed L<i>/), each
    with its own inputs: one compile per chunk instead of one per layer."""
    import onnx
    from onnx import helper

    inits = {i.name: i for i in cand.graph.initializer}
    nodes, inputs, outputs, used_inits = [], [], [], set()
    for i, layer in enumerate(layers):
        pre = f"L{i}/"
        def ren(t: str, pre: str = pre) -> str:
            return t if (not t or t in inits) else pre + t
        for t in layer.inputs:
            v = boundary_value(t, ref_vals, cand2ref, feeds, infos)
            inputs.append(helper.make_tensor_value_info(
                pre + t, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)))
        for n in layer.nodes:
            m = onnx.NodeProto()
            m.CopyFrom(n)
            m.name = pre + (n.name or n.op_type)
            m.input[:] = [ren(t) for t in n.input]
            m.output[:] = [ren(t) for t in n.output]
            used_inits.update(t for t in n.input if t in inits)
            nodes.append(m)
        outputs.append(_value_info(layer.pair.cand, infos, pre + layer.pair.cand))
    graph = helper.make_graph(nodes, "deploykit-debug-layers", inputs, outputs,
                              [inits[n] for n in sorted(used_inits)])
    model = helper.make_model(graph, opset_imports=list(cand.opset_import))
    model.ir_version = cand.ir_version
    model.functions.extend(cand.functions)
    return model


def boundary_value(t: str, ref_vals, cand2ref, feeds, infos) -> np.ndarray:
    """The reference's value for candidate tensor `t`, in the candidate's float type."""
    v = ref_vals[cand2ref[t]] if t in cand2ref else feeds[t]
    want = _NP.get(infos[t].type.tensor_type.elem_type) if t in infos else None
    return v.astype(want) if want is not None and v.dtype != want else v


class Probe(Exposed):
    """A chunk's probe model (probe_model), already written to `path`, compiled on a target."""

    def __init__(self, path: Path, target):  # the model file is already written
        from ..core import ModelRef

        self.art = target.compile(ModelRef.from_path(path))
        self.names = [s.name for s in self.art.outputs]
