"""Creating or migrating an entry log in a short-lived process of its own:

    python -m scanner.store.premigrate DB

Migrating loads sqlite-utils, and NumPy and click with it (~20 MB), which a process can never give
back: the daemon calls ``run`` before it opens its log, so on a device's first start (a new log)
and after an upgrade (new migrations) they stay out of the long-running process. Any failure is
left to the daemon's own opening of the log, which says what is wrong with its reason code.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from scanner.store import schema
from scanner.store.errors import EntryLogError

TIMEOUT_S = 600.0  # a migration of a large old log rewrites every entry


def up_to_date(path: Path) -> bool:
    """True if the log at ``path`` exists and has every migration this code knows (read only,
    plain sqlite3)."""
    if not path.is_file():
        return False
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        return set(schema.applied_migrations(conn)) == set(schema.MIGRATION_NAMES)
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def run(path: str | os.PathLike) -> None:
    """Bring the log at ``path`` up to date in a child process if it needs it (new or older)."""
    path = Path(path)
    if up_to_date(path):
        return
    try:
        subprocess.run([sys.executable, "-m", "scanner.store.premigrate", str(path)], stdin=subprocess.DEVNULL,
                       check=False, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):  # the caller's own opening migrates, or says what is wrong
        return


def main(argv: list[str]) -> int:
    try:
        conn = schema.connect(Path(argv[0]), create=True, busy_timeout_s=10.0, synchronous="FULL", max_db_bytes=None)
    except (EntryLogError, OSError) as exc:
        print(f"premigrate: {exc}", file=sys.stderr)
        return 1
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
