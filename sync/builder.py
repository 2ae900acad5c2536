"""The batch builder's own process (started by sync.agent.ProcessBuilder):

    python -m sync.builder REQUEST_FD ANSWER_FD LOG_PATH DEVICE_ID NICE

Requests arrive pickled on the REQUEST_FD pipe, one answer goes back on ANSWER_FD for each:
(True, result) or (False, exception). A result is a batch without its signature: the parent signs
it (Ed25519, without holding the GIL), so this process never loads cryptography and OpenSSL.

It is a plain process (no multiprocessing: no resource tracker beside it) and it dies with its
parent however the parent dies, SIGKILL included, in or out of systemd: a thread waits for the
request pipe's hang-up, which the kernel gives when the last writer (the parent) is gone, and ends
the process at once, in the middle of a build too.
"""
from __future__ import annotations

import os
import pickle
import select
import signal
import sys
import threading

from scanner.base.allocator import return_large_blocks, trim
from scanner.store.entrylog import SIDE_CACHE_KIB, EntryLog
from sync.building import assemble_next
from sync.errors import SyncError
from sync.wire import batch as batchmod

PARENT_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


def watch_parent(fd: int) -> None:
    """Exit the process when the parent's end of the pipe ``fd`` is closed (blocks until then).
    Registered for no event but the ones poll always reports: a request waiting is not one."""
    poller = select.poll()
    poller.register(fd, 0)
    while True:
        if any(events & PARENT_GONE for _, events in poller.poll()):
            os._exit(0)


_STATE: dict = {}  # the log and the device id (set by init)


def sched_idle() -> bool:
    """SCHED_IDLE for this (worker) process: a scan thread that wakes up takes the CPU from it at
    once, where nice 10 alone left it waiting up to a scheduler slice (~4 ms, docs/benchmarks.md#sync).
    It still gets a small share of a saturated CPU, so sync never stops entirely."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or refused: nice alone then
        return False
    return True


def lower_priority(nice: int) -> None:
    """``nice`` more (if not 0) and SCHED_IDLE for this worker process."""
    if nice:
        os.nice(nice)
        sched_idle()


def init(log_path: str, device_id: str, nice: int) -> None:
    """Set up this process: its priority, the log."""
    lower_priority(nice)
    _STATE["log"] = EntryLog(log_path, create=False, cache_kib=SIDE_CACHE_KIB)
    _STATE["device_id"] = device_id


def build(after_seq: int, limit: int, quarantined: list, created_ms: int,
          version: int = batchmod.FORMAT_VERSION) -> batchmod.UnsignedBatch | None:
    return assemble_next(_STATE["log"], _STATE["device_id"], after_seq, limit,
                         [tuple(q) for q in quarantined], created_ms, version=version)


def answer(request: tuple) -> tuple[bool, object]:
    """Run one request: ("build", after_seq, limit, quarantined, created_ms, version)."""
    kind, *args = request
    try:
        if kind == "build":
            return True, build(*args)
        return False, SyncError(f"unknown builder request {kind!r}", code="builder_error")
    except Exception as exc:  # noqa: BLE001 - the parent raises it (as ProcessPoolExecutor did)
        return False, exc


def release_memory() -> None:
    """Between builds hold only what is kept: the log's page cache and the C allocator's free pages
    go back to the system, so this process's memory does not follow the largest batch so far."""
    if "log" in _STATE:
        _STATE["log"].release_memory()
    trim()


def picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling both ways, else a SyncError saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure to pickle: send what it said instead
        return SyncError(f"{type(exc).__name__}: {exc}", code="builder_error")
    return exc


def main(argv: list[str]) -> int:
    request_fd, answer_fd = int(argv[0]), int(argv[1])
    log_path, device_id, nice = argv[2], argv[3], int(argv[4])
    return_large_blocks()  # large batches' buffers go back to the system once sent
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the daemon: it closes the pipe
    threading.Thread(target=watch_parent, args=(request_fd,), name="parent-watch", daemon=True).start()
    try:
        init(log_path, device_id, nice)
        failed = None
    except Exception as exc:  # noqa: BLE001 - e.g. the log unreadable: the answer to every request
        failed = exc
    with os.fdopen(request_fd, "rb") as requests, os.fdopen(answer_fd, "wb") as answers:
        while True:
            try:
                request = pickle.load(requests)
            except EOFError:  # the parent closed the pipe: done
                return 0
            ok, value = (False, failed) if failed is not None else answer(request)
            if not ok and isinstance(value, BaseException):
                value = picklable(value)
            pickle.dump((ok, value), answers, protocol=pickle.HIGHEST_PROTOCOL)
            answers.flush()
            del value
            release_memory()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
