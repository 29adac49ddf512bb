"""Multi-input text models (input_ids + attention_mask + token_type_ids, int64, dynamic sequence)
through every verb, with synthetic inputs read from the model when none are given."""

import json

import numpy as np
import onnx
import pytest

from deploykit.cli import main
from deploykit.onnxio import SYNTHETIC_SEQ, io_specs, load_onnx, make_feeds
from onnx_models import tiny_encoder

FAST = ["--max-time", "0.5", "--warmup-max", "0.1", "--min-samples", "5", "--no-strict"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("enc") / "enc.onnx", vocab=50)


def test_synthetic_text_inputs_come_from_the_model(encoder, capsys):
    specs, _ = io_specs(load_onnx(encoder))
    assert {s.name: s.values for s in specs} == {"input_ids": (0, 50), "attention_mask": None,
                                                 "token_type_ids": (0, 2)}
    feeds = make_feeds(specs, seed=3)
    assert feeds["input_ids"].shape == (1, SYNTHETIC_SEQ) and feeds["input_ids"].dtype == np.int64
    assert 0 <= feeds["input_ids"].min() and feeds["input_ids"].max() < 50
    assert len(np.unique(feeds["input_ids"])) > 10  # ids spread over the vocabulary, not 0/1
    assert (feeds["attention_mask"] == 1).all() and (feeds["token_type_ids"] == 0).all()
    # a --shape on one input binds the shared symbolic dim for the others
    feeds = make_feeds(specs, overrides={"input_ids": (2, 7)})
    assert {k: v.shape for k, v in feeds.items()} == {k: (2, 7) for k in feeds}


def test_text_note_is_printed_once(tmp_path, capsys):
    path = tiny_encoder(tmp_path / "e.onnx", vocab=37)
    specs, _ = io_specs(load_onnx(path))
    make_feeds(specs)
    make_feeds(specs, seed=1)
    err = capsys.readouterr().err
    assert err.count("synthetic text inputs") == 1
    assert "random ids in [0, 37)" in err and "attention_mask: ones" in err


def test_compress_profile_package_check_a_text_model(encoder, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    assert main(["compress", str(encoder), "-r", "quantize-dynamic", "-o", str(out),
                 "--no-measure", "--no-store"]) == 0
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    rep = tmp_path / "p.json"
    assert main(["profile", str(encoder), str(out), "--no-store", "--json", str(rep), "--quiet",
                 *FAST]) == 0
    assert len(json.loads(rep.read_text())["items"]) == 2
    bundle = tmp_path / "bundle"
    assert main(["package", str(out), "-o", str(bundle), "--no-measure", "--no-store"]) == 0
    assert main(["verify", str(bundle)]) == 0
    base = tmp_path / "base.json"
    gate = ["--max-time", "1", "--warmup-max", "0.2", "-q", "--no-store", "--memory-runs", "1"]
    assert main(["baseline", str(encoder), "-o", str(base), *gate, "--no-strict"]) == 0
    verdict = tmp_path / "v.json"
    assert main(["check", str(encoder), "--baseline", str(base), "--against", str(encoder),
                 "--json", str(verdict), *gate]) in (0, 1)  # the verdict on timings of a loaded machine may go either way
    assert json.loads(verdict.read_text())["n_units"] > 0
    assert json.loads(base.read_text())["kind"] == "deploykit-baseline"
