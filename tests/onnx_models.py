"""Tiny ONNX models built in code, for tests that need a real graph but no exporter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv_relu_gemm(path, seed: int = 0, hw: int = 16) -> str:
    """x[1,3,hw,hw] -> Conv(8,3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(10) -> y."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "conv_relu_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return str(path)


def make_mlp(path, seed: int = 0, sizes=(16, 32, 4)) -> Path:
    """x[batch,16] -> MatMul+Add -> Relu -> MatMul+Add -> y[batch,4], seeded weights."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [numpy_helper.from_array(rng.standard_normal((a, b)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(b).astype(np.float32), f"b{i}")]
        last = i == len(sizes) - 2
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"matmul{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"],
                                   name=f"add{i}")]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


def tiny_encoder(path, seed: int = 0, vocab: int = 50, hidden: int = 16, ffn: int = 64,
                 layers: int = 2, act: str = "Gelu", gemm: bool = False) -> Path:
    """A BERT-shaped encoder without attention mixing: input_ids/attention_mask/token_type_ids
    (int64, [batch, sequence]) -> word + type embeddings (Gather) -> `layers` x [LayerNorm(x +
    FFN(x))], FFN = MatMul+Add -> act -> MatMul+Add (act: Gelu, Relu, or "erf" for the
    x*0.5*(1+erf(x/sqrt2)) subgraph exporters write; gemm=True flattens to 2-D Gemm
    with Reshapes around the activation sharing their shape constants across layers) -> output
    masked by attention_mask. Opset 20 (Gelu)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, hidden)).astype(np.float32),
                                     "word_emb"),
             numpy_helper.from_array(rng.standard_normal((2, hidden)).astype(np.float32),
                                     "type_emb")]
    nodes = [helper.make_node("Gather", ["word_emb", "input_ids"], ["we"]),
             helper.make_node("Gather", ["type_emb", "token_type_ids"], ["te"]),
             helper.make_node("Add", ["we", "te"], ["h0"])]
    x = "h0"
    if gemm:
        inits.append(numpy_helper.from_array(np.array([-1, hidden], np.int64), "flat_shape"))
        nodes.append(helper.make_node("Reshape", [x, "flat_shape"], ["h0_flat"]))
        x = "h0_flat"
        inits += [numpy_helper.from_array(np.array([1, -1, ffn], np.int64), "ffn_3d"),
                  numpy_helper.from_array(np.array([-1, ffn], np.int64), "ffn_2d")]
    for i in range(layers):
        p = f"l{i}"
        w1 = (rng.standard_normal((hidden, ffn)) / np.sqrt(hidden)).astype(np.float32)
        w2 = (rng.standard_normal((ffn, hidden)) / np.sqrt(ffn)).astype(np.float32)
        inits += [numpy_helper.from_array(w1.T.copy() if gemm else w1, f"{p}.fc1.w"),
                  numpy_helper.from_array(rng.standard_normal(ffn).astype(np.float32) * 0.1,
                                          f"{p}.fc1.b"),
                  numpy_helper.from_array(w2.T.copy() if gemm else w2, f"{p}.fc2.w"),
                  numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32) * 0.1,
                                          f"{p}.fc2.b"),
                  numpy_helper.from_array(np.ones(hidden, np.float32), f"{p}.ln.g"),
                  numpy_helper.from_array(np.zeros(hidden, np.float32), f"{p}.ln.b")]
        if gemm:  # as torch's exporter writes it: Gemm -> Reshape 3-D -> act -> Reshape 2-D
            nodes += [helper.make_node("Gemm", [x, f"{p}.fc1.w", f"{p}.fc1.b"], [f"{p}.a2"],
                                       transB=1, name=f"{p}.fc1"),
                      helper.make_node("Reshape", [f"{p}.a2", "ffn_3d"], [f"{p}.a"])]
        else:
            nodes += [helper.make_node("MatMul", [x, f"{p}.fc1.w"], [f"{p}.m"], name=f"{p}.fc1"),
                      helper.make_node("Add", [f"{p}.m", f"{p}.fc1.b"], [f"{p}.a"])]
        if act == "erf":
            inits += [numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), f"{p}.sqrt2"),
                      numpy_helper.from_array(np.array(1.0, np.float32), f"{p}.one"),
                      numpy_helper.from_array(np.array(0.5, np.float32), f"{p}.half")]
            nodes += [helper.make_node("Div", [f"{p}.a", f"{p}.sqrt2"], [f"{p}.d"]),
                      helper.make_node("Erf", [f"{p}.d"], [f"{p}.e"]),
                      helper.make_node("Add", [f"{p}.e", f"{p}.one"], [f"{p}.e1"]),
                      helper.make_node("Mul", [f"{p}.a", f"{p}.e1"], [f"{p}.g0"]),
                      helper.make_node("Mul", [f"{p}.g0", f"{p}.half"], [f"{p}.g"])]
        else:
            nodes.append(helper.make_node(act, [f"{p}.a"], [f"{p}.g"]))
        if gemm:
            nodes += [helper.make_node("Reshape", [f"{p}.g", "ffn_2d"], [f"{p}.g2"]),
                      helper.make_node("Gemm", [f"{p}.g2", f"{p}.fc2.w", f"{p}.fc2.b"],
                                       [f"{p}.o"], transB=1, name=f"{p}.fc2")]
        else:
            nodes += [helper.make_node("MatMul", [f"{p}.g", f"{p}.fc2.w"], [f"{p}.o0"],
                                       name=f"{p}.fc2"),
                      helper.make_node("Add", [f"{p}.o0", f"{p}.fc2.b"], [f"{p}.o"])]
        nodes += [helper.make_node("Add", [x, f"{p}.o"], [f"{p}.r"]),
                  helper.make_node("LayerNormalization", [f"{p}.r", f"{p}.ln.g", f"{p}.ln.b"],
                                   [f"{p}.h"], axis=-1)]
        x = f"{p}.h"
    if gemm:  # [batch*sequence, hidden] back to the embeddings' [batch, sequence, hidden]
        nodes += [helper.make_node("Shape", ["h0"], ["h0_shape"]),
                  helper.make_node("Reshape", [x, "h0_shape"], ["h_seq"])]
        x = "h_seq"
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "last_axis"))
    nodes += [helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
              helper.make_node("Unsqueeze", ["mf", "last_axis"], ["m3"]),
              helper.make_node("Mul", [x, "m3"], ["y"])]
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(
        nodes, "tiny_encoder", ids,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


def tiny_attention(path, seed: int = 0, vocab: int = 40, heads: int = 4, head_dim: int = 4,
                   layers: int = 2) -> Path:
    """Multi-head self-attention as torch's exporters write it: input_ids/attention_mask (int64,
    [1, sequence]) -> embedding -> `layers` x [x + W_out(merge(softmax(q k^T * s + mask) v))] with
    q/k/v = MatMul+Add -> Reshape [1,-1,H,d] (one shared shape constant) -> Transpose; the mask
    is (1 - mask) * -1e4 broadcast over heads as [1, 1, 1, sequence]. Opset 17."""
    rng = np.random.default_rng(seed)
    hidden = heads * head_dim
    f32 = np.float32
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, hidden)).astype(f32), "emb"),
             numpy_helper.from_array(np.array([1, -1, heads, head_dim], np.int64), "split"),
             numpy_helper.from_array(np.array([1, -1, hidden], np.int64), "merge"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "mask_axes"),
             numpy_helper.from_array(np.array(1.0, f32), "one"),
             numpy_helper.from_array(np.array(-1e4, f32), "neg"),
             numpy_helper.from_array(np.array(1 / np.sqrt(head_dim), f32), "scale")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["h0"]),
             helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["one", "mf"], ["inv"]),
             helper.make_node("Mul", ["inv", "neg"], ["mb"]),
             helper.make_node("Unsqueeze", ["mb", "mask_axes"], ["mask4"])]
    x = "h0"
    for i in range(layers):
        p = f"l{i}"
        for n in ("q", "k", "v", "o"):
            w = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(f32)
            inits += [numpy_helper.from_array(w, f"{p}.{n}.w"),
                      numpy_helper.from_array((rng.standard_normal(hidden) * 0.1).astype(f32),
                                              f"{p}.{n}.b")]
        for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
            nodes += [helper.make_node("MatMul", [x, f"{p}.{n}.w"], [f"{p}.{n}.m"],
                                       name=f"{p}.{n}"),
                      helper.make_node("Add", [f"{p}.{n}.m", f"{p}.{n}.b"], [f"{p}.{n}.a"]),
                      helper.make_node("Reshape", [f"{p}.{n}.a", "split"], [f"{p}.{n}.r"]),
                      helper.make_node("Transpose", [f"{p}.{n}.r"], [f"{p}.{n}.t"], perm=perm)]
        nodes += [helper.make_node("MatMul", [f"{p}.q.t", f"{p}.k.t"], [f"{p}.s0"]),
                  helper.make_node("Mul", [f"{p}.s0", "scale"], [f"{p}.s1"]),
                  helper.make_node("Add", [f"{p}.s1", "mask4"], [f"{p}.s2"]),
                  helper.make_node("Softmax", [f"{p}.s2"], [f"{p}.p"], axis=-1),
                  helper.make_node("MatMul", [f"{p}.p", f"{p}.v.t"], [f"{p}.c"]),
                  helper.make_node("Transpose", [f"{p}.c"], [f"{p}.ct"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", [f"{p}.ct", "merge"], [f"{p}.cm"]),
                  helper.make_node("MatMul", [f"{p}.cm", f"{p}.o.w"], [f"{p}.om"],
                                   name=f"{p}.o"),
                  helper.make_node("Add", [f"{p}.om", f"{p}.o.b"], [f"{p}.oa"]),
                  helper.make_node("Add", [x, f"{p}.oa"], [f"{p}.h"])]
        x = f"{p}.h"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, [1, "sequence"])
           for n in ("input_ids", "attention_mask")]
    graph = helper.make_graph(
        nodes, "tiny_attention", ids,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "sequence", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)
