"""tools/bench_report.py: results.json merging with per-model provenance, and BENCHMARKS.md rows
for the search pick and TVM (timed and skipped) from a synthetic results dict. No timing."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_report  # noqa: E402

ENV = {"cpu_model": "Test CPU", "logical_cores": 2, "cpu_flags": ["avx2"],
       "versions": {"onnxruntime": "1.0"}}


def timed(name, kind, med, sp, target="ort-cpu", **extra):
    return {"name": name, "kind": kind, "target": target, "notes": extra.pop("notes", []),
            "median_ms": med, "ci95_ms": [med * 0.99, med * 1.02], "speedup_vs_ort_fp32": sp,
            "speedup_ci95": [sp * 0.98, sp * 1.01], "fidelity": {"cosine_min": 0.995},
            "contaminated": 0.0, "size_bytes": 2_500_000, "flops": 3e9, **extra}


def model(name, variants):
    return {"model": name, "exporter": "dynamo", "export_s": 1.0, "export_check": [1e-6],
            "metric": "cosine", "calibration": "synthetic", "variants": variants}


def test_merge_replaces_only_rerun_models_and_keeps_their_provenance():
    old = bench_report.merge({"results": []}, [model("tinyresnet", []), model("mlp", [])],
                             {"model": "mnist-cnn", "rows": []}, ENV, "python tools/bench.py",
                             "2026-01-01 00:00 UTC")
    new = bench_report.merge(old, [model("mlp", [timed("ORT fp32", "ort", 1.0, 1.0)])], None,
                             {**ENV, "cpu_model": "Other CPU"}, "python tools/bench.py --models mlp",
                             "2026-02-02 00:00 UTC")
    by = {r["model"]: r for r in new["results"]}
    assert [r["model"] for r in new["results"]] == ["mlp", "tinyresnet"]  # the suite's order
    assert by["tinyresnet"]["provenance"]["command"] == "python tools/bench.py"
    assert by["mlp"]["provenance"]["command"] == "python tools/bench.py --models mlp"
    assert by["mlp"]["variants"][0]["name"] == "ORT fp32"
    assert new["mnist"]["provenance"]["generated"] == "2026-01-01 00:00 UTC"  # not re-run: kept
    assert new["env"]["cpu_model"] == "Other CPU"


def test_legacy_results_get_an_unrecorded_command(tmp_path):
    p = tmp_path / "results.json"
    p.write_text(json.dumps({"env": ENV, "results": [model("mlp", [])], "mnist": None}))
    data = bench_report.load_results(p)
    assert data["schema"] == bench_report.SCHEMA
    prov = data["results"][0]["provenance"]
    assert prov["command"] is None and prov["env"] == ENV
    assert "not recorded" in bench_report.model_section(data["results"][0], ENV, None)[2]
    assert bench_report.load_results(tmp_path / "missing.json")["results"] == []


def test_markdown_renders_search_and_tvm_rows(tmp_path):
    variants = [
        timed("ORT fp32", "ort", 5.0, 1.0),
        timed("deploykit search pick", "search", 1.25, 4.0, notes=["recipe: quantize-static",
                                                                  "options: threads=1"]),
        timed("TVM untuned", "tvm", 450.0, 0.011, target="tvm-x86", notes=["untuned: run deploykit tune"]),
        {"name": "TVM tuned (32 trials)", "kind": "tvm", "target": "tvm-x86", "notes": [],
         "skipped": "skipped: one run took 0.71 s (> 0.5 s timing block)"},
    ]
    data = bench_report.merge({"results": []}, [model("tinyresnet", variants)], None, ENV,
                              "python tools/bench.py --models tinyresnet", "2026-03-03 00:00 UTC")
    out = tmp_path / "out"
    out.mkdir()
    (out / "tinyresnet.png").write_bytes(b"png")
    md = tmp_path / "B.md"
    bench_report.write_markdown(data, md, out / "results.json", out)
    text = md.read_text()
    assert "Produced by `python tools/bench.py --models tinyresnet` on 2026-03-03 00:00 UTC." in text
    assert ("| deploykit search pick | ort-cpu | 1.25 (1.24–1.27) | 4.00x (3.92–4.04) | cos 0.9950 "
            "| 2.5 | 3.00 | – | 0% |") in text
    assert "| TVM untuned | tvm-x86 | 450.00 (445.50–459.00) | 0.01x" in text
    assert ("| TVM tuned (32 trials) | tvm-x86 | skipped: one run took 0.71 s (> 0.5 s timing "
            "block) | – |") in text
    assert "- deploykit search pick: recipe: quantize-static; options: threads=1" in text
    assert "![tinyresnet](out/tinyresnet.png)" in text
    assert "`out/results.json`" in text
    # every table row has the header's nine columns
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "variant" not in ln]
    assert rows and all(ln.count(" | ") == 8 for ln in rows)


def test_provenance_names_a_different_environment():
    prov = {"command": "python tools/bench.py", "generated": "x",
            "env": {**ENV, "versions": {"onnxruntime": "0.9"}}}
    line = bench_report._provenance_line(prov, ENV)
    assert "different environment" in line and "onnxruntime 0.9" in line
    assert "different" not in bench_report._provenance_line({**prov, "env": ENV}, ENV)


def test_tvm_static_copy_fixes_symbolic_dims_and_chunked_outputs(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    absent = "OMP_WAIT_POLICY" not in os.environ
    import bench

    if absent:  # bench sets it for its own process, not for the rest of this session
        os.environ.pop("OMP_WAIT_POLICY", None)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [x], [y]))
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    feeds = {"x": np.zeros((8, 4), np.float32)}
    dst = bench._static_copy(src, feeds, tmp_path / "m.static.onnx")
    dims = onnx.load(str(dst)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [8, 4]
    assert bench._static_copy(dst, feeds, tmp_path / "again.onnx") == dst  # already static

    calls = []

    def run(f):  # a batch-2 build
        calls.append(f["x"].shape)
        return [f["x"] * 2]

    out = bench._in_chunks(run, 2)({"x": np.arange(12, dtype=np.float32).reshape(6, 2)})
    assert calls == [(2, 2)] * 3
    assert np.array_equal(out[0], np.arange(12, dtype=np.float32).reshape(6, 2) * 2)


def test_plot_takes_a_median_outside_its_block_ci(tmp_path):
    import pytest

    pytest.importorskip("matplotlib")
    v = timed("hand: quantize_static QDQ defaults", "hand", 0.0958, 3.0)
    v["ci95_ms"] = [0.0987, 0.1002]  # the CI over block medians missed the all-sample median
    v["speedup_ci95"] = [3.1, 3.3]
    skipped = {"name": "TVM untuned", "kind": "tvm", "target": "tvm-x86", "notes": [],
               "skipped": "skipped: one run took 4.10 s (> 0.5 s timing block)"}
    bench_report.plot([model("mlp_small", [timed("ORT fp32", "ort", 0.3, 1.0), v, skipped])],
                      tmp_path)
    assert (tmp_path / "mlp_small.png").stat().st_size > 0


def _dc_row(name, stored, kb, comp, acc, change, med, sp):
    return {"name": name, "stored_as": stored, "stored_bytes": kb * 1000, "onnx_bytes": 1,
            "compression": comp, "accuracy": acc, "accuracy_change_points": change,
            "changed_predictions": 3, "median_ms": med, "ci95_ms": [med * 0.99, med * 1.01],
            "speedup": sp, "speedup_ci95": [sp * 0.98, sp * 1.02], "contaminated": 0.0}


def _deep_compression() -> dict:
    """A deep_compression.py section as it writes it."""
    return {"params": 431080, "fp32_bytes": 1724320, "n_train": 4000, "n_test": 1000,
            "plan": {"rounds": 3}, "kept": {"conv1": 0.66, "fc1": 0.08}, "kept_total": 0.085,
            "archive": {"bytes": 50123, "raw_bytes": 77000}, "met": True,
            "survey": {"network": "LeNet-5", "base_kb": 1720, "compressed_kb": 44,
                       "compression": 39, "top1_error_before": 0.8, "top1_error_after": 0.74},
            "target": {"compression": 20.0, "max_loss_points": 0.5},
            "rows": [_dc_row("LeNet-5 fp32", "fp32 weights", 1724, 1.0, 0.98, 0.0, 0.2, 1.0),
                     _dc_row("int8 only", "ONNX", 440, 3.9, 0.979, -0.1, 0.15, 1.3),
                     _dc_row("pruned + int8, read back", "archive", 50, 34.4, 0.978, -0.2, 0.2,
                             1.0),
                     _dc_row("pruned + int8, ORT int8", "archive", 50, 34.4, 0.977, -0.3, 0.15,
                             1.3)]}


def test_tool_sections_merge_beside_the_models_and_render(tmp_path):
    """tools/deep_compression.py and tools/bench_recover.py write their own sections into
    results.json; a later bench.py merge keeps them, and BENCHMARKS.md renders them."""
    dc = _deep_compression()
    data = bench_report.merge_section({"results": []}, "deep_compression", dc,
                                      "python tools/deep_compression.py", ENV, "2026-04-04 00:00 UTC")
    data = bench_report.merge(data, [model("mlp", [timed("ORT fp32", "ort", 1.0, 1.0)])], None,
                              ENV, "python tools/bench.py --models mlp")
    assert data["deep_compression"]["provenance"]["command"] == "python tools/deep_compression.py"
    md = tmp_path / "B.md"
    bench_report.write_markdown(data, md, tmp_path / "results.json", tmp_path)
    text = md.read_text()
    assert "## Deep Compression reproduced: LeNet-5 on real digits" in text
    assert "| pruned + int8, read back | archive | 50.0 kB | 34.4x | 97.8% | -0.2 | 3 of 1000 |" \
        in text
    assert "| *survey: LeNet-5, Deep Compression* |" in text and "39x" in text
    assert "**met** — 34.4x at -0.2 points (50,123 bytes on disk; 77,000 before LZMA)" in text
    rows = [ln for ln in text.split("## Deep Compression")[1].splitlines() if ln.startswith("| ")]
    assert len(rows) == 6 and all(ln.count(" | ") == 8 for ln in rows)


def test_mnist_search_section_renders_the_target_verdict(tmp_path):
    row = {"accuracy": 0.95, "drop_points": 0.3, "median_ms": 0.05, "ci95_ms": [0.049, 0.051],
           "speedup": 2.0, "speedup_ci95": [1.9, 2.1], "contaminated": 0.0}
    r = {"teacher_epochs": 4, "n_train": 4000, "n_test": 1000, "base_accuracy": 0.953,
         "floor": 0.9948, "calibration_digits": 1000, "recover_budget_s": 20,
         "recover_final_s": 180, "time_limit_s": 900, "search_s": 600,
         "target": {"max_drop_points": 0.5, "speedup_vs_int8": 1.5},
         "rows": [{**row, "name": "fp32", "recipe": "", "options": {}, "speedup": 1.0},
                  {**row, "name": "recovery pick",
                   "recipe": "torch-prune:budget_s=180.0,final=true,ratio=0.5; quantize-static",
                   "options": {"threads": 1}},
                  {**row, "name": "int8-only pick", "recipe": "quantize-static", "options": {}}],
         "recovered": [{"name": "torch-prune:budget_s=20.0,ratio=0.5", "status": "rejected",
                        "fidelity": 0.98, "fidelity_before": 0.83, "fidelity_after": 0.93,
                        "seconds": 20.1, "steps": 900}],
         "recovery_vs_int8": [1.6, 1.5, 1.7], "met": True}
    from bench_recover_report import recover_markdown

    lines = recover_markdown(r, ENV)
    text = "\n".join(lines)
    assert ("| recovery pick | torch-prune:budget_s=180.0,final=true,ratio=0.5; quantize-static "
            "@ threads=1 | 95.0% | +0.3 |") in text
    assert "| torch-prune:budget_s=20.0,ratio=0.5 | rejected | 0.9800 | 0.8300 | 0.9300 | 20 " \
        "| 900 |" in text
    assert "**met** — 1.60x (1.50–1.70), interleaved." in text
    # a recovery pick that is no recovered cut (an int8 recipe both searches had, on other
    # thread options) is no evidence for recovery, whatever its ratio
    plain = {**r, "rows": [r["rows"][0], {**r["rows"][1], "recipe": "quantize-static"},
                           r["rows"][2]]}
    text = "\n".join(recover_markdown(plain, ENV))
    assert "**NOT met** — 1.60x" in text and "no recovered (pruned) candidate" in text
    # the ResNet mode: cosine floor, held-out cosine columns, a final continued from its short
    res = {**r, "model": "resnet-mnist", "cosine_digits": 200, "floor": 0.99,
           "target": {"min_cosine": 0.99, "speedup_vs_int8": 1.3}, "met": False,
           "rows": [{**x, "cosine_min": 0.991, "cosine_mean": 0.998} for x in r["rows"]],
           "recovered": [{**r["recovered"][0], "name": "torch-prune:budget_s=60.0,continue_s="
                          "20.0,final=true,ratio=0.5", "start_fidelity": 0.95,
                          "start_steps": 900}]}
    text = "\n".join(recover_markdown(res, ENV))
    assert "at cosine >= 0.99" in text and "over 200 held-out digits" in text
    assert "| 0.9910 / 0.9980 | 95.0% |" in text
    assert "| 0.8300 (start 0.9500) | 0.9300 | 20 | 900 (+900 before) |" in text
    assert "at worst held-out cosine >= 0.99): **NOT met** — 1.60x" in text
    assert "Diagnostic" not in text
    text = "\n".join(recover_markdown({**res, "diagnostic_vs_int8": [1.45, 1.4, 1.5]}, ENV))
    assert "Diagnostic, not the target's figure: the deepest recovered prune that passed the " \
        "floor, on the int8-only pick's options, is 1.45x (1.40–1.50)" in text


def test_each_bench_recover_model_has_its_own_key_and_section(tmp_path):
    """--model mnist-cnn, mnist-classic and resnet write their own results.json keys; both MNIST
    sections render, the bundled CNN's saying it is bound by per-call overhead."""
    import bench_recover

    assert bench_recover.KEYS == {"mnist-cnn": "mnist_search",
                                  "mnist-classic": "mnist_classic_search",
                                  "resnet": "resnet_search"}
    row = {"accuracy": 0.99, "drop_points": 0.1, "median_ms": 0.2, "ci95_ms": [0.19, 0.21],
           "speedup": 2.0, "speedup_ci95": [1.9, 2.1], "contaminated": 0.0, "recipe": "",
           "options": {}}
    r = {"teacher_epochs": 4, "n_train": 4000, "n_test": 1000, "base_accuracy": 0.98,
         "floor": 0.9949, "calibration_digits": 4000, "recover_budget_s": 20,
         "recover_final_s": 180, "time_limit_s": 1200, "search_s": 700,
         "target": {"max_drop_points": 0.5, "speedup_vs_int8": 1.5},
         "rows": [{**row, "name": n} for n in ("fp32", "recovery pick", "int8-only pick")],
         "recovered": [], "recovery_vs_int8": [1.7, 1.6, 1.8], "met": True}
    r["rows"][1]["recipe"] = "torch-prune:budget_s=20.0,ratio=0.75; quantize-static"
    data = {"results": [], "env": ENV,
            "mnist_search": {**r, "model": "mnist-cnn", "met": False,
                             "recovery_vs_int8": [1.3, 1.2, 1.4]},
            "mnist_classic_search": {**r, "model": "mnist-classic"}}
    md = tmp_path / "B.md"
    bench_report.write_markdown(data, md, tmp_path / "results.json", tmp_path)
    text = md.read_text()
    small = text.split("## MNIST CNN: the search")[1].split("## ")[0]
    classic = text.split("## MNIST CNN (pytorch/examples): the search with recovery vs int8 "
                         "alone, at a 0.5-point floor")[1].split("## ")[0]
    assert "per-call overhead bounds what pruning can save" in small
    assert "**NOT met** — 1.30x (1.20–1.40)" in small
    assert "mnist/main.py `Net`" in classic and "98.0% on 1,000 held-out ones" in classic
    assert "**met** — 1.70x (1.60–1.80), interleaved." in classic


def test_record_section_merges_stamps_and_regenerates(tmp_path):
    """What deep_compression.py and bench_recover.py call last: their section merged into an
    existing results.json (the models kept), stamped with their command line and this machine's
    fingerprint, and BENCHMARKS.md regenerated from it."""
    results, md = tmp_path / "results.json", tmp_path / "B.md"
    bench_report.save_results(bench_report.merge(
        {"results": []}, [model("mlp", [timed("ORT fp32", "ort", 1.0, 1.0)])], None, ENV,
        "python tools/bench.py --models mlp"), results)
    data = bench_report.record_section("deep_compression", _deep_compression(),
                                       "deep_compression.py", ["--epochs", "2"], results, md)
    prov = data["deep_compression"]["provenance"]
    assert prov["command"] == "python tools/deep_compression.py --epochs 2"
    assert prov["env"]["cpu_model"] and prov["env"] != ENV
    assert json.loads(results.read_text()) == data and [m["model"] for m in data["results"]] \
        == ["mlp"]
    assert "## Deep Compression reproduced: LeNet-5 on real digits" in md.read_text()


def test_search_vs_experts_verdict_takes_the_best_expert_at_the_floor_on_the_picks_runtime():
    def pick(sp, **extra):
        return timed("deploykit search pick", "search", 1.0 / sp, sp, **extra)

    below = timed("hand: quantize_dynamic defaults", "hand", 0.2, 5.0,
                  fidelity={"cosine_min": 0.95})  # fastest, but under the floor: not a rival
    other_rt = timed("deploykit nncf-int8 @ov-cpu", "deploykit", 0.25, 4.0, target="ov-cpu")
    expert = timed("deploykit int8 static U8S8 per-channel", "deploykit", 0.4, 2.5)
    rows = [timed("ORT fp32", "ort", 1.0, 1.0), below, other_rt, expert]
    r = {**model("m", rows + [pick(2.6)]), "search": {"min_fidelity": 0.99}}
    line = bench_report.vs_experts(r)
    assert "the best is deploykit int8 static U8S8 per-channel at 2.50x" in line
    assert "1.04x" in line and "quotient" in line and line.endswith("**met**.")
    # paired ratios stored by the run take precedence; a CI wholly below 1.0 is behind
    behind = pick(2.6, **{"speedup_vs": {expert["name"]: [0.9, 0.85, 0.95]}},
                  target="ort-cpu (threads=1)")
    line = bench_report.vs_experts({**model("m", rows + [behind]), "search": {"min_fidelity": 0.99}})
    assert "0.90x (0.85–0.95)" in line and "paired" in line and "**NOT met**" in line
    # nothing at the floor on the pick's runtime, and no expert on it at all
    r = {**model("m", [rows[0], below, pick(2.0)]), "search": {"min_fidelity": 0.99}}
    assert "no expert recipe on ort-cpu reaches the floor" in bench_report.vs_experts(r)
    r = {**model("m", [rows[0], other_rt, pick(2.0)]), "search": {"min_fidelity": 0.99}}
    assert "no expert recipe on ort-cpu" in bench_report.vs_experts(r)
    assert bench_report.vs_experts(model("m", rows)) is None  # no search row, no verdict


def test_bench_recover_widths_are_checked_before_anything_runs(tmp_path):
    """--widths: positive stage widths; anything else is one argparse line, exit code 2, before
    a digit is loaded or a file written."""
    import subprocess

    import bench_recover

    assert bench_recover._widths("16,32,64,128") == (16, 32, 64, 128)
    for bad in ("32,0,64", "a,b", "", "-8"):
        r = subprocess.run([sys.executable, str(Path(bench_recover.__file__)), "--model",
                            "resnet", "--widths", bad, "--results", str(tmp_path / "r.json"),
                            "--markdown", str(tmp_path / "B.md")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert "argument --widths" in r.stderr.splitlines()[-1] and "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())
