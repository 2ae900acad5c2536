"""The field-test rig's own parts that run without QEMU (scripts/field-test/fieldtest.py): what it
types on the emulated USB keyboard is read back as the card by the daemon's key translator, and it
recognises the daemon's verdict lines as journald stores them, and the agent's line to the host works on
both kinds of port it gets (the Pi's UART, a tty; a virtio-serial port on -M virt, no tty)."""
from __future__ import annotations

import http.server
import importlib.util
import logging
import os
import pty
import socket
import sys
import threading
import time
import urllib.request
from types import SimpleNamespace

import evdev
import pytest
from support.paths import ROOT
from support.pki import make_pki

from hardware.readers_hid import KeyEvents
from scanner.appliance.logsetup import LineFormatter

_spec = importlib.util.spec_from_file_location("fieldtest", ROOT / "scripts" / "field-test" / "fieldtest.py")
fieldtest = importlib.util.module_from_spec(_spec)
sys.modules["fieldtest"] = fieldtest  # its dataclasses look their module up
_spec.loader.exec_module(fieldtest)
_agent_spec = importlib.util.spec_from_file_location("ckft_agent", ROOT / "scripts" / "field-test" / "agent.py")
agent = importlib.util.module_from_spec(_agent_spec)
_agent_spec.loader.exec_module(agent)

# QEMU's key names (qcodes) for the keys the rig uses, as Linux key codes; the rest are KEY_<NAME>
QCODE_TO_KEY = {"shift": "KEY_LEFTSHIFT", "spc": "KEY_SPACE", "ret": "KEY_ENTER"}


def typed_back(text: str) -> list[tuple[str, object]]:
    """The reads the daemon's HID translator (US layout, Enter ends a read) makes of the rig's key events."""
    events, t = [], time.time()
    for ch in text:
        for ev in fieldtest.key_events(ch):
            qcode = ev["data"]["key"]["data"]
            code = evdev.ecodes.ecodes[QCODE_TO_KEY.get(qcode, f"KEY_{qcode.upper()}")]
            t += 0.01
            events.append(SimpleNamespace(type=evdev.ecodes.EV_KEY, code=code, value=1 if ev["data"]["down"] else 0,
                                          timestamp=lambda t=t: t))
    return KeyEvents("us", "enter", 3.0).feed(events)


def test_cards_typed_on_the_emulated_keyboard_read_back_as_the_cards(tmp_path):
    pki = make_pki(tmp_path / "pki")
    cards = [pki.card(), pki.card(expired=True), pki.card(name="Trần Thị Ánh")]
    for card in cards:
        assert typed_back(card + "\n") == [(card, None)]
    assert typed_back("CKENROLL:v=1&s=http%3A%2F%2F127.0.0.1%3A8443&t=tok_EN-01\n")[0][1] is None


def test_the_rig_recognises_the_daemons_verdict_lines_as_journald_stores_them():
    fmt = LineFormatter(journal=True)
    record = logging.LogRecord("scanner.appliance.lane", logging.INFO, __file__, 1,
                               "verdict source=%s:%s decision=%s reason=%s seq=%d entry=%s",
                               ("serial", "desk", "accept", "ok", 7, "e-1"), None)
    line = fmt.format(record)
    message = line[line.index(">") + 1:]  # journald takes the <6> priority prefix off
    assert fieldtest.is_verdict({"m": message})
    assert fieldtest.fields(message) == {"source": "serial:desk", "decision": "accept", "reason": "ok", "seq": "7",
                                         "entry": "e-1"}
    assert not fieldtest.is_verdict({"m": "appliance.clockguard: clock: not confirmed (verdict pending)"})


def test_pin_spans_from_level_samples():
    samples = [(0.0, 0), (0.1, 1 << 17), (0.2, 1 << 17), (0.3, 0), (0.4, 1 << 17 | 1 << 23), (0.5, 1 << 23)]
    assert fieldtest.high(samples, 17) == [(0.1, pytest.approx(0.2)), (0.4, pytest.approx(0.1))]
    assert fieldtest.high(samples, 23) == [(0.4, pytest.approx(0.1))]  # still on at the last sample
    assert fieldtest.high(samples, 27) == []


def test_the_agents_line_works_on_a_port_that_is_no_tty(tmp_path):
    """-M virt gives the agent a virtio-serial port: a character device without line settings (a FIFO
    here is no tty either)."""
    port = tmp_path / "port"
    os.mkfifo(port)
    link = agent.Link(str(port))
    link.send({"ev": "up"})
    assert next(link.lines()) == {"ev": "up"}


def test_the_agents_line_on_a_uart_is_raw(tmp_path):
    host, guest = pty.openpty()
    link = agent.Link(os.ttyname(guest))
    os.write(host, b'noise from the boot\r\n{"id": 1, "op": "hello"}\n')
    assert next(link.lines()) == {"id": 1, "op": "hello"}
    link.send({"id": 1, "ok": True})
    assert os.read(host, 100) == b'{"id":1,"ok":true}\n'  # raw: no \r added, nothing echoed


def test_the_error_page_is_awaited_until_its_server_listens():
    """checkpoint-config-error.service is active (Type=simple) before its page's server listens; the rig
    asks again until the page answers instead of once after a fixed pause."""
    page = b"<html>2 problems</html>"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format, *args):
            return

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = http.server.HTTPServer(("127.0.0.1", port), Handler, bind_and_activate=False)
    tried = []

    def fetch():
        tried.append(time.monotonic())
        if len(tried) == 3:  # the server comes up after two refused attempts
            server.server_bind()
            server.server_activate()
            threading.Thread(target=server.handle_request, daemon=True).start()
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        except OSError as exc:
            raise fieldtest.Failure(str(exc)) from exc

    try:
        text, waited = fieldtest.wait_page(fetch, timeout=30, every_s=0.05)
    finally:
        server.server_close()
    assert text == page.decode() and len(tried) == 3 and waited >= 0.1
    with pytest.raises(fieldtest.Failure, match="did not answer within"):
        fieldtest.wait_page(fetch, timeout=0.2, every_s=0.05)  # nothing listens any more


def test_the_journal_lines_that_explain_a_restart():
    """After a power cut the rig keeps the lines of the boot's journal that say why checkpoint.service
    ran more than once (systemd 252's messages, journalctl -o short-monotonic)."""
    journal = "\n".join([
        "[  141.735242] checkpoint kernel: EXT4-fs (vda3): mounted filesystem with ordered data mode.",
        "[  301.002113] checkpoint systemd[1]: Starting checkpoint.service - checkpoint-edge QR card scanner...",
        "[  421.004551] checkpoint systemd[1]: checkpoint.service: start operation timed out. Terminating.",
        "[  423.117702] checkpoint systemd[1]: checkpoint.service: Main process exited, code=killed, status=15/TERM",
        "[  423.118013] checkpoint systemd[1]: checkpoint.service: Failed with result 'timeout'.",
        "[  428.301113] checkpoint systemd[1]: checkpoint.service: Scheduled restart job, restart counter is at 1.",
        "[  428.302554] checkpoint systemd[1]: Stopped checkpoint.service - checkpoint-edge QR card scanner.",
        "[  430.100000] checkpoint checkpoint[612]: appliance.supervisor: state ok problems=- degraded=-",
        "[  431.100000] checkpoint checkpoint[612]: Traceback (most recent call last):",
        "[  432.500000] checkpoint systemd[1]: checkpoint-kiosk.service: Main process exited, code=exited, status=1",
    ])
    kept = fieldtest.restart_causes(journal)
    assert [line.split(": ", 1)[1] if "systemd[1]" in line else line for line in kept] == [
        "checkpoint.service: start operation timed out. Terminating.",
        "checkpoint.service: Main process exited, code=killed, status=15/TERM",
        "checkpoint.service: Failed with result 'timeout'.",
        "checkpoint.service: Scheduled restart job, restart counter is at 1.",
        "[  431.100000] checkpoint checkpoint[612]: Traceback (most recent call last):",
    ]


def test_a_guest_kernel_panic_is_reported_with_the_disk_errors_before_it():
    """A raspi3b boot on a starved host: the emulated SD host timed out, reads failed, systemd died and
    the kernel panicked (these lines are from such a boot's console); the rig says so at once."""
    console = "\n".join([
        "[  730.779326] sdhost-bcm2835 3f202000.mmc: timeout waiting for hardware interrupt.",
        "[  730.830380] I/O error, dev mmcblk0, sector 2641964 op 0x0:(READ) flags 0x80700 phys_seg 1 prio class 2",
        "[  741.010346] sdhost-bcm2835 3f202000.mmc: timeout waiting for hardware interrupt.",
        "[  741.068438] I/O error, dev mmcblk0, sector 2641965 op 0x0:(READ) flags 0x80700 phys_seg 1 prio class 2",
        "[  906.973512] Internal error: Oops: 000000009200004f [#1] SMP",
        "[  907.056770] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b",
        "[  907.263324] ---[ end Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b ]---",
    ])
    assert fieldtest.kernel_panic(console) == (
        "the guest's kernel panicked (Attempted to kill init! exitcode=0x0000000b) after 2 I/O errors on its disk "
        "and 2 SD host interrupt timeouts")
    assert fieldtest.kernel_panic(console.rsplit("\n", 2)[0]) is None  # an oops alone: the boot may go on
