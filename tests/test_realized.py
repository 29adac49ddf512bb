import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).parent / "rewrite"))
sys.path.insert(0, str(Path(__file__).parent))
from _quant_models import conv_bn_net, mlp  # noqa: E402

from deploykit.report import realized
from deploykit.rewrite import recipe
from deploykit.cli import main  # noqa: E402
from deploykit.core import LatencyReport, ModelRef  # noqa: E402
from deploykit.measure.timing import Comparison
from deploykit.rewrite import StepContext  # noqa: E402

FEEDS = {"x": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)}


def _save(model, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return Path(path)


def test_verdict_thresholds():
    assert realized.verdict(1.06, 1.2) == "realized"
    assert realized.verdict(1.04, 1.3) == "not realized"
    assert realized.verdict(0.8, 1.01) == "not realized"
    assert realized.verdict(0.7, 0.95) == "slower"


def test_stats_from_facts_at_fed_shapes(tmp_path):
    s = realized.model_stats(_save(conv_bn_net(), tmp_path / "m.onnx"), FEEDS)
    # conv1 4096 outputs x 27 MACs, conv2 4096 x 144, fc 10 x 16, plus elementwise work
    assert s.flops >= 2 * (4096 * 27 + 4096 * 144 + 10 * 16)
    assert s.params == 16 * 27 + 16 * 144 + 10 * 16 + 10 + 8 * 16
    assert s.zero_fraction == 0 and s.op_counts["BatchNormalization"] == 2
    from onnx_models import conv_relu_gemm

    p = conv_relu_gemm(tmp_path / "sym.onnx")  # symbolic batch
    one = realized.model_stats(Path(p), {"x": np.zeros((1, 3, 16, 16), np.float32)})
    four = realized.model_stats(Path(p), {"x": np.zeros((4, 3, 16, 16), np.float32)})
    assert four.flops == pytest.approx(4 * one.flops) and four.params == one.params


def _recipe_result(tmp_path, text, model=None):
    src = ModelRef.from_path(_save(model or conv_bn_net(), tmp_path / "src.onnx"))
    ctx = StepContext(feeds=FEEDS, calibration=(FEEDS,), workdir=tmp_path / "steps")
    return recipe.run_recipe(src, recipe.parse_recipe(text), ctx)


def _report(samples, path, rounds=20):
    """Interleaved rounds as Comparison sees them: equal blocks, block k = round k."""
    from deploykit.core import Block

    n = len(samples) // rounds
    return LatencyReport(samples_ms=tuple(samples), target="ort-cpu", target_config={},
                         artifact_id="a", model_sha256="s", model_path=str(path), env={},
                         stop_reason="ci-reached",
                         blocks=tuple(Block(k * n, n, 0.0, False) for k in range(rounds)))


def test_report_rows_from_synthetic_samples(tmp_path):
    res = _recipe_result(tmp_path, "fold-bn; cleanup; quantize-static")
    lineage = realized.lineage_of(res)
    assert len(lineage) == 3
    rng = np.random.default_rng(0)
    samples = [10 + rng.normal(0, 0.1, 200), 9.9 + rng.normal(0, 0.1, 200),
               4 + rng.normal(0, 0.05, 200)]
    comp = Comparison(tuple(_report(s, m.path) for s, m in zip(samples, lineage)),
                      ("source", "1 fold-bn", "3 quantize-static"))
    stats = {m.sha256: realized.model_stats(m.path, FEEDS) for m in lineage}
    rep = realized.build_report(res, stats, comp, "ort-cpu")
    rows = {r.name: r for r in rep.rows}
    assert list(rows) == ["1 fold-bn", "2 cleanup", "3 quantize-static",
                          "recipe (source -> final)"]
    assert rows["1 fold-bn"].verdict == "not realized"
    assert rows["2 cleanup"].verdict.startswith("skipped: nothing to clean")
    q = rows["3 quantize-static"]
    assert q.verdict == "realized" and q.speedup[0] == pytest.approx(9.9 / 4, rel=0.02)
    assert q.size_ratio > 1.3 and q.compression == pytest.approx(1.0, abs=0.05)  # + per-channel scales
    total = rows["recipe (source -> final)"]
    assert total.speedup[1] > 2.3 and total.fidelity.cosine > 0.999
    assert "skipped" in rep.table() and "realized" in rep.table()
    json.dumps(rep.to_dict(), default=str)


def test_explain_reasons(tmp_path):
    res = _recipe_result(tmp_path, "quantize-dynamic:include_conv=true")
    parent, child = res.steps[0].parent.path, res.steps[0].output.path
    b, a = realized.model_stats(parent, FEEDS), realized.model_stats(child, FEEDS)
    assert "ConvInteger" in realized.explain("quantize-dynamic", b, a, child, "ort-cpu")

    res = _recipe_result(tmp_path / "s8", "quantize-static:activation_type=int8")
    child = res.steps[0].output.path
    a = realized.model_stats(child, FEEDS)
    assert "S8S8" in realized.explain("quantize-static", b, a, child, "ort-cpu")
    res = _recipe_result(tmp_path / "u8", "quantize-static")
    child = res.steps[0].output.path
    assert realized.explain("quantize-static", b, realized.model_stats(child, FEEDS), child,
                            "ort-cpu") is None

    sparse = conv_bn_net()
    w = next(t for t in sparse.graph.initializer if t.name == "w2")
    arr = numpy_helper.to_array(w).copy()
    arr[np.abs(arr) < np.median(np.abs(arr))] = 0
    w.CopyFrom(numpy_helper.from_array(arr, "w2"))
    sp = _save(sparse, tmp_path / "sparse.onnx")
    msg = realized.explain("prune-unstructured", b, realized.model_stats(sp, FEEDS), sp, "ort-cpu")
    assert msg.startswith("unstructured sparsity")
    assert "fp16" in realized.explain("fp16", b, b, parent, "ort-cpu")
    assert "already folds" in realized.explain("fold-bn", b, b, parent, "ort-cpu")
    assert realized.explain("fold-bn", b, b, parent, "tvm-x86").startswith("FLOPs and bytes")


def test_cli_compress_measures_interleaved_and_stores(tmp_path, capsys):
    src = _save(mlp(d=256, h=512, batch=8), tmp_path / "mlp.onnx")
    out, db = tmp_path / "q.onnx", tmp_path / "store.sqlite"
    rc = main(["compress", str(src), "-r", "quantize-dynamic", "-o", str(out), "--store", str(db),
               "--max-time", "0.5", "--warmup-max", "0.2", "--min-samples", "10",
               "--json", str(tmp_path / "r.json")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "realized on ort-cpu" in text
    row = json.loads((tmp_path / "r.json").read_text())["realized"]["rows"][0]
    lo, hi = row["speedup"]["ci95"]  # strict JSON: an unbounded end (too few rounds) is null
    lo, hi = 0.0 if lo is None else lo, float("inf") if hi is None else hi
    assert lo <= row["speedup"]["ratio"] <= hi
    # the verdict follows the measured CI (README: realized when the CI's low end is >= 1.05x,
    # slower when its high end is below 1x, else not realized)
    expected = "realized" if lo >= 1.05 else "slower" if hi < 1.0 else "not realized"
    assert row["verdict"] == expected, row
    from deploykit.store import Store

    with Store(db) as store:
        runs = store.runs()
        assert len(runs) == 2
        lineage = store.lineage(ModelRef.from_path(out).sha256)
        assert [m.transform for m in lineage][:1] == ["quantize-dynamic"]
