"""A trust check in its own short-lived process (started by sync.agent.ProcessBuilder):

    python -m sync.trustcheck STATE_DIR CONNECT_TIMEOUT READ_TIMEOUT NICE

Checking and rebuilding a bundle with a million revocations takes seconds of CPU that must not
hold the scan loop's GIL, and a hundred MB and more that an allocator keeps for reuse; here the
process ends after the check, so all of it goes back to the system, and the batch builder never
loads the HTTP client or the trust code. The answer, pickled on stdout: (True, the check's result)
or (False, the exception). It runs at the builder's priority (nice, SCHED_IDLE).
"""
from __future__ import annotations

import pickle
import signal
import sys

from sync import agent
from sync.builder import lower_priority, picklable
from sync.wire import identity


def main(argv: list[str]) -> int:
    state_dir, connect_timeout, read_timeout, nice = argv[0], float(argv[1]), float(argv[2]), int(argv[3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the daemon
    lower_priority(nice)
    try:
        answer: tuple[bool, object] = (True, agent.child_trust(identity.load(state_dir), state_dir,
                                                               connect_timeout, read_timeout))
    except Exception as exc:  # noqa: BLE001 - the parent raises it
        answer = (False, picklable(exc))
    sys.stdout.buffer.write(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
