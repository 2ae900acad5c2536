"""make field-test: boot the SD-card image (make image) in qemu-system-aarch64 as a Raspberry Pi 3B and
test the appliance as a whole machine: boot to READY, a USB keyboard-wedge reader typed from the
host, a USB serial reader, the GPIO levels of the LEDs, buzzer and relay, the watchdog, power cuts,
a clock set back, sync with a server on the host, and a broken configuration file on the card.

Runs on the host as root with the project's venv (`make field-test`). Every scenario prints what it
measured; the run ends with a table (scenario, machine, result, figure), also written to
IMAGE_CACHE/field-test/results.json and results.md. docs/raspberry-pi.md#field-test.

The rig, and what it changes in the copy of the image it boots (never the image itself):
- the kernel, initramfs, device tree and command line come from the image's boot partition; the
  device tree gets what the Pi firmware or QEMU needs: /system/linux,revision (the firmware adds
  it; gpiozero reads the board from it), no DMA for the SD host (QEMU's sdhost DMA writes time
  out; the driver falls back to PIO as it does on a Pi without DMA), and no Bluetooth on the PL011
  UART, which carries the agent's line instead;
- the provisioning files go onto the boot partition (mtools), as a technician would put them;
- scripts/field-test/agent.py and its unit go into the root file system (debugfs), test-only, and
  the card's fstab lines get x-systemd.device-timeout=15min (emulation on a busy host is slow);
- the card is padded to a power of two (QEMU's SD card needs it); CKDATA grows into it at first boot.
The disk is attached with cache=writethrough: every write the guest completes is on the host file
(O_DSYNC), so killing QEMU loses only what the guest itself had not written yet.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from scanner.cards import issuer, keys
from scanner.cards.bundle import BundleKey, make_bundle
from scanner.cards.verdict import Holder
from sync.server import credentials, enrollcodes
from sync.server.bundles import publish
from sync.server.keys import load_or_create_pull_key, load_or_create_sealing_key
from sync.server.storage import open_storage
from sync.wire import credential as credwire

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("IMAGE_CACHE", "/var/cache/checkpoint-image"))
GUEST_SYNC_PORT = 8443  # the tunnel's end in the guest: the device's server is http://127.0.0.1:8443
GPLEV0 = 0x3F200034      # BCM2835 GPIO pin level register 0 (GPIO0..31) on a Pi 3
PINS = {"green": 17, "red": 27, "amber": 22, "buzzer": 18, "relay": 23}
KBD_ID, SERIAL_ID = "0627:0001", "0403:6001"  # QEMU's usb-kbd and usb-serial (an FTDI chip)
NICE = ["nice", "-n", "5"]  # QEMU: below interactive work, not starved by the test suites of a shared host
CHECKPOINT_ID = "field-gate"
# systemd's words when a unit's process ends or is restarted (systemd 252)
RESTART_SIGNS = ("Main process exited", "Failed with result", "Scheduled restart job", "Watchdog timeout",
                 "start operation timed out", "timed out. Killing", "Killing process")
SHIFTED = {"!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6", "&": "7", "*": "8", "(": "9", ")": "0",
           "_": "minus", "+": "equal", ":": "semicolon", '"': "apostrophe", "<": "comma", ">": "dot", "?": "slash"}
PLAIN = {" ": "spc", "-": "minus", "=": "equal", ";": "semicolon", "'": "apostrophe", ",": "comma", ".": "dot",
         "/": "slash", "\n": "ret"}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


@dataclass
class Result:
    scenario: str
    machine: str
    ok: bool
    figure: str
    detail: list[str] = field(default_factory=list)


class Failure(Exception):
    """A scenario's check did not hold (the message says which)."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failure(what)


# ---------------------------------------------------------------- QEMU's monitor (QMP)


class Qmp:
    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.sock = connect_unix(path, timeout)
        self.file = self.sock.makefile("rw", encoding="utf-8")
        self.lock = threading.Lock()
        json.loads(self.file.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, execute: str, **arguments):
        with self.lock:
            self.file.write(json.dumps({"execute": execute, **({"arguments": arguments} if arguments else {})}) + "\n")
            self.file.flush()
            while True:
                reply = json.loads(self.file.readline())
                if "event" in reply:
                    continue
                if "error" in reply:
                    raise RuntimeError(f"QMP {execute}: {reply['error']}")
                return reply.get("return")

    def gplev0(self) -> int:
        """GPLEV0 read from outside the guest (the monitor reads the emulated GPIO controller)."""
        text = self.cmd("human-monitor-command", **{"command-line": f"xp /1wx {GPLEV0:#x}"})
        return int(text.split(":")[1].split()[0], 16)

    def type_text(self, text: str, per_code_s: float) -> None:
        """Type ``text`` on the USB keyboard (US layout), one key at a time, as a reader types.

        QEMU's usb-kbd holds only 16 key codes (a press or a release each) until the guest polls
        them, one per poll, and drops what does not fit (trace event hid_kbd_queue_full, which
        the rig switches on: Guest.kbd_drops counts them). So the keys are paced: ``per_code_s``
        seconds per code sent, 2 per key, 4 with shift."""
        for ch in text:
            events = key_events(ch)
            self.cmd("input-send-event", events=events)
            time.sleep(per_code_s * len(events))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def key_events(ch: str) -> list[dict]:
    """The QMP input events that type ``ch`` on a US keyboard (shift held around it if needed)."""
    if "a" <= ch <= "z" or "0" <= ch <= "9":
        key, shift = ch, False
    elif "A" <= ch <= "Z":
        key, shift = ch.lower(), True
    elif ch in SHIFTED:
        key, shift = SHIFTED[ch], True
    elif ch in PLAIN:
        key, shift = PLAIN[ch], False
    else:
        raise ValueError(f"no key for {ch!r}")
    events = [_key(key, True), _key(key, False)]
    return [_key("shift", True), *events, _key("shift", False)] if shift else events


def _key(qcode: str, down: bool) -> dict:
    return {"type": "key", "data": {"down": down, "key": {"type": "qcode", "data": qcode}}}


def connect_unix(path: Path, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# ---------------------------------------------------------------- the agent's line


class AgentLink:
    """JSON lines to and from scripts/field-test/agent.py; carries the tunnel to the host's server."""

    def __init__(self, path: Path, server_port: int, online: bool = True) -> None:
        self.sock = connect_unix(path, 60)
        self.server_port = server_port
        self.online = online  # False: connections to the server are refused (the device is offline)
        self.lock = threading.Lock()
        self.cond = threading.Condition()
        self.replies: dict[int, dict] = {}
        self.logs: list[dict] = []
        self.next_id = 1
        self.conns: dict[int, socket.socket] = {}
        self.closed = False
        threading.Thread(target=self._reader, daemon=True).start()

    def send(self, obj: dict) -> None:
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        with self.lock:
            self.sock.sendall(data)

    def request(self, op: str, timeout: float = 120.0, **kw) -> dict:
        with self.cond:
            rid = self.next_id
            self.next_id += 1
        self.send({"id": rid, "op": op, **kw})
        with self.cond:
            if not self.cond.wait_for(lambda: rid in self.replies or self.closed, timeout):
                raise TimeoutError(f"agent: no answer to {op} in {timeout:.0f} s")
            if rid not in self.replies:
                raise ConnectionError("agent: the line closed")
            reply = self.replies.pop(rid)
        if not reply.get("ok"):
            raise RuntimeError(f"agent: {op}: {reply.get('error')}")
        return reply

    def run(self, *argv: str, timeout: float = 300.0, check_rc: bool = True) -> tuple[int, str, str]:
        r = self.request("run", timeout=timeout + 30, argv=list(argv), timeout_s=timeout)
        if check_rc and r["rc"] != 0:
            raise Failure(f"`{' '.join(argv)}` exited {r['rc']}: {(r['err'] or r['out']).strip()[-400:]}")
        return r["rc"], r["out"], r["err"]

    def wait_log(self, pred, timeout: float, start: int = 0) -> dict | None:
        """The first journal line from index ``start`` on that ``pred`` accepts, or None at the timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.logs):
                    if pred(self.logs[i]):
                        return self.logs[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                self.cond.wait(left)

    def mark(self) -> int:
        with self.cond:
            return len(self.logs)

    def _reader(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self.cond:
                    self.closed = True
                    self.cond.notify_all()
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if not line.startswith(b"{"):
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "t" in msg:
                    self._tunnel(msg)
                elif "id" in msg:
                    with self.cond:
                        self.replies[msg["id"]] = msg
                        self.cond.notify_all()
                elif msg.get("ev") == "log":
                    with self.cond:
                        self.logs.append(msg)
                        self.cond.notify_all()

    def _tunnel(self, msg: dict) -> None:
        cid = msg["c"]
        if msg["t"] == "o":
            if not self.online:
                self.send({"t": "x", "c": cid})
                return
            try:
                conn = socket.create_connection(("127.0.0.1", self.server_port), timeout=10)
            except OSError:
                self.send({"t": "x", "c": cid})
                return
            conn.settimeout(None)
            self.conns[cid] = conn
            threading.Thread(target=self._from_server, args=(cid, conn), daemon=True).start()
        elif msg["t"] == "d":
            conn = self.conns.get(cid)
            if conn is not None:
                try:
                    conn.sendall(base64.b64decode(msg["d"]))
                except OSError:
                    pass
        elif msg["t"] == "x":
            conn = self.conns.pop(cid, None)
            if conn is not None:
                try:
                    conn.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def _from_server(self, cid: int, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(16384)
            except OSError:
                data = b""
            if not data:
                self.conns.pop(cid, None)
                conn.close()
                try:
                    self.send({"t": "x", "c": cid})
                except OSError:
                    pass
                return
            try:
                self.send({"t": "d", "c": cid, "d": base64.b64encode(data).decode()})
            except OSError:
                return

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def fields(message: str) -> dict:
    """key=value words of a log line ("verdict source=serial:x decision=accept ...")."""
    return dict(w.split("=", 1) for w in message.split() if "=" in w)


VERDICT_LINE = re.compile(r"^(?:[\w.]+: )?verdict ")  # "appliance.lane: verdict source=..." (logsetup's format)


def kernel_panic(console: str) -> str | None:
    """What a guest console says when its kernel panicked (with the storage errors before it), or None."""
    if "Kernel panic - not syncing" not in console:
        return None
    why = console.split("Kernel panic - not syncing:", 1)[1].split("\n", 1)[0].strip(" -]")
    io_errors = console.count("I/O error, dev ")
    timeouts = console.count("timeout waiting for hardware interrupt")
    return (f"the guest's kernel panicked ({why}) after {io_errors} I/O errors on its disk "
            f"and {timeouts} SD host interrupt timeouts")


def is_verdict(entry: dict) -> bool:
    return VERDICT_LINE.match(entry.get("m") or "") is not None


# ---------------------------------------------------------------- one power-on of the emulated Pi


class Guest:
    def __init__(self, rig: Rig, label: str, *, clock: float | None = None, online: bool = True,
                 usb: tuple[str, ...] = ("kbd", "serial")) -> None:
        self.rig, self.label = rig, label
        run = rig.run
        self.console = run / f"console-{label}.log"
        for name in ("agent.sock", "qmp.sock", "reader.sock"):
            (run / name).unlink(missing_ok=True)
        # systemd waits 10 min instead of 90 s for devices and units: TCG on a shared host is slow.
        # Units that set their own timeout (checkpoint.service: TimeoutStartSec=120) keep it.
        append = rig.cmdline + f" systemd.default_timeout_start_sec=600 ckft.listen={GUEST_SYNC_PORT}"
        append += f" ckft.clock={clock if clock is not None else time.time():.3f}"
        if rig.args.guest_cpus:
            append += f" maxcpus={rig.args.guest_cpus}"
        if rig.machine == "raspi3b":
            append += " ckft.port=/dev/ttyAMA0"
            argv = ["qemu-system-aarch64", "-M", "raspi3b", "-dtb", str(rig.dtb),
                    "-drive", f"if=sd,format=raw,file={rig.disk},cache=writethrough",
                    "-serial", "chardev:agent", "-serial", f"file:{self.console}"]
        else:
            append += " ckft.port=virtio:ckft"
            # -nic none: no network card (the host is reached only through the agent's port)
            argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-smp", "2", "-m", "1024",
                    "-nic", "none",
                    "-drive", f"if=none,id=card,format=raw,file={rig.disk},cache=writethrough",
                    "-device", "virtio-blk-device,drive=card", "-device", "qemu-xhci",
                    "-device", "virtio-serial-device", "-device", "virtserialport,chardev=agent,name=ckft",
                    "-serial", f"file:{self.console}"]
        argv += ["-kernel", str(rig.kernel), "-initrd", str(rig.initrd), "-append", append,
                 "-chardev", f"socket,id=agent,path={run / 'agent.sock'},server=on,wait=off",
                 "-qmp", f"unix:{run / 'qmp.sock'},server=on,wait=off",
                 "-chardev", f"socket,id=reader,path={run / 'reader.sock'},server=on,wait=off",
                 "-display", "none", "-monitor", "none", "-no-reboot",
                 "-trace", "hid_kbd_queue_full"]  # a key code dropped by the emulated keyboard
        # raspi3b's dwc2 has one root port: QEMU puts its emulated USB hub in front of the two readers
        if "kbd" in usb:
            argv += ["-device", "usb-kbd,id=kbd"]
        if "serial" in usb:
            argv += ["-device", "usb-serial,id=serial,chardev=reader"]
        self.t0 = time.monotonic()
        self.err = run / f"qemu-{label}.err"
        self.proc = subprocess.Popen(NICE + argv, stdout=subprocess.DEVNULL, stderr=open(self.err, "w"))
        self.agent = AgentLink(run / "agent.sock", rig.server_port, online)
        self.qmp = Qmp(run / "qmp.sock")
        self.reader = connect_unix(run / "reader.sock", 60)  # the USB serial reader, plugged in from power-on
        self.up_s: float | None = None

    def wait_up(self, timeout: float) -> float:
        """Seconds from QEMU's start until the agent answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failure(f"QEMU exited ({self.proc.returncode}); see {self.console}")
            panic = kernel_panic(self.console.read_text(errors="replace"))
            if panic:  # the guest will not come up: say why now rather than at the timeout
                raise Failure(f"{panic}; see {self.console}")
            try:
                self.agent.request("hello", timeout=5)
                self.up_s = time.monotonic() - self.t0
                self.agent.request("follow", units=["checkpoint.service"])
                return self.up_s
            except (TimeoutError, ConnectionError):
                continue
        raise Failure(f"the agent did not answer within {timeout:.0f} s; see {self.console}")

    def service(self) -> dict:
        _, out, _ = self.agent.run("systemctl", "show", "checkpoint.service", "-p", "ActiveState", "-p", "SubState",
                                   "-p", "MainPID", "-p", "ActiveEnterTimestampMonotonic", "-p", "NRestarts",
                                   "-p", "Result", "-p", "DropInPaths")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_service(self, timeout: float, *, other_pid: str | None = None) -> dict:
        """checkpoint.service active (READY reached: it is Type=notify), with a new PID if given."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.service()
            if st.get("ActiveState") == "active" and st.get("MainPID") not in ("0", other_pid):
                return st
            time.sleep(3)
        raise Failure(f"checkpoint.service not active after {timeout:.0f} s: {self.service()}")

    def kbd_drops(self) -> int:
        """Key codes QEMU's usb-kbd dropped so far (its queue was full: the guest polled too slowly)."""
        return self.err.read_text(errors="replace").count("hid_kbd_queue_full")

    def serial_card(self, text: str) -> None:
        self.reader.sendall(text.encode("ascii") + b"\r\n")

    def sample_gpio(self, seconds: float) -> list[tuple[float, int]]:
        out = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            out.append((time.monotonic(), self.qmp.gplev0()))
            time.sleep(0.01)
        return out

    def save_journal(self, name: str) -> Path:
        """This boot's whole journal, kept in the run folder (the image's journal lives in RAM only)."""
        _, out, _ = self.agent.run("journalctl", "-b", "--no-pager", "-o", "short-monotonic", timeout=600,
                                   check_rc=False)
        path = self.rig.run / f"journal-{name}.txt"
        path.write_text(out)
        return path

    def kill(self) -> None:
        """Power cut: QEMU is killed, the guest gets no warning."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.close()

    def poweroff(self, timeout: float = 180) -> None:
        """`systemctl poweroff` in the guest; QEMU is stopped once the kernel says it powered down."""
        try:
            self.agent.request("run", timeout=10, argv=["systemctl", "--no-block", "poweroff"])
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if "reboot: Power down" in self.console.read_text(errors="replace"):
                break
            time.sleep(1)
        else:
            if self.proc.poll() is None:
                raise Failure(f"no power-down within {timeout:.0f} s; see {self.console}")
        self.kill()

    def close(self) -> None:
        self.agent.close()
        self.qmp.close()
        try:
            self.reader.close()
        except OSError:
            pass


# ---------------------------------------------------------------- the rig


class Rig:
    def __init__(self, args) -> None:
        self.args = args
        self.machine = args.machine
        self.run = CACHE / "field-test" / "run"
        self.results: list[Result] = []
        self.server_proc = None
        self.rnd = random.Random(args.seed)
        self.started = time.monotonic()
        self.cards_made = 0

    # -- preparation ----------------------------------------------------------------------
    def prepare(self) -> None:
        info = json.loads((CACHE / "latest.json").read_text()) if not self.args.image else {"image": self.args.image}
        image = Path(info["image"])
        if self.run.exists():
            shutil.rmtree(self.run)
        self.run.mkdir(parents=True)
        self.image_info = info
        say(f"image {image} ({image.stat().st_size >> 20} MiB)")
        self._pki_and_server()
        self.disk = self.run / "card.img"
        subprocess.run(["cp", "--sparse=always", str(image), str(self.disk)], check=True)
        size = self.disk.stat().st_size
        card = max(1 << (size - 1).bit_length(), 4 << 30)
        os.truncate(self.disk, card)  # a 4 GiB card or more (QEMU wants a power of two); CKDATA grows into it
        self.card_mb = card >> 20
        self.parts = partitions(self.disk)
        self.fat = f"{self.disk}@@{self.parts[0][0]}"
        self._card_files()
        self._inject_agent()
        self._boot_files()

    def _pki_and_server(self) -> None:
        d = self.run / "pki"
        d.mkdir()
        self.root = keys.generate("EdDSA")
        self.issuer_key = keys.generate("EdDSA")
        self.forger_key = keys.generate("EdDSA")  # a key no bundle trusts
        (d / "trust-root.pem").write_bytes(keys.public_pem(self.root.public_key()))
        self.server_dir = self.run / "server"
        self.server_dir.mkdir()
        self.db = self.server_dir / "central.db"
        now = int(time.time())
        pub = self.issuer_key.public_key()
        bundle = make_bundle(self.root, version=1, issued_at=now - 60, expires_at=now + 30 * 86400,
                             keys=[BundleKey(keys.kid_of(pub), "EdDSA", "VN-HUE", pub)])
        storage = open_storage(str(self.db))
        try:
            publish(storage, bundle, now_ms=now * 1000, root=self.root.public_key())
            # the operator's root vouches for the server at the URL the device uses (`checkpoint issuer
            # server-credential`, then `server credential publish`); keys beside the database
            sealing = load_or_create_sealing_key(self.server_dir).public_key()
            pull = load_or_create_pull_key(self.server_dir).public_key()
            cred = credwire.issue(self.root, urls=[f"http://127.0.0.1:{GUEST_SYNC_PORT}"], sealing_key=sealing,
                                  pull_key=pull, issued_at=now)
            credentials.publish(storage, cred, sealing_public=sealing, pull_public=pull, root=self.root.public_key())
            code = enrollcodes.create(storage, f"http://127.0.0.1:{GUEST_SYNC_PORT}", CHECKPOINT_ID,
                                 now_ms=now * 1000, ttl_hours=24, root_public_key=self.root.public_key())
        finally:
            storage.close()
        self.enroll_text = code.text()
        self.server_port = free_port()
        self.server_log = open(self.server_dir / "server.log", "w")
        self.server_proc = subprocess.Popen(
            [sys.executable, "-m", "scanner", "server", "run", "--db", str(self.db),
             "--listen", f"127.0.0.1:{self.server_port}"], cwd=REPO, stdout=self.server_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.server_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.server_proc.poll() is not None:
                    raise Failure(f"the reference server did not start; see {self.server_dir / 'server.log'}")
                time.sleep(0.2)
        say(f"reference server on the host: 127.0.0.1:{self.server_port} (the guest reaches it as "
            f"127.0.0.1:{GUEST_SYNC_PORT} through the agent's serial line)")

    def config_toml(self) -> str:
        return "\n".join([
            "# field test: a gate with a keyboard-wedge reader, a serial reader, lights, buzzer, relay",
            "[device]", 'name = "field test gate"', "",
            "[sync]", f'server = "http://127.0.0.1:{GUEST_SYNC_PORT}"', "interval_s = 5.0", "",
            "[enroll]", 'trust_root = "/etc/checkpoint/trust-root.pem"', "",
            "[udev]", f'extra_readers = ["{KBD_ID}", "{SERIAL_ID}"]', "",
            "[log]", "passback_window_s = 0", "",
            "[[hid]]", 'name = "wedge"', f'device = "{KBD_ID}"',
            "timeout_s = 3.0  # typed from the host through QMP, slower than a real reader", "",
            "[[serial]]", 'name = "desk"', f'port = "/dev/checkpoint/serial-{SERIAL_ID.replace(":", "-")}"', "",
            "[feedback.green]", f"pin = {PINS['green']}", "[feedback.red]", f"pin = {PINS['red']}",
            "[feedback.amber]", f"pin = {PINS['amber']}", "[feedback.buzzer]", f"pin = {PINS['buzzer']}",
            "[feedback.relay]", f"pin = {PINS['relay']}", "pulse_s = 1.0", ""])

    def _card_files(self) -> None:
        files = {"checkpoint.toml": self.config_toml().encode(), "trust-root.pem": (self.run / "pki" / "trust-root.pem")
                 .read_bytes(), "enroll.txt": (self.enroll_text + "\n").encode()}
        for name, data in files.items():
            (self.run / name).write_bytes(data)
            subprocess.run(["mcopy", "-o", "-i", self.fat, str(self.run / name), f"::/{name}"], check=True)

    def _inject_agent(self) -> None:
        unit = self.run / "checkpoint-fieldtest-agent.service"
        unit.write_text("\n".join([
            "# field test only (scripts/field-test): not part of the image",
            "[Unit]", "Description=checkpoint-edge field-test agent (test rig only)",
            "DefaultDependencies=no", "After=local-fs.target systemd-timesyncd.service systemd-udevd.service",
            "Before=checkpoint.service checkpoint-firstboot.service sysinit.target", "",
            "[Service]", "Type=notify", "NotifyAccess=main", "ExecStart=/usr/bin/python3 /usr/local/lib/checkpoint-fieldtest/agent.py",
            "Restart=always", "RestartSec=2", "", "[Install]", "WantedBy=sysinit.target", ""]))
        agent = REPO / "scripts" / "field-test" / "agent.py"
        root_fs = f"{self.disk}?offset={self.parts[1][0]}"
        # the card's partitions may take minutes to appear under TCG on a loaded host: systemd 252
        # gives a device 90 s (not systemd.default_timeout_start_sec), then goes to emergency mode
        shipped = subprocess.run(["debugfs", "-R", "cat /etc/fstab", root_fs], capture_output=True, text=True,
                                 check=True).stdout
        fstab = self.run / "fstab"
        fstab.write_text("".join(re.sub(r"^(LABEL=\S+\s+\S+\s+\S+\s+)(\S+)", r"\1\2,x-systemd.device-timeout=15min", line)
                                 for line in shipped.splitlines(keepends=True)))
        cmds = self.run / "debugfs.cmds"
        cmds.write_text("\n".join([
            "rm /etc/fstab", f"write {fstab} /etc/fstab", "sif /etc/fstab mode 0100644",
            "mkdir /usr/local/lib/checkpoint-fieldtest",
            f"write {agent} /usr/local/lib/checkpoint-fieldtest/agent.py",
            "sif /usr/local/lib/checkpoint-fieldtest/agent.py mode 0100755",
            f"write {unit} /etc/systemd/system/checkpoint-fieldtest-agent.service",
            "sif /etc/systemd/system/checkpoint-fieldtest-agent.service mode 0100644",
            "mkdir /etc/systemd/system/sysinit.target.wants",
            "symlink /etc/systemd/system/sysinit.target.wants/checkpoint-fieldtest-agent.service "
            "/etc/systemd/system/checkpoint-fieldtest-agent.service", ""]))
        r = subprocess.run(["debugfs", "-w", "-f", str(cmds), root_fs], capture_output=True, text=True)
        bad = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("debugfs ")
               and "already exists" not in line]
        check(r.returncode == 0 and not bad, f"debugfs: {r.stderr.strip()}")

    def _boot_files(self) -> None:
        names = subprocess.run(["mdir", "-b", "-i", self.fat, "::/"], capture_output=True, text=True, check=True).stdout
        names = [n.strip().lstrip("/").removeprefix("::/") for n in names.split()]
        kernel = sorted(n for n in names if n.startswith("vmlinuz-"))[-1]
        initrd = sorted(n for n in names if n.startswith("initrd.img-"))[-1]
        self.kernel, self.initrd = self.run / kernel, self.run / initrd
        self.dtb = self.run / "bcm2837-rpi-3-b.dtb"
        for name, dest in ((kernel, self.kernel), (initrd, self.initrd), ("bcm2837-rpi-3-b.dtb", self.dtb),
                           ("cmdline.txt", self.run / "cmdline.txt")):
            subprocess.run(["mcopy", "-o", "-i", self.fat, f"::/{name}", str(dest)], check=True)
        cmdline = (self.run / "cmdline.txt").read_text().split()
        console = "console=ttyS1,115200" if self.machine == "raspi3b" else "console=ttyAMA0,115200"
        self.cmdline = " ".join([w for w in cmdline if not w.startswith("console=")] + [console])
        if self.machine == "raspi3b":
            for argv in (["fdtput", "-d", self.dtb, "/soc/mmc@7e202000", "dmas"],
                         ["fdtput", "-d", self.dtb, "/soc/mmc@7e202000", "dma-names"],
                         ["fdtput", "-r", self.dtb, "/soc/serial@7e201000/bluetooth"],
                         ["fdtput", "-c", self.dtb, "/system"],
                         ["fdtput", "-t", "x", self.dtb, "/system", "linux,revision", "a02082"]):
                subprocess.run([str(a) for a in argv], check=True)
        say(f"kernel {kernel}, initramfs {initrd}, cmdline: {self.cmdline}")

    # -- helpers --------------------------------------------------------------------------
    def card(self, *, expired: bool = False, forged: bool = False) -> str:
        self.cards_made += 1
        now = int(time.time())
        issued, exp = (now - 400 * 86400, now - 30 * 86400) if expired else (now - 86400, now + 365 * 86400)
        spec = issuer.CardSpec("VN-HUE", Holder(f"Nguyen Van Thu {self.cards_made}", "1980-01-02"), issued, exp)
        return issuer.issue(spec, self.forger_key if forged else self.issuer_key)

    def boot(self, label: str, *, clock: float | None = None, online: bool = True,
             timeout: float = 1200) -> tuple[Guest, dict, float]:
        say(f"power on ({label}, {self.machine})")
        g = Guest(self, label, clock=clock, online=online)
        try:
            up = g.wait_up(timeout)
            st = g.wait_service(timeout)
        except BaseException:
            g.kill()
            raise
        ready_s = int(st["ActiveEnterTimestampMonotonic"]) / 1e6
        say(f"  agent up after {up:.0f} s; checkpoint.service READY {ready_s:.1f} s after the kernel started")
        return g, st, ready_s

    def device_entries(self, g: Guest) -> list[dict]:
        _, out, _ = g.agent.run("runuser", "-u", "checkpoint", "--", "/usr/local/bin/checkpoint", "log", "export",
                                "--db", "/var/lib/checkpoint/entries.db", timeout=600)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def chain_ok(self, g: Guest) -> tuple[bool, str]:
        rc, out, err = g.agent.run("runuser", "-u", "checkpoint", "--", "/usr/local/bin/checkpoint", "log", "verify",
                                   "--db", "/var/lib/checkpoint/entries.db", "--json", timeout=600, check_rc=False)
        return rc == 0, (out or err).strip()

    def api(self, g: Guest, path: str) -> dict:
        code = ("import json,sys,urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8080'+sys.argv[1],"
                "timeout=60).read().decode())")
        _, out, _ = g.agent.run("python3", "-c", code, path, timeout=120)
        return json.loads(out) if path.startswith("/api/") else {"text": out}

    def record(self, result: Result) -> Result:
        self.results.append(result)
        mark = "PASS" if result.ok else "FAIL"
        say(f"{mark} {result.scenario} [{result.machine}]: {result.figure}")
        for line in result.detail:
            print(f"      {line}", flush=True)
        report(self, time.monotonic() - self.started, final=False)  # a run cut short keeps its table
        return result

    def scenario(self, name: str, fn, *args) -> Result:
        detail: list[str] = []
        try:
            figure = fn(self, detail, *args)
            return self.record(Result(name, self.machine, True, figure, detail))
        except (Failure, TimeoutError, ConnectionError, RuntimeError, OSError, KeyError, ValueError) as exc:
            detail += self.last_logs(args)
            return self.record(Result(name, self.machine, False, f"{type(exc).__name__}: {exc}", detail))

    @staticmethod
    def last_logs(args, n: int = 15) -> list[str]:
        """The service's last journal lines, for a failed scenario's details."""
        guest = next((a for a in args if isinstance(a, Guest)), None)
        if guest is None:
            return []
        with guest.agent.cond:
            tail = guest.agent.logs[-n:]
        return [f"journal: {e.get('m', '')[:200]}" for e in tail]

    def stop(self) -> None:
        if self.server_proc is not None and self.server_proc.poll() is None:
            self.server_proc.terminate()
            self.server_proc.wait(30)


def partitions(disk: Path) -> list[tuple[int, int]]:
    """(offset, size) in bytes of each partition of an MBR image."""
    doc = json.loads(subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, text=True, check=True).stdout)
    sector = doc["partitiontable"].get("sectorsize", 512)
    return [(p["start"] * sector, p["size"] * sector) for p in doc["partitiontable"]["partitions"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fsck_copy(disk: Path, part: tuple[int, int], work: Path) -> tuple[bool, str]:
    """Is the ext4 partition clean once its journal is replayed (what the kernel does at mount)? On a
    copy: the real card is left as the cut left it."""
    copy = work / "fsck.img"
    with open(disk, "rb") as src, open(copy, "wb") as dst:
        src.seek(part[0])
        left = part[1]
        while left:
            block = src.read(min(left, 1 << 22))
            if not block:
                break
            if block.count(0) == len(block):
                dst.seek(len(block), os.SEEK_CUR)
            else:
                dst.write(block)
            left -= len(block)
        dst.truncate(part[1])
    replay = subprocess.run(["e2fsck", "-E", "journal_only", "-y", str(copy)], capture_output=True, text=True)
    full = subprocess.run(["e2fsck", "-f", "-n", str(copy)], capture_output=True, text=True)
    copy.unlink()
    summary = (full.stdout.strip().splitlines() or [""])[-1]
    return full.returncode == 0, f"journal replay exit {replay.returncode}; e2fsck -fn exit {full.returncode}: {summary}"


# ---------------------------------------------------------------- scenarios


def high(samples, pin: int) -> list[tuple[float, float]]:
    """The (start, length) of each stretch a pin was high in the samples."""
    spans, start = [], None
    for t, level in samples:
        on = bool(level >> pin & 1)
        if on and start is None:
            start = t
        elif not on and start is not None:
            spans.append((start, t - start))
            start = None
    if start is not None:
        spans.append((start, samples[-1][0] - start))
    return spans


def first_boot(rig: Rig, detail: list[str], g: Guest, st: dict, ready_s: float) -> str:
    a = g.agent
    _, out, _ = a.run("systemd-analyze")
    detail.append(out.strip().splitlines()[0])
    _, blame, _ = a.run("systemd-analyze", "blame", "--no-pager")
    detail.append("slowest units: " + ", ".join(" ".join(line.split()) for line in blame.splitlines()[:6]))
    _, failed, _ = a.run("systemctl", "list-units", "--failed", "--plain", "--no-legend", check_rc=False)
    detail.append(f"failed units: {' '.join(failed.split()) or 'none'}")
    _, unit, _ = a.run("cat", "/etc/systemd/system/checkpoint.service")
    shipped = (REPO / "systemd" / "checkpoint.service").read_text()
    check(unit == shipped, "checkpoint.service in the image differs from systemd/checkpoint.service")
    check(st.get("DropInPaths", "") == "", f"drop-ins: {st.get('DropInPaths')}")
    _, user, _ = a.run("stat", "-c", "%U", f"/proc/{st['MainPID']}")
    check(user.strip() == "checkpoint", f"the daemon runs as {user.strip()!r}")
    detail.append(f"checkpoint.service: Type=notify, READY at {ready_s:.1f} s (kernel start), user checkpoint, "
                  "unit file identical to systemd/checkpoint.service, no drop-ins")
    _, opts, _ = a.run("findmnt", "-n", "-o", "OPTIONS", "/")
    check(opts.split(",")[0] == "ro", f"/ is mounted {opts.strip()}")
    _, size, _ = a.run("findmnt", "-b", "-n", "-o", "SIZE", "/data")
    data_mb = int(size) >> 20
    check(data_mb > rig.image_info.get("partitions_mb", {}).get("data", 256) + 16, f"/data is {data_mb} MiB")
    detail.append(f"root read-only ({opts.strip()}); CKDATA grew to {data_mb} MiB on the {rig.card_mb} MiB card")
    _, fb, _ = a.run("journalctl", "-b", "-u", "checkpoint-firstboot.service", "-o", "cat", "--no-pager")
    detail.append("checkpoint-firstboot: " + " | ".join(line for line in fb.splitlines() if line.strip())[-300:])
    for name in ("checkpoint.toml", "trust-root.pem", "enroll.txt"):
        _, h, _ = a.run("sha256sum", f"/etc/checkpoint/{name}")
        check(h.split()[0] == hashlib.sha256((rig.run / name).read_bytes()).hexdigest(), f"/etc/checkpoint/{name} differs")
    _, rules, _ = a.run("sh", "-c", "ls -l /dev/checkpoint/ /dev/checkpoint/by-path/ 2>&1")
    detail.append("udev names: " + " ".join(w for w in rules.split() if w.startswith(("hid-", "serial-"))))
    return f"READY {ready_s:.1f} s after kernel start ({g.up_s:.0f} s QEMU start to agent)"


def enrollment(rig: Rig, detail: list[str], g: Guest) -> str:
    a = g.agent
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        rc, _, _ = a.run("test", "-f", "/var/lib/checkpoint/device.json", check_rc=False)
        if rc == 0:
            break
        time.sleep(5)
    else:
        raise Failure("not enrolled within 600 s")
    _, doc, _ = a.run("cat", "/var/lib/checkpoint/device.json")
    dev = json.loads(doc)
    rig.device_id = dev["device_id"]
    check(dev.get("checkpoint_id") == CHECKPOINT_ID, f"checkpoint {dev.get('checkpoint_id')}")
    _, log, _ = a.run("journalctl", "-b", "-u", "checkpoint.service", "-o", "cat", "--no-pager")
    line = next((x for x in log.splitlines() if "enrolling with" in x), "")
    detail.append(f"enroll.txt from the card: {line.strip()[:160]}")
    return f"device {dev['device_id'][:12]}… enrolled for {CHECKPOINT_ID} through the tunnel"


def keyboard(rig: Rig, detail: list[str], g: Guest) -> str:
    a = g.agent
    _, node, _ = a.run("sh", "-c", f"stat -L -c '%G %a %t:%T' /dev/checkpoint/hid-{KBD_ID.replace(':', '-')}")
    check(node.split()[:2] == ["checkpoint", "660"], f"hid node: {node.strip()}")
    detail.append(f"/dev/checkpoint/hid-{KBD_ID.replace(':', '-')}: group checkpoint, mode 0660 (the udev rule)")
    text = rig.card()
    mark = a.mark()
    drops0 = g.kbd_drops()
    t_start = time.monotonic()
    g.qmp.type_text(text + "\n", rig.args.key_code_s)
    typed = time.monotonic()
    hit = a.wait_log(lambda e: is_verdict(e) and fields(e["m"]).get("source", "").startswith("usb:"), 120, mark)
    drops = g.kbd_drops() - drops0
    detail.append(f"typed {len(text)} characters in {typed - t_start:.1f} s through QMP input-send-event "
                  f"({rig.args.key_code_s * 1000:.0f} ms per key code); QEMU's usb-kbd dropped {drops} key codes")
    _, grab, _ = a.run("sh", "-c", "journalctl -b -u checkpoint.service -o cat --no-pager | grep -i -m4 'usb:\\|hid' || true")
    detail.extend(f"journal: {line[:160]}" for line in grab.splitlines()[:4])
    check(hit is not None, f"no verdict from the USB keyboard within 120 s ({drops} key codes dropped by QEMU)")
    latency = time.monotonic() - typed
    f = fields(hit["m"])
    check(f["decision"] == "accept" and f["reason"] == "ok", hit["m"])
    detail.append(f"verdict in the journal {latency:.1f} s after the last key: {hit['m'][:120]}")
    return f"accept {latency:.1f} s after the last key ({len(text)} characters typed in {typed - t_start:.0f} s)"


def serial_reader(rig: Rig, detail: list[str], g: Guest) -> str:
    a = g.agent
    _, node, _ = a.run("sh", "-c", f"readlink -f /dev/checkpoint/serial-{SERIAL_ID.replace(':', '-')}; "
                       f"stat -L -c '%G %a' /dev/checkpoint/serial-{SERIAL_ID.replace(':', '-')}")
    dev, perm = node.strip().splitlines()
    check(dev.startswith("/dev/ttyUSB") and perm.split() == ["checkpoint", "660"], node)
    detail.append(f"the guest sees {dev}; udev names it /dev/checkpoint/serial-{SERIAL_ID.replace(':', '-')} "
                  "(group checkpoint, 0660)")
    text = rig.card(expired=True)
    mark = a.mark()
    t0 = time.monotonic()
    g.serial_card(text)
    hit = a.wait_log(lambda e: is_verdict(e) and fields(e["m"]).get("source", "").startswith("serial:"), 120, mark)
    check(hit is not None, "no verdict from the serial reader within 120 s")
    latency = time.monotonic() - t0
    f = fields(hit["m"])
    check(f["decision"] == "reject" and f["reason"] == "expired", hit["m"])
    detail.append(f"expired card: {hit['m'][:120]}")
    return f"reject (expired) in {latency:.1f} s"


def card_with_levels(rig: Rig, g: Guest, text: str, seconds: float = 10.0) -> list[tuple[float, int]]:
    """GPLEV0 read through the monitor while a card goes in through the serial reader and its verdict
    plays out."""
    mark = g.agent.mark()
    samples: list = []
    t = threading.Thread(target=lambda: samples.extend(g.sample_gpio(seconds)), daemon=True)
    t.start()
    time.sleep(0.5)
    g.serial_card(text)
    hit = g.agent.wait_log(is_verdict, 120, mark)
    t.join()
    check(hit is not None, "no verdict from the serial reader within 120 s")
    return samples


def gpio(rig: Rig, detail: list[str], g: Guest) -> str:
    time.sleep(4)  # the cooldown and the last verdict's lights are over
    acc = card_with_levels(rig, g, rig.card())
    time.sleep(4)
    rej = card_with_levels(rig, g, rig.card(expired=True))
    spans = {name: high(acc, pin) for name, pin in PINS.items()}
    detail.append(f"accept: {len(acc)} reads of GPLEV0 ({len(acc) / (acc[-1][0] - acc[0][0]):.0f}/s) through the "
                  "QEMU monitor; high: " + ", ".join(f"{n} {sum(s for _, s in v):.2f} s" for n, v in spans.items() if v))
    check(bool(spans["green"]) and 1.0 <= max(s for _, s in spans["green"]) <= 3.0, f"green {spans['green']}")
    check(bool(spans["relay"]) and 0.7 <= max(s for _, s in spans["relay"]) <= 2.0, f"relay {spans['relay']}")
    check(bool(spans["buzzer"]), "the buzzer never sounded on accept")
    check(not spans["red"], f"red on accept: {spans['red']}")
    rspans = {name: high(rej, pin) for name, pin in PINS.items()}
    detail.append("reject: high: " + ", ".join(f"{n} {sum(s for _, s in v):.2f} s ({len(v)}x)"
                                              for n, v in rspans.items() if v))
    check(bool(rspans["red"]) and 1.0 <= max(s for _, s in rspans["red"]) <= 3.0, f"red {rspans['red']}")
    check(not rspans["relay"] and not rspans["green"], "the gate or green on a reject")
    check(bool(rspans["buzzer"]), "no reject beeps")
    return (f"accept: green {max(s for _, s in spans['green']):.1f} s, relay {max(s for _, s in spans['relay']):.1f} s, "
            f"{len(spans['buzzer'])} beep; reject: red {max(s for _, s in rspans['red']):.1f} s, "
            f"{len(rspans['buzzer'])} beeps, relay shut")


def sync_acked(rig: Rig, detail: list[str], g: Guest) -> str:
    deadline = time.monotonic() + 300
    while True:
        local = {e["seq"]: e["hash"] for e in rig.device_entries(g)}
        storage = open_storage(str(rig.db))
        try:
            held = {seq: h.hex() for seq, h in storage.entry_hashes(rig.device_id).items()}
        finally:
            storage.close()
        if local and held == local:
            break
        if time.monotonic() > deadline:
            raise Failure(f"server holds {len(held)} of {len(local)} entries after 300 s")
        time.sleep(5)
    detail.append(f"the server on the host holds all {len(held)} entries with the device's hashes")
    return f"{len(held)}/{len(local)} entries acknowledged by the server"


def stream(g: Guest, rig: Rig, stop: threading.Event, sent: list, every_s: float = 0.4) -> None:
    while not stop.is_set():
        text = rig.card()
        try:
            g.serial_card(text)
        except OSError:
            return
        sent.append(text)
        stop.wait(every_s)


def acked_ids(g: Guest, start: int) -> set[str]:
    with g.agent.cond:
        return {fields(e["m"])["entry"] for e in g.agent.logs[start:] if is_verdict(e)}


def watchdog(rig: Rig, detail: list[str], g: Guest) -> str:
    a = g.agent
    mark = a.mark()
    stop, sent = threading.Event(), []
    t = threading.Thread(target=stream, args=(g, rig, stop, sent), daemon=True)
    t.start()
    a.wait_log(is_verdict, 60, mark)
    time.sleep(3)
    stop.set()
    t.join()
    time.sleep(3)
    acked = acked_ids(g, mark)
    st = g.service()
    pid = st["MainPID"]
    _, up, _ = a.run("sh", "-c", f"kill -STOP {pid} && cut -d' ' -f1 /proc/uptime")
    stopped_at = float(up)
    detail.append(f"{len(acked)} entries acknowledged, then SIGSTOP to the daemon (PID {pid}) at {stopped_at:.1f} s")
    hit = a.wait_log(lambda e: "watchdog timeout" in (e.get("m") or "").lower(), 120, mark)
    check(hit is not None, "systemd did not notice within 120 s")
    fired = hit["mono"] / 1e6 - stopped_at
    check(fired <= 30 + 5, f"the watchdog fired {fired:.1f} s after the stop (WatchdogSec=30)")
    st2 = g.wait_service(600, other_pid=pid)
    back = int(st2["ActiveEnterTimestampMonotonic"]) / 1e6 - stopped_at
    detail.append(f"systemd: {hit['m'][:100]} after {fired:.1f} s; new PID {st2['MainPID']} READY {back:.1f} s after "
                  f"the stop (NRestarts {st2['NRestarts']})")
    ids = {e["entry_id"] for e in rig.device_entries(g)}
    lost = acked - ids
    check(not lost, f"{len(lost)} acknowledged entries missing after the restart")
    return f"watchdog fired {fired:.1f} s after SIGSTOP; READY again after {back:.1f} s; 0 of {len(acked)} lost"


def power_cuts(rig: Rig, detail: list[str], g: Guest, n: int) -> tuple[str, Guest]:
    """``n`` cuts, each followed by a boot; a cut whose checks fail is recorded and the next one still runs
    (the guest is up again), so one run says how many of the ``n`` held."""
    lost_total, acked_total, boots, failures = 0, 0, [], []
    for i in range(1, n + 1):
        a = g.agent
        mark = a.mark()
        stop, sent = threading.Event(), []
        t = threading.Thread(target=stream, args=(g, rig, stop, sent), daemon=True)
        t.start()
        a.wait_log(is_verdict, 120, mark)
        delay = rig.rnd.uniform(0.5, 12.0)
        time.sleep(delay)
        acked = acked_ids(g, mark)  # everything the host heard back before the cut
        g.kill()
        stop.set()
        t.join()
        clean, fsck = fsck_copy(rig.disk, partitions(rig.disk)[2], rig.run)  # CKDATA grew at first boot
        g, st, ready = rig.boot(f"cut{i}")
        boots.append(ready)
        if st["NRestarts"] != "0":  # why the service started more than once this boot, for the record
            saved = g.save_journal(f"cut{i}")
            detail.extend(f"        {line}" for line in restart_causes(saved.read_text()))
            detail.append(f"        this boot's journal: {saved}")
        ids = {e["entry_id"] for e in rig.device_entries(g)}
        lost = acked - ids
        ok_chain, chain = rig.chain_ok(g)
        _, failed, _ = g.agent.run("systemctl", "list-units", "--failed", "--plain", "--no-legend", check_rc=False)
        _, fsck_guest, _ = g.agent.run("sh", "-c", "journalctl -b -o cat --no-pager -u 'systemd-fsck@*' | tail -n 2")
        lost_total += len(lost)
        acked_total += len(acked)
        line = (f"cut {i}: {delay:.1f} s into the stream, {len(sent)} sent, {len(acked)} acknowledged, "
                f"{len(lost)} lost; CKDATA after replay: {'clean' if clean else 'NOT CLEAN'}; chain "
                f"{'verifies' if ok_chain else 'BROKEN'}; READY {ready:.0f} s after boot, NRestarts {st['NRestarts']}")
        detail.append(line)
        detail.append(f"        host fsck: {fsck}; guest fsck: {' | '.join(fsck_guest.split(chr(10)))[:150]}")
        if failed.strip():
            detail.append(f"        failed units: {failed.strip()}")
        say(f"  {line}")
        if lost:
            failures.append(f"cut {i}: acknowledged entries lost: {sorted(lost)[:3]}")
        if not clean:
            failures.append(f"cut {i}: CKDATA not clean: {fsck}")
        if not ok_chain:
            failures.append(f"cut {i}: chain: {chain[:200]}")
    check(not failures, f"{len(failures)} problems in {n} cuts: {'; '.join(failures)[:600]}")
    return (f"{n} cuts: 0 of {acked_total} acknowledged entries lost; fs clean, chain verifies, service back each "
            f"time (READY {min(boots):.0f}–{max(boots):.0f} s)"), g


def clock_back(rig: Rig, detail: list[str], g: Guest) -> tuple[str, Guest]:
    last = max(rig.device_entries(g), key=lambda e: e["seq"])
    last_at = iso_to_epoch(last["at"])
    g.poweroff()
    back = last_at - 2 * 86400
    g, st, ready = rig.boot("clock-back", clock=back, online=False)  # no server: no fresh server time
    a = g.agent
    status = rig.api(g, "/api/v1/status")
    clock = status.get("clock", {})
    detail.append(f"booted with the clock at {time.strftime('%Y-%m-%d %H:%M', time.gmtime(back))} UTC, 2 days "
                  f"before the last entry; status clock: {json.dumps(clock)[:200]}")
    check(not clock.get("confirmed") and "clock_unconfirmed" in status.get("degraded", []),
          f"the clock counts as confirmed: {status.get('degraded')}")
    mark = a.mark()
    g.serial_card(rig.card())
    hit = a.wait_log(is_verdict, 120, mark)
    check(hit is not None, "no verdict")
    f = fields(hit["m"])
    check(f.get("clock") == "unsynced", f"entry clock {f.get('clock')}")
    new = next(e for e in rig.device_entries(g) if e["entry_id"] == f["entry"])
    new_at = iso_to_epoch(new["at"])
    check(new_at >= last_at, f"entry dated {new['at']}, before the last one {last['at']}")
    health = rig.api(g, "/api/v1/health")
    detail.append(f"scan offline: {hit['m'][:110]}; dated {new['at']} (last before: {last['at']}); health "
                  f"{health.get('state')} {health.get('problems')}")
    check("clock_unconfirmed" in f.get("degraded", ""), f"the verdict is not flagged: {hit['m']}")
    # the server can be reached again; the wall clock is still 2 days behind
    a.online = True
    time.sleep(30)
    clock2 = rig.api(g, "/api/v1/status").get("clock", {})
    detail.append(f"server reachable, wall clock still behind: status clock {json.dumps(clock2)[:200]}")
    # the wall clock set right, as NTP (systemd-timesyncd) would
    a.request("settime", epoch=time.time())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        clock3 = rig.api(g, "/api/v1/status").get("clock", {})
        if clock3.get("confirmed"):
            break
        time.sleep(5)
    detail.append(f"wall clock corrected (as NTP would): status clock {json.dumps(clock3)[:200]}")
    check(bool(clock3.get("confirmed")), "not confirmed by the server's time after the wall clock was corrected")
    server_alone = "confirmed" if clock2.get("confirmed") else "still unconfirmed (offset too large)"
    return (f"clock_unconfirmed offline, entry dated {new_at - last_at:+.0f} s after the last one (not before); "
            f"server time alone: {server_alone}; confirmed once the wall clock was right"), g


def config_error(rig: Rig, detail: list[str], g: Guest) -> tuple[str, Guest]:
    g.poweroff()
    broken = rig.config_toml().replace(f"[feedback.amber]\npin = {PINS['amber']}",
                                       f"[feedback.amber]\npin = {PINS['green']}") + '[scan]\ncooldown = "3"\n'
    path = rig.run / "broken.toml"
    path.write_text(broken)
    subprocess.run(["mcopy", "-o", "-i", rig.fat, str(path), "::/checkpoint.toml"], check=True)
    say("power on (broken checkpoint.toml on the card)")
    g = Guest(rig, "config-error")
    try:
        g.wait_up(1200)
        a = g.agent
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            _, state, _ = a.run("systemctl", "is-active", "checkpoint-config-error.service", check_rc=False)
            if state.strip() == "active":
                break
            time.sleep(3)
        check(state.strip() == "active", f"checkpoint-config-error.service is {state.strip()}")
        # a Type=simple unit is active once its process runs; the page answers only after the CLI
        # has imported and bound its port (a minute or more under TCG on a loaded host)
        page, waited = wait_page(lambda: rig.api(g, "/")["text"], 600)
        detail.append(f"the page answered {waited:.0f} s after checkpoint-config-error.service became active")
        _, svc, _ = a.run("systemctl", "show", "checkpoint.service", "-p", "ActiveState", "-p", "ExecMainStartTimestampMonotonic")
        check("ActiveState=active" not in svc, f"checkpoint.service runs: {svc}")
        _, cc, _ = a.run("sh", "-c", "journalctl -b -u checkpoint-firstboot.service -o cat --no-pager | grep 'error:'")
        problems = [line.split("checkpoint: error: ", 1)[1] for line in cc.splitlines() if "checkpoint: error: " in line]
        check(len(problems) == 2 and all(p.split(": ", 1)[1][:40] in page for p in problems), f"{problems} / {page[:300]}")
        detail.append(f"checkpoint.service not started; checkpoint-config-error.service active; the page lists "
                      f"{len(problems)} problems: {' | '.join(problems)[:220]}")
        if rig.machine == "raspi3b":
            samples = g.sample_gpio(6)
            red, green = high(samples, PINS["red"]), high(samples, PINS["green"])
            both = sum(1 for _, lv in samples if lv >> PINS["red"] & 1 and lv >> PINS["green"] & 1)
            check(len(red) >= 3 and len(green) >= 3, f"red {len(red)}x, green {len(green)}x in 6 s")
            detail.append(f"LEDs over 6 s: red on {len(red)}x, green on {len(green)}x, both at once in {both} of "
                          f"{len(samples)} reads")
            leds = f"red/green alternating ({len(red)}/{len(green)} in 6 s)"
        else:  # -M virt has no BCM2835 GPIO: the service says where its pattern goes instead
            _, shown, _ = a.run("sh", "-c", "journalctl -b -u checkpoint-config-error.service -o cat --no-pager "
                                "| grep -m1 '^showing '", check_rc=False)
            detail.append(f"LEDs not read (-M virt has no BCM2835 GPIO); the service: {shown.strip()[:160]}")
            leds = "LEDs not read (no GPIO on virt)"
        _, installed, _ = a.run("sha256sum", "/etc/checkpoint/checkpoint.toml")
        check(installed.split()[0] == hashlib.sha256((rig.run / "checkpoint.toml").read_bytes()).hexdigest(),
              "the installed config changed")
        detail.append("/etc/checkpoint/checkpoint.toml is still the previous (good) file")
    except (Failure, TimeoutError, ConnectionError, RuntimeError, OSError, KeyError, ValueError):
        if g.proc.poll() is None:
            detail.append(f"this boot's journal: {g.save_journal('config-error')}")
        raise
    finally:
        g.poweroff()
        # the good file back on the card even if a check failed: the next boot must reach READY
        subprocess.run(["mcopy", "-o", "-i", rig.fat, str(rig.run / "checkpoint.toml"), "::/checkpoint.toml"],
                       check=True)
    g, _, _ = rig.boot("config-restored")
    return f"refused: {len(problems)} problems on the page ({waited:.0f} s after the unit started), {leds}", g


def wait_page(fetch, timeout: float, every_s: float = 5.0) -> tuple[str, float]:
    """What ``fetch()`` returns once it stops failing (the page's server may still be starting), and
    the seconds that took; Failure after ``timeout`` seconds."""
    started = time.monotonic()
    while True:
        try:
            return fetch(), time.monotonic() - started
        except Failure as exc:
            if time.monotonic() - started > timeout:
                raise Failure(f"the page did not answer within {timeout:.0f} s: {str(exc)[-200:]}") from exc
            time.sleep(every_s)


def restart_causes(journal: str) -> list[str]:
    """The lines of a boot's journal that say why checkpoint.service stopped or started again."""
    return [line for line in journal.splitlines()
            if ("checkpoint.service" in line and any(sign in line for sign in RESTART_SIGNS))
            or (" checkpoint[" in line and any(sign in line for sign in ("Traceback", "Error", "error:")))]


def iso_to_epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def final_check(rig: Rig, detail: list[str], g: Guest) -> str:
    g.poweroff()
    parts = partitions(rig.disk)
    out = []
    for name, part in (("RASPIROOT", parts[1]), ("CKDATA", parts[2])):
        ok, text = fsck_copy(rig.disk, part, rig.run)
        out.append(ok)
        detail.append(f"{name}: {text}")
    boot = rig.run / "boot-part.img"
    with open(rig.disk, "rb") as src, open(boot, "wb") as dst:
        src.seek(parts[0][0])
        dst.write(src.read(parts[0][1]))
    r = subprocess.run(["fsck.vfat", "-n", str(boot)], capture_output=True, text=True)
    boot.unlink()
    out.append(r.returncode == 0)
    detail.append(f"RASPIFIRM: fsck.vfat -n exit {r.returncode}: {(r.stdout.strip().splitlines() or [''])[-1]}")
    check(all(out), "a file system is not clean after a clean shutdown")
    return "boot, root and CKDATA clean after a clean shutdown"


# ---------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--machine", choices=("raspi3b", "virt"), default="raspi3b")
    p.add_argument("--cuts", type=int, default=10, help="power cuts (default 10)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--smoke", action="store_true", help="boot, one card through the USB keyboard, one power cut")
    only.add_argument("--cuts-only", action="store_true",
                      help="boot, the power cuts, the clean shutdown: no other scenario (many cuts in less time)")
    only.add_argument("--config-only", action="store_true",
                      help="boot, the broken checkpoint.toml on the card, the clean shutdown: no other scenario")
    p.add_argument("--image", default=None, help="the image (default: IMAGE_CACHE/latest.json)")
    p.add_argument("--seed", type=int, default=None, help="seed of the random cut moments")
    p.add_argument("--key-code-s", type=float, default=0.1,
                   help="seconds per key code typed on the USB keyboard (default 0.1; see Qmp.type_text)")
    p.add_argument("--guest-cpus", type=int, default=None,
                   help="start only this many of the emulated CPUs (maxcpus=N on the kernel command line)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("field-test: needs root (debugfs on the image copy, QEMU)", file=sys.stderr)
        return 2
    args.seed = args.seed if args.seed is not None else int(time.time())
    rig = Rig(args)
    started = time.monotonic()
    g = None
    try:
        rig.prepare()
        say(f"seed {args.seed}; disk cache=writethrough; card {rig.card_mb} MiB")
        try:
            g, st, ready = rig.boot("first")
        except Failure as exc:
            rig.record(Result("boot to service (first boot)", rig.machine, False, str(exc)))
            return 1
        rig.boot_ready = ready
        rig.scenario("boot to service (first boot)", first_boot, g, st, ready)
        full = not (args.smoke or args.cuts_only or args.config_only)
        if not (args.cuts_only or args.config_only):
            rig.scenario("provisioning: enroll.txt from the card", enrollment, g)
            rig.scenario("USB keyboard-wedge reader", keyboard, g)
        if full:
            rig.scenario("USB serial reader", serial_reader, g)
            if rig.machine == "raspi3b":
                rig.scenario("GPIO: LEDs, buzzer, relay", gpio, g)
            rig.scenario("sync: entries acknowledged", sync_acked, g)
            rig.scenario("watchdog (SIGSTOP)", watchdog, g)
        if not args.config_only:
            g = run_swapping(rig, f"power cuts x{1 if args.smoke else args.cuts}", power_cuts, g,
                             1 if args.smoke else args.cuts)
        if full:
            rig.scenario("sync after the cuts", sync_acked, g)
            g = run_swapping(rig, "no battery clock (clock set back)", clock_back, g)
        if full or args.config_only:
            g = run_swapping(rig, "broken checkpoint.toml on the card", config_error, g)
        rig.scenario("clean shutdown, file systems", final_check, g)
        g = None
    finally:
        if g is not None:
            g.kill()
        rig.stop()
    report(rig, time.monotonic() - started)
    return 0 if all(r.ok for r in rig.results) else 1


def run_swapping(rig: Rig, name: str, fn, g: Guest, *extra):
    """A scenario that powers the guest off and on: it hands back the guest that runs now."""
    detail: list[str] = []
    holder = {"g": g}

    def wrapped(detail, g, *extra):
        figure, holder["g"] = fn(rig, detail, g, *extra)
        return figure

    try:
        figure = wrapped(detail, g, *extra)
        rig.record(Result(name, rig.machine, True, figure, detail))
    except (Failure, TimeoutError, ConnectionError, RuntimeError, OSError, KeyError, ValueError) as exc:
        detail += Rig.last_logs([holder["g"]])
        rig.record(Result(name, rig.machine, False, f"{type(exc).__name__}: {exc}", detail))
        if holder["g"].proc.poll() is not None:  # the guest is down: bring it up for what follows
            holder["g"], _, _ = rig.boot("recover")
    return holder["g"]


def report(rig: Rig, total_s: float, *, final: bool = True) -> None:
    """The table (printed at the end) and results.md / results.json (rewritten after every scenario)."""
    info = rig.image_info
    state = f"total {total_s / 60:.0f} min" if final else f"unfinished: {total_s / 60:.0f} min so far"
    lines = ["", f"field test, {time.strftime('%Y-%m-%d %H:%M %Z')}: image {Path(info['image']).name}, "
             f"QEMU {qemu_version()}, host {os.cpu_count()} CPUs, seed {rig.args.seed}, {state}", "",
             "| scenario | machine | result | figure |", "|---|---|---|---|"]
    for r in rig.results:
        lines.append(f"| {r.scenario} | {r.machine} | {'PASS' if r.ok else 'FAIL'} | {r.figure} |")
    text = "\n".join(lines)
    if final:
        print(text, flush=True)
    out = CACHE / "field-test"
    (out / "results.md").write_text(text + "\n\n" + "\n".join(
        f"- {r.scenario}:\n" + "\n".join(f"  - {d}" for d in r.detail) for r in rig.results) + "\n")
    (out / "results.json").write_text(json.dumps({"image": info, "total_s": round(total_s), "seed": rig.args.seed,
                                                  "results": [r.__dict__ for r in rig.results]}, indent=2))


def qemu_version() -> str:
    r = subprocess.run(["qemu-system-aarch64", "--version"], capture_output=True, text=True)
    return (r.stdout.split("\n")[0].split("version ")[-1]).strip()


if __name__ == "__main__":
    sys.exit(main())
