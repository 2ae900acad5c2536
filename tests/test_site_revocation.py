"""Revoking a gate before its site credential expires: the root signs the site's revocation list
(`checkpoint issuer site-revocations`); put on one gate, it spreads to the others, which drop the
revoked gate from their peers and refuse its messages (``site_revoked``), so its new entries are
ignored while the other gates go on sharing. Real site nodes over UDP on loopback, each with its
state directory; a gate restarted later still holds the list."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.paths import ROOT
from support.waiting import wait_for

from scanner.cards import keys
from scanner.store.entry import Entry
from sync.site import credential as sitecred
from sync.site.credential import SiteCredentialError
from sync.site.node import Settings, SiteNode

SITE = "market-dong-ba"
SECRET = b"k" * 32


def entry(device_id, seq, card):
    return Entry(seq, str(uuid.uuid4()), device_id, "gate", "in", int(time.time() * 1000), "synced", "stdin", "desk",
                 "accept", "ok", "eu-dcc", card)


def test_a_revoked_gate_is_ignored_by_the_others(tmp_path, root_key, other_root_key):
    keys_ = [ed25519.Ed25519PrivateKey.generate() for _ in range(3)]
    creds = [sitecred.open_credential(sitecred.issue(root_key, site_id=SITE, device_key=k.public_key(),
                                                     issued_at=int(time.time()) - 60), [root_key.public_key()])
             for k in keys_]
    nodes: list[SiteNode] = []

    def node(i: int, port: int = 0) -> SiteNode:
        state = tmp_path / f"gate-{i}"
        state.mkdir(mode=0o700, exist_ok=True)
        settings = Settings(SITE, SECRET, ("127.0.0.1", port), discovery=False, heartbeat_s=0.2, peer_timeout_s=1.0)
        n = SiteNode(settings, keys_[i], creds[i], [root_key.public_key()], state_dir=state)
        nodes.append(n)
        return n

    try:
        a, b, c = (node(i) for i in range(3))
        for n in (a, b, c):
            for other in (a, b, c):
                n.add_peer(other.address)
            n.start()
        wait_for(lambda: all(len(n.peers()) == 2 for n in (a, b, c)), "every gate hears the two others")
        c.note(entry(c.device_id, 1, "c1" * 16))
        wait_for(lambda: a.view.occupancy() == b.view.occupancy() == 1, "C's entry at A and B")

        (tmp_path / "root.key").write_bytes(keys.private_pem(root_key))
        out = tmp_path / "revocations.json"
        r = subprocess.run([sys.executable, "-m", "scanner", "issuer", "site-revocations", "--root-key",
                            str(tmp_path / "root.key"), "--site", SITE, "--version", "1", "--revoke", c.device_id,
                            "-o", str(out)], check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 0, r.stderr
        data = out.read_bytes().strip()
        assert a.install_revocations(data)  # on gate A only: it spreads to B with A's next heartbeat
        assert not a.install_revocations(data)  # not newer: nothing changes

        wait_for(lambda: b.inbox.revocations_version == 1, "the list passed on from A to B")
        wait_for(lambda: all(p.device_id != c.device_id for n in (a, b) for p in n.peers()), "C dropped")
        c.note(entry(c.device_id, 2, "c2" * 16))  # C goes on admitting: the others ignore it
        wait_for(lambda: all(any(code == "site_revoked" for _, code, _ in n.refused) for n in (a, b)),
                 lambda: f"C refused: {a.refused} {b.refused}")
        a.note(entry(a.device_id, 1, "a1" * 16))
        wait_for(lambda: b.view.occupancy() == 2, "A and B still share")
        time.sleep(1.0)  # several heartbeats: C's second entry would have reached them by now
        assert a.view.occupancy() == b.view.occupancy() == 2
        assert (c.device_id, 2) not in a.view.snapshot() and (c.device_id, 2) not in b.view.snapshot()
        assert all(p.device_id != c.device_id for n in (a, b) for p in n.peers())
        assert b.summary()["revocations"] == 1
        assert (tmp_path / "gate-1" / sitecred.REVOCATIONS_FILE_NAME).read_bytes() == data  # kept by B

        port = b.address[1]
        b.stop()  # B restarted: it holds the list from its state directory at once
        b2 = node(1, port)
        b2.start()
        assert b2.inbox.revocations_version == 1
        wait_for(lambda: any(code == "site_revoked" for _, code, _ in b2.refused), "C refused after the restart")
        assert all(p.device_id != c.device_id for p in b2.peers())
    finally:
        for n in nodes:
            n.stop()

    # a list of another root, of another site, or altered does not open
    other = sitecred.issue_revocations(other_root_key, site_id=SITE, version=2, issued_at=0, revoked=["x"])
    for bad, code in ((other, "site_revocations_wrong_root"),
                      (sitecred.issue_revocations(root_key, site_id="elsewhere", version=2, issued_at=0,
                                                  revoked=["x"]), "site_revocations_wrong_site"),
                      (data.replace(b'"sig":"', b'"sig":"AA'), "site_revocations_bad_signature"),
                      (b"{}", "site_revocations_malformed")):
        with pytest.raises(SiteCredentialError) as e:
            sitecred.open_revocations(bad, [root_key.public_key()], site_id=SITE)
        assert e.value.code == code, (bad, e.value)
