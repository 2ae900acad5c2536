"""A network namespace of its own for the server process of the failover bench (or for the failover
monitor), so that a test can cut the path between the server (the monitor) and one database node
only (a network partition) while the devices, the other node and the failover monitor (the server)
still reach everything.

The namespace is joined to this machine's by one veth pair per database node and one for the
devices: the server reaches node ``i`` at ``node_host(i)`` (the node's PostgreSQL listens on every
address) and the devices reach the server at ``server_host``. ``cut(i)`` drops every packet on node
``i``'s pair, both ways (a ``blackhole`` qdisc on both ends: open connections stay open and nothing
answers on them, a new connection gets no answer), ``heal(i)`` ends that. Needs root
(CAP_NET_ADMIN); ``available()`` says whether this machine allows it.
"""
from __future__ import annotations

import os
import subprocess

NET = 79  # 10.79.x.0/24 networks


def _run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=30)


def available() -> str | None:
    """None if a namespace can be made here, else why not."""
    name = f"ckprobe{os.getpid()}"
    try:
        _run("ip", "netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot create a network namespace here: {getattr(exc, 'stderr', b'') or exc}"
    _run("ip", "netns", "del", name)
    return None


class ServerNet:
    """The server's namespace with links to ``nodes`` database nodes and to the devices (whose
    side has ``clients`` addresses, so per-address limits see as many clients)."""

    def __init__(self, nodes: int, clients: int = 1) -> None:
        tag = os.getpid() % 100000
        self.ns = f"cksrv{tag}"
        self.base = (os.getpid() % 60) * 4  # third octets base .. base+nodes
        self.nodes = nodes
        self.clients = max(1, min(clients, 200))
        self._outer = [f"cks{tag}x{k}" for k in range(nodes + 1)]
        _run("ip", "netns", "add", self.ns)
        try:
            _run("ip", "-n", self.ns, "link", "set", "lo", "up")
            for k, outer in enumerate(self._outer):
                _run("ip", "link", "add", outer, "type", "veth", "peer", "name", f"eth{k}", "netns", self.ns)
                _run("ip", "addr", "add", f"{self._net(k)}.1/24", "dev", outer)
                _run("ip", "link", "set", outer, "up")
                _run("ip", "-n", self.ns, "addr", "add", f"{self._net(k)}.2/24", "dev", f"eth{k}")
                _run("ip", "-n", self.ns, "link", "set", f"eth{k}", "up")
            for i in range(self.clients):
                _run("ip", "addr", "add", f"{self.client_address(i)}/24", "dev", self._outer[nodes])
        except BaseException:
            self.close()
            raise

    def _net(self, k: int) -> str:
        return f"10.{NET}.{self.base + k}"

    @property
    def cidr(self) -> str:
        """The addresses the server's connections come from (for pg_hba.conf)."""
        return f"10.{NET}.0.0/16"

    @property
    def server_host(self) -> str:
        return f"{self._net(self.nodes)}.2"

    def node_host(self, i: int) -> str:
        return f"{self._net(i)}.1"

    def host_via(self, i: int) -> str:
        """The namespace's own address on node ``i``'s link: where node ``i`` reaches it."""
        return f"{self._net(i)}.2"

    def client_address(self, i: int) -> str:
        return f"{self._net(self.nodes)}.{10 + i % self.clients}"

    @property
    def prefix(self) -> list[str]:
        """Run a command inside the server's namespace."""
        return ["ip", "netns", "exec", self.ns]

    def cut(self, i: int) -> None:
        _run("tc", "qdisc", "replace", "dev", self._outer[i], "root", "blackhole")
        _run("tc", "-n", self.ns, "qdisc", "replace", "dev", f"eth{i}", "root", "blackhole")

    def heal(self, i: int) -> None:
        _run("tc", "qdisc", "del", "dev", self._outer[i], "root")
        _run("tc", "-n", self.ns, "qdisc", "del", "dev", f"eth{i}", "root")

    def close(self) -> None:
        """Remove the namespace (its ends of the veth pairs, and so the pairs, go with it)."""
        subprocess.run(["ip", "netns", "del", self.ns], check=False, capture_output=True, timeout=30)
        for outer in self._outer:  # a pair whose inner end never got into the namespace
            subprocess.run(["ip", "link", "del", outer], check=False, capture_output=True, timeout=30)
