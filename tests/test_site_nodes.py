"""Site nodes talking over real UDP sockets on loopback: an entry at one gate reaches the others,
a gate that missed datagrams (started late, cut off) catches up by anti-entropy and counts each
entry once, a stranger's and a replayed datagram are refused, and a gate that hears nobody is
isolated."""
from __future__ import annotations

import socket
import time
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.waiting import wait_for

from scanner.store.admission import CLOSED
from scanner.store.entry import Entry
from sync.site import credential as sitecred
from sync.site.message import encode
from sync.site.node import Settings, SiteNode

SITE = "market-dong-ba"
SECRET = b"k" * 32


def entry(device_id, seq, card="5a" * 16, direction="in", decision="accept", **kw):
    return Entry(seq, str(uuid.uuid4()), device_id, kw.pop("gate", "gate-1"), direction, int(time.time() * 1000),
                 "synced", "stdin", "desk", decision, "ok" if decision == "accept" else "expired", "eu-dcc", card,
                 **kw)


class Gates:
    def __init__(self, root):
        self.root = root
        self.nodes: list[SiteNode] = []

    def add(self, root=None, site=SITE, peers=(), **kw) -> SiteNode:
        root = root or self.root
        key = ed25519.Ed25519PrivateKey.generate()
        cred = sitecred.open_credential(sitecred.issue(root, site_id=site, device_key=key.public_key(),
                                                       issued_at=int(time.time()) - 60), [root.public_key()])
        settings = Settings(site, SECRET, ("127.0.0.1", 0), tuple(peers), discovery=False,
                            heartbeat_s=kw.pop("heartbeat_s", 0.2), peer_timeout_s=kw.pop("peer_timeout_s", 1.0), **kw)
        node = SiteNode(settings, key, cred, [self.root.public_key()])
        self.nodes.append(node)
        return node

    def mesh(self, n, **kw) -> list[SiteNode]:
        """n gates, each told the others' addresses."""
        first = self.add(**kw)
        others = [self.add(peers=[first.address], **kw) for _ in range(n - 1)]
        for node in [first, *others]:
            for other in [first, *others]:
                node.add_peer(other.address)
            node.start()
        wait_for(lambda: all(len(n.peers()) == len(self.nodes) - 1 for n in self.nodes), "every gate hears all")
        return [first, *others]

    def close(self):
        for n in self.nodes:
            n.stop()


@pytest.fixture
def gates(root_key):
    g = Gates(root_key)
    yield g
    g.close()


def test_an_entry_at_one_gate_reaches_the_others(gates):
    a, b, c = gates.mesh(3)
    a.note(entry(a.device_id, 1))
    wait_for(lambda: b.view.occupancy() == 1 and c.view.occupancy() == 1, "the entry at the other gates")
    site = b.site_for("5a" * 16, time.time())
    assert site.last is not None and site.last.gate == "gate-1" and site.last.device_id == a.device_id
    assert b.site_for("6b" * 16, time.time()).last is None
    c.note(entry(c.device_id, 1, direction="out", gate="gate-3"))
    wait_for(lambda: a.site_for("5a" * 16, time.time()).last.direction == "out", "the exit at gate A")
    assert a.view.occupancy() == b.view.occupancy() == 0
    assert all(p.alive and abs(p.skew_ms) < 5000 for p in a.peers())


def test_a_late_gate_catches_up_and_counts_once(gates):
    a, b = gates.mesh(2)
    for seq in range(1, 151):  # more than one datagram's worth
        a.note(entry(a.device_id, seq, card=f"{seq:032x}"))
    wait_for(lambda: b.view.totals() == (150, 0), "150 entries at b")
    late = gates.add(peers=[a.address])
    late.start()
    wait_for(lambda: late.view.totals() == (150, 0), lambda: f"the late gate caught up: {late.view.totals()}")
    a.note(entry(a.device_id, 151, card="ff" * 16))
    wait_for(lambda: late.view.totals() == (151, 0) == b.view.totals(), "the next entry everywhere, once")


def test_did_not_pass_cancels_everywhere(gates):
    a, b = gates.mesh(2)
    e = entry(a.device_id, 1)
    a.note(e)
    wait_for(lambda: b.view.occupancy() == 1, "the entry")
    a.note(Entry(2, str(uuid.uuid4()), a.device_id, "gate-1", "in", int(time.time() * 1000), "synced", "stdin",
                 "desk", "accept", "ok", "eu-dcc", e.card_id, kind="did_not_pass", ref_entry_id=e.entry_id))
    wait_for(lambda: b.view.occupancy() == 0 and b.site_for(e.card_id, time.time()).last is None, "cancelled")


def test_stranger_and_replay_refused(gates, other_root_key):
    a, b = gates.mesh(2)
    stranger = gates.add(root=other_root_key, peers=[b.address])  # valid credential of another root
    stranger.start()
    stranger.note(entry(stranger.device_id, 1))
    wait_for(lambda: any(code == "site_stranger" for _, code, _ in b.refused), "the stranger refused")
    assert b.view.occupancy() == 0 and all(p.device_id != stranger.device_id for p in b.peers())
    # a datagram a sniffer caught: sent once it opens, sent again it is refused
    key, cred = a.key, a.credential
    data = encode(key, cred, kind="events", n=time.time_ns(), at_ms=int(time.time() * 1000), clock="confirmed",
                  events=[])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, b.address)
        s.sendto(data, b.address)
        forged = bytearray(data)
        forged[10] ^= 0xFF  # inside the signature
        s.sendto(bytes(forged), b.address)
    wait_for(lambda: {"site_replayed", "site_forged"} <= {code for _, code, _ in b.refused}, lambda: b.refused)


def test_alone_a_gate_is_isolated(gates):
    lone = gates.add(peer_timeout_s=0.3, when_isolated=CLOSED)
    lone.start()
    assert not lone.isolated()  # not before the timeout has passed once
    wait_for(lone.isolated, "isolated")
    site = lone.site_for("5a" * 16, time.time())
    assert site.isolated and site.when_isolated == CLOSED
