"""Loading ONNX files safely, reading their input/output specs, and keeping the chatter of
native ONNX tools (exporters, onnxsim) off the terminal. (What is fed to them: feeds.py.)

Refuses what a user should hear about before anything runs: missing or truncated files, protobuf
that is not an ONNX model, and external-data paths that escape the model's folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

from ..core import TensorSpec
from ..errors import InputError

_ELEM_TO_NP = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64",
               9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16",
               0: "float32", 4: "uint16", 8: "string", 14: "complex64", 15: "complex128"}
# node metadata key holding the torch module a node came from (written by export, read by the
# per-op tables of backends/op_names.py)
MODULE_KEY = "deploykit.module"


def check_external_data(model, folder: Path) -> None:
    """Every external-data location must resolve inside the model's own folder."""
    import onnx

    base = folder.resolve()
    for tensor in _all_initializers(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / loc).resolve()
        if Path(loc).is_absolute() or base not in target.parents:
            raise InputError(f"external data of tensor '{tensor.name}' points outside the "
                             f"model's folder: {loc!r}")
        if not target.is_file():
            raise InputError(f"external data file of tensor '{tensor.name}' is missing: {target}")


def check_opset(model, p: Path) -> None:
    """An opset newer than the installed onnx knows cannot be checked or run (ONNX Runtime's
    own message for it is a C++ dump): say so, and what to do."""
    import onnx

    known = onnx.defs.onnx_opset_version()
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and not 1 <= o.version <= known:
            raise InputError(f"{p} declares ONNX opset {o.version}, but the installed onnx "
                             f"{onnx.__version__} knows opsets 1-{known}; re-export it with an "
                             f"opset in that range (deploykit export SOURCE -o OUT.onnx --opset "
                             f"{min(known, 17)})")


def _has_external(model) -> bool:
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_initializers(model))


def _all_initializers(model):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.t is not None and attr.HasField("t"):
                yield attr.t


def load_onnx(path: str | Path, load_external: bool = True):
    """onnx.ModelProto from `path`, or a one-line InputError naming what is wrong."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.exists():
        raise InputError(f"model file not found: {p}")
    if p.is_dir():
        raise InputError(f"expected an .onnx file, got a directory: {p}")
    if p.stat().st_size == 0:
        raise InputError(f"model file is empty: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise InputError(f"not a valid ONNX model (corrupt or truncated?): {p}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not model.graph.node and not model.graph.output:
        raise InputError(f"not a valid ONNX model (empty graph; corrupt or truncated?): {p}")
    check_opset(model, p)
    check_external_data(model, p.parent)
    if load_external:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(p.parent))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read the external data of {p}: {e}") from None
    try:
        if load_external or not _has_external(model):
            onnx.checker.check_model(model)
        else:  # the checker resolves external data of a proto against the working directory
            onnx.checker.check_model(str(p.absolute()))
    except onnx.checker.ValidationError as e:
        raise InputError(f"ONNX model fails onnx.checker: {p}: {str(e).splitlines()[0]}") from None
    return model


_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}


def _index_ranges(model) -> dict[str, tuple[int, int]]:
    """{integer graph input: (0, rows)} for inputs that index a constant table through a Gather
    (token ids into an embedding), following Cast/Reshape/Unsqueeze on the way."""
    import onnx

    tables = {t.name: list(t.dims) for t in model.graph.initializer}
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    out: dict[str, tuple[int, int]] = {}
    for v in model.graph.input:
        if v.type.tensor_type.elem_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            continue
        frontier, seen, rows = [v.name], set(), []
        while frontier:
            name = frontier.pop()
            for n in users.get(name, []):
                if id(n) in seen:
                    continue
                seen.add(id(n))
                if n.op_type == "Gather" and n.input[1] == name and n.input[0] in tables:
                    axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                    dims = tables[n.input[0]]
                    if dims:
                        rows.append(int(dims[axis % len(dims)]))
                elif n.op_type in _PASS_THROUGH and n.input[0] == name:
                    frontier.extend(n.output)
        if rows and min(rows) > 0:
            out[v.name] = (0, min(rows))
    return out


def _spec(value_info) -> TensorSpec:
    t = value_info.type.tensor_type
    dims: list[int | str] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return TensorSpec(value_info.name, tuple(dims),
                      _ELEM_TO_NP.get(t.elem_type, f"onnx-elem-type-{t.elem_type}"))


def io_specs(model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Graph inputs (excluding initializers) and outputs."""
    from dataclasses import replace

    inits = {i.name for i in model.graph.initializer}
    ranges = _index_ranges(model)
    ins = [replace(_spec(v), values=ranges.get(v.name)) for v in model.graph.input
           if v.name not in inits]
    outs = [_spec(v) for v in model.graph.output]
    return ins, outs


@contextlib.contextmanager
def quiet():
    """Exporters and onnxsim print progress (some from C++, so fds 1 and 2 too) and warn freely:
    keep all of it off the terminal. Yields the list the warnings are recorded into."""
    torch_log = logging.getLogger("torch")
    old_level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                yield caught
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            torch_log.setLevel(old_level)
