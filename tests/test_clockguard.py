"""The clock guard: never earlier than the last time seen; confirmation by NTP or the server.
(The degraded-mode policy that acts on its status: tests/test_admission.py.)"""
from __future__ import annotations

import json
import logging
import os

import pytest

from scanner.appliance.clockguard import ClockGuard
from scanner.store import clock as clockmod
from sync.state import StateFile, SyncState

T0 = 1_750_000_000.0


BOOT = "6f1c2d4e-0a8b-4c3d-9e7f-112233445566"


class Clocks:
    """Settable wall, monotonic and boot clocks, boot id and kernel NTP state for one guard."""

    def __init__(self, wall: float = T0, boot_id: str = BOOT, since_boot: float = 1000.0) -> None:
        self.wall, self.mono, self.kernel = wall, 1000.0, clockmod.UNSYNCED
        self.boot_id, self.since_boot = boot_id, since_boot

    def tick(self, seconds: float, *, wall_step: float = 0.0) -> None:
        self.mono += seconds
        self.since_boot += seconds
        self.wall += seconds + wall_step

    def boot(self) -> clockmod.BootTime:
        return clockmod.BootTime(self.boot_id, int(self.since_boot * 1000))

    def answer(self, offset_ms: int) -> clockmod.ServerTime:
        """A server answer arriving now, as the sync agent records it."""
        return clockmod.ServerTime(offset_ms, int(self.wall * 1000), self.boot())

    def guard(self, state_dir, **kw) -> ClockGuard:
        return ClockGuard(state_dir, wall=lambda: self.wall, mono=lambda: self.mono,
                          kernel=lambda: clockmod.KernelClock(self.kernel), boot=self.boot, **kw)


def test_time_never_goes_back_and_goes_on_from_the_last_seen(tmp_path):
    c = Clocks()
    g = c.guard(tmp_path)
    assert g.now() == T0
    c.tick(10, wall_step=-3600)  # the clock steps back an hour
    assert g.now() == pytest.approx(T0 + 10)
    assert g.status().behind and g.entry_state() == clockmod.UNSYNCED
    c.tick(5)
    assert g.now() == pytest.approx(T0 + 15)  # goes on with the monotonic clock
    c.tick(1, wall_step=3600)  # NTP puts it right: wall clock in use again
    assert g.now() == pytest.approx(T0 + 16) and not g.status().behind


def test_the_last_time_seen_survives_a_restart(tmp_path):
    c = Clocks()
    g = c.guard(tmp_path)
    c.tick(100)
    g.save()
    doc = json.loads((tmp_path / "clock.json").read_text())
    assert doc["last_seen_ms"] == int((T0 + 100) * 1000) and oct(os.stat(tmp_path / "clock.json").st_mode)[-3:] == "600"
    booted = Clocks(wall=T0 - 86400 * 300)  # a Pi without a battery clock, power cut, no network
    g2 = booted.guard(tmp_path)
    assert g2.now() == pytest.approx(T0 + 100) and g2.status().behind
    booted.tick(7)
    assert g2.now() == pytest.approx(T0 + 107)


def test_floor_from_the_entry_log_and_garbage_state_file(tmp_path):
    (tmp_path / "clock.json").write_text("{not json")
    c = Clocks()
    g = c.guard(tmp_path, floor=T0 + 50)
    assert g.now() == pytest.approx(T0 + 50)


def test_confirmation_by_ntp_and_by_the_server(tmp_path):
    c = Clocks()
    g = c.guard(tmp_path, max_offset_s=10)
    st = g.refresh()
    assert not st.confirmed and st.unconfirmed_for(T0) == float("inf")
    st = g.refresh(c.answer(25_000))  # 25 s off: not confirmed
    assert not st.confirmed and st.offset_ms == 25_000
    c.tick(0.5)
    st = g.refresh(c.answer(-800))
    assert st.confirmed and st.by == "server" and g.entry_state() == clockmod.SYNCED
    c.tick(60)
    c.kernel = clockmod.SYNCED
    st = g.refresh()
    assert st.by == "ntp" and st.confirmed_at == pytest.approx(T0 + 60) and st.kernel == clockmod.SYNCED
    g.save()
    g2 = Clocks(wall=T0 + 120).guard(tmp_path)
    assert not g2.status().confirmed and g2.status().confirmed_at == pytest.approx(T0 + 60)  # remembered, not assumed


def test_a_server_answer_from_an_earlier_boot_does_not_confirm(tmp_path, caplog):
    """A Pi without a battery clock, rebooted while the server is down: sync-state.json still holds
    the last boot's good answer. It says nothing about this boot's clock."""
    caplog.set_level(logging.INFO, logger="scanner.appliance.clockguard")
    before = Clocks(boot_id=BOOT, since_boot=86_400)
    answer = before.answer(120)  # 0.12 s off: a good answer, in that boot
    after = Clocks(wall=T0 + 600, boot_id="0d9e8f7a-1b2c-4d3e-8f4a-5b6c7d8e9f00", since_boot=40)
    g = after.guard(tmp_path)
    for _ in range(3):  # the daemon asks every second, with the same file
        st = g.refresh(answer)
        after.tick(1)
    assert not st.confirmed and st.offset_ms is None and g.entry_state() == clockmod.UNSYNCED
    assert "earlier boot" in caplog.text and "confirmed by" not in caplog.text
    # a fresh answer in this boot confirms at once
    st = g.refresh(after.answer(-300))
    assert st.confirmed and st.by == "server" and st.offset_ms == -300
    # an answer written without a boot (an older version's file) is not reused either
    g2 = Clocks(wall=T0 + 700).guard(tmp_path / "x")
    assert not g2.refresh(clockmod.ServerTime(0, int(T0 * 1000), None)).confirmed


def test_a_restart_in_the_same_boot_keeps_a_good_answer(tmp_path):
    """The daemon restarted (same boot, the clock running on undisturbed): the last answer still
    vouches for the clock, confirmed as of when it came; a wall clock stepped since then does not
    count as confirmed by it."""
    c = Clocks()
    answer = c.answer(-400)
    c.tick(45)  # the daemon restarts 45 s later
    g = c.guard(tmp_path)
    st = g.refresh(answer)
    assert st.confirmed and st.by == "server" and st.offset_ms == -400
    assert st.confirmed_at == pytest.approx(T0)  # the answer's time, not the restart's
    stepped = Clocks()
    answer = stepped.answer(-400)
    stepped.tick(45, wall_step=3600)  # someone set the clock an hour ahead meanwhile
    st = stepped.guard(tmp_path / "s").refresh(answer)
    assert not st.confirmed and st.offset_ms == pytest.approx(-400 - 3_600_000)


def test_server_time_offset_now_is_pure():
    b = clockmod.BootTime("a", 10_000)
    t = clockmod.ServerTime(50, 1_000_000, b)
    assert t.offset_now(clockmod.BootTime("a", 20_000), 1_010_000) == 50  # 10 s on both clocks
    assert t.offset_now(clockmod.BootTime("a", 20_000), 1_012_000) == -1950  # the wall clock stepped 2 s
    assert t.offset_now(clockmod.BootTime("b", 20_000), 1_010_000) is None  # another boot
    assert t.offset_now(clockmod.BootTime(None, 20_000), 1_010_000) is None  # boot unknown now
    assert t.offset_now(clockmod.BootTime("a", 5_000), 1_010_000) is None  # boot clock went back: not this boot
    assert clockmod.ServerTime(50, 1, clockmod.BootTime(None, 1)).offset_now(clockmod.BootTime(None, 2), 2) is None


def test_boot_time_reads_the_kernel_boot_id(tmp_path):
    real = clockmod.boot_time()
    assert real.boot_id and len(real.boot_id) == 36 and real.since_boot_ms > 0
    fake = tmp_path / "boot_id"
    fake.write_text("11111111-2222-3333-4444-555555555555\n")
    assert clockmod.boot_time(str(fake)).boot_id == "11111111-2222-3333-4444-555555555555"
    assert clockmod.boot_time(str(tmp_path / "none")).boot_id is None


def test_sync_state_records_the_boot_with_the_answer(tmp_path):
    st = SyncState()
    assert st.server_time() is None
    st.note_clock(-250)
    files = StateFile(tmp_path)
    files.save(st)
    got = files.load().server_time()
    now = clockmod.boot_time()
    assert got.offset_ms == -250 and got.boot.boot_id == now.boot_id
    assert 0 <= now.since_boot_ms - got.boot.since_boot_ms < 60_000
    assert got.offset_now(now, got.checked_ms + (now.since_boot_ms - got.boot.since_boot_ms)) == -250


def test_ntp_overrules_a_saved_time_from_the_future(tmp_path):
    (tmp_path / "clock.json").write_text(json.dumps({"last_seen_ms": int((T0 + 86400 * 30) * 1000)}))
    c = Clocks()
    g = c.guard(tmp_path)
    assert g.status().behind
    c.kernel = clockmod.SYNCED
    g.refresh()
    assert g.now() == T0 and not g.status().behind
