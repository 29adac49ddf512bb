"""When an ONNX `Dropout` is the identity, so the pruning walks may pass through it.

Old exporters (caffe2 zoo files such as AlexNet, torch at opset <= 11) leave inference Dropouts
in the graph. At inference Dropout copies its input element by element, so it couples channels
and neurons exactly as an Identity does. It is not the identity when it may run in training
mode: opset 12+ with a `training_mode` input that is not the constant false (and a ratio that is
not the constant 0), or opset < 7 with `is_test=0`. Its optional mask output says which elements
were kept: a graph that reads it depends on the full width, so a read mask pins the tensor.
"""

from __future__ import annotations


def _const(v):
    from onnx_ir import convenience

    if v is None or v.is_graph_input():
        return None
    t = convenience.get_const_tensor(v)
    return None if t is None or t.numpy().size != 1 else t.numpy().reshape(()).item()


def identity_reason(node) -> str | None:
    """None if `node` (an onnx_ir Dropout) is an element-wise identity whose mask nobody reads;
    otherwise why not, in a few words."""
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return f"Dropout '{node.name}' has its mask output read"
    ins = list(node.inputs)
    if "is_test" in node.attributes and not node.attributes.get_int("is_test", 0):
        if node.attributes.get_float("ratio", 0.5) != 0.0:
            return f"Dropout '{node.name}' runs in training mode (is_test=0)"
    if len(ins) > 2 and ins[2] is not None and _const(ins[2]) is not False:
        ratio = _const(ins[1]) if len(ins) > 1 and ins[1] is not None else 0.5
        if ratio != 0.0:
            return f"Dropout '{node.name}' may run in training mode (training_mode input)"
    return None


def is_identity(node) -> bool:
    return node.op_type == "Dropout" and identity_reason(node) is None
