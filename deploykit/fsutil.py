"""Files: atomic writes (a failed command never leaves a half-written output behind), hashes, TOML."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]  # noqa: F401 (read by targets and recipes)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    from .errors import InputError

    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}; choose another path") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; the result should get the usual permissions (umask applies)
        umask = os.umask(0)
        os.umask(umask)
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_ready(x: Any) -> Any:
    """JSON-ready copy: non-finite floats become null (strict JSON has no NaN/Infinity), numpy
    scalars and arrays become Python numbers and lists, paths and other objects strings."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if hasattr(x, "tolist") and hasattr(x, "dtype"):  # numpy scalar or array
        return json_ready(x.tolist())
    return str(x)


def dumps_json(data: Any, indent: int | None = 1) -> str:
    """The one way deploykit serializes a JSON output: strict (allow_nan=False), every value made
    JSON-ready by json_ready, ending in a newline."""
    return json.dumps(json_ready(data), indent=indent, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Every --json writer: strict JSON, written whole or not at all."""
    write_text_atomic(path, dumps_json(data))
