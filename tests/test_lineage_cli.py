"""Lineage end to end: export and compress record their models, `history --lineage` shows how a
file was made (export <- compress step), newest first."""

import json


from deploykit.cli import main
from deploykit.fsutil import sha256_file
from onnx_models import conv_relu_gemm


def test_history_lineage_follows_export_and_compress(tmp_path, capsys):
    src = conv_relu_gemm(tmp_path / "src.onnx")
    store = str(tmp_path / "r.sqlite")
    exported, pruned = tmp_path / "e.onnx", tmp_path / "p.onnx"
    assert main(["export", str(src), "-o", str(exported), "--store", store]) == 0
    assert main(["compress", str(exported), "--recipe", "quantize-dynamic", "-o",
                 str(pruned), "--no-measure", "--store", store]) == 0
    capsys.readouterr()
    assert main(["history", "--store", store, "--lineage", str(pruned), "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)["lineage"]
    assert [c["transform"] for c in chain] == ["quantize-dynamic", "export"]
    assert chain[0]["sha256"] == sha256_file(pruned)
    assert chain[1]["sha256"] == sha256_file(exported) == chain[0]["parent_sha256"]
    assert chain[1]["parent_sha256"] == sha256_file(src)  # the file as given, not stored itself
    assert main(["history", "--store", store, "--lineage", chain[0]["sha256"][:10]]) == 0
    out = capsys.readouterr().out
    assert "made by: quantize-dynamic" in out and "made by: export" in out
    assert "is not in this store" in out


def test_history_lineage_of_an_unknown_model_is_one_line_error(tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    src = conv_relu_gemm(tmp_path / "src.onnx")
    assert main(["export", str(src), "-o", str(tmp_path / "e.onnx"), "--store", str(store)]) == 0
    capsys.readouterr()
    assert main(["history", "--store", str(store), "--lineage", str(src)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deploykit: error:") and "not in the results" in err[0]
