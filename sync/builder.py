"""The batch builder's own process (started by sync.agent.ProcessBuilder):

    python -m sync.builder REQUEST_FD ANSWER_FD LOG_PATH STATE_DIR DEVICE_ID NICE

Requests arrive pickled on the REQUEST_FD pipe, one answer goes back on ANSWER_FD for each:
(True, result) or (False, exception). It is a plain process (no multiprocessing: no resource
tracker beside it) and it dies with its parent however the parent dies, SIGKILL included, in or
out of systemd: a thread waits for the request pipe's hang-up, which the kernel gives when the
last writer (the parent) is gone, and ends the process at once, in the middle of a build too.
"""
from __future__ import annotations

import os
import pickle
import select
import signal
import sys
import threading

from scanner.base.allocator import return_large_blocks
from sync import agent
from sync.client import SyncError

PARENT_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


def watch_parent(fd: int) -> None:
    """Exit the process when the parent's end of the pipe ``fd`` is closed (blocks until then).
    Registered for no event but the ones poll always reports: a request waiting is not one."""
    poller = select.poll()
    poller.register(fd, 0)
    while True:
        if any(events & PARENT_GONE for _, events in poller.poll()):
            os._exit(0)


def answer(request: tuple) -> tuple[bool, object]:
    """Run one request: ("build", after_seq, limit, quarantined, created_ms) or
    ("trust", state_dir, connect_timeout, read_timeout)."""
    kind, *args = request
    try:
        if kind == "build":
            return True, agent.child_build(*args)
        if kind == "trust":
            return True, agent.child_trust(*args)
        return False, SyncError(f"unknown builder request {kind!r}", code="builder_error")
    except Exception as exc:  # noqa: BLE001 - the parent raises it (as ProcessPoolExecutor did)
        return False, exc


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling both ways, else a SyncError saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure to pickle: send what it said instead
        return SyncError(f"{type(exc).__name__}: {exc}", code="builder_error")
    return exc


def main(argv: list[str]) -> int:
    request_fd, answer_fd = int(argv[0]), int(argv[1])
    log_path, state_dir, device_id, nice = argv[2], argv[3], argv[4], int(argv[5])
    return_large_blocks()  # what a trust update took goes back to the system
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the daemon: it closes the pipe
    threading.Thread(target=watch_parent, args=(request_fd,), name="parent-watch", daemon=True).start()
    try:
        agent.child_init(log_path, state_dir, device_id, nice)
        failed = None
    except Exception as exc:  # noqa: BLE001 - e.g. the log or the key unreadable: the answer to every request
        failed = exc
    with os.fdopen(request_fd, "rb") as requests, os.fdopen(answer_fd, "wb") as answers:
        while True:
            try:
                request = pickle.load(requests)
            except EOFError:  # the parent closed the pipe: done
                return 0
            ok, value = (False, failed) if failed is not None else answer(request)
            if not ok and isinstance(value, BaseException):
                value = _picklable(value)
            pickle.dump((ok, value), answers, protocol=pickle.HIGHEST_PROTOCOL)
            answers.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
