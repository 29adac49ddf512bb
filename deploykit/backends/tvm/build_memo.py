"""TVM builds reused within one process.

Why: the gate (gate/rounds.py) compiles every model once per round to get fresh sessions (ORT's
session lottery), and `profile --compare`, retries and tests compile a model again too. A TVM build
of one model for one target is deterministic and costs seconds of host CPU (a Relax build ~1.5 s
for a small CNN, the cross-linked export of a remote library, the check against ORT), so a
10-round check of two models rebuilt the same two executables 20 times. A later compile takes the
stored build and only creates what must be fresh: a VM here, a session on the device.

The key is the model's sha256 and everything of the target that the build depends on: its name,
config (threads, tuning_db, cross compiler, ...), the resolved target dict (`mcpu = host`), the
cache root (libraries and tuning databases live there) and the state of its tuning database (its
files' names, sizes and mtimes: after `deploykit tune`, the next compile builds anew).
An entry is stored only once a compile has passed its check against ORT; the memo keeps the few
most recent builds (an executable holds the model's compiled code and weights).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core import ModelRef, stable_hash

MAX_ENTRIES = 4  # the models of a check or a `profile --compare`, not a whole search's candidates


@dataclass(frozen=True)
class Entry:
    built: Any  # build.Built; for a remote target without its executable (the device loads `lib`)
    lib: Path | None = None  # remote: the exported library
    check: dict | None = None  # local: the ORT check's result for this executable on this CPU


class BuildMemo:
    """A small LRU of builds, shared by the threads of one process."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: Entry) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def drop(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


MEMO = BuildMemo()


def build_key(model: ModelRef, target) -> str:
    """The identity of `model`'s build for `target` (see the module docstring)."""
    from platformdirs import user_cache_dir

    from .build import tuning_dir

    tdict = target.tvm_target
    db = tuning_dir(model.sha256, tdict, target.config.get("tuning_db"))
    return stable_hash(model.sha256, target.name, dict(target.config), tdict,
                       user_cache_dir("deploykit"), str(db), _files_state(db))


def _files_state(folder: Path) -> list:
    """(name, size, mtime) of the files in `folder`; empty when it does not exist."""
    try:
        files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    except OSError:
        return []
    out = []
    for p in files:
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p.name, st.st_size, st.st_mtime_ns))
    return out
