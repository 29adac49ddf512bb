"""All-or-nothing command outputs: output paths checked before any expensive work, every output
staged beside its destination and moved into place only when the whole command succeeded.

Why stage instead of writing each file atomically as it is ready: a command with several outputs
(a model and its --json, a verdict's --json and --junit) that fails half-way must leave none of
them, or a reader takes the half that was written for the result of a run that failed.

    outs = Outputs()
    check_output_file(args.json, "--json")      # before the model is even loaded
    ...expensive work...
    outs.json(args.json, payload)                # staged: invisible until commit
    store.record(...)                            # a failure here discards the staged files
    outs.commit()                                # all of them appear, or (on error) none
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import InputError


def _first_existing(p: Path) -> Path:
    q = p.absolute()
    while not q.exists() and not q.is_symlink() and q != q.parent:
        q = q.parent
    return q


def _writable_folder(p: Path, option: str) -> Path:
    """The folder where `p` (or the first missing folder above it) will be created, checked by
    creating and removing a probe file there (os.access is wrong for root and read-only mounts)."""
    parent = _first_existing(p.absolute().parent)
    if not parent.is_dir():
        raise InputError(f"{option} {p}: {parent} is a file, not a folder; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".deploykit-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"{option} {p}: cannot write in {parent} ({e.strerror or e}); choose "
                         "another path") from None
    return parent


def check_output_file(path: str | os.PathLike | None, option: str, *,
                      suffix: str | None = None) -> Path | None:
    """A one-line InputError now, before any work, if `path` cannot become a file."""
    if path is None:
        return None
    p = Path(path)
    if not str(path).strip():
        raise InputError(f"{option}: empty path")
    if suffix and not p.name.endswith(suffix):
        raise InputError(f"{option} must be a {suffix} path, got {p}")
    if p.is_dir():
        raise InputError(f"{option} {p} is a directory; give a file path")
    if p.exists() and not p.is_file():
        raise InputError(f"{option} {p} exists and is not a regular file; choose another path")
    _writable_folder(p, option)
    return p


def check_output_dir(path: str | os.PathLike | None, option: str) -> Path | None:
    """A one-line InputError now if `path` cannot be (or become) a writable folder."""
    if path is None:
        return None
    p = Path(path)
    if not str(path).strip():
        raise InputError(f"{option}: empty path")
    if p.exists() and not p.is_dir():
        raise InputError(f"{option} {p} is a file, not a folder; choose a folder path")
    if p.is_dir():
        _writable_folder(p / "x", option)
    else:
        _writable_folder(p, option)
    return p


def check_distinct(**paths: str | os.PathLike | None) -> None:
    """Two options naming the same output file would overwrite each other."""
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        if path is None:
            continue
        key = Path(path).absolute()
        if key in seen:
            raise InputError(f"{seen[key]} and {option} name the same file {path}; give each "
                             "its own path")
        seen[key] = option


class Outputs:
    """Files (and folders) staged beside their destinations, committed together."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, destination)
        self._remove: list[Path] = []

    def path(self, dest: str | os.PathLike) -> Path:
        """A temporary file that becomes `dest` on commit."""
        dest = Path(dest)
        where = _first_existing(dest.absolute().parent)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=where)
        except OSError as e:
            raise InputError(f"cannot write {dest}: {e.strerror or e}; choose another "
                             "path") from None
        os.close(fd)
        self._staged.append((Path(tmp), dest))
        return Path(tmp)

    def folder(self, dest: str | os.PathLike) -> Path:
        """A temporary folder whose entries move into `dest` on commit (created if missing)."""
        dest = Path(dest)
        where = _first_existing(dest.absolute().parent)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=where))
        except OSError as e:
            raise InputError(f"cannot write {dest}: {e.strerror or e}; choose another "
                             "path") from None
        self._staged.append((tmp, dest))
        return tmp

    def text(self, dest: str | os.PathLike, text: str) -> None:
        self.path(dest).write_text(text)

    def bytes(self, dest: str | os.PathLike, data: bytes) -> None:
        self.path(dest).write_bytes(data)

    def json(self, dest: str | os.PathLike, data: Any) -> None:
        from .fsutil import dumps_json

        self.text(dest, dumps_json(data))

    def copy(self, src: str | os.PathLike, dest: str | os.PathLike) -> None:
        shutil.copyfile(src, self.path(dest))

    def remove(self, dest: str | os.PathLike) -> None:
        """Delete `dest` on commit (a stale output a successful run must not leave behind)."""
        self._remove.append(Path(dest))

    def commit(self) -> None:
        umask = os.umask(0)
        os.umask(umask)
        for tmp, dest in self._staged:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if tmp.is_dir():
                dest.mkdir(exist_ok=True)
                for entry in sorted(tmp.iterdir()):
                    os.replace(entry, dest / entry.name)
                tmp.rmdir()
            else:
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual mode
                os.replace(tmp, dest)
        for dest in self._remove:
            if dest.is_file() or dest.is_symlink():
                dest.unlink()
        self._staged.clear()
        self._remove.clear()

    def discard(self) -> None:
        for tmp, _ in self._staged:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()
        self._staged.clear()
        self._remove.clear()

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()  # whatever was not committed (an error, ^C, SIGTERM) leaves nothing
