"""A private, throwaway PostgreSQL server for benchmarks and tests: Debian's `postgresql` package
(setup.sh installs it for `sh setup.sh test|bench`), `initdb` + `pg_ctl` into a temporary
directory, on a free port of 127.0.0.1, trust authentication. As root it runs as the `postgres`
user (initdb refuses root). ``durable=False`` (tests) turns fsync off; benchmarks keep PostgreSQL's
durable defaults so that the figures compare with SQLite's synchronous=FULL."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .procs import free_port


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin with initdb and pg_ctl ($CHECKPOINT_PG_BIN first)."""
    candidates = [os.environ.get("CHECKPOINT_PG_BIN")] + sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                                                 key=lambda p: int(Path(p).parent.name)
                                                                 if Path(p).parent.name.isdigit() else 0,
                                                                 reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def scalar(conn, sql: str, params: tuple = ()) -> Any:
    """The first column of the one row ``sql`` gives on a psycopg connection (RuntimeError if none)."""
    row = conn.execute(sql, params or None).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {sql!r}")
    return row[0]


class PgCluster:
    """One running PostgreSQL server (see the module docstring); ``stop()`` removes it."""

    def __init__(self, bin_dir: Path, *, durable: bool = True, settings: dict | None = None,
                 parent_dir: str | None = None, standby_of: PgCluster | None = None) -> None:
        """``standby_of``: a streaming-replication standby of that (running) server, made with
        pg_basebackup, instead of a new database cluster."""
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="checkpoint-pg-", dir=parent_dir))
        self.data = self.dir / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no `postgres` user to run PostgreSQL as") from None
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = 0
        conf = {"listen_addresses": "127.0.0.1", "max_connections": "300", "shared_buffers": "256MB"}
        if not durable:
            conf |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        conf |= settings or {}
        self._conf = conf
        if standby_of is None:
            self._run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                       "--locale=C.UTF-8", "-N"])
        else:  # -R: standby.signal and primary_conninfo; -X stream: the WAL written meanwhile too
            self._run([str(self.bin / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(standby_of.port), "-U", "postgres",
                       "-D", str(self.data), "-R", "-X", "stream", "-c", "fast", "--no-sync"])
        for attempt in range(5):
            self.port = free_port()
            try:
                self.start()
                break
            except RuntimeError:
                if attempt == 4:
                    raise

    def start(self) -> None:
        """Start the server (again, after kill(): same data, same port; crash recovery runs)."""
        opts = f"-p {self.port} -k {self.dir} " + " ".join(f"-c {k}={v}" for k, v in self._conf.items())
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"),
                   "-w", "-t", "120", "-o", opts, "start"])

    def kill(self) -> None:
        """Stop the server the hard way (`pg_ctl stop -m immediate`: no shutdown checkpoint, like a
        crash); the data stays for start()."""
        subprocess.run(self.as_user + [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                       "-w", "stop"], capture_output=True, timeout=120, check=False)

    def promote(self) -> None:
        """Make a standby the primary (`pg_ctl promote`, waiting until it accepts writes)."""
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "120", "promote"])

    def kill_postmaster(self) -> None:
        """SIGKILL of the postmaster alone, as when its machine dies: its backends notice and exit,
        nothing is shut down cleanly."""
        pid = self.postmaster_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)

    def _run(self, cmd: list[str]) -> None:
        res = subprocess.run(self.as_user + cmd, capture_output=True, text=True, timeout=180, check=False)
        if res.returncode != 0:
            log = self.dir / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{Path(cmd[0]).name} failed ({res.returncode}): {res.stderr.strip()[-2000:]} {tail}")

    def url(self, database: str = "postgres", schema: str | None = None) -> str:
        base = f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
        if schema:
            base += "?options=" + quote(f"-csearch_path={schema}", safe="")
        return base

    def new_schema(self, prefix: str = "t") -> str:
        """A URL whose tables live in a new, empty schema."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return self.url(schema=name)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop the server and remove everything."""
        if self.data.exists():
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
