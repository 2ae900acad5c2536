"""The fleet bench's CPU of PostgreSQL by process, read from a real private PostgreSQL server: the
client connections' work (the server's statements and COPYs) apart from the WAL writer, the
checkpointer and autovacuum."""
from __future__ import annotations

import pytest
from support import postgres

from bench import bench_fleet


def test_postgres_cpu_is_told_apart_by_process_and_a_connection_s_work_lands_on_backends():
    psycopg = pytest.importorskip("psycopg")
    cluster = postgres.cluster()
    pid = cluster.postmaster_pid()
    before = bench_fleet.pg_cpu_by_process(pid)
    assert {"WAL writer", "checkpointer", "other"} <= {kind for kind, _ in before.values()}
    with psycopg.connect(cluster.url(), autocommit=True) as conn:  # opened after `before`: all its CPU counts
        conn.execute("SELECT count(*) FROM generate_series(1, 5000000)")
        during = bench_fleet.pg_cpu_by_process(pid)
    spent = bench_fleet.pg_cpu_spent(before, during)
    assert spent["backends"] >= 0.1, spent
    assert spent["backends"] == max(spent.values()), spent
    after = bench_fleet.pg_cpu_by_process(pid)  # the connection has ended: nothing of it counted twice or negative
    assert all(v >= 0 for v in bench_fleet.pg_cpu_spent(during, after).values())


@pytest.mark.parametrize(("title", "kind"), [
    ("postgres: walwriter ", "WAL writer"), ("postgres: checkpointer ", "checkpointer"),
    ("postgres: autovacuum worker fleet_v2_g_0", "autovacuum"), ("postgres: autovacuum launcher ", "autovacuum"),
    ("postgres: background writer ", "background writer"),
    ("postgres: postgres fleet_v2_g_0 127.0.0.1(51864) COPY", "backends"), ("postgres: u db [local] idle", "backends"),
    ("/usr/lib/postgresql/15/bin/postgres -D /tmp/x/data", "other"),
    ("postgres: logical replication launcher ", "other"),
])
def test_a_postgres_process_title_names_its_kind(title, kind):
    assert bench_fleet.pg_process_kind(title) == kind
