"""A throwaway PostgreSQL cluster on a free loopback port: the real server the store tests and
tools/bench_store.py run against (Debian's `postgresql` package, see tools/setup_system.sh).

It listens on 127.0.0.1 only, with trust authentication for its one superuser on loopback and its
private socket directory; it is created in a temp dir, started with `pg_ctl start -w`, and stopped
and removed by `remove()`. initdb refuses to run as root, so as root every server command runs as
the `postgres` system user (which the Debian package creates).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "dk"  # the cluster's superuser, the user in the test URLs


def bindir() -> Path:
    """Directory of initdb/pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<newest>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                  key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if not dirs:
        raise RuntimeError("no PostgreSQL server binaries (initdb): install Debian's `postgresql` "
                           "package (tools/setup_system.sh)")
    return Path(dirs[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """`PgCluster()` creates and starts a cluster; `url(db)`, `create_db()`, `kill()`, `start()`,
    `remove()`."""

    def __init__(self, durable: bool = False) -> None:
        """`durable`: fsync on, as a real server runs (benchmarks); off for tests, which kill
        only the server process, never the machine (the OS keeps the WAL either way)."""
        self.bin = bindir()
        self.root = Path(tempfile.mkdtemp(prefix="deploykit-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._dbs = 0
        try:
            self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                      "--no-sync", "--no-instructions")
            (self.data / "pg_hba.conf").write_text(
                f"local all {USER} trust\nhost all {USER} 127.0.0.1/32 trust\n")
            self.port = free_port()
            with open(self.data / "postgresql.conf", "a") as f:
                f.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                        f"unix_socket_directories = '{self.root}'\n"
                        # synchronous_commit stays on, or a crash loses acknowledged commits
                        f"fsync = {'on' if durable else 'off'}\n"
                        "full_page_writes = off\nmax_connections = 50\n")
            self.start()
        except BaseException:
            self.remove()
            raise

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({r.returncode}): {r.stderr.strip()} {log}")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{db}"

    def create_db(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        self._dbs += 1
        name = f"t{self._dbs}"
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def kill(self) -> None:
        """Stop the server the way a crash does: every backend exits at once, nothing flushed
        politely, open connections dropped mid-statement (recovery runs at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def running(self) -> bool:
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            os.kill(int(pid_file.read_text().split()[0]), 0)
        except (ProcessLookupError, ValueError):
            return False
        return True

    def remove(self) -> None:
        if self.running():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except RuntimeError:
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
