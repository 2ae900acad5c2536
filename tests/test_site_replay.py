"""A gate's replay cache survives a restart of its daemon: a datagram of another gate that it
accepted before a clean stop (SIGTERM) is refused as replayed after it starts again, and so is one
accepted just before it was killed (SIGKILL: the cache on disk is not clean, so whatever was sent
before the restart is refused); a fresh datagram of the same gate opens each time. The daemon is
a real `checkpoint run` on loopback; the other gate is the test, holding its key and credential."""
from __future__ import annotations

import json
import signal
import socket
import time

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.appliance import Daemon, Fifo
from support.config import standalone, write_config
from support.pki import make_pki
from support.servers import free_port
from support.waiting import HTTP_TIMEOUT, wait_for

from scanner.cards import keys
from sync.site import credential as sitecred
from sync.site.message import REPLAY_KEPT, Inbox, SiteMessageError, encode
from sync.site.node import REPLAY_FILE_NAME
from sync.wire import identity

SITE = "cho-dong-ba"


def test_a_restarted_gate_still_refuses_a_replay(tmp_path, root_key):
    pki = make_pki(tmp_path / "pki")
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(keys.public_pem(root_key.public_key()))
    secret = tmp_path / "site.secret"
    secret.write_bytes(b"0123456789abcdef0123456789abcdef")
    state = tmp_path / "gate-B"
    key, _ = identity.load_or_create(state)
    (state / sitecred.FILE_NAME).write_bytes(sitecred.issue(root_key, site_id=SITE, device_key=key.public_key(),
                                                            issued_at=int(time.time()) - 60))
    port = free_port()
    fifo = Fifo(tmp_path / "b.fifo")
    tables = standalone(state, pki, stdin=[{"name": "desk", "path": str(fifo.path), "direction": "in"}],
                        site={"site_id": SITE, "secret_file": str(secret), "listen": f"127.0.0.1:{port}",
                              "discovery": False, "heartbeat_s": 0.3, "peer_timeout_s": 2.0, "max_skew_s": 30.0})
    tables["device"]["checkpoint_id"] = "gate-B"
    tables["trust"]["roots"] = [str(root_pem)]
    config = write_config(tmp_path / "b.toml", tables)

    other = ed25519.Ed25519PrivateKey.generate()  # gate A: the test sends its datagrams
    cred_a = sitecred.open_credential(sitecred.issue(root_key, site_id=SITE, device_key=other.public_key(),
                                                     issued_at=int(time.time()) - 60), [root_key.public_key()])

    def datagram() -> bytes:
        return encode(other, cred_a, kind="have", n=time.time_ns() // 1000, at_ms=int(time.time() * 1000),
                      clock="confirmed")

    def start() -> tuple[Daemon, str]:
        d = Daemon(config)
        return d, d.wait_line(r"api (http://127\.0\.0\.1:\d+)").group(1)

    def site(url: str) -> dict:
        return requests.get(url + "/api/v1/status", timeout=HTTP_TIMEOUT).json()["site"]

    def send(data: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(data, ("127.0.0.1", port))

    def opens(url: str, data: bytes) -> None:
        before = len(site(url)["refused"])
        send(data)
        wait_for(lambda: any(p["device_id"] == cred_a.device_id for p in site(url)["peers"]), "gate A heard")
        assert len(site(url)["refused"]) == before

    def replayed(url: str, data: bytes) -> None:
        send(data)
        wait_for(lambda: [r["code"] for r in site(url)["refused"]] == ["site_replayed"],
                 lambda: f"the replay refused: {site(url)}")
        assert site(url)["peers"] == []  # the replay did not make gate A look alive

    d, url = start()
    try:
        first = datagram()
        opens(url, first)
        d.signal(signal.SIGTERM)  # a clean stop: the cache is saved
        assert d.wait() == 0
        saved = json.loads((state / REPLAY_FILE_NAME).read_text())
        assert saved["clean"] is True and cred_a.device_id in saved["last"]

        d, url = start()
        replayed(url, first)
        second = datagram()
        opens(url, second)
        d.stop()  # SIGKILL: nothing saved after the start
        assert json.loads((state / REPLAY_FILE_NAME).read_text())["clean"] is False

        d, url = start()
        replayed(url, second)
        opens(url, datagram())
    finally:
        d.stop()
        fifo.close()


def test_the_saved_cache_is_bounded(root_key):
    """Only senders heard within the allowed skew are kept (older messages are refused as skewed
    anyway), at most REPLAY_KEPT of them; a cache not saved at a clean stop, or not well-formed,
    makes the inbox refuse what was sent before its start."""
    now = int(time.time() * 1000)
    inbox = Inbox([root_key.public_key()], SITE, "me", max_skew_ms=5000)
    last = {f"dev-{i}": (now - 60_000) * 1000 + i for i in range(100)}  # a minute old: replays are skewed
    last |= {f"new-{i}": now * 1000 + i for i in range(REPLAY_KEPT + 10)}
    inbox.restore({"v": 1, "clean": True, "saved_ms": now, "last": last}, now)
    kept = inbox.saved_state(now, clean=True)["last"]
    assert len(kept) == REPLAY_KEPT and not any(k.startswith("dev-") for k in kept)

    other = ed25519.Ed25519PrivateKey.generate()
    cred = sitecred.open_credential(sitecred.issue(root_key, site_id=SITE, device_key=other.public_key(),
                                                   issued_at=now // 1000 - 60), [root_key.public_key()])
    for saved in (None, {"v": 1, "clean": False, "last": {}}, {"v": 1, "clean": True, "last": []}, "junk"):
        fresh = Inbox([root_key.public_key()], SITE, "me", max_skew_ms=5000)
        fresh.restore(saved, now)
        before = encode(other, cred, kind="have", n=1, at_ms=now - 1, clock="confirmed")
        with pytest.raises(SiteMessageError) as refused:
            fresh.open(before, now)
        assert refused.value.code == "site_replayed", saved
        assert fresh.open(encode(other, cred, kind="have", n=2, at_ms=now, clock="confirmed"), now).n == 2
