"""The files the bad-input corpus feeds deploykit: one good tiny model, inputs and baseline, and
every kind of broken, hostile or odd file next to them. Built once per session (seconds)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from onnx_models import make_mlp  # noqa: E402


def _save(model, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _one_input_model(elem, shape, name: str = "x") -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", [name], ["y"])], "g",
                              [helper.make_tensor_value_info(name, elem, shape)],
                              [helper.make_tensor_value_info("y", elem, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def baseline_dict(model: Path, samples=None, rounds: int = 10) -> dict:
    """A well-formed baseline for `model`, as `deploykit baseline` writes it (numbers made up
    but plausible; the corpus never gets as far as measuring)."""
    from deploykit.core import Block, LatencyReport
    from deploykit.fsutil import sha256_file
    from deploykit.onnxio import io_specs, load_onnx
    from deploykit.gate.baseline import make_baseline

    samples = samples or [1.0 + 0.01 * (i % 7) for i in range(rounds * 5)]
    per = len(samples) // rounds
    blocks = tuple(Block(i * per, per, 0.0, False) for i in range(rounds))
    sha = sha256_file(model)
    rep = LatencyReport(samples_ms=tuple(samples), target="ort-cpu",
                        target_config={"backend": "ort"}, artifact_id="a" * 16,
                        model_sha256=sha, model_path=str(model), env={"cpu": "test"},
                        stop_reason="time-cap", blocks=blocks)
    ins, outs = io_specs(load_onnx(model))
    return make_baseline(rep, ins, outs, {"seed": 0, "shapes": {}, "npz": None},
                         model.parent / "b.json").to_dict()


def build(root: Path) -> dict[str, str]:
    """Create every file of the world under `root`; returns the name -> path map that case
    arguments are formatted with."""
    w = root
    w.mkdir(parents=True, exist_ok=True)
    p: dict[str, Path] = {}

    # models
    p["mlp"] = make_mlp(w / "mlp.onnx")
    p["other"] = make_mlp(w / "other.onnx", sizes=(8, 8, 2))  # another signature
    p["empty_onnx"] = w / "empty.onnx"
    p["empty_onnx"].write_bytes(b"")
    data = p["mlp"].read_bytes()
    p["truncated"] = w / "truncated.onnx"
    p["truncated"].write_bytes(data[: len(data) // 2])
    p["garbage_onnx"] = w / "garbage.onnx"
    p["garbage_onnx"].write_bytes(b"\x00\xffnot a protobuf at all\x12\x34" * 50)
    p["text_onnx"] = w / "text.onnx"
    p["text_onnx"].write_text("ir_version: 8\nthis is text, not a model\n")
    p["dir_onnx"] = w / "folder.onnx"
    p["dir_onnx"].mkdir()
    p["missing_onnx"] = w / "missing.onnx"
    p["not_onnx_ext"] = w / "model.txt"
    p["not_onnx_ext"].write_bytes(data)
    p["string_in"] = _save(_one_input_model(TensorProto.STRING, [1, 4]), w / "string_in.onnx")
    p["neg_dim"] = _save(_one_input_model(TensorProto.FLOAT, [-3, 16]), w / "neg_dim.onnx")
    p["zero_dim"] = _save(_one_input_model(TensorProto.FLOAT, [0, 16]), w / "zero_dim.onnx")
    m = _one_input_model(TensorProto.FLOAT, [1, 16])
    m.opset_import[0].version = 99
    p["opset99"] = _save(m, w / "opset99.onnx")
    # external data: a good one in its own folder, one whose data is gone, one that escapes
    ext = w / "ext"
    ext.mkdir()
    mm = onnx.load(str(p["mlp"]))
    onnx.save(mm, str(ext / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.bin", size_threshold=0)
    p["ext_model"] = ext / "ext.onnx"
    lost = w / "lost"
    lost.mkdir()
    shutil.copyfile(ext / "ext.onnx", lost / "lost.onnx")
    p["ext_missing"] = lost / "lost.onnx"
    esc = onnx.load(str(ext / "ext.onnx"), load_external_data=False)
    for t in esc.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../ext/ext.bin"
    p["ext_escape"] = _save(esc, lost / "escape.onnx")

    # inputs / calibration data
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    np.savez(w / "good.npz", x=x)
    p["good_npz"] = w / "good.npz"
    np.save(w / "single.npy", x)
    p["npy"] = w / "single.npy"
    p["garbage_npz"] = w / "garbage.npz"
    p["garbage_npz"].write_bytes(b"PK\x03\x04 definitely not a zip" * 10)
    np.savez(w / "strings.npz", x=np.array([["a"] * 16]))
    p["strings_npz"] = w / "strings.npz"
    np.savez(w / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    p["objects_npz"] = w / "objects.npz"
    np.savez(w / "wrongname.npz", z=x)
    p["wrongname_npz"] = w / "wrongname.npz"
    np.savez(w / "wrongshape.npz", x=np.zeros((1, 7), np.float32))
    p["wrongshape_npz"] = w / "wrongshape.npz"
    p["empty_npz"] = w / "empty.npz"
    p["empty_npz"].write_bytes(b"")
    p["missing_npz"] = w / "missing.npz"
    (w / "calib_empty").mkdir()
    p["calib_empty_dir"] = w / "calib_empty"
    np.savez(w / "distill.npz", x=np.random.default_rng(1).standard_normal((20, 16))
             .astype(np.float32), y=np.arange(20) % 4)
    p["distill_npz"] = w / "distill.npz"
    np.savez(w / "wide.npz", x=np.zeros((20, 7), np.float32), y=np.zeros(20, np.int64))
    p["wide_npz"] = w / "wide.npz"
    np.savez(w / "ymismatch.npz", x=np.zeros((20, 16), np.float32), y=np.zeros(5, np.int64))
    p["ymismatch_npz"] = w / "ymismatch.npz"
    np.savez(w / "noxy.npz", q=np.zeros((20, 16), np.float32))
    p["nox_npz"] = w / "noxy.npz"
    np.savez(w / "yfloat.npz", x=np.zeros((20, 16), np.float32), y=np.zeros(20, np.float32) + .5)
    p["yfloat_npz"] = w / "yfloat.npz"

    # torch sources for export / distill
    (w / "factories.py").write_text(
        "import torch\n"
        "def build():\n    return torch.nn.Sequential(torch.nn.Linear(16, 4))\n"
        "def example_inputs():\n    return (torch.zeros(1, 16),)\n"
        "def raises():\n    raise RuntimeError('factory exploded')\n"
        "def not_module():\n    return 42\n")
    p["factories"] = w / "factories.py"
    (w / "syntax.py").write_text("def build(:\n")
    p["syntax_py"] = w / "syntax.py"
    p["garbage_pt"] = w / "garbage.pt"
    p["garbage_pt"].write_bytes(b"not a checkpoint" * 10)

    # recipes and targets
    (w / "bad.toml").write_text("[[step]\nname = 'fold-bn'\n")
    p["bad_toml"] = w / "bad.toml"
    (w / "nostep.toml").write_text("[[step]]\nfield = 1\n")
    p["nostep_toml"] = w / "nostep.toml"
    (w / "target_bad.toml").write_text("name = \n")
    p["target_bad_toml"] = w / "target_bad.toml"

    # baselines: good, and hostile variants (written by the cases from baseline_dict)
    good = baseline_dict(p["mlp"])
    (w / "baseline.json").write_text(json.dumps(good))
    p["baseline"] = w / "baseline.json"
    for name, change in hostile_baselines().items():
        d = json.loads(json.dumps(good))
        text = change(d)
        (w / f"bl_{name}.json").write_text(text if isinstance(text, str) else
                                           json.dumps(d, allow_nan=True))
        p[f"bl_{name}"] = w / f"bl_{name}.json"

    # stores
    p["foreign_db"] = w / "foreign.sqlite"
    db = sqlite3.connect(p["foreign_db"])
    db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO customers VALUES (1, 'ada')")
    db.commit()
    db.close()
    p["corrupt_db"] = w / "corrupt.sqlite"
    p["corrupt_db"].write_bytes(b"this is not an sqlite database" * 40)
    p["newer_db"] = w / "newer.sqlite"
    db = sqlite3.connect(p["newer_db"])
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    db.commit()
    db.close()
    (w / "a_file").write_text("I am a file")
    p["a_file"] = w / "a_file"
    (w / "a_dir").mkdir()
    p["a_dir"] = w / "a_dir"

    # search results for `report`
    def search_json(name: str, data) -> None:
        (w / name).mkdir()
        (w / name / "search.json").write_text(data if isinstance(data, str) else
                                              json.dumps(data))
        p[name] = w / name
    search_json("sr_minimal", {"kind": "deploykit-search"})
    search_json("sr_schema1", {"kind": "deploykit-search", "schema": 1})
    search_json("sr_badcands", {"kind": "deploykit-search", "schema": 1, "model": "m.onnx",
                                "target": "ort-cpu", "config": {}, "candidates": [1, 2],
                                "pareto": [], "recommendation": None, "predictor": {},
                                "cost": {}, "env": {}, "per_op": {}, "notes": []})
    search_json("sr_wrongkind", {"kind": "something-else"})
    search_json("sr_notjson", "{not json")
    search_json("sr_list", [1, 2, 3])
    (w / "sr_empty").mkdir()
    p["sr_empty"] = w / "sr_empty"
    return {k: str(v) for k, v in p.items()}


def hostile_baselines() -> dict:
    """name -> change(d) (edits the baseline dict in place, or returns replacement text)."""
    def samples(values):
        def change(d):
            d["report"]["samples_ms"] = values
        return change

    def setp(path, value):
        def change(d):
            obj = d
            for k in path[:-1]:
                obj = obj[k]
            obj[path[-1]] = value
        return change

    def drop(path):
        def change(d):
            obj = d
            for k in path[:-1]:
                obj = obj[k]
            del obj[path[-1]]
        return change

    nan = float("nan")
    return {
        "nan_samples": samples([nan] * 50),
        "one_nan": samples([1.0] * 49 + [nan]),
        "negative": samples([-1.0] * 50),
        "zero": samples([0.0] * 50),
        "inf": samples([float("inf")] * 50),
        "strings": samples(["fast"] * 50),
        "few_samples": lambda d: (d["report"].update(samples_ms=[1.0] * 3, blocks=[])),
        "few_rounds": lambda d: d["report"].update(
            samples_ms=[1.0] * 20, blocks=[{"start": 0, "n": 10, "foreign_cpu": 0.0,
                                            "contaminated": False},
                                           {"start": 10, "n": 10, "foreign_cpu": 0.0,
                                            "contaminated": False}]),
        "blocks_gap": setp(["report", "blocks", 3, "start"], 40),
        "blocks_zero_n": setp(["report", "blocks", 0, "n"], 0),
        "blocks_extra_key": setp(["report", "blocks", 0, "evil"], 1),
        "no_report": drop(["report"]),
        "report_list": setp(["report"], [1, 2]),
        "no_samples": drop(["report", "samples_ms"]),
        "sha_mismatch": setp(["model", "sha256"], "0" * 64),
        "sha_not_hex": lambda d: (d["model"].update(sha256="zz"),
                                  d["report"].update(model_sha256="zz")),
        "per_op_nan": setp(["report", "per_op"], [{"name": "n", "op_type": "Add",
                                                   "total_ms": nan, "share": 1.0}]),
        "inputs_bad": setp(["model", "inputs"], [{"name": "x"}]),
        "feeds_negative_shape": setp(["feeds", "shapes"], {"x": [-1, 16]}),
        "feeds_seed_string": setp(["feeds", "seed"], "zero"),
        "schema_99": setp(["schema"], 99),
        "schema_string": setp(["schema"], "1"),
        "wrong_kind": setp(["kind"], "not-a-baseline"),
        "json_list": lambda d: "[1, 2, 3]",
        "not_json": lambda d: "{ this is not json",
        "empty": lambda d: "",
        "binary": lambda d: "\x00\x01\x02",
    }
