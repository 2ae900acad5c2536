"""Opening the server's storage: a database URL names the backend, SQLite (sync/server/sqlite.py,
the default) or PostgreSQL (sync/server/postgres.py); both implement sync.server.model.Storage. The
server keeps its keys beside a SQLite file unless told where.
"""
from __future__ import annotations

import os
from pathlib import Path

from scanner.base import i18n
from scanner.base.errors import CheckpointError
from sync.server.groupcommit import GroupSettings
from sync.server.model import Storage
from sync.server.sqlite import SQLiteStorage


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_storage(url: str, *, must_exist: bool = False, work_deadline_s: float | None = None,
                 group: GroupSettings | None = None) -> Storage:
    """``sqlite:///abs/path.db``, ``sqlite:relative.db`` or a plain file path: SQLite;
    ``postgresql://USER@HOST[:PORT]/DB[?options]`` (libpq URL): PostgreSQL (the `server` extra:
    psycopg 3). Other schemes are refused with a clear error. ``must_exist``: a SQLite file that
    is not there is refused, not created (a read-only command given a mistyped path).
    ``work_deadline_s`` (PostgreSQL): the longest a transaction may hold its connection (the server's
    requests: sync.server.postgres.PostgresStorage); ``group`` (PostgreSQL): group commit's settings
    (None: each batch in its own transaction; SQLite's writes are one at a time anyway)."""
    if is_postgres_url(url):
        try:  # deferred: psycopg is the optional `server` extra, needed only for PostgreSQL
            from sync.server.postgres import PostgresStorage
        except ImportError as exc:
            raise CheckpointError(f"PostgreSQL support needs psycopg 3 (pip install 'checkpoint-edge[server]'): "
                                  f"{exc}", code="db_url") from None
        return PostgresStorage(url, work_deadline_s=work_deadline_s, group=group)
    if url.startswith("sqlite:"):
        path = url[len("sqlite:"):]
        if path.startswith("///"):
            path = path[2:]
        elif path.startswith("//"):
            raise CheckpointError(f"{url}: use sqlite:///ABSOLUTE/PATH or sqlite:RELATIVE/PATH",
                                  code="db_url")
        return _sqlite(path, must_exist)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise CheckpointError(f"database scheme {scheme!r} is not supported by this server "
                              "(sqlite: or postgresql:)", code="db_url")
    return _sqlite(url, must_exist)


def _sqlite(path: str, must_exist: bool) -> Storage:
    if must_exist and not Path(path).is_file():
        raise CheckpointError(f"{path}: no such database (this command does not create one: check --db)",
                              code="db_missing", text=i18n.text("cli_error.db_missing", path=path))
    return SQLiteStorage(path)


def default_keys_dir(url: str) -> Path:
    """Where the server keeps its keys when --keys is not given: beside a SQLite file. A
    PostgreSQL server has no such place: --keys is required (CheckpointError)."""
    if is_postgres_url(url):
        raise CheckpointError("with a PostgreSQL database give the key directory (--keys DIR)", code="keys_dir")
    path = url.removeprefix("sqlite:")
    if path.startswith("///"):
        path = path[2:]
    return Path(os.path.abspath(path)).parent
