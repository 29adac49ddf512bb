import dataclasses
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

sys.path.insert(0, str(Path(__file__).parent / "rewrite"))
from _quant_models import conv_bn_net, messy  # noqa: E402

from deploykit.rewrite import recipe
from deploykit.cli import main  # noqa: E402
from deploykit.core import ModelRef  # noqa: E402
from deploykit.errors import InputError, VerificationError  # noqa: E402
from deploykit.rewrite import StepContext, StepPass  # noqa: E402
from deploykit.fidelity import compare, judge, worst


def test_parse_converts_field_types():
    steps = recipe.parse_recipe(
        " fold-bn ; quantize-static:per_channel=false,target_cosine=0.99,max_excluded=3,"
        "exclude=conv1|fc ;quantize-dynamic")
    assert [s.name for s in steps] == ["fold-bn", "quantize-static", "quantize-dynamic"]
    cfg = steps[1].config
    assert cfg.per_channel is False and cfg.target_cosine == 0.99 and cfg.max_excluded == 3
    assert cfg.exclude == ("conv1", "fc")
    assert steps[1].spec() == ("quantize-static:per_channel=false,exclude=conv1|fc,"
                               "target_cosine=0.99,max_excluded=3")
    assert recipe.parse_recipe(steps[1].spec())[0] == steps[1]


@pytest.mark.parametrize("text, match", [
    ("shrink", "unknown recipe step 'shrink'"),
    ("fold-bn:foo=1", "unknown field 'foo' for step 'fold-bn'"),
    ("fold-bn,quantize-static:per_channel=true", "separate steps with ';'"),
    ("quantize-static:per_channel=maybe", "expected true/false"),
    ("quantize-static:max_excluded=2.5", "expected int"),
    ("quantize-static:target_cosine=high", "expected float"),
    ("quantize-static:per_channel", "expected field=value"),
    ("quantize-static:method=kl", "method must be one of"),
    (" ; ", "empty recipe"),
])
def test_parse_errors_are_one_line(text, match):
    with pytest.raises(InputError, match=match) as e:
        recipe.parse_recipe(text)
    assert "\n" not in str(e.value)


def test_parse_toml_file(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('[[step]]\nname = "fold-bn"\n\n[[step]]\nname = "quantize-static"\n'
                 'per_channel = false\nexclude = ["a", "b"]\ntarget_cosine = 0.98\n')
    steps = recipe.parse_recipe(str(p))
    assert steps[1].config.exclude == ("a", "b") and steps[1].config.per_channel is False
    (tmp_path / "bad.toml").write_text('[[step]]\nname = "fold-bn"\ninclude_gemm = "nope"\n')
    with pytest.raises(InputError, match="expected true/false"):
        recipe.parse_recipe(str(tmp_path / "bad.toml"))
    with pytest.raises(InputError, match="not found"):
        recipe.parse_recipe(str(tmp_path / "missing.toml"))


def test_every_registered_step_names_a_module_path():
    assert {"prune-channels", "lowrank", "tucker", "compact", "nncf-int8", "quantize-static",
            "quantize-dynamic", "fp16", "fold-bn", "cleanup", "prune-unstructured",
            "remove-zero-channels"} <= set(recipe.STEPS)
    assert all(v.startswith("deploykit.rewrite.") for v in recipe.STEPS.values())


def test_verify_compare_and_judge():
    ref = [np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]], np.float32)]
    same = compare(ref, [ref[0].copy()])
    assert same.max_abs == 0 and same.cosine == pytest.approx(1) and same.top1 == 1.0
    assert judge(same, "fp32") is None
    off = compare(ref, [ref[0] + np.float32(0.01)])
    assert judge(off, "fp32").startswith("max rel error") and judge(off, "int8") is None
    flipped = compare(ref, [ref[0][:, ::-1].copy()])
    assert flipped.top1 == 0.0 and judge(flipped, "int8").startswith("cosine")
    assert judge(compare(ref, [np.full((2, 3), np.nan, np.float32)]), "lossy") == \
        "outputs contain NaN or inf"
    assert not compare(ref, [ref[0][:1]]).shapes_match
    w = worst([same, off])
    assert w.max_abs == off.max_abs and w.cosine == min(same.cosine, off.cosine)
    with pytest.raises(InputError):
        judge(same, "int3")


@pytest.fixture
def conv_model(tmp_path):
    p = tmp_path / "cnn.onnx"
    onnx.save(conv_bn_net(), p)
    return ModelRef.from_path(p)


def _ctx(tmp_path):
    rng = np.random.default_rng(0)
    b = lambda: {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}  # noqa: E731
    return StepContext(feeds=b(), calibration=(b(), b()), workdir=tmp_path / "steps")


def test_run_recipe_writes_verified_lineage_and_records_skips(tmp_path, conv_model):
    steps = recipe.parse_recipe("cleanup; fold-bn; fold-bn; quantize-static")
    res = recipe.run_recipe(conv_model, steps, _ctx(tmp_path))
    s = res.steps
    assert [r.applied for r in s] == [False, True, False, True]
    assert s[0].skipped.startswith("nothing to clean")
    assert "no BatchNormalization" in s[2].skipped
    assert s[1].output.parent_sha256 == conv_model.sha256 and s[1].output.transform == "fold-bn"
    assert s[3].output.parent_sha256 == s[1].output.sha256 == s[3].parent.sha256
    assert s[3].output.config["per_channel"] is True
    assert s[1].fidelity.max_rel < 1e-5 and s[3].fidelity_kind == "int8"
    assert res.final == s[3].output and res.final.path.exists()
    assert res.fidelity.cosine > 0.999 and res.fidelity.max_abs > 0
    json.dumps(res.to_dict())


def _fake_step(monkeypatch, name, fn, kind="fp32"):
    """A step module for `name` whose pass runs fn(model, cfg) in place and claims it changed
    the model (the runner must not take its word for it)."""
    mod = types.ModuleType(f"fake_{name}")

    @dataclasses.dataclass(frozen=True)
    class Config:
        scale: float = 1.0

    class FakePass(StepPass, ir.passes.InPlacePass):
        fidelity_kind = kind

        def call(self, model):
            fn(model, self.cfg)
            return self.done(model)

    mod.Config = Config
    setattr(mod, recipe.pass_name(name), FakePass)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(recipe.STEPS, name, mod.__name__)


def _scale_first_weight(model, cfg):
    w = model.graph.initializers["w1"]
    w.const_value = ir.tensor(w.const_value.numpy() * np.float32(cfg.scale), name="w1")


def test_run_recipe_refuses_a_wrong_exact_rewrite(tmp_path, conv_model, monkeypatch):
    _fake_step(monkeypatch, "bad-rewrite", _scale_first_weight)
    with pytest.raises(VerificationError, match="step 1 'bad-rewrite' fails verification.*max rel"):
        recipe.run_recipe(conv_model, recipe.parse_recipe("bad-rewrite:scale=1.01"),
                          _ctx(tmp_path))


def test_run_recipe_lossy_step_reports_but_passes(tmp_path, conv_model, monkeypatch):
    _fake_step(monkeypatch, "lossy", _scale_first_weight, kind="lossy")
    res = recipe.run_recipe(conv_model, recipe.parse_recipe("lossy:scale=0.5"), _ctx(tmp_path))
    assert res.steps[0].applied and res.fidelity.max_rel > 1e-3


def test_run_recipe_never_reports_an_unchanged_model(tmp_path, conv_model, monkeypatch):
    _fake_step(monkeypatch, "noop", _scale_first_weight)
    res = recipe.run_recipe(conv_model, recipe.parse_recipe("noop"), _ctx(tmp_path))
    assert not res.applied and res.steps[0].skipped == "step left the model unchanged"
    assert res.final == conv_model and res.fidelity is None


def test_run_recipe_checker_failure(tmp_path, conv_model, monkeypatch):
    def broken(model, cfg):
        first = next(iter(model.graph))
        first.replace_input_with(0, ir.Value(name="nowhere"))

    _fake_step(monkeypatch, "broken", broken)
    with pytest.raises(VerificationError, match="fails onnx.checker"):
        recipe.run_recipe(conv_model, recipe.parse_recipe("broken"), _ctx(tmp_path))


def test_cli_compress_no_measure(tmp_path, conv_model, capsys):
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    rc = main(["compress", str(conv_model.path), "-r", "fold-bn; quantize-static:method=percentile",
               "-o", str(out), "--no-measure", "--no-store", "--json", str(rep)])
    text = capsys.readouterr().out
    assert rc == 0 and out.exists()
    assert "verified (fp32)" in text and "verified (int8)" in text and "synthetic" in text
    data = json.loads(rep.read_text())
    assert data["recipe"]["final"]["sha256"] == ModelRef.from_path(out).sha256
    assert [r["verdict"] for r in data["realized"]["rows"]] == ["not measured"] * 3


def test_cli_compress_bad_input(tmp_path, conv_model, capsys):
    out = tmp_path / "out.onnx"
    assert main(["compress", str(conv_model.path), "-r", "tucker:rank=2x", "-o", str(out),
                 "--no-measure"]) == 2
    m = tmp_path / "messy.onnx"
    onnx.save(messy(), m)
    assert main(["compress", str(m), "-r", "fold-bn; quantize-dynamic", "-o", str(out),
                 "--no-measure", "--no-store"]) == 2
    err = capsys.readouterr().err
    assert "no step of the recipe applied" in err and not out.exists()
    assert main(["compress", str(conv_model.path), "-r", "quantize-static", "-o", str(out),
                 "--calib", str(tmp_path / "nope.npz"), "--no-measure"]) == 2
    np.savez(tmp_path / "wrong.npz", x=np.zeros((1, 3, 8, 8), np.float32))
    assert main(["compress", str(conv_model.path), "-r", "quantize-static", "-o", str(out),
                 "--calib", str(tmp_path / "wrong.npz"), "--no-measure"]) == 2
    assert "has shape [1, 3, 8, 8]" in capsys.readouterr().err and not out.exists()


def test_cli_compress_with_real_calibration_folder(tmp_path, conv_model, capsys):
    d = tmp_path / "calib"
    d.mkdir()
    rng = np.random.default_rng(3)
    np.savez(d / "a.npz", x=rng.standard_normal((3, 1, 3, 16, 16)).astype(np.float32))
    np.savez(d / "b.npz", x=rng.standard_normal((1, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "q.onnx"
    assert main(["compress", str(conv_model.path), "-r", "quantize-static", "-o", str(out),
                 "--calib", str(d), "--no-measure", "--no-store"]) == 0
    text = capsys.readouterr().out
    assert "synthetic" not in text and out.exists()


def test_library_root_warnings_do_not_flood_a_recipe_run(tmp_path, caplog, capfd):
    """onnxruntime.quantization logs "Please consider to run pre-processing" on the root logger;
    inside a step that is noise (the step chose), and a search would print it per candidate."""
    import logging

    from onnx_models import make_mlp

    path = make_mlp(tmp_path / "mlp.onnx", sizes=(64, 64, 8))
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)}
    with caplog.at_level(logging.WARNING):
        res = recipe.run_recipe(ModelRef.from_path(path),
                                recipe.parse_recipe("quantize-dynamic:preprocess=false"),
                                StepContext(feeds=feeds, workdir=tmp_path))
        logging.warning("outside a step")  # the filter is gone afterwards
    assert res.applied
    texts = [r.getMessage() for r in caplog.records]
    assert not any("pre-processing" in t for t in texts) and "outside a step" in texts
    assert "pre-processing" not in capfd.readouterr().err


def test_step_name_is_file_name():
    """Every recipe step lives in deploykit/rewrite/<step name, '-' as '_'>.py with Config and
    its pass <CamelName>Pass."""
    import ast

    folder = Path(recipe.__file__).parent
    assert len(recipe.STEPS) >= 13
    for name, module in recipe.STEPS.items():
        path = folder / (name.replace("-", "_") + ".py")
        assert module == "deploykit.rewrite." + path.stem and path.is_file(), name
        defs = {n.name for n in ast.parse(path.read_text()).body
                if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert {"Config", recipe.pass_name(name)} <= defs, name
