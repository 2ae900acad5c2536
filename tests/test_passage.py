"""hardware.passage: every entry that opened the gate ends exactly one way (passed or reported as
not passed), in order, never before its timeout; broken callbacks do not stop the monitor."""
from __future__ import annotations

import logging
import random
import threading
import time

import pytest
from support.waiting import WAIT

from hardware.passage import PassageMonitor


class Log:
    def __init__(self) -> None:
        self.passed: list[object] = []
        self.missed: list[tuple[object, float]] = []
        self.lock = threading.Lock()

    def on_passage(self, entry_id):
        with self.lock:
            self.passed.append(entry_id)

    def on_no_passage(self, entry_id):
        with self.lock:
            self.missed.append((entry_id, time.monotonic()))


def test_passage_confirms_the_oldest_entry():
    log = Log()
    mon = PassageMonitor(60.0, log.on_no_passage, log.on_passage)
    try:
        for entry in ("a", "b", "c"):
            mon.expect(entry)
        mon.expect("b")  # already waiting: ignored
        assert mon.pending == ("a", "b", "c")
        assert mon.passed() == "a" and mon.passed() == "b"
        assert mon.pending == ("c",)
    finally:
        left = mon.close()
    assert log.passed == ["a", "b"] and log.missed == [] and left == ("c",)


def test_sensor_without_a_waiting_entry_reports_none():
    log = Log()
    mon = PassageMonitor(60.0, log.on_no_passage, log.on_passage)
    try:
        assert mon.passed() is None
    finally:
        mon.close()
    assert log.passed == [None]


def test_no_passage_reported_once_and_not_before_the_timeout():
    log = Log()
    mon = PassageMonitor(0.1, log.on_no_passage, log.on_passage)
    try:
        started = {}
        for entry in (1, 2, 3):
            started[entry] = time.monotonic()
            mon.expect(entry)
        assert mon.wait_idle(WAIT)
    finally:
        mon.close()
    assert [e for e, _ in log.missed] == [1, 2, 3]
    for entry, at in log.missed:
        assert at - started[entry] >= 0.1


def test_every_entry_ends_exactly_one_way_under_races():
    """Entries time out while a sensor thread fires at random: no entry is lost or reported twice."""
    log = Log()
    mon = PassageMonitor(0.01, log.on_no_passage, log.on_passage)
    rng = random.Random(5)
    stop = threading.Event()

    def sensor():
        while not stop.is_set():
            mon.passed()
            time.sleep(rng.uniform(0, 0.004))

    thread = threading.Thread(target=sensor)
    thread.start()
    try:
        for entry in range(300):
            mon.expect(entry)
            if entry % 7 == 0:
                time.sleep(0.002)
        assert mon.wait_idle(WAIT)
    finally:
        stop.set()
        thread.join()
        left = mon.close()
    passed = [e for e in log.passed if e is not None]
    missed = [e for e, _ in log.missed]
    assert left == ()
    assert sorted(passed + missed) == list(range(300))
    assert passed == sorted(passed) and missed == sorted(missed)  # in the order people were let in


def test_a_failing_callback_is_logged_and_the_monitor_goes_on(caplog):
    reported: list[object] = []

    def flaky(entry_id):
        reported.append(entry_id)
        if entry_id == "bad":
            raise OSError("entry log is read-only")

    mon = PassageMonitor(0.02, flaky)
    try:
        with caplog.at_level(logging.ERROR, logger="hardware.passage"):
            mon.expect("bad")
            mon.expect("good")
            assert mon.wait_idle(WAIT)
    finally:
        mon.close()
    assert reported == ["bad", "good"]
    assert [r for r in caplog.records if "entry bad failed" in r.getMessage()]


def test_closed_monitor_ignores_new_entries(caplog):
    mon = PassageMonitor(60.0, lambda e: None)
    assert mon.close() == ()
    with caplog.at_level(logging.WARNING, logger="hardware.passage"):
        mon.expect("late")
    assert mon.pending == () and [r for r in caplog.records if "late" in r.getMessage()]


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "5", None])
def test_bad_timeouts(timeout):
    with pytest.raises(ValueError, match="passage timeout"):
        PassageMonitor(timeout, lambda e: None)
