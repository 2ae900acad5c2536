"""The tests' private PostgreSQL server: bench/pgcluster.py's throwaway cluster (Debian's
`postgresql` package, which `sh setup.sh test` installs), fsync off, started once per test session
on first use and stopped when the session's process exits. Each test gets a fresh schema (cheap)
through the URL's search_path. Skipped with a clear message where it cannot run."""
from __future__ import annotations

import atexit
import subprocess
import threading

import pytest

from bench.pgcluster import PgCluster, find_bin_dir

_lock = threading.Lock()
_cluster: PgCluster | None = None
_failure: str | None = None


def cluster() -> PgCluster:
    """The session's PostgreSQL server, started on first use; pytest.skip if it cannot run here."""
    global _cluster, _failure  # noqa: PLW0603 - one server for the whole session, started on first use
    with _lock:
        if _cluster is None and _failure is None:
            try:
                import psycopg  # noqa: F401  (optional: the server extra; without it these tests skip)
            except ImportError:
                _failure = "psycopg is not installed (pip install -e '.[dev]')"
            else:
                bin_dir = find_bin_dir()
                if bin_dir is None:
                    _failure = ("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): install "
                                "Debian's `postgresql` package (sh setup.sh test does)")
                else:
                    try:
                        _cluster = PgCluster(bin_dir, durable=False)
                        atexit.register(_cluster.stop)
                    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                        _failure = f"could not start a private PostgreSQL server: {exc}"
        if _failure is not None:
            pytest.skip(_failure)
        return _cluster
