"""Where the results store lives, and the two databases it can live in: a SQLite file or PostgreSQL.

Why two: a SQLite file needs no set-up (one developer, one machine); a team's CI runners need one
shared database, so that a run stored by runner A is listed, trended and reused by runner B.
Why so little here: `store.py` keeps every statement and row conversion; a back end only opens the
connection, runs one transaction, translates the few words the dialects spell differently
(placeholders, column types, the physical row order) and turns its driver's errors into
`StoreError`s with the password masked. psycopg is imported only when a postgresql:// store is used.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import InputError, StoreError

BUSY_TIMEOUT_S = 60.0  # longest wait for another writer's lock before a write fails
CONNECT_TIMEOUT_S = 10  # a PostgreSQL server that does not answer within this is an error
PG_SCHEMES = ("postgresql", "postgres")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class StoreLocation:
    """A parsed `--store` / $DEPLOYKIT_STORE value: a file path or a postgresql:// URL."""

    path: Path | None = None  # SQLite file
    url: str | None = None  # PostgreSQL URL (may hold a password: never print it, use `shown`)

    @property
    def shown(self) -> str:
        """How the location appears in messages: the path, or the URL with its password masked."""
        return str(self.path) if self.url is None else mask_url(self.url)

    def __str__(self) -> str:
        return self.shown

    def exists(self) -> bool:
        """False only for a store file that was never created (a server is asked when opened)."""
        return self.url is not None or (self.path is not None and self.path.is_file())


def parse_location(spec: str | Path | StoreLocation) -> StoreLocation:
    """The one place that decides what a store argument means; anything else is refused."""
    if isinstance(spec, StoreLocation):
        return spec
    if isinstance(spec, Path):
        return StoreLocation(path=spec)
    text = str(spec).strip()
    if not text:
        raise InputError("empty results store: pass a file path or postgresql://USER@HOST:PORT/DB")
    m = _SCHEME.match(text)
    if m is None:
        return StoreLocation(path=Path(text))
    if m.group(1).lower() in PG_SCHEMES:
        return StoreLocation(url=text)
    raise InputError(f"unsupported results store {mask_url(text)!r}: pass a file path (SQLite) "
                     "or postgresql://USER@HOST:PORT/DB")


def mask_url(url: str) -> str:
    """`url` with any password (user:PASSWORD@ or ?password=...) replaced by ***."""
    url = re.sub(r"(://[^/@?#]*?:)[^/@?#]*@", r"\1***@", url)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


def _password(url: str) -> str | None:
    m = re.search(r"://[^/@?#]*?:([^/@?#]*)@", url) or re.search(r"(?i)[?&]password=([^&#]*)", url)
    return m.group(1) if m and m.group(1) else None


def open_backend(loc: StoreLocation) -> "SqliteBackend | PostgresBackend":
    return PostgresBackend(loc) if loc.url is not None else SqliteBackend(loc)


class SqliteBackend:
    """A SQLite file in WAL mode: readers and one writer proceed together; `BEGIN IMMEDIATE` plus
    a busy timeout serialises writers; an uncommitted transaction never appears."""

    dialect = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.DatabaseError,)

    def __init__(self, loc: StoreLocation):
        assert loc.path is not None
        self.shown = loc.shown
        self._db = None
        try:
            loc.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(loc.path), timeout=BUSY_TIMEOUT_S,
                                       isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL survives a crash
            self._db.execute("PRAGMA foreign_keys = ON")
        except (OSError, sqlite3.DatabaseError) as e:
            if self._db is not None:
                self._db.close()
            raise StoreError(f"cannot open results store {self.shown}: {self.message(e)}") \
                from None

    def message(self, e: BaseException) -> str:
        return " ".join(str(e).split())

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; `BEGIN IMMEDIATE` takes the write lock up front (no deadlock)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def schema_transaction(self):
        """The transaction that creates or migrates the schema: `BEGIN IMMEDIATE` already
        serialises it with every other writer."""
        return self.transaction()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._db.execute(sql, params).fetchall()

    def has_table(self, name: str) -> bool:
        return bool(self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                               (name,)))

    @staticmethod
    def ddl(stmt: str) -> str:
        return stmt

    def engine_check(self) -> bool:
        return self.query("PRAGMA integrity_check")[0][0] == "ok"

    def close(self) -> None:
        self._db.close()


class _PgTx:
    """psycopg's connection with SQLite's `?` placeholders accepted (the shared SQL uses `?`)."""

    def __init__(self, conn):
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()):
        return self.conn.execute(_pg_sql(sql), params)

    def executemany(self, sql: str, rows) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_pg_sql(sql), rows)


def _pg_sql(sql: str) -> str:
    assert "%" not in sql, "shared SQL must not contain % (psycopg's placeholder character)"
    return sql.replace("?", "%s")


class PostgresBackend:
    """A PostgreSQL database shared by many runners. Each write is one transaction (READ
    COMMITTED: concurrent runs insert distinct rows; the shared model/artifact rows are upserts);
    a run whose connection drops before COMMIT is rolled back by the server."""

    dialect = "postgresql"
    # schema creation and migration are serialised by this advisory lock (any constant will do)
    SCHEMA_LOCK = 0x64_6B_73_74  # "dkst"

    def __init__(self, loc: StoreLocation):
        assert loc.url is not None
        self.shown = loc.shown
        self._secret = _password(loc.url)
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise StoreError(f"results store {self.shown} needs the PostgreSQL driver: "
                             "pip install 'deploykit[postgres]'") from None
        self.errors = (psycopg.Error,)
        self._psycopg = psycopg
        try:
            params = conninfo_to_dict(loc.url)
        except psycopg.Error as e:
            raise StoreError(f"bad results store URL {self.shown}: {self.message(e)}") from None
        params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
        params.setdefault("application_name", "deploykit")
        params.setdefault("keepalives", "1")  # a search holds its connection for hours
        params.setdefault("keepalives_idle", "60")
        # wait at most as long as SQLite's busy timeout for another writer's row lock
        params["options"] = (params.get("options", "") +
                             f" -c lock_timeout={int(BUSY_TIMEOUT_S * 1000)}").strip()
        self._params = params
        self._connect()

    def _connect(self) -> None:
        try:
            self._conn = self._psycopg.connect(autocommit=True, **self._params)
        except self._psycopg.Error as e:
            raise StoreError(f"cannot connect to results store {self.shown}: "
                             f"{self.message(e)}") from None

    def _reconnect_if_lost(self, e: BaseException) -> bool:
        """After the server dropped an idle connection (a restart, a fail-over): connect again
        and say so, so that the statement that found out (nothing of it was applied) is retried."""
        if not isinstance(e, self._psycopg.OperationalError) or not self._conn.broken:
            return False
        self._conn.close()
        self._connect()
        return True

    def message(self, e: BaseException) -> str:
        """The driver's message on one line, with the password (should it appear) masked."""
        text = " ".join(str(e).split())
        if self._secret:
            text = text.replace(self._secret, "***")
        return text or type(e).__name__

    @contextmanager
    def transaction(self) -> Iterator[_PgTx]:
        """One transaction; if BEGIN finds the connection dead, reconnect once (nothing was sent
        yet). A connection lost after BEGIN fails the write: the server rolls it back."""
        tx = self._conn.transaction()
        try:
            tx.__enter__()
        except self._psycopg.Error as e:
            if not self._reconnect_if_lost(e):
                raise
            tx = self._conn.transaction()
            tx.__enter__()
        try:
            yield _PgTx(self._conn)
        except BaseException as e:
            if not tx.__exit__(type(e), e, e.__traceback__):
                raise
        else:
            tx.__exit__(None, None, None)

    @contextmanager
    def schema_transaction(self) -> Iterator[_PgTx]:
        """The transaction that creates or migrates the schema, one runner at a time. The lock is
        taken before BEGIN, so the transaction sees the tables a runner before it created (a
        lock taken inside it would leave it looking at the catalog as it was before the wait)."""
        self.query(f"SELECT pg_advisory_lock({self.SCHEMA_LOCK})")
        try:
            with self.transaction() as tx:
                yield tx
        finally:
            if not self._conn.broken:  # else the server released it with the session
                self.query(f"SELECT pg_advisory_unlock({self.SCHEMA_LOCK})")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """A read (autocommit); a read on a dropped connection is retried once on a new one."""
        try:
            return self._conn.execute(_pg_sql(sql), params).fetchall()
        except self._psycopg.Error as e:
            if not self._reconnect_if_lost(e):
                raise
        return self._conn.execute(_pg_sql(sql), params).fetchall()

    def has_table(self, name: str) -> bool:
        return self.query("SELECT to_regclass(?) IS NOT NULL", (name,))[0][0]

    @staticmethod
    def ddl(stmt: str) -> str:
        """SQLite's column types in PostgreSQL's words (REAL is 4 bytes there: use 8)."""
        stmt = stmt.replace("INTEGER PRIMARY KEY AUTOINCREMENT",
                            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
        stmt = re.sub(r"\brun_id INTEGER\b", "run_id BIGINT", stmt)
        stmt = re.sub(r"\bREAL\b", "DOUBLE PRECISION", stmt)
        return re.sub(r"\bBLOB\b", "BYTEA", stmt)

    def engine_check(self) -> bool:
        return True  # the server checks its own pages; the row-level checks are in Store

    def close(self) -> None:
        self._conn.close()
