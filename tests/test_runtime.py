"""scanner.appliance.runtime: the verdict lane's real-time priority, with the kernel's own checks (an
unprivileged user through RLIMIT_RTPRIO, as systemd's LimitRTPRIO= sets it) and the unit's limit."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.waiting import WAIT

from scanner.appliance import runtime
from scanner.appliance.pipeline import Pipeline
from scanner.cards.scan import Scan

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by any user, where the venv's may not be (a private clone)

# runs runtime.py's own source (stdin) as a module in a process of an unprivileged user
PROBE = """
import os, sys, types
mod = types.ModuleType("lane_runtime"); sys.modules["lane_runtime"] = mod
exec(compile(sys.stdin.read(), "runtime.py", "exec"), mod.__dict__)
for asked in map(int, sys.argv[1:]):
    p = mod.prioritise_lane(asked)
    print(asked, p.realtime, p.priority, p.refused, os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK,
          os.sched_getparam(0).sched_priority)
"""


def _as_nobody(rtprio: int, *asked: int) -> list[list[str]]:
    """prioritise_lane(each of ``asked``) in turn, in a process of user nobody whose RLIMIT_RTPRIO is ``rtprio``."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the probe as another user")
    for tool in ("setpriv", "prlimit"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (util-linux) is not installed here")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is not installed here")
    source = (ROOT / "scanner" / "appliance" / "runtime.py").read_text(encoding="utf-8")
    # the limit set as root (as systemd sets LimitRTPRIO=), then the user changed (as User=)
    r = subprocess.run(["prlimit", f"--rtprio={rtprio}:{rtprio}", "setpriv", "--reuid=65534", "--regid=65534",
                        "--clear-groups", "--", SYSTEM_PYTHON, "-c", PROBE, *map(str, asked)],
                       input=source, check=False, capture_output=True, text=True, timeout=WAIT, cwd="/")
    if r.returncode != 0 and "failed to set the RTPRIO resource limit" in r.stderr:
        pytest.skip(f"root here cannot raise RLIMIT_RTPRIO to {rtprio} (no CAP_SYS_RESOURCE), as systemd does")
    assert r.returncode == 0, r.stderr
    return [line.split() for line in r.stdout.splitlines()]


def test_an_unprivileged_lane_gets_real_time_up_to_its_limit():
    rows = _as_nobody(runtime.LANE_PRIORITY, runtime.LANE_PRIORITY)
    assert rows == [[str(runtime.LANE_PRIORITY), "True", str(runtime.LANE_PRIORITY), "None",
                     str(os.SCHED_FIFO), str(runtime.LANE_PRIORITY)]]


def _refused(row: list[str]) -> None:
    asked, realtime, priority, *refused, policy, now = row
    assert (realtime, priority, policy, now) == ("False", "0", str(os.SCHED_OTHER), "0"), asked
    assert " ".join(refused) == "Operation not permitted"


def test_a_lane_without_real_time_allowed_is_refused_and_stays_normal():
    rows = _as_nobody(0, 1, runtime.LANE_PRIORITY)
    assert len(rows) == 2
    for row in rows:
        _refused(row)


def test_a_priority_above_the_limit_is_refused_and_the_lane_stays_normal():
    rows = _as_nobody(runtime.LANE_PRIORITY, runtime.LANE_PRIORITY + 1)
    assert len(rows) == 1
    _refused(rows[0])


def test_priority_zero_leaves_the_thread_as_it_is():
    assert runtime.prioritise_lane(0) == runtime.LanePriority(False, 0)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_the_unit_allows_the_default_lane_priority_and_nothing_more():
    unit = (ROOT / "systemd" / "checkpoint.service").read_text(encoding="utf-8")
    assert re.findall(r"^LimitRTPRIO=(\d+)$", unit, re.M) == [str(runtime.LANE_PRIORITY)]
    assert not re.search(r"^RestrictRealtime=yes", unit, re.M)  # it would refuse the lane's real time


def test_the_pipeline_worker_runs_real_time_and_what_it_starts_does_not():
    if os.geteuid() != 0:
        pytest.skip("needs root (or an RLIMIT_RTPRIO of 10) for a real-time thread")
    seen: dict[str, object] = {}
    done = threading.Event()

    def handle(scan: Scan) -> None:
        seen["worker"] = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
        t = threading.Thread(target=lambda: seen.__setitem__("thread", os.sched_getscheduler(0)))
        t.start()
        t.join()
        child = subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                               check=False, capture_output=True, text=True, timeout=WAIT)
        seen["process"] = int(child.stdout)
        done.set()

    with Pipeline(handle, lane_priority=runtime.LANE_PRIORITY) as pipeline:
        pipeline.submit(Scan("CK1:TEST", "stdin", "0", 1_750_000_000.0))
        assert done.wait(WAIT)
    assert seen["worker"] == (os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, runtime.LANE_PRIORITY)
    assert seen["thread"] == os.SCHED_OTHER and seen["process"] == os.SCHED_OTHER
    assert pipeline.lane == runtime.LanePriority(True, runtime.LANE_PRIORITY)


def test_a_pipeline_without_a_lane_priority_keeps_a_normal_worker():
    got: list[int] = []
    done = threading.Event()

    def handle(scan: Scan) -> None:
        got.append(os.sched_getscheduler(0))
        done.set()

    with Pipeline(handle) as pipeline:
        pipeline.submit(Scan("CK1:TEST", "stdin", "0", 1_750_000_000.0))
        assert done.wait(WAIT)
    assert got == [os.SCHED_OTHER] and pipeline.lane == runtime.LanePriority(False, 0)
