"""Safe ONNX loading: each bad file gives a one-line InputError naming the problem."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploykit.errors import InputError
from deploykit.onnxio import io_specs, load_onnx, make_feeds


def _external_model(tmp_path, location: str):
    """A model whose weight lives in external data at `location` (relative to the model)."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "64")):
        w.external_data.add(key=k, value=v)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    p = tmp_path / "m" / "model.onnx"
    p.parent.mkdir()
    p.write_bytes(helper.make_model(g).SerializeToString())
    return p


def test_loads_and_reads_specs(mlp_onnx):
    ins, outs = io_specs(load_onnx(mlp_onnx))
    assert [(s.name, s.shape, s.dtype) for s in ins] == [("x", ("batch", 16), "float32")]
    assert [(s.name, s.shape) for s in outs] == [("y", ("batch", 4))]
    feeds = make_feeds(ins, seed=3, overrides={"x": (5, 16)})
    assert feeds["x"].shape == (5, 16) and feeds["x"].dtype == np.float32
    np.testing.assert_array_equal(feeds["x"], make_feeds(ins, 3, {"x": (5, 16)})["x"])


@pytest.mark.parametrize("case,needle", [
    ("missing", "not found"),
    ("empty", "empty"),
    ("directory", "directory"),
    ("garbage", "not a valid ONNX model"),
    ("truncated", "not a valid ONNX model"),
])
def test_bad_files_give_one_line_errors(tmp_path, mlp_onnx, case, needle):
    p = tmp_path / "bad.onnx"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "directory":
        p.mkdir()
    elif case == "garbage":
        p.write_bytes(b"\xff\xfe not protobuf at all \x00" * 10)
    elif case == "truncated":
        p.write_bytes(mlp_onnx.read_bytes()[:-700])
    with pytest.raises(InputError, match=needle) as e:
        load_onnx(p)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_outside_folder_refused(tmp_path, location):
    (tmp_path / "outside.bin").write_bytes(np.ones(16, np.float32).tobytes())
    with pytest.raises(InputError, match="outside the model's folder"):
        load_onnx(_external_model(tmp_path, location))


def test_external_data_inside_folder_loads(tmp_path):
    p = _external_model(tmp_path, "weights.bin")
    (p.parent / "weights.bin").write_bytes(np.full(16, 2, np.float32).tobytes())
    model = load_onnx(p)
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]),
                                  np.full((4, 4), 2, np.float32))


def test_missing_external_data_file(tmp_path):
    with pytest.raises(InputError, match="missing"):
        load_onnx(_external_model(tmp_path, "weights.bin"))


def test_npz_inputs_are_shape_checked(tmp_path, mlp_onnx):
    ins, _ = io_specs(onnx.load(str(mlp_onnx)))
    np.savez(tmp_path / "ok.npz", x=np.zeros((3, 16), np.float64))
    assert make_feeds(ins, npz=tmp_path / "ok.npz")["x"].dtype == np.float32
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 15), np.float32))
    with pytest.raises(InputError, match="model expects"):
        make_feeds(ins, npz=tmp_path / "bad.npz")
    np.savez(tmp_path / "none.npz", z=np.zeros(3))
    with pytest.raises(InputError, match="no array named 'x'"):
        make_feeds(ins, npz=tmp_path / "none.npz")


def test_external_data_symlink_escaping_folder_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(np.ones(16, np.float32).tobytes())
    p = _external_model(tmp_path, "weights.bin")
    (p.parent / "weights.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(InputError, match="outside the model's folder"):
        load_onnx(p)


def test_short_external_data_file(tmp_path):
    p = _external_model(tmp_path, "weights.bin")
    (p.parent / "weights.bin").write_bytes(b"\0" * 10)  # 64 bytes expected
    with pytest.raises(InputError, match="cannot read the external data"):
        load_onnx(p)
