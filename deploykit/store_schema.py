"""The results store's schema: the tables as deploykit 0.1 wrote them (version 1) and the
migrations since, so a new store and an upgraded one go through the same statements, in one
schema transaction (several processes may open an old store at once)."""

from __future__ import annotations

import re

from .errors import StoreError

SCHEMA_VERSION = 3

# The schema as deploykit 0.1 wrote it (version 1); later versions are the migrations below, so
# a new store and an upgraded one go through the same statements.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    sha256 TEXT PRIMARY KEY, path TEXT, parent_sha256 TEXT, transform TEXT,
    config TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS artifacts (
    id TEXT PRIMARY KEY, model_sha256 TEXT NOT NULL, target TEXT NOT NULL,
    target_config TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    artifact_id TEXT NOT NULL REFERENCES artifacts(id),
    model_sha256 TEXT NOT NULL REFERENCES models(sha256),
    model_path TEXT, target TEXT NOT NULL, env TEXT NOT NULL, created REAL NOT NULL,
    n INTEGER NOT NULL, median_ms REAL, p90_ms REAL, p99_ms REAL, ci_lo_ms REAL, ci_hi_ms REAL,
    stop_reason TEXT, labels TEXT NOT NULL DEFAULT '[]', label TEXT, report TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    n INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS per_op (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE, name TEXT NOT NULL,
    op_type TEXT NOT NULL, total_ms REAL NOT NULL, share REAL NOT NULL, calls INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS measurements (
    key TEXT PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS runs_by_model ON runs(model_sha256, target, created);
CREATE INDEX IF NOT EXISTS runs_by_path ON runs(model_path, target, created);
CREATE INDEX IF NOT EXISTS per_op_by_run ON per_op(run_id);
"""

# version -> {dialect: statements}. 2: per_op rows get an explicit order (PostgreSQL has no rowid);
# rows written before keep their insertion order.
_MIGRATIONS: dict[int, dict[str, tuple[str, ...]]] = {
    2: {"sqlite": ("ALTER TABLE per_op ADD COLUMN pos INTEGER",
                   "UPDATE per_op SET pos = rowid"),
        "postgresql": ("ALTER TABLE per_op ADD COLUMN pos INTEGER",
                       "UPDATE per_op SET pos = o.rn FROM (SELECT ctid AS c, row_number() OVER "
                       "(ORDER BY ctid) AS rn FROM per_op) o WHERE per_op.ctid = o.c")},
    # 3: runs carry their measurement's validity state (NULL in older rows: derived from the
    # stored report when read)
    # (idempotent: a store an unreleased build gave the column keeps it)
    3: {"sqlite": ("ALTER TABLE runs ADD COLUMN state TEXT",),
        "postgresql": ("ALTER TABLE runs ADD COLUMN IF NOT EXISTS state TEXT",)},
}


def init_schema(b, shown: str) -> None:
    """Create the schema in an empty store, or bring an older one up to SCHEMA_VERSION, in one
    schema transaction; a store newer than this deploykit is refused."""
    version = _version(b, shown)
    if version == SCHEMA_VERSION:
        return
    if version is None or version < SCHEMA_VERSION:
        with b.schema_transaction() as db:
            version = _version(b, shown)  # another process may have done it meanwhile
            if version is None:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(b.ddl(stmt))
                db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
                version = 1
            if version < SCHEMA_VERSION:
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    for stmt in _MIGRATIONS[v][b.dialect]:
                        if not _column_exists(b, stmt):
                            db.execute(b.ddl(stmt))
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                           (str(SCHEMA_VERSION),))
                version = SCHEMA_VERSION
    if version > SCHEMA_VERSION:
        raise StoreError(f"results store {shown} has schema version {version}, newer than "
                         f"this deploykit understands ({SCHEMA_VERSION}): upgrade deploykit or "
                         "use another --store")


def _version(b, shown: str) -> int | None:
    if not b.has_table("meta"):
        return None
    r = b.query("SELECT value FROM meta WHERE key = 'schema_version'")
    if not r:
        return None
    try:
        return int(r[0][0])
    except ValueError:
        raise StoreError(f"results store {shown} has a malformed schema version "
                         f"{r[0][0]!r}") from None


def _column_exists(b, stmt: str) -> bool:
    """Is `stmt` an SQLite `ALTER TABLE t ADD COLUMN c` whose column is already there?"""
    m = re.match(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", stmt)
    if m is None or b.dialect != "sqlite":
        return False
    return m.group(2) in {r[1] for r in b.query(f"PRAGMA table_info({m.group(1)})")}
