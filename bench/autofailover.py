"""A throwaway pg_auto_failover formation for benchmarks and tests: a monitor and two PostgreSQL
nodes (a primary and its synchronous standby) on free ports of 127.0.0.1, each run by its own
`pg_autoctl run` (Debian's `postgresql-15-auto-failover` package; setup.sh installs it for the test
and bench targets), trust authentication, everything in a temporary directory. As root the
processes run as the `postgres` user, like bench/pgcluster.py. The monitor's health checks are
made faster than the defaults (a failover in seconds rather than about 45 s) so that a test can
wait for one. ``monitor_apart``: the monitor runs in a network namespace of its own
(bench/netpart.py), reached by each node over a link of its own, so that a test can cut the path
between one node and the monitor only.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from . import netpart
from .procs import free_port

# the monitor's settings (pgautofailover GUCs, milliseconds): how soon a silent primary is failed over
FAST_FAILOVER = {
    "pgautofailover.health_check_period": 1000,
    "pgautofailover.health_check_timeout": 1000,
    "pgautofailover.health_check_max_retries": 1,
    "pgautofailover.health_check_retry_delay": 500,
    "pgautofailover.node_considered_unhealthy_timeout": 3000,
    "pgautofailover.primary_demote_timeout": 5000,
}


def find_pg_autoctl(bin_dir: Path) -> str | None:
    """The pg_autoctl command, if pg_auto_failover is installed for the PostgreSQL in ``bin_dir``."""
    found = shutil.which("pg_autoctl")
    if found is None or not (bin_dir.parent / "lib" / "pgautofailover.so").exists():
        return None
    return found


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", encoding="ascii", errors="replace") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _one(row: tuple | None) -> tuple:
    if row is None:
        raise RuntimeError("a query that always returns a row returned none")
    return row


class AutoFailover:
    """A monitor and two nodes, started and replicating (RuntimeError if not within ``timeout_s``);
    ``stop()`` removes everything."""

    def __init__(self, bin_dir: Path, autoctl: str, *, timeout_s: float = 120.0, monitor_apart: bool = False) -> None:
        self.bin = bin_dir
        self.autoctl = autoctl
        self.dir = Path(tempfile.mkdtemp(prefix="checkpoint-paf-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.env = ["env", f"PATH={bin_dir}:/usr/bin:/bin", f"PG_CONFIG={bin_dir / 'pg_config'}",
                    f"XDG_CONFIG_HOME={self.dir / 'config'}", f"XDG_DATA_HOME={self.dir / 'share'}",
                    f"XDG_RUNTIME_DIR={self.dir / 'run'}"]
        self.procs: dict[str, subprocess.Popen] = {}
        self.killed: set[str] = set()
        self.frozen: dict[str, list[int]] = {}
        self.ports: dict[str, int] = {}
        self.net: netpart.ServerNet | None = None
        try:
            if monitor_apart:
                why = netpart.available()
                if why is not None:
                    raise RuntimeError(why)
                self.net = netpart.ServerNet(2)  # link i: node i and the monitor; the last link: this process's
            self.ports["monitor"] = free_port()
            self._run("monitor", "create", "monitor", "--pgdata", str(self.dir / "monitor"), "--pgport",
                      str(self.ports["monitor"]), "--hostname", self._monitor_host, "--auth", "trust", "--no-ssl")
            if self.net is not None:  # the nodes and this process connect from the links' addresses
                with open(self.dir / "monitor" / "pg_hba.conf", "a", encoding="ascii") as fh:
                    fh.write(f"host all all {self.net.cidr} trust\n")
            self._start("monitor", "run", "--pgdata", str(self.dir / "monitor"))
            self._wait(lambda: self._monitor_query("SELECT 1"), "the monitor", timeout_s)
            for k, v in FAST_FAILOVER.items():
                self._monitor_query(f"ALTER SYSTEM SET {k} = {v}")
            self._monitor_query("SELECT pg_reload_conf()")
            for i, name in enumerate(("node_a", "node_b")):  # one after the other: the first becomes the primary
                self.ports[name] = free_port()
                self._start(name, "create", "postgres", "--pgdata", str(self.dir / name), "--pgport",
                            str(self.ports[name]), "--hostname", self.net.node_host(i) if self.net else "127.0.0.1",
                            "--name", name, "--monitor", self._monitor_url(i), "--auth", "trust", "--no-ssl", "--run")
                self._wait(lambda n=name: self._state(n) in ("single", "primary", "secondary")
                           and self._accepts(n), f"{name} up", timeout_s)
                if self.net is not None:  # the other node connects to this one's link address (a local one)
                    self._allow(name, self.net.cidr, replication=True)
            self._wait(lambda: self._state("node_a") == "primary" and self._state("node_b") == "secondary",
                       "a primary and a secondary", timeout_s)
        except BaseException:
            self.stop()
            raise

    @property
    def _monitor_host(self) -> str:
        """Where this process reaches the monitor."""
        return self.net.server_host if self.net is not None else "127.0.0.1"

    def _monitor_url(self, i: int) -> str:
        """Where node ``i`` reaches the monitor (over its own link when the monitor is apart)."""
        host = self.net.host_via(i) if self.net is not None else "127.0.0.1"
        return f"postgres://autoctl_node@{host}:{self.ports['monitor']}/pg_auto_failover"

    def cut_from_monitor(self, name: str) -> None:
        """Drop every packet between the node and the monitor, both ways (``monitor_apart`` only);
        the node, its peer and its clients still reach each other."""
        if self.net is None:
            raise RuntimeError("cut_from_monitor needs the monitor apart (monitor_apart=True)")
        self.net.cut(("node_a", "node_b").index(name))

    def heal_from_monitor(self, name: str) -> None:
        if self.net is None:
            raise RuntimeError("heal_from_monitor needs the monitor apart (monitor_apart=True)")
        self.net.heal(("node_a", "node_b").index(name))

    def url(self, database: str = "postgres") -> str:
        """Both nodes, the writable one chosen at each connection (libpq's target_session_attrs)."""
        hosts = ",".join(f"127.0.0.1:{self.ports[n]}" for n in ("node_a", "node_b"))
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write&connect_timeout=2"

    def node_url(self, name: str, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports[name]}/{database}"

    def primary(self) -> str | None:
        for name in ("node_a", "node_b"):
            if self._state(name) in ("primary", "wait_primary"):
                return name
        return None

    def kill(self, name: str) -> None:
        """The node's machine dies: SIGKILL of its pg_autoctl, its postmaster and every backend
        (each backend is a session of its own: one left behind would keep the data directory's
        shared memory, and a restarted node would refuse to start), waiting until all are gone."""
        proc = self.procs[name]
        self.killed.add(name)
        pids = _descendants(proc.pid)  # before the kill: orphans are adopted by init afterwards
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(30)
        end = time.monotonic() + 30
        while any(map(_alive, pids)) and time.monotonic() < end:
            time.sleep(0.05)

    def freeze(self, name: str) -> None:
        """The node stops answering anyone, as when a network partition cuts its machine off
        (SIGSTOP of its pg_autoctl and postmaster, then of every backend: each is a session of its
        own; open connections stay open, nothing answers on them)."""
        os.killpg(self.procs[name].pid, signal.SIGSTOP)  # first: no new backends from here on
        self.frozen[name] = _descendants(self.procs[name].pid)
        for pid in self.frozen[name]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        """The partition heals (SIGCONT): the node learns from the monitor what it is now."""
        for pid in self.frozen.pop(name, []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        os.killpg(self.procs[name].pid, signal.SIGCONT)

    def restart(self, name: str) -> None:
        """Start a killed node's (or the monitor's) `pg_autoctl run` again, on its data directory."""
        self.killed.discard(name)
        self._start(name, "run", "--pgdata", str(self.dir / name))

    def allow(self, cidr: str) -> None:
        """Let clients from ``cidr`` connect to both nodes (trust, like the rest of this formation)."""
        for name in ("node_a", "node_b"):
            self._allow(name, cidr)

    def _allow(self, name: str, cidr: str, *, replication: bool = False) -> None:
        import psycopg  # deferred: the optional `server` extra

        with open(self.dir / name / "pg_hba.conf", "a", encoding="ascii") as fh:
            fh.write(f"host all all {cidr} trust\n" + (f"host replication all {cidr} trust\n" if replication else ""))
        with psycopg.connect(self.node_url(name), autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT pg_reload_conf()")

    def failing_over(self) -> bool:
        """Whether the monitor has begun a failover: a node's goal is a step of one."""
        rows = self._monitor_query("SELECT count(*) FROM pgautofailover.node WHERE goalstate IN "
                                   "('draining', 'demote_timeout', 'prepare_promotion', 'stop_replication')")
        return bool(rows and rows[0][0])

    def writable(self, name: str) -> bool:
        """Whether the node's PostgreSQL takes writes now (a primary that is not being demoted)."""
        import psycopg  # deferred: the optional `server` extra

        try:
            with psycopg.connect(self.node_url(name), connect_timeout=2, autocommit=True) as conn:
                return not _one(conn.execute("SELECT pg_is_in_recovery()").fetchone())[0]
        except psycopg.Error:
            return False

    def wait_state(self, name: str, states: tuple[str, ...], timeout_s: float = 120.0) -> None:
        """Until the monitor reports ``name`` in one of ``states`` (and that is its goal too)."""
        self._wait(lambda: self._state(name) in states, f"{name} in {'/'.join(states)}", timeout_s)

    def wait_for(self, cond, what: str, timeout_s: float = 120.0) -> None:
        """Until ``cond()`` holds (RuntimeError naming ``what`` after ``timeout_s``)."""
        self._wait(cond, what, timeout_s)

    def wait_promoted(self, name: str, timeout_s: float = 120.0) -> None:
        """Until the monitor has made ``name`` a writable primary."""
        self._wait(lambda: self._state(name) in ("primary", "wait_primary"), f"{name} promoted", timeout_s)

    def _state(self, name: str) -> str | None:
        rows = self._monitor_query("SELECT reportedstate FROM pgautofailover.node WHERE nodename = %s "
                                   "AND reportedstate = goalstate", (name,))
        return rows[0][0] if rows else None

    def _accepts(self, name: str) -> bool:
        """Whether the node's PostgreSQL takes connections (the next node copies it at once)."""
        import psycopg  # deferred: the optional `server` extra

        try:
            psycopg.connect(self.node_url(name), connect_timeout=2).close()
        except psycopg.Error:
            return False
        return True

    def _monitor_query(self, sql: str, params: tuple = ()) -> list[tuple] | None:
        import psycopg  # deferred: the optional `server` extra

        try:
            with psycopg.connect(f"postgresql://postgres@{self._monitor_host}:{self.ports['monitor']}/pg_auto_failover",
                                 autocommit=True, connect_timeout=2) as conn:
                cur = conn.execute(sql, params)
                return cur.fetchall() if cur.description else []
        except psycopg.Error:
            return None

    def _wait(self, cond, what: str, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while not cond():
            for name, proc in self.procs.items():
                if name not in self.killed and proc.poll() is not None:
                    raise RuntimeError(f"pg_autoctl ({name}) exited: {self.log(name)}")
            if time.monotonic() > end:
                raise RuntimeError(f"pg_auto_failover: timed out waiting for {what}")
            time.sleep(0.2)

    def log(self, name: str, tail: int = 1500) -> str:
        """The end of ``name``'s pg_autoctl log."""
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def _prefix(self, name: str) -> list[str]:
        """How ``name``'s pg_autoctl is run (the monitor apart: in its namespace)."""
        ns = self.net.prefix if self.net is not None and name == "monitor" else []
        return [*ns, *self.as_user, *self.env, self.autoctl]

    def _run(self, name: str, *args: str) -> None:
        res = subprocess.run([*self._prefix(name), *args], capture_output=True, text=True,
                             timeout=180, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"pg_autoctl {' '.join(args[:2])} failed ({res.returncode}): {res.stderr[-1500:]}")

    def _start(self, name: str, *args: str) -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 (the process keeps it)
        self.procs[name] = subprocess.Popen([*self._prefix(name), *args], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def stop(self) -> None:
        """Stop every process (SIGKILL: nothing here is kept) and remove the directory."""
        for name in list(self.frozen):  # a frozen backend would outlive its killed postmaster
            self.thaw(name)
        try:
            for name in list(self.procs):
                self.kill(name)
            shutil.rmtree(self.dir, ignore_errors=True)
        finally:
            if self.net is not None:
                self.net.close()
