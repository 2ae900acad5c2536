"""A LAN of network namespaces made by the test: one bridge namespace, and per gate a namespace
joined to the bridge by a veth pair (10.77.<net>.<10+i>/24, or IPv6 only: fd77:<net>::<10+i>/64
and a link-local address; multicast on, so mDNS works across them). `cut` drops every packet a
gate sends or is sent (a ``blackhole`` qdisc on both ends of its veth pair: this kernel has
neither netem nor tc's drop action), `heal` ends that; `block` keeps two gates from reaching each
other while both reach the rest. Needs root (CAP_NET_ADMIN); `available()` says whether this
machine allows it."""
from __future__ import annotations

import os
import subprocess
import sys

NET = 77


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def available() -> str | None:
    """None if namespaces can be made here, else why not."""
    name = f"ckprobe{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot create a network namespace here: {getattr(exc, 'stderr', b'') or exc}"
    _ip("netns", "del", name)
    return None


class Lan:
    def __init__(self, n: int, subnet: int = 0, *, ipv6: bool = False) -> None:
        self.ipv6 = ipv6  # IPv6 only: a ULA address per gate (fd77:<subnet>::<10+i>) besides its link-local one
        self.tag = f"{os.getpid() % 100000}{subnet}"
        self.subnet = subnet
        self.bridge_ns = f"ckbr{self.tag}"
        self.net = f"10.{NET}.{subnet}"
        self.gates: list[str] = []
        _ip("netns", "add", self.bridge_ns)
        try:
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            for _ in range(n):
                self.add()
        except BaseException:
            self.close()
            raise

    def add(self) -> int:
        i = len(self.gates)
        ns = f"ckg{self.tag}x{i}"
        _ip("netns", "add", ns)
        self.gates.append(ns)
        if self.ipv6:  # addresses usable at once (no duplicate address detection: this LAN is the test's)
            for scope in ("all", "default"):
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{scope}.accept_dad=0"],
                               check=True, capture_output=True, timeout=30)
        outer = f"v{self.tag}x{i}"
        _ip("link", "add", outer, "netns", self.bridge_ns, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.bridge_ns, "link", "set", outer, "master", "br0", "up")
        if self.ipv6:
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/64", "dev", "eth0", "nodad")
        else:
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "multicast", "on", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        if not self.ipv6:
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        return i

    def address(self, i: int) -> str:
        return f"fd77:{self.subnet}::{10 + i}" if self.ipv6 else f"{self.net}.{10 + i}"

    def prefix(self, i: int) -> list[str]:
        """Run a command inside gate ``i``'s namespace."""
        return ["ip", "netns", "exec", self.gates[i]]

    def cut(self, i: int) -> None:
        subprocess.run(["tc", "-n", self.gates[i], "qdisc", "replace", "dev", "eth0", "root", "blackhole"],
                       check=True, capture_output=True, timeout=30)
        subprocess.run(["tc", "-n", self.bridge_ns, "qdisc", "replace", "dev", f"v{self.tag}x{i}", "root",
                        "blackhole"], check=True, capture_output=True, timeout=30)

    def heal(self, i: int) -> None:
        for ns, dev in ((self.gates[i], "eth0"), (self.bridge_ns, f"v{self.tag}x{i}")):
            subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=True, capture_output=True,
                           timeout=30)

    def block(self, i: int, j: int) -> None:
        """Gates ``i`` and ``j`` cannot reach each other (a blackhole route to the other in each
        namespace); both still reach the rest, and multicast (mDNS) still passes."""
        bits = 128 if self.ipv6 else 32
        _ip("-n", self.gates[i], "route", "add", "blackhole", f"{self.address(j)}/{bits}")
        _ip("-n", self.gates[j], "route", "add", "blackhole", f"{self.address(i)}/{bits}")

    def fetch(self, i: int, url: str, token: str | None = None) -> str:
        """GET ``url`` from inside gate ``i`` (its API listens on that namespace's loopback)."""
        code = ("import sys, urllib.request\n"
                "r = urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.argv[2]})\n"
                "print(urllib.request.urlopen(r, timeout=20).read().decode())")
        out = subprocess.run([*self.prefix(i), sys.executable, "-c", code, url, token or ""], check=True,
                             capture_output=True, timeout=60)
        return out.stdout.decode()

    def close(self) -> None:
        for ns in [*self.gates, self.bridge_ns]:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=30)
