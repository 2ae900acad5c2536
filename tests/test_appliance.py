"""The appliance in-process, with real parts: multi-part SMART Health Cards through the pipeline,
the gate relay and passage sensor on gpiozero's MockFactory pins ("granted, did not pass"), an entry
log that cannot commit (nobody admitted, error state, recovery), staff direction, an unplugged
reader, readers found by their udev names without any input configured (also hot-plugged), and
zero-touch enrollment beside the verdict lane (a slow server holds neither the lane nor the watchdog)."""
from __future__ import annotations

import gc
import json
import os
import sqlite3
import sys
import threading
import time
import tty
import weakref

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from support.appliance import HeldServer, NotifySocket
from support.config import standalone, write_config
from support.inputs import Fifo
from support.pki import make_pki
from support.waiting import WAIT, wait_for

from scanner.appliance import runtime
from scanner.appliance.config import load
from scanner.appliance.daemon import Appliance
from scanner.appliance.sdnotify import Notifier
from scanner.base.errors import Reason
from scanner.cards import jwks
from scanner.cards.formats import shc
from scanner.cards.scan import Scan
from scanner.cards.verdict import reject
from scanner.store import entrylog as entrylog_mod
from scanner.store.entrylog import EntryLog, EntryLogWriteError
from sync.wire import enrollcode


class Running:
    """An appliance started in this process, its events, and a named pipe as its text input."""

    def __init__(self, tmp_path, tables: dict, *, fifo: bool = True, **kw) -> None:
        self.fifo = None
        if fifo:
            self.fifo = Fifo(tmp_path / "in.fifo")
            tables.setdefault("stdin", [{"name": "desk", "path": str(self.fifo.path)}])
        self.app = Appliance(load(write_config(tmp_path / "c.toml", tables)), **kw)
        self.events = []
        self.cond = threading.Condition()
        self.app.hub.listen(self._heard)
        self.app.start()
        self.thread = threading.Thread(target=self.app.supervise, daemon=True)
        self.thread.start()

    def _heard(self, event) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def send(self, *lines: str) -> None:
        self.fifo.send(*lines)

    def wait(self, pred, what: str = "event"):
        with self.cond:
            ok = self.cond.wait_for(lambda: any(pred(e) for e in self.events), WAIT)
            assert ok, (what, [(e.kind, e.data.get("reason") or e.data.get("code")) for e in self.events])
            return next(e for e in self.events if pred(e))

    def until(self, cond, what: str):
        wait_for(cond, what)

    def entries(self):
        with EntryLog(self.app.config.db_path, create=False) as log:
            return list(log.entries())

    def stop(self) -> None:
        if self.fifo is not None:
            self.fifo.close()
        self.app.request_stop()
        self.app.shutdown()


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


def test_a_multi_part_smart_health_card_is_assembled_and_verified_once(tmp_path, pki):
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwks.jwk_of(key.public_key())
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    now = int(time.time())
    claims = {"iss": "https://health.example.vn/issuer", "nbf": now - 86400, "vc": {
        "type": ["https://smarthealth.cards#health-card"], "credentialSubject": {"fhirVersion": "4.0.1", "fhirBundle": {
            "resourceType": "Bundle", "type": "collection", "entry": [
                {"fullUrl": "resource:0", "resource": {"resourceType": "Patient", "name": [
                    {"family": "Đặng", "given": ["Thu"]}], "birthDate": "1990-05-17"}},
                {"fullUrl": "resource:1", "resource": {"resourceType": "Immunization", "status": "completed",
                                                       "occurrenceDateTime": "2021-03-01",
                                                       "patient": {"reference": "resource:0"}}}]}}}}
    parts = shc.qr_texts(shc.sign_jws(claims, key, jwk["kid"]), 3)
    tables = standalone(tmp_path / "state", pki, api={"enabled": False})
    tables["trust"] = {"files": [str(pki.pub), str(tmp_path / "jwks.json")]}
    r = Running(tmp_path, tables)
    try:
        r.send(parts[1])
        e = r.wait(lambda e: e.kind == "partial")
        assert (e.data["index"], e.data["total"], e.data["missing"]) == (2, 3, [1, 3])
        assert e.data["message"]["en"] == "Part 2 of 3 read: now scan part 1, 3"
        r.send(parts[0], parts[2])
        v = r.wait(lambda e: e.kind == "verdict")
        assert (v.data["decision"], v.data["format"], v.data["cert_type"]) == ("accept", "SHC", "vaccination")
        assert v.data["holder"]["birth_year"] == "1990"
        assert [e.data["index"] for e in r.events if e.kind == "partial"] == [2, 1]
        # one text that merely contains the parts (a single QR with newlines) is not a multi-part card
        joined = r.app.lane.prepare(Scan("\n".join(parts), "manual", "test", time.time()))
        assert joined.texts == ("\n".join(parts),) and not r.app.lane.verify(joined).accepted
    finally:
        r.stop()
    (entry,) = r.entries()
    assert (entry.format, entry.reason) == ("SHC", "ok")


def test_gate_relay_passage_sensor_and_did_not_pass(tmp_path, pki):
    tables = standalone(tmp_path / "state", pki, api={"enabled": False},
                        feedback__relay={"pin": 23, "pulse_s": 0.2},
                        feedback__passage={"pin": 25, "timeout_s": 0.5, "bounce_s": 0})
    r = Running(tmp_path, tables)
    try:
        fb = r.app.feedback
        relay_pin = fb.relay.pin
        r.send(pki.card(name="Một"))
        r.wait(lambda e: e.kind == "verdict" and e.data["seq"] == 1)
        r.until(lambda: any(s.state for s in relay_pin.states), "the gate relay pulsed")
        fb.passage_sensor.pin.drive_low()  # somebody went through the turnstile
        fb.passage_sensor.pin.drive_high()
        r.send(pki.card(name="Hai"))
        r.wait(lambda e: e.kind == "verdict" and e.data["seq"] == 2)
        r.until(lambda: len(r.entries()) == 3, "the follow-up entry")  # nobody passed for the second
    finally:
        r.stop()
    first, second, follow = r.entries()
    assert follow.kind == "did_not_pass" and follow.ref_entry_id == second.entry_id
    assert not any(e.ref_entry_id == first.entry_id for e in (second, follow))
    assert relay_pin.state == 0  # safe state after shutdown (fail-secure: released)


def test_a_log_that_cannot_commit_admits_nobody_and_recovers(tmp_path, pki):
    tables = standalone(tmp_path / "state", pki, api={"enabled": False},
                        feedback__relay={"pin": 23, "pulse_s": 0.2})
    r = Running(tmp_path, tables)
    try:
        r.send(pki.card(name="Một"))
        r.wait(lambda e: e.kind == "verdict")
        log = r.app.core.log
        relay = r.app.feedback.relay.pin
        r.until(lambda: r.app.feedback.wait_idle(0) and relay.state == 0, "the first pulse over")
        fill = _fill_to_the_cap(log)  # the disk is full from now on
        relay.clear_states()
        r.send(pki.card(name="Hai"))
        err = r.wait(lambda e: e.kind == "error" and e.data["code"] == "disk_full")
        assert err.data["queued"] is True
        r.until(lambda: r.app.health()["state"] == "error", "error state")
        assert "log:disk_full" in r.app.health()["problems"]
        assert str(r.app.feedback.state) == "error"
        assert not any(s.state for s in relay.states)  # the gate never opened for the second person
        assert len([e for e in r.events if e.kind == "verdict"]) == 1
        log.set_max_db_bytes(None)  # space again: the retry loop commits the kept entries
        r.until(lambda: len(r.entries()) == 1 + fill + 1, "the kept entries committed")
        late = r.entries()[-1]  # the second card, committed late as what its holder was shown
        assert (late.decision, late.reason, late.format) == ("reject", "disk_full", "CK1")
        assert (log.totals().admitted_in, log.totals().occupancy) == (1, 1)
        r.until(lambda: r.app.health()["state"] != "error", "error state cleared")
    finally:
        r.stop()


def _fill_to_the_cap(log) -> int:
    """Cap the database at its size and write filler entries until a commit fails (it is kept in
    the retry queue); returns how many entries that was, the failed one included."""
    conn = sqlite3.connect(str(log.path))
    pages, size = conn.execute("PRAGMA page_count").fetchone()[0], conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    log.set_max_db_bytes(pages * size)
    for n in range(1, 2000):
        try:
            log.record(Scan(f"filler {n}", "manual", "test", time.time(), "in"), reject(Reason.MALFORMED, "filler"))
        except EntryLogWriteError as exc:
            assert exc.code == "disk_full" and exc.queued
            return n
    raise AssertionError("the capped database never filled up")


def test_staff_direction_applies_to_inputs_without_their_own(tmp_path, pki):
    r = Running(tmp_path, standalone(tmp_path / "state", pki, api={"enabled": False}))
    try:
        assert r.app.set_direction("out") == "out"
        r.wait(lambda e: e.kind == "direction" and e.data["direction"] == "out" and e.data["by"] == "staff")
        r.send(pki.card())
        v = r.wait(lambda e: e.kind == "verdict")
        assert v.data["direction"] == "out"
    finally:
        r.stop()
    assert r.entries()[0].direction == "out"


class _Cycle:
    me: object = None


def test_a_started_appliance_shortens_gil_handoffs_and_freezes_its_start_up_objects(tmp_path, pki):
    """scanner/appliance/runtime.py: the scan loop must not wait 5 ms for the GIL or behind a full collection
    of start-up objects; shutdown gives a process that goes on its settings back."""
    before = sys.getswitchinterval()
    gc.unfreeze()
    r = Running(tmp_path, standalone(tmp_path / "state", pki, api={"enabled": False}))
    try:
        assert sys.getswitchinterval() == pytest.approx(0.001)
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # the appliance and everything imported before it
        cycle = _Cycle()  # a reference cycle made after start-up is still collected
        cycle.me = cycle
        gone = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert gone() is None
        assert gc.get_freeze_count() <= frozen  # nothing new frozen (frozen objects may be freed)
        r.send(pki.card())
        assert r.wait(lambda e: e.kind == "verdict").data["decision"] == "accept"
    finally:
        r.stop()
    assert sys.getswitchinterval() == pytest.approx(before)
    assert gc.get_freeze_count() == 0


def test_the_lanes_log_is_checkpointed_by_the_tick_when_idle_never_in_a_commit(tmp_path, pki, monkeypatch):
    """The scan lane's commits never copy the WAL into the database (SQLite's own checkpoints would,
    inside the commit that crosses 1000 pages); the supervisor's tick does, once the lane is idle."""
    monkeypatch.setattr(entrylog_mod, "CHECKPOINT_COMMITS", 1)  # due after any scan...
    monkeypatch.setattr(entrylog_mod, "CHECKPOINT_QUIET_S", 1.0)  # ... once the lane has been idle this long
    r = Running(tmp_path, standalone(tmp_path / "state", pki, api={"enabled": False}))
    try:
        log = r.app.core.log
        assert log._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        db = r.app.config.db_path
        written = db.stat().st_mtime_ns
        r.send(*[pki.card() for _ in range(5)])
        r.until(lambda: sum(1 for e in r.events if e.kind == "verdict") == 5, "5 verdicts")
        assert db.stat().st_mtime_ns == written  # the scans are in the WAL only
        r.until(lambda: db.stat().st_mtime_ns > written, "a checkpoint by the tick")
    finally:
        r.stop()


def test_tuning_helpers_round_trip():
    before = sys.getswitchinterval()
    t = runtime.tune_for_scanning(0.002)
    try:
        assert sys.getswitchinterval() == pytest.approx(0.002)
        # frozen objects can still be freed by reference counting (the count only falls after freeze)
        assert 0 < gc.get_freeze_count() <= t.frozen_objects
        assert t.previous_switch_interval_s == pytest.approx(before)
    finally:
        runtime.restore(t)
    assert sys.getswitchinterval() == pytest.approx(before) and gc.get_freeze_count() == 0


def test_an_unplugged_reader_puts_the_device_in_error(tmp_path, pki):
    tables = standalone(tmp_path / "state", pki, api={"enabled": False}, hid=[{"device": "ffff:fff0"}])
    r = Running(tmp_path, tables)
    try:
        r.until(lambda: "input_down:ffff:fff0" in r.app.health()["problems"], "input_down")
        assert r.app.health()["state"] == "error"
        checks = {c.name: c for c in r.app.input_checks()}
        assert checks["reader:ffff:fff0"].status in ("warn", "fail") and checks["reader:ffff:fff0"].fix
    finally:
        r.stop()


def test_readers_are_found_by_their_udev_names_also_when_plugged_in_later(tmp_path, pki):
    dev = tmp_path / "dev"
    (dev / "checkpoint").mkdir(parents=True)
    master, slave = os.openpty()
    tty.setraw(slave)
    tables = standalone(tmp_path / "state", pki, api={"enabled": False})
    r = Running(tmp_path, tables, fifo=False, dev=str(dev), discover_every_s=0.1)
    try:
        assert r.app.pipeline.inputs() == ()
        os.symlink(os.ttyname(slave), dev / "checkpoint" / "serial-1eab-1306")  # plugged in
        r.until(lambda: len(r.app.pipeline.inputs()) == 1, "the reader found")
        r.until(lambda: r.app.pipeline.health().sources[0].state == "ok", "the reader open")
        os.write(master, (pki.card() + "\r\n").encode())
        v = r.wait(lambda e: e.kind == "verdict")
        assert (v.data["source"], v.data["source_id"]) == ("serial", "serial-1eab-1306")
    finally:
        r.stop()
        os.close(master)
        os.close(slave)


def test_enrollment_runs_beside_the_lane_which_answers_meanwhile_and_the_watchdog_goes_on(tmp_path, pki):
    """A server that holds the enrollment holds neither the lane nor the watchdog; a card read
    meanwhile waits for the enrollment's end and is then checked as the device is."""
    server = HeldServer()
    notify = NotifySocket(tmp_path)
    tables = {"device": {"state_dir": str(tmp_path / "state")}, "enroll": {"trust_root": str(pki.pub)},
              "api": {"enabled": False}, "feedback": {"pin_factory": "mock"}}
    notifier = Notifier({"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    r = Running(tmp_path, tables, notifier=notifier)
    try:
        assert r.app.mode == "unprovisioned"
        r.send(enrollcode.EnrollCode(server.url, "tok_held-0123456789").text())
        assert server.asked.wait(WAIT), "the enrollment never reached the server"
        pings = notify.count("WATCHDOG")
        r.send(pki.card(), enrollcode.EnrollCode(server.url, "tok_again-0123456789").text())
        r.wait(lambda e: e.kind == "error" and e.data["code"] == "enrolling", "the lane's answer meanwhile")
        r.until(lambda: notify.count("WATCHDOG") >= pings + 4, "watchdog pings while the server holds it")
        assert r.app.pipeline.busy_for() is None
        assert [e.data["server"] for e in r.events if e.kind == "enrolling"] == [server.url]
        assert not any(e.kind == "error" and e.data["code"] == "not_provisioned" for e in r.events)  # the card waits
        server.release.set()  # the server answers at last: refused, the device stays unprovisioned
        failed = r.wait(lambda e: e.kind == "error" and e.data["code"] not in ("not_provisioned", "enrolling"),
                        "the enrollment's result")
        assert failed.data["source"] == "stdin" and r.app.mode == "unprovisioned"
        r.wait(lambda e: e.kind == "error" and e.data["code"] == "not_provisioned", "the card that waited, answered")
        assert not any(e.kind == "enrolled" for e in r.events)
    finally:
        r.stop()
        server.close()
        notify.close()
