#!/usr/bin/python3
"""The field test's agent inside the emulated Pi (test rig only: scripts/field-test/fieldtest.py
writes it into its own copy of the image, never into the image that is flashed).

It sets the clock the host asks for on the kernel command line (ckft.clock=EPOCH at power-on; the
emulated Pi has no battery clock) before checkpoint.service starts, then serves the host over a
serial line (the Pi's PL011 UART; a virtio port on -M virt) with JSON lines: run a command, follow
the service's journal, and carry TCP connections made to 127.0.0.1:PORT in the guest to the host
(the sync server runs on the host, reached through this line and no network). Python standard
library only: it runs on Debian's python3, outside the appliance's venv.
"""
import base64
import json
import os
import socket
import subprocess
import sys
import termios
import threading
import time
import tty

PORTS = ("/dev/virtio-ports/ckft", "/dev/ttyAMA0", "/dev/ttyAMA1")


def cmdline() -> dict:
    with open("/proc/cmdline", encoding="ascii", errors="replace") as fh:
        words = fh.read().split()
    return dict(w[5:].split("=", 1) for w in words if w.startswith("ckft.") and "=" in w)


def find_port(spec: str | None, wait_s: float = 120.0) -> str | None:
    """The serial device for the host: a path, "virtio:NAME" (a virtio-serial port by its name), or
    the first of PORTS that exists. Waits for it: udev may not have made it yet."""
    deadline = time.monotonic() + wait_s
    while True:
        if spec and spec.startswith("virtio:"):
            base = "/sys/class/virtio-ports"
            names = os.listdir(base) if os.path.isdir(base) else []
            for port in names:
                with open(os.path.join(base, port, "name"), encoding="ascii") as fh:
                    if fh.read().strip() == spec[len("virtio:"):] and os.path.exists("/dev/" + port):
                        return "/dev/" + port
        elif spec:
            if os.path.exists(spec):
                return spec
        else:
            found = next((p for p in PORTS if os.path.exists(p)), None)
            if found:
                return found
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def sd_notify(text: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.send(text.encode())


class Link:
    """JSON lines over the serial port; one writer at a time."""

    def __init__(self, path: str) -> None:
        # O_NONBLOCK: a serial port's open() would wait for a carrier; CLOCAL then says there is none
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        if os.isatty(self.fd):  # a UART; a virtio-serial port (-M virt) is no tty and has no line settings
            tty.setraw(self.fd)
            attrs = termios.tcgetattr(self.fd)
            attrs[0] &= ~(termios.IXON | termios.IXOFF)  # no software flow control: the data is binary-safe JSON
            attrs[2] |= termios.CLOCAL | termios.CREAD
            termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        os.set_blocking(self.fd, True)
        self.lock = threading.Lock()

    def send(self, obj: dict) -> None:
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        with self.lock:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]

    def lines(self):
        buf = b""
        while True:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                time.sleep(0.05)
                continue
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if line.startswith(b"{"):
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue  # noise from before the host connected


class Agent:
    def __init__(self, link: Link, clock_set: float | None) -> None:
        self.link = link
        self.clock_set = clock_set
        self.conns: dict[int, socket.socket] = {}
        self.next_conn = 1
        self.lock = threading.Lock()

    # -- requests ---------------------------------------------------------------------------
    def handle(self, msg: dict) -> None:
        if "t" in msg:
            self.tunnel_from_host(msg)
            return
        op = msg.get("op")
        try:
            result = getattr(self, "op_" + op)(msg)
            reply = {"id": msg.get("id"), "ok": True, **(result or {})}
        except Exception as exc:  # the host prints it; the agent goes on serving
            reply = {"id": msg.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.link.send(reply)

    def op_hello(self, msg: dict) -> dict:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            boot_id = fh.read().strip()
        return {"boot_id": boot_id, "wall": time.time(), "boottime": time.clock_gettime(time.CLOCK_BOOTTIME),
                "clock_set": self.clock_set}

    def op_run(self, msg: dict) -> dict:
        r = subprocess.run(msg["argv"], capture_output=True, timeout=msg.get("timeout", 300),
                           input=msg.get("input", "").encode())
        return {"rc": r.returncode, "out": r.stdout.decode(errors="replace"), "err": r.stderr.decode(errors="replace")}

    def op_settime(self, msg: dict) -> dict:
        time.clock_settime(time.CLOCK_REALTIME, float(msg["epoch"]))
        return {"wall": time.time()}

    def op_follow(self, msg: dict) -> dict:
        argv = ["journalctl", "-f", "-n", "0", "-o", "json", "--no-pager"]
        for unit in msg.get("units", []):
            argv += ["-u", unit]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        threading.Thread(target=self.forward_journal, args=(proc,), daemon=True).start()
        return {}

    def forward_journal(self, proc) -> None:
        for raw in proc.stdout:
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            message = doc.get("MESSAGE")
            if isinstance(message, list):  # journald gives non-UTF-8 messages as bytes
                message = bytes(message).decode(errors="replace")
            self.link.send({"ev": "log", "unit": doc.get("_SYSTEMD_UNIT") or doc.get("UNIT"),
                            "pid": doc.get("_PID"), "mono": int(doc.get("__MONOTONIC_TIMESTAMP", 0)),
                            "m": message})

    def op_listen(self, msg: dict) -> dict:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", int(msg["port"])))
        srv.listen(16)
        threading.Thread(target=self.accept_loop, args=(srv,), daemon=True).start()
        return {}

    # -- the tunnel -------------------------------------------------------------------------
    def accept_loop(self, srv: socket.socket) -> None:
        while True:
            conn, _ = srv.accept()
            with self.lock:
                cid = self.next_conn
                self.next_conn += 1
                self.conns[cid] = conn
            self.link.send({"t": "o", "c": cid})
            threading.Thread(target=self.conn_reader, args=(cid, conn), daemon=True).start()

    def conn_reader(self, cid: int, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(16384)
            except OSError:
                data = b""
            if not data:
                self.link.send({"t": "x", "c": cid})
                return
            self.link.send({"t": "d", "c": cid, "d": base64.b64encode(data).decode()})

    def tunnel_from_host(self, msg: dict) -> None:
        with self.lock:
            conn = self.conns.get(msg["c"])
        if conn is None:
            return
        if msg["t"] == "d":
            try:
                conn.sendall(base64.b64decode(msg["d"]))
            except OSError:
                pass  # the guest side closed; its reader reports it
        elif msg["t"] == "x":
            with self.lock:
                self.conns.pop(msg["c"], None)
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


def main() -> None:
    args = cmdline()
    clock_set = None
    if "clock" in args:  # the host's time at power-on, plus the time since
        epoch = float(args["clock"]) + time.clock_gettime(time.CLOCK_BOOTTIME)
        time.clock_settime(time.CLOCK_REALTIME, epoch)
        clock_set = epoch
    path = find_port(args.get("port"))
    if path is None:
        print("agent: no serial port for the host", file=sys.stderr)
        sys.exit(1)
    link = Link(path)
    agent = Agent(link, clock_set)
    if "listen" in args:  # the tunnel's end, before the service starts and tries the server
        agent.op_listen({"port": args["listen"]})
    sd_notify("READY=1")
    link.send({"ev": "up"})
    for msg in link.lines():
        if msg.get("op") == "run":  # may take a while: the tunnel and other requests go on meanwhile
            threading.Thread(target=agent.handle, args=(msg,), daemon=True).start()
        else:
            agent.handle(msg)


if __name__ == "__main__":
    main()
