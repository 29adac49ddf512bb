"""Where the results store is, and whether it is usable, decided before any expensive work and
without changing the file: a command that would time a model for minutes and then fail to record
the run must fail first, and a file that is not deploykit's must be left exactly as it was (no
WAL switch, no tables created in it).
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from urllib.parse import quote

from .errors import StoreError



def _remedy(path: Path) -> str:
    return (f"move {path} away (deploykit creates a fresh store), pass another --store, or "
            "--no-store")


def check_store(path: str | Path, schema_version: int) -> None:
    """StoreError now if `path` cannot be deploykit's results store; reads only."""
    path = Path(path)
    if path.is_dir():
        raise StoreError(f"results store {path} is a folder; give the path of an SQLite file")
    if not path.exists():
        parent = path.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise StoreError(f"results store {path}: {parent} is a file, not a folder")
        try:
            tempfile.TemporaryFile(dir=parent).close()
        except OSError as e:
            raise StoreError(f"results store {path}: cannot create it in {parent} "
                             f"({e.strerror or e}); pass another --store, or --no-store") from None
        return
    if not path.is_file():
        raise StoreError(f"results store {path} is not a regular file; {_remedy(path)}")
    if path.stat().st_size == 0:
        return  # an empty file is an empty SQLite database: deploykit initializes it
    try:
        db = sqlite3.connect(f"file:{quote(str(path.absolute()))}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open results store {path}: {e}; {_remedy(path)}") from None
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = None
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = row[0] if row else None
    except sqlite3.DatabaseError as e:
        raise StoreError(f"results store {path} is not a readable SQLite database ({e}: corrupt, "
                         f"or another kind of file); {_remedy(path)}") from None
    finally:
        db.close()
    if tables and version is None:
        raise StoreError(f"{path} is an SQLite database but not a deploykit results store "
                         f"(tables: {', '.join(sorted(tables))}); it was left unchanged: pass "
                         "another --store, or --no-store")
    try:
        too_new = version is not None and int(version) > schema_version
    except ValueError:
        raise StoreError(f"results store {path} has an unreadable schema version {version!r}; "
                         f"{_remedy(path)}") from None
    if too_new:
        raise StoreError(f"results store {path} has schema version {version}, newer than this "
                         f"deploykit understands ({schema_version}): upgrade deploykit or use "
                         "another --store")
