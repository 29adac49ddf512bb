"""The results store: every profile run, with its raw samples and the model's lineage, in SQLite
(one file, the zero-set-up default) or PostgreSQL (one database shared by a team's runners).

Why one transaction per write: several `deploykit` processes, on one machine or many, may write at
once, and a process (or a database server) that dies mid-run must lose at most the run it was
writing: a transaction that was not committed simply never appears. Every statement and row
conversion lives here, once; `store_backends.py` supplies the connection and the few dialect words,
`store_schema.py` the tables and their migrations.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .core import LatencyReport, ModelRef
from .errors import StoreError
from .store_backends import StoreLocation, open_backend, parse_location
from .store_schema import SCHEMA_VERSION, init_schema


def default_store_path() -> StoreLocation:
    """Where results go unless told otherwise: $DEPLOYKIT_STORE (a file path or a postgresql://
    URL), else the user's data folder."""
    import os

    if os.environ.get("DEPLOYKIT_STORE"):
        return parse_location(os.environ["DEPLOYKIT_STORE"])
    from platformdirs import user_data_dir

    return parse_location(Path(user_data_dir("deploykit")) / "results.sqlite")


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
    """Open (creating or upgrading if needed) the results database at `location`: a file path
    (SQLite) or a postgresql://USER@HOST:PORT/DB URL (see `store_backends.parse_location`)."""

    def __init__(self, location: str | Path | StoreLocation):
        loc = parse_location(location)
        self.location = loc
        self.path = loc.path  # the SQLite file, None for a server
        self.shown = loc.shown  # what messages say: never the password
        if loc.path is not None:
            from .store_open import check_store

            check_store(loc.path, SCHEMA_VERSION)  # before anything could change a foreign file
        self._b = open_backend(loc)  # StoreError when the file or server cannot be opened
        try:
            init_schema(self._b, self.shown)
        except self._b.errors as e:
            msg = self._b.message(e)
            self.close()
            raise StoreError(f"cannot open results store {self.shown}: {msg}") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._b is not None:
            try:
                self._b.close()
            except Exception:  # closing a connection the server already dropped
                pass
            self._b = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    # ---- writing -------------------------------------------------------------------------

    def record_model(self, model: ModelRef) -> None:
        """Insert or update a model's lineage (path, parent, transform, config)."""
        try:
            with self._b.transaction() as db:
                self._upsert_model(db, model)
        except self._b.errors as e:
            raise self._write_error(e) from None

    @staticmethod
    def _upsert_model(db, m: ModelRef) -> None:
        db.execute(
            "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(sha256) DO UPDATE SET "
            "path = excluded.path,"
            " parent_sha256 = coalesce(excluded.parent_sha256, models.parent_sha256),"
            " transform = coalesce(excluded.transform, models.transform),"
            " config = CASE WHEN excluded.config = '{}' THEN models.config"
            " ELSE excluded.config END",
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
            with self._b.transaction() as db:
                if model is not None:
                    self._upsert_model(db, model)
                else:
                    db.execute("INSERT INTO models (sha256, path, created) VALUES (?, ?, ?) "
                               "ON CONFLICT DO NOTHING",
                               (report.model_sha256, report.model_path, time.time()))
                db.execute("INSERT INTO artifacts VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                           (report.artifact_id, report.model_sha256, report.target,
                            json.dumps(dict(report.target_config), sort_keys=True, default=str)))
                cur = db.execute(
                    "INSERT INTO runs (artifact_id, model_sha256, model_path, target, env, created,"
                    " n, median_ms, p90_ms, p99_ms, ci_lo_ms, ci_hi_ms, stop_reason, labels,"
                    " label, report, state) VALUES (" + ", ".join("?" * 17) + ")"
                    " RETURNING id",
                    (report.artifact_id, report.model_sha256, report.model_path, report.target,
                     json.dumps(dict(report.env), sort_keys=True, default=str), report.created,
                     len(samples), *(_nan_to_none(v) for v in (
                         report.median_ms, report.p90_ms, report.p99_ms, lo, hi)),
                     report.stop_reason, json.dumps(list(report.labels)), label,
                     json.dumps(d, default=str), d["state"]))
                run_id = int(cur.fetchall()[0][0])
                db.execute("INSERT INTO samples VALUES (?, ?, ?)",
                           (run_id, len(samples), samples.tobytes()))
                if report.per_op:
                    db.executemany("INSERT INTO per_op (run_id, name, op_type, total_ms, share,"
                                   " calls, pos) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                   [(run_id, o.name, o.op_type, o.total_ms, o.share, o.calls, i)
                                    for i, o in enumerate(report.per_op)])
                if _key is not None:
                    db.execute("INSERT INTO measurements VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                               "SET run_id = excluded.run_id", (_key, run_id))
        except self._b.errors as e:
            raise self._write_error(e) from None
        return run_id

    def _write_error(self, e: BaseException) -> StoreError:
        return StoreError(f"cannot write to results store {self.shown}: {self._b.message(e)}")

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
        r = self._read("SELECT run_id FROM measurements WHERE key = ?", (key,))
        if not r:
            return None
        rep = self.report(r[0][0])
        return rep if allow_contaminated or rep.validity.state != "contaminated" else None

    def report(self, run_id: int) -> LatencyReport:
        """The full LatencyReport of a stored run, raw samples included."""
        r = self._read("SELECT runs.report, samples.data FROM runs JOIN samples "
                       "ON samples.run_id = runs.id WHERE runs.id = ?", (int(run_id),))
        if not r:
            raise StoreError(f"no run {run_id} in results store {self.shown}")
        d = json.loads(r[0][0])
        d["samples_ms"] = np.frombuffer(bytes(r[0][1]), dtype="<f8").tolist()
        ops = self._read("SELECT name, op_type, total_ms, share, calls FROM per_op "
                         "WHERE run_id = ? ORDER BY pos", (int(run_id),))
        # the model's names for each row (layer, module) live in the report JSON only
        named = {o.get("name"): o for o in d.get("per_op") or () if isinstance(o, dict)}
        d["per_op"] = [{**dict(zip(("name", "op_type", "total_ms", "share", "calls"), row)),
                        **{k: str(named.get(row[0], {}).get(k) or "") for k in ("layer", "module")}}
                       for row in ops]
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
                for r in self._read(sql, params)]

    def series(self, model: str | None = None, target: str | None = None, *,
               model_path: str | None = None) -> list[RunRow]:
        """A model's runs on one target, oldest first: the input of change-point detection."""
        return self.runs(model=model, target=target, model_path=model_path, oldest_first=True)

    def model(self, sha256: str) -> ModelRef | None:
        r = self._read("SELECT sha256, path, parent_sha256, transform, config FROM models "
                       "WHERE sha256 = ?", (sha256,))
        if not r:
            return None
        sha, path, parent, transform, config = r[0]
        return ModelRef(path=Path(path or ""), sha256=sha, parent_sha256=parent,
                        transform=transform, config=json.loads(config))

    def resolve_model(self, prefix: str) -> str | None:
        """The full sha256 of the one stored model whose sha256 starts with `prefix`."""
        rows = self._read("SELECT sha256 FROM models WHERE sha256 LIKE ? LIMIT 2",
                          (prefix.lower() + "%",))
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
        """The database engine's own check, and every run complete: its samples all there."""
        try:
            if not self._b.engine_check():
                return False
        except self._b.errors as e:
            raise StoreError(f"cannot read results store {self.shown}: {self._b.message(e)}") \
                from None
        bad = self._read("SELECT count(*) FROM runs LEFT JOIN samples ON samples.run_id = runs.id"
                         " WHERE samples.run_id IS NULL OR samples.n <> runs.n"
                         " OR length(samples.data) <> 8 * samples.n")
        return bad[0][0] == 0

    def _read(self, sql: str, params: Any = ()) -> list[tuple]:
        try:
            return self._b.query(sql, params)
        except self._b.errors as e:
            raise StoreError(f"cannot read results store {self.shown}: {self._b.message(e)}") \
                from None


def _nan_to_none(x: float) -> float | None:
    return None if x != x else float(x)


def _none_to_nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)
