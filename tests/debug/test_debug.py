"""`deploykit debug`: planted broken layers and runtime divergences must be found, QDQ tensors
matched, --fix must reach its goal, bad input must exit 2 with one line."""

import json
import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from _debug_models import cancelling_chain, conv_chain, data
from deploykit.cli import main
from deploykit.core import ModelRef
from deploykit.debug.fix import quantized_nodes
from deploykit.debug.run import analyze
from deploykit.rewrite.recipe import parse_recipe, run_recipe
from deploykit.rewrite import StepContext
from deploykit.fidelity import compare, run_ort

FAST = ["--max-time", "1", "--warmup-max", "0.2", "--min-samples", "5"]


def _batches(n=4, shape=(1, 3, 12, 12), seed=1):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Float reference, its quantize-static candidate, and that candidate with conv2 broken."""
    d = tmp_path_factory.mktemp("debug")
    ref = conv_chain(d / "ref.onnx")
    calib = _batches(6, seed=7)
    np.savez(d / "calib.npz", x=np.stack([b["x"] for b in calib]))
    ctx = StepContext(feeds=_batches(1)[0], calibration=tuple(calib),
                      calibration_is_synthetic=False, workdir=d / "steps")
    q = run_recipe(ModelRef.from_path(ref), parse_recipe("quantize-static"), ctx).final.path
    broken = onnx.load(str(q))
    for t in broken.graph.initializer:
        if t.name == "w2_quantized":
            w = numpy_helper.to_array(t).astype(np.int16)
            noise = np.random.default_rng(5).integers(-60, 61, w.shape)
            t.CopyFrom(numpy_helper.from_array(np.clip(w + noise, -127, 127).astype(np.int8),
                                               t.name))
    onnx.save(broken, str(d / "q_broken.onnx"))
    return {"dir": d, "ref": ref, "q": q, "q_broken": d / "q_broken.onnx",
            "data": data(d / "data.npz"), "calib": d / "calib.npz"}


def test_planted_broken_layer_float_ranked_first_both_ways(tmp_path):
    ref, cand = conv_chain(tmp_path / "ref.onnx"), conv_chain(tmp_path / "c.onnx", broken=2)
    res = analyze(ref, cand, _batches())
    assert res.ranked("introduced")[0].pair.ref == "c2"
    assert res.ranked("accumulated")[0].pair.ref == "c2"
    assert res.ranked("output")[0].pair.ref == "c2"
    rows = {r.pair.ref: r for r in res.rows}
    assert rows["c2"].impact.sqnr_db < 20  # injected alone into the reference, it reaches y
    assert all(r.impact.sqnr_db == math.inf for r in res.rows if r.pair.ref != "c2")
    assert all(r.pair.how == "name" for r in res.rows) and len(rows) == 13
    assert rows["c2"].own.sqnr_db < 10 and rows["c2"].acc.cosine < 0.99
    for name in ("c0", "r0", "c1", "r1"):  # upstream of the break: untouched
        assert rows[name].acc.sqnr_db == math.inf
    for name in ("c3", "c4", "y"):  # downstream: inherit the damage, add none of their own
        assert rows[name].own.sqnr_db == math.inf and rows[name].acc.sqnr_db < 20


def test_qdq_tensors_matched_and_planted_int8_layer_found(models):
    res = analyze(models["ref"], models["q_broken"], _batches())
    rows = {r.pair.ref: r for r in res.rows}
    for i in range(5):  # ORT folds Relu into the quantized conv: r<i> is compared with its DQ
        r = rows[f"r{i}"]
        assert r.pair.how == "qdq" and r.pair.cand == f"r{i}_DequantizeLinear_Output"
        assert r.pair.cand_node == f"conv{i}"
    assert res.ranked("introduced")[0].pair.ref == "r2"
    assert res.ranked("accumulated")[0].pair.ref == "r2"
    clean = analyze(models["ref"], models["q"], _batches())
    crow = {r.pair.ref: r for r in clean.rows}
    assert all(20 < crow[f"r{i}"].own.sqnr_db < 80 for i in range(5))  # really int8, still close
    assert crow["r2"].own.sqnr_db - rows["r2"].own.sqnr_db > 15


def test_chunks_give_the_same_figures(models):
    one = analyze(models["ref"], models["q"], _batches(2), chunk_layers=64)
    many = analyze(models["ref"], models["q"], _batches(2), chunk_layers=2)
    assert one.chunks == 1 and many.chunks > 3
    for a, b in zip(one.rows, many.rows):
        assert a.pair == b.pair
        assert a.acc.sqnr_db == pytest.approx(b.acc.sqnr_db, rel=1e-6)
        assert a.own.sqnr_db == pytest.approx(b.own.sqnr_db, rel=1e-6)


def test_runtime_divergence_found_bf16_vs_ort(tmp_path):
    pytest.importorskip("openvino")
    model = cancelling_chain(tmp_path / "rt.onnx")
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(2)]
    res = analyze(model, model, batches, target="ov-cpu-bf16", reference_target="ort-cpu")
    assert res.target == "ov-cpu-bf16"
    assert res.ranked("introduced")[0].pair.ref == "m2"
    assert res.ranked("accumulated")[0].pair.ref == "m2"
    rows = {r.pair.ref: r for r in res.rows}
    assert rows["m2"].own.sqnr_db < 10 < 40 < rows["m0"].own.sqnr_db  # bf16 elsewhere: fine
    same = analyze(model, model, batches)  # ORT against itself: exact everywhere
    assert all(r.acc.sqnr_db == math.inf for r in same.rows)


def test_cli_table_json_html(models, tmp_path, capsys):
    js, page = tmp_path / "d.json", tmp_path / "d.html"
    assert main(["debug", str(models["ref"]), str(models["q_broken"]), "--inputs",
                 str(models["data"]), "--top", "3", "--json", str(js), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    table = out.split("worst first")[1].splitlines()
    assert table[3].split()[:3] == ["1", "r2", "Relu"]  # header, rule, then the worst
    d = json.loads(js.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert d["ranked_introduced"][0] == "r2" and d["batches"] == 6 and d["fix"] is None
    assert {"cosine", "sqnr_db", "max_abs", "max_rel"} <= set(d["layers"][0]["accumulated"])
    html = page.read_text()
    assert 'id="depth"' in html and "data:image/png;base64," in html and "r2" in html


def test_fix_reaches_its_goal_and_is_timed(models, tmp_path, capsys):
    samples = [{"x": x} for x in np.load(models["data"])["x"]]
    q_cos = min(compare(run_ort(models["ref"], b), run_ort(models["q"], b)).cosine
                for b in samples)
    goal = round(1 - (1 - q_cos) / 3, 7)  # between full int8 and float: some layers must go
    js, fixed = tmp_path / "fix.json", tmp_path / "fixed.onnx"
    assert main(["debug", str(models["ref"]), str(models["q"]), "--inputs", str(models["data"]),
                 "--calib", str(models["calib"]), "--fix", f"cosine={goal}", "-o", str(fixed), "--json", str(js), *FAST]) == 0
    fx = json.loads(js.read_text())["fix"]
    assert fx["met"] and fx["score"] >= goal > fx["score_full_int8"]
    assert 1 <= len(fx["kept_in_float"]) < fx["quantized_layers"]
    model = onnx.load(str(fixed))
    assert set(fx["kept_in_float"]).isdisjoint(quantized_nodes(model))
    assert set(fx["kept_in_float"]) <= {n.name for n in model.graph.node}
    got = min(compare(run_ort(models["ref"], b), run_ort(fixed, b)).cosine for b in samples)
    assert got >= goal  # verified independently of the debugger
    t = fx["timing"]
    assert all(math.isfinite(t[k]) and t[k] > 0 for k in
               ("speedup_full_int8", "speedup_fixed", "fixed_vs_full_int8"))
    assert "kept in float:" in capsys.readouterr().out


def test_compress_debug_names_the_worst_layers(tmp_path, capsys):
    ref = conv_chain(tmp_path / "ref.onnx")
    m = onnx.load(str(ref))  # conv3's channel 0 has one huge weight that conv4 ignores:
    for t in m.graph.initializer:  # per-tensor int8 wipes out conv3's other channels
        w = numpy_helper.to_array(t).copy()
        if t.name == "w3":
            w.flat[0] = 400.0
        elif t.name == "w4":
            w[:, 0] = 0.0
        t.CopyFrom(numpy_helper.from_array(w, t.name))
    onnx.save(m, str(ref))
    out = tmp_path / "q.onnx"
    args = ["compress", str(ref), "-r", "quantize-static:per_channel=false", "-o", str(out),
            "--no-measure", "--no-store"]
    assert main(args) == 2
    plain = capsys.readouterr().err
    assert "fails verification" in plain and "worst layers" not in plain
    assert main([*args, "--debug"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("deploykit: error:")
    assert "worst layers" in err and err.split("worst layers")[1].split(",")[0].count("conv3")
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--fix", "cosine=1.5"], "bad --fix"),
    (["--fix", "speed=2"], "bad --fix"),
    (["--output", "x.onnx"], "give --fix too"),
    (["--top", "0"], "--top must be >= 1"),
    (["--fix", "cosine=0.9", "--recipe", "fold-bn"], "exclude"),
    (["--target", "no-such-target"], "unknown target"),
    (["--inputs", "missing.npz"], "not found"),
])
def test_bad_input_one_line_exit_2(models, tmp_path, capsys, extra, message):
    js = tmp_path / "out.json"
    rc = main(["debug", str(models["ref"]), str(models["q"]), "--json", str(js), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and err.startswith("deploykit: error:")
    assert message in err and not js.exists()


def test_models_that_do_not_belong_together(models, tmp_path, capsys):
    other = tmp_path / "other.onnx"
    m = onnx.load(str(models["ref"]))
    m.graph.input[0].name = "image"
    for n in m.graph.node:
        n.input[:] = ["image" if i == "x" else i for i in n.input]
    onnx.save(m, str(other))
    assert main(["debug", str(models["ref"]), str(other)]) == 2
    assert "different inputs" in capsys.readouterr().err
    assert main(["debug", str(models["ref"]), str(tmp_path / "nope.onnx")]) == 2
    assert "not found" in capsys.readouterr().err


def test_quantized_nodes_count_a_layer_with_a_float_bias():
    """NNCF leaves a Gemm/Conv bias float beside int8 weights: the layer is still quantized (so
    --fix can keep it in float); a layer reading float weights is not."""
    from onnx import TensorProto, helper

    f32 = lambda *s: np.ones(s, np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(np.ones((4, 4), np.int8), "w_q"),
             numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array(128, np.uint8), "za"),
             numpy_helper.from_array(f32(4), "bias"), numpy_helper.from_array(f32(4, 4), "w_f")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "za"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "za"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w_q", "s", "z"], ["wd"], name="dqw"),
             helper.make_node("Gemm", ["xd", "wd", "bias"], ["h"], name="int8_gemm"),
             helper.make_node("Gemm", ["xd", "w_f", "bias"], ["y"], name="float_gemm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
                           helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 4])], inits)
    assert quantized_nodes(helper.make_model(g)) == {"int8_gemm"}
