"""The results store: every profile run, with its raw samples and the model's lineage, in SQLite.

Why SQLite in WAL mode with one transaction per write: two `deploykit profile` processes may write
at once, and a process killed mid-run must lose at most the run it was writing. WAL lets readers
and one writer proceed together; `BEGIN IMMEDIATE` plus a busy timeout serialises writers; a
transaction that was not committed simply never appears.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .core import LatencyReport, ModelRef
from .errors import StoreError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0


def default_store_path() -> Path:
    """Where results go unless told otherwise: $DEPLOYKIT_STORE, else the user's data folder."""
    import os

    if os.environ.get("DEPLOYKIT_STORE"):
        return Path(os.environ["DEPLOYKIT_STORE"])
    from platformdirs import user_data_dir

    return Path(user_data_dir("deploykit")) / "results.sqlite"

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
    stop_reason TEXT, labels TEXT NOT NULL DEFAULT '[]', label TEXT, report TEXT NOT NULL,
    state TEXT);
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


@dataclass(frozen=True)
class RunRow:
    """One stored run's summary (what `deploykit history` lists); the full report via `report()`."""

    id: int
    created: float
    model_sha256: str
    model_path: str | None
    target: str
    artifact_id: str
    n: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    ci95_ms: tuple[float, float]
    stop_reason: str
    labels: tuple[str, ...]
    label: str | None
    env: Mapping[str, Any]
    state: str = "clean"  # the measurement's validity state (validity.py)


class Store:
    """Open (creating if needed) the results database at `path`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S,
                                       isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL survives process crashes
            self._db.execute("PRAGMA foreign_keys = ON")
            self._init_schema()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open results store {self.path}: {e}") from None

    def _init_schema(self) -> None:
        row = self._version()
        if row is None:
            with self._write() as db:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(stmt)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
            row = self._version()
        if row is None or int(row) > SCHEMA_VERSION:
            raise StoreError(f"results store {self.path} has schema version {row}, newer than this "
                             f"deploykit understands ({SCHEMA_VERSION}): upgrade deploykit or use "
                             "another --store")
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(runs)")}
        if "state" not in cols:  # stores written before runs carried their state: add the column
            with self._write() as db:  # (NULL: computed from the stored report when read)
                if "state" not in {r[1] for r in db.execute("PRAGMA table_info(runs)")}:
                    db.execute("ALTER TABLE runs ADD COLUMN state TEXT")

    def _version(self) -> str | None:
        try:
            r = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:  # no meta table yet
            return None
        return r[0] if r else None

    class _Tx:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, *_):
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _write(self) -> "_Tx":
        """One write transaction; `BEGIN IMMEDIATE` takes the write lock up front (no deadlock)."""
        return self._Tx(self._db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    # ---- writing -------------------------------------------------------------------------

    def record_model(self, model: ModelRef) -> None:
        """Insert or update a model's lineage (path, parent, transform, config)."""
        try:
            with self._write() as db:
                self._upsert_model(db, model)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot write to results store {self.path}: {e}") from None

    @staticmethod
    def _upsert_model(db: sqlite3.Connection, m: ModelRef) -> None:
        db.execute(
            "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(sha256) DO UPDATE SET "
            "path = excluded.path, parent_sha256 = coalesce(excluded.parent_sha256, parent_sha256),"
            " transform = coalesce(excluded.transform, transform),"
            " config = CASE WHEN excluded.config = '{}' THEN config ELSE excluded.config END",
            (m.sha256, str(m.path), m.parent_sha256, m.transform,
             json.dumps(dict(m.config), sort_keys=True, default=str), time.time()))

    def record_report(self, report: LatencyReport, *, label: str | None = None,
                      model: ModelRef | None = None, _key: str | None = None) -> int:
        """Store one run (summary, raw samples, per-op) in one transaction; returns its id.

        `model` (a ModelRef of the profiled file) records its lineage; without it the model row
        is created from the report alone and existing lineage is kept.
        """
        if model is not None and model.sha256 != report.model_sha256:
            raise StoreError(f"model {model.sha256[:12]} does not match the report's model "
                             f"{report.model_sha256[:12]}")
        d = report.to_dict()
        samples = np.asarray(report.samples_ms, dtype="<f8")
        d.pop("samples_ms")
        lo, hi = report.ci95_ms if len(samples) else (float("nan"), float("nan"))
        try:
            with self._write() as db:
                if model is not None:
                    self._upsert_model(db, model)
                else:
                    db.execute("INSERT OR IGNORE INTO models (sha256, path, created) "
                               "VALUES (?, ?, ?)",
                               (report.model_sha256, report.model_path, time.time()))
                db.execute("INSERT OR IGNORE INTO artifacts VALUES (?, ?, ?, ?)",
                           (report.artifact_id, report.model_sha256, report.target,
                            json.dumps(dict(report.target_config), sort_keys=True, default=str)))
                cur = db.execute(
                    "INSERT INTO runs (artifact_id, model_sha256, model_path, target, env, created,"
                    " n, median_ms, p90_ms, p99_ms, ci_lo_ms, ci_hi_ms, stop_reason, labels,"
                    " label, report, state) VALUES (" + ", ".join("?" * 17) + ")",
                    (report.artifact_id, report.model_sha256, report.model_path, report.target,
                     json.dumps(dict(report.env), sort_keys=True, default=str), report.created,
                     len(samples), *(_nan_to_none(v) for v in (
                         report.median_ms, report.p90_ms, report.p99_ms, lo, hi)),
                     report.stop_reason, json.dumps(list(report.labels)), label,
                     json.dumps(d, default=str), d["state"]))
                run_id = int(cur.lastrowid)
                db.execute("INSERT INTO samples VALUES (?, ?, ?)",
                           (run_id, len(samples), samples.tobytes()))
                db.executemany("INSERT INTO per_op VALUES (?, ?, ?, ?, ?, ?)",
                               [(run_id, o.name, o.op_type, o.total_ms, o.share, o.calls)
                                for o in report.per_op])
                if _key is not None:
                    db.execute("INSERT OR REPLACE INTO measurements VALUES (?, ?)", (_key, run_id))
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot write to results store {self.path}: {e}") from None
        return run_id

    def put_measurement(self, key: str, report: LatencyReport, *,
                        model: ModelRef | None = None) -> int:
        """Record `report` and remember it under `key`, so a killed search resumes without
        re-measuring (the key says what was measured: model, target, plan, inputs)."""
        return self.record_report(report, model=model, label=f"cache:{key}", _key=key)

    # ---- reading -------------------------------------------------------------------------

    def get_measurement(self, key: str, *, allow_contaminated: bool = False
                        ) -> LatencyReport | None:
        """The report remembered under `key`; None when there is none, or when it was taken
        under foreign load (unless allowed): a contaminated measurement is never reused as if it
        were clean, it is measured again (and the new run replaces it under `key`)."""
        r = self._read("SELECT run_id FROM measurements WHERE key = ?", (key,)).fetchone()
        if r is None:
            return None
        rep = self.report(r[0])
        return rep if allow_contaminated or rep.validity.state != "contaminated" else None

    def report(self, run_id: int) -> LatencyReport:
        """The full LatencyReport of a stored run, raw samples included."""
        r = self._read("SELECT runs.report, samples.data FROM runs JOIN samples "
                       "ON samples.run_id = runs.id WHERE runs.id = ?", (int(run_id),)).fetchone()
        if r is None:
            raise StoreError(f"no run {run_id} in results store {self.path}")
        d = json.loads(r[0])
        d["samples_ms"] = np.frombuffer(r[1], dtype="<f8").tolist()
        d["per_op"] = [dict(zip(("name", "op_type", "total_ms", "share", "calls"), row))
                       for row in self._read("SELECT name, op_type, total_ms, share, calls FROM "
                                             "per_op WHERE run_id = ? ORDER BY rowid", (run_id,))]
        return LatencyReport.from_dict(d)

    def runs(self, model: str | None = None, target: str | None = None,
             since: float | None = None, limit: int | None = None,
             model_path: str | None = None, oldest_first: bool = False) -> list[RunRow]:
        """Stored runs, newest first. `model` is a sha256 or a prefix of one; `model_path`
        selects every version of a file (the series a CI job produces as the model changes)."""
        where, params = [], []
        if model:
            where.append("model_sha256 LIKE ?")
            params.append(model.lower() + "%")
        if model_path:
            where.append("model_path = ?")
            params.append(model_path)
        if target:
            where.append("target = ?")
            params.append(target)
        if since is not None:
            where.append("created >= ?")
            params.append(since)
        sql = ("SELECT id, created, model_sha256, model_path, target, artifact_id, n, median_ms,"
               " p90_ms, p99_ms, ci_lo_ms, ci_hi_ms, stop_reason, labels, label, env, state"
               " FROM runs")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY created {'ASC' if oldest_first else 'DESC'}, id " \
               f"{'ASC' if oldest_first else 'DESC'}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [RunRow(id=r[0], created=r[1], model_sha256=r[2], model_path=r[3], target=r[4],
                       artifact_id=r[5], n=r[6], median_ms=_none_to_nan(r[7]),
                       p90_ms=_none_to_nan(r[8]), p99_ms=_none_to_nan(r[9]),
                       ci95_ms=(_none_to_nan(r[10]), _none_to_nan(r[11])), stop_reason=r[12],
                       labels=tuple(json.loads(r[13])), label=r[14], env=json.loads(r[15]),
                       state=r[16] or self.report(r[0]).validity.state)
                for r in self._read(sql, params).fetchall()]

    def series(self, model: str | None = None, target: str | None = None, *,
               model_path: str | None = None) -> list[RunRow]:
        """A model's runs on one target, oldest first: the input of change-point detection."""
        return self.runs(model=model, target=target, model_path=model_path, oldest_first=True)

    def model(self, sha256: str) -> ModelRef | None:
        r = self._read("SELECT sha256, path, parent_sha256, transform, config FROM models "
                       "WHERE sha256 = ?", (sha256,)).fetchone()
        if r is None:
            return None
        return ModelRef(path=Path(r[1] or ""), sha256=r[0], parent_sha256=r[2], transform=r[3],
                        config=json.loads(r[4]))

    def resolve_model(self, prefix: str) -> str | None:
        """The full sha256 of the one stored model whose sha256 starts with `prefix`."""
        rows = self._read("SELECT sha256 FROM models WHERE sha256 LIKE ? LIMIT 2",
                          (prefix.lower() + "%",)).fetchall()
        return rows[0][0] if len(rows) == 1 else None

    def lineage(self, sha256: str) -> list[ModelRef]:
        """The model and its ancestors, newest first (how was this made)."""
        chain: list[ModelRef] = []
        seen: set[str] = set()
        cur: str | None = sha256
        while cur and cur not in seen:
            seen.add(cur)
            m = self.model(cur)
            if m is None:
                break
            chain.append(m)
            cur = m.parent_sha256
        return chain

    def integrity_ok(self) -> bool:
        return self._read("PRAGMA integrity_check").fetchone()[0] == "ok"

    def _read(self, sql: str, params: Any = ()) -> Iterator[tuple]:
        try:
            return self._db.execute(sql, params)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot read results store {self.path}: {e}") from None


def _nan_to_none(x: float) -> float | None:
    return None if x != x else float(x)


def _none_to_nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)
