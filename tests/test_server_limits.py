"""The reference server's limits over real sockets (uvicorn on 127.0.0.1): CK-Sig2 headers checked
before a byte of the body is read (forged, stale, replayed, the body not the one signed), bodies of
unauthenticated requests bounded before reading, slow bodies cut, shares per device and per address,
connections per address and the header deadline; devices without CK-Sig2 still served."""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import socket
import struct
import time

import pytest
import requests
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.console import tls_files
from support.devices import provision_device, record
from support.servers import ServerThread
from support.waiting import WAIT, closed_by_peer, wait_for
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from scanner.base.backoff import Backoff
from scanner.base.timeutil import now_ms
from scanner.cards import verifier
from scanner.cli.main import main
from sync.agent import SyncAgent
from sync.client import SyncClient
from sync.server.limits import HEAD_BYTES_MAX, Limits, ReplayCache, peer_key
from sync.wire import batch as batchmod
from sync.wire import identity, protocol


@pytest.fixture(scope="module")
def verdicts(make_card, trust, now):
    return [verifier.verify(make_card(card_id=os.urandom(16)), trust, now) for _ in range(3)]


def _server(tmp_path, **limits) -> ServerThread:
    (tmp_path / "s").mkdir(exist_ok=True)
    return ServerThread(tmp_path / "s" / "c.db", config={"limits": Limits(**limits)}).start()


def _tls_server(tmp_path, **limits) -> tuple[ServerThread, str]:
    """The server over TLS with ``limits``, and its certificate (for the clients to trust)."""
    (tmp_path / "s").mkdir(exist_ok=True)
    cert, key = tls_files(tmp_path / "tls")
    return ServerThread(tmp_path / "s" / "c.db", config={"limits": Limits(**limits)}, tls=(cert, key)).start(), cert


def _connect(srv: ServerThread, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT, source_address=(source, 0))
    return s


def _head(path: str, length: int | None, auth: str | None = None, extra: str = "") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: t", f"Content-Type: {protocol.BATCH_TYPE}"]
    if auth:
        lines.append(f"Authorization: {auth}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def _answer(s: socket.socket) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of the next answer on ``s``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"connection closed without an answer after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = s.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split()[1]), headers, json.loads(rest[:n]) if n else {}


def _batch(dev, key, verdicts, n: int = 5) -> bytes:
    es = record(dev, verdicts, n)
    return batchmod.build(es, key, device_id=dev.device_id, created_ms=now_ms()).data


# ---------------------------------------------------------------- authenticated before buffering


def test_signed_header_is_checked_before_the_body_is_read(tmp_path, verdicts):
    srv = _server(tmp_path)
    try:
        dev = provision_device(srv, tmp_path)
        key = identity.load(dev.state)
        data = _batch(dev, key, verdicts)
        path = protocol.BATCHES

        def refused_unread(auth: str, length: int = 16 * 1024 * 1024) -> str:
            with _connect(srv) as s:  # the headers only: an answer must come without the body
                s.sendall(_head(path, length, auth))
                status, _, doc = _answer(s)
                assert status == 401
                return doc["error"]

        forged = protocol.auth_header_v2(dev.device_id, ed25519.Ed25519PrivateKey.generate(), "POST", path,
                                         now_ms(), data)
        assert refused_unread(forged) == protocol.E_BAD_SIGNATURE
        stale = protocol.auth_header_v2(dev.device_id, key, "POST", path, now_ms() - 10 * 60_000, data)
        assert refused_unread(stale) == protocol.E_STALE_REQUEST
        stranger = ed25519.Ed25519PrivateKey.generate()
        unknown = protocol.auth_header_v2(identity.device_id(stranger), stranger, "POST", path, now_ms(), data)
        assert refused_unread(unknown) == protocol.E_UNKNOWN_DEVICE
        other_path = protocol.auth_header_v2(dev.device_id, key, "POST", protocol.HEARTBEAT, now_ms(), data)
        assert refused_unread(other_path) == protocol.E_BAD_SIGNATURE

        # a genuine header, then another body of the same length: refused once read, nothing stored
        genuine = protocol.auth_header_v2(dev.device_id, key, "POST", path, now_ms(), data)
        other = bytearray(data)
        other[-1] ^= 1
        r = requests.post(srv.url + path, data=bytes(other), headers={"Authorization": genuine}, timeout=WAIT)
        assert (r.status_code, r.json()["error"]) == (401, protocol.E_BAD_SIGNATURE)
        assert srv.storage.stats().entries == 0
        # a header works once: the upload it signed is stored, the same request again is refused
        good = protocol.auth_header_v2(dev.device_id, key, "POST", path, now_ms(), data)
        r = requests.post(srv.url + path, data=data, headers={"Authorization": good}, timeout=WAIT)
        assert r.status_code == 200 and r.json()["stored"] == 5
        r = requests.post(srv.url + path, data=data, headers={"Authorization": good}, timeout=WAIT)
        assert (r.status_code, r.json()["error"]) == (401, protocol.E_REPLAYED)
        assert srv.storage.stats().entries == 5
        assert requests.get(srv.url + protocol.HEALTH, timeout=WAIT).json()["request_auth"] == 2
    finally:
        srv.stop()


def test_a_device_whose_clock_is_off_signs_again_with_the_servers_time(tmp_path, verdicts):
    srv = _server(tmp_path)
    try:
        dev = provision_device(srv, tmp_path)
        client = SyncClient(srv.url, identity.load(dev.state), device_id=dev.device_id)
        client.last_clock_offset_ms = 3 * 3_600_000  # what a Pi without a battery clock may believe
        assert client.acks(0)["batches"] == []  # stale_request, then signed again with the server's time
        assert abs(client.last_clock_offset_ms) < 60_000
        ack = client.upload(_batch(dev, identity.load(dev.state), verdicts))
        assert ack.stored == 5
        client.close()
    finally:
        srv.stop()


# ---------------------------------------------------------------- unauthenticated: bounded before reading


def test_unauthenticated_bodies_are_bounded_before_they_are_read(tmp_path, verdicts):
    srv = _server(tmp_path)
    try:
        dev = provision_device(srv, tmp_path)
        key = identity.load(dev.state)

        def answer_unread(head: bytes, body: bytes = b"") -> tuple[int, str]:
            with _connect(srv) as s:
                s.sendall(head + body)
                status, _, doc = _answer(s)
                return status, doc.get("error")

        big = protocol.LEGACY_MAX_BATCH_BYTES + 1
        assert answer_unread(_head(protocol.BATCHES, big)) == (413, protocol.E_TOO_LARGE)
        assert answer_unread(_head(protocol.ENROLL, protocol.MAX_JSON_BYTES + 1)) == (413, protocol.E_REQUEST_TOO_LARGE)
        v1 = protocol.auth_header(dev.device_id, key, "POST", protocol.HEARTBEAT, now_ms(), b"{}")
        assert answer_unread(_head(protocol.HEARTBEAT, protocol.MAX_JSON_BYTES + 1, v1)) == (
            413, protocol.E_REQUEST_TOO_LARGE)
        assert answer_unread(_head(protocol.BATCHES, None, extra="Transfer-Encoding: chunked\r\n")) == (
            411, protocol.E_LENGTH_REQUIRED)
        # under the cap: the first 8 bytes must start a batch, the header must name an enrolled device
        assert answer_unread(_head(protocol.BATCHES, 100_000), b"GET junk") == (400, protocol.E_MALFORMED)
        stranger = ed25519.Ed25519PrivateKey.generate()
        sid = identity.device_id(stranger)
        es = record(dev, verdicts, 3)
        foreign = batchmod.build([dataclasses.replace(e, device_id=sid) for e in es], stranger, device_id=sid,
                                 created_ms=1).data
        hlen = batchmod.header_end(foreign[:8], len(foreign))
        assert answer_unread(_head(protocol.BATCHES, len(foreign)), foreign[:hlen]) == (401, protocol.E_UNKNOWN_DEVICE)
    finally:
        srv.stop()


def test_an_answered_body_is_dropped_as_it_comes_and_its_connection_closed_if_it_stops(tmp_path, verdicts):
    """A refusal sent before the body: the client, which sends its whole body before reading, gets
    the answer (the rest is read and dropped, not buffered, so no reset loses it) and may go on
    using the connection; a client that stops sending is closed at the drain deadline."""
    srv = _server(tmp_path, legacy_max_bytes=64 * 1024, body_timeout_s=1.0)
    try:
        big = os.urandom(512 * 1024)
        r = requests.post(srv.url + protocol.BATCHES, data=big, timeout=WAIT)  # sent whole, then read
        assert (r.status_code, r.json()["error"]) == (413, protocol.E_TOO_LARGE)
        with requests.Session() as session:
            for _ in range(2):  # the same connection, twice
                r = session.post(srv.url + protocol.BATCHES, data=big, timeout=WAIT)
                assert r.status_code == 413
        with _connect(srv) as s:
            s.sendall(_head(protocol.BATCHES, len(big)) + big[:1000])
            assert _answer(s)[0] == 413
            assert closed_by_peer(s)  # the rest never came: closed at the drain deadline
        with _connect(srv) as s:  # larger than any request may be: closed at once, nothing drained
            s.sendall(_head(protocol.BATCHES, protocol.MAX_BATCH_BYTES + 1))
            assert _answer(s)[0] == 413 and closed_by_peer(s)
    finally:
        srv.stop()


def test_connections_answered_then_reset_are_released(tmp_path):
    """A client that reads a refusal and resets the connection (as a flood does, thousands a
    second) leaves nothing behind: uvicorn kept each such connection alive for its keep-alive
    timeout, which a reconnecting flood turns into memory growth."""
    srv = _server(tmp_path)
    try:
        for _ in range(50):
            with _connect(srv, "127.0.0.2") as s:
                s.sendall(_head(protocol.BATCHES, protocol.LEGACY_MAX_BATCH_BYTES + 1))
                assert _answer(s)[0] == 413
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        wait_for(lambda: not srv.server.server_state.connections, "every connection lost")
        gc.collect()
        state = srv.server.server_state
        left = [o for o in gc.get_objects()
                if isinstance(o, H11Protocol | HttpToolsProtocol) and o.server_state is state]
        assert left == []
    finally:
        srv.stop()


def test_devices_without_v2_headers_are_still_served(tmp_path, verdicts):
    """An old device: unsigned batch uploads, CK-Sig (v1) heartbeats and batch lists."""
    srv = _server(tmp_path)
    try:
        dev = provision_device(srv, tmp_path)
        key = identity.load(dev.state)
        data = _batch(dev, key, verdicts, 7)
        r = requests.post(srv.url + protocol.BATCHES, data=data, timeout=WAIT,
                          headers={"Content-Type": protocol.BATCH_TYPE})
        assert r.status_code == 200 and r.json()["stored"] == 7
        hb = {"hb_seq": 1, "device_time_ms": now_ms(), "software_version": "0.1", "queue_depth": 0,
              "oldest_unsynced_age_s": None, "last_acked_seq": 7, "trust_version": None, "trust_age_s": None,
              "clock_offset_ms": None, "inputs": {}, "disk_free_bytes": None, "alarms": [], "last_error": None}
        body = json.dumps(hb).encode()
        auth = protocol.auth_header(dev.device_id, key, "POST", protocol.HEARTBEAT, now_ms(), body)
        r = requests.post(srv.url + protocol.HEARTBEAT, data=body, headers={"Authorization": auth}, timeout=WAIT)
        assert r.status_code == 200 and r.json()["kept"] is True
        path = protocol.ACKS + "?after=0"
        auth = protocol.auth_header(dev.device_id, key, "GET", path, now_ms(), b"")
        r = requests.get(srv.url + path, headers={"Authorization": auth}, timeout=WAIT)
        assert r.status_code == 200 and r.json()["held_seq"] == 7
    finally:
        srv.stop()


# ---------------------------------------------------------------- read deadlines


def test_slow_bodies_are_cut_and_free_their_places(tmp_path, verdicts):
    srv = _server(tmp_path, body_grace_s=0.3, min_rate_bps=20_000, body_timeout_s=3.0)
    try:
        dev = provision_device(srv, tmp_path)
        key = identity.load(dev.state)
        data = _batch(dev, key, verdicts)
        signed = protocol.auth_header_v2(dev.device_id, key, "POST", protocol.BATCHES, now_ms(), data)
        cases = [
            ("unauthenticated batch", _head(protocol.BATCHES, 100_000), data[:10]),
            ("signed batch", _head(protocol.BATCHES, len(data), signed), data[:10]),
            ("enrollment", _head(protocol.ENROLL, 1000), b'{"token": '),
        ]
        for what, head, start in cases:
            with _connect(srv) as s:
                s.sendall(head + start)  # then a trickle far under the minimum rate
                s.settimeout(0.2)
                for _ in range(10):
                    try:
                        s.send(b" ")
                    except OSError:
                        break
                    try:
                        if s.recv(1, socket.MSG_PEEK):
                            break
                    except TimeoutError:
                        continue
                s.settimeout(WAIT)
                status, _, doc = _answer(s)
                assert (what, status, doc["error"]) == (what, 408, protocol.E_BODY_TIMEOUT)
                assert closed_by_peer(s)
        # the places they held are free again: an old device and a current one upload
        more = _batch(dev, key, verdicts)
        assert requests.post(srv.url + protocol.BATCHES, data=more, timeout=WAIT).status_code == 200
        client = SyncClient(srv.url, key, device_id=dev.device_id)
        assert client.upload(_batch(dev, key, verdicts)).stored == 5
        client.close()
    finally:
        srv.stop()


def test_a_device_sends_smaller_batches_after_a_body_timeout(tmp_path, verdicts):
    srv = _server(tmp_path)
    try:
        dev = provision_device(srv, tmp_path)
        record(dev, verdicts, 30)
        agent = SyncAgent(dev.state, dev.log, backoff=Backoff(base_s=0.01, cap_s=0.05, jitter=True))
        before = agent.files.load().batch_size
        srv.faults.fail(protocol.BATCHES, 408, code=protocol.E_BODY_TIMEOUT)  # what a too-slow link gets
        res = agent.sync_once()
        assert res.error_code == protocol.E_BODY_TIMEOUT and not res.complete
        assert agent.files.load().batch_size == before // 2
        shown = CliRunner().invoke(main, ["sync", "status", "--state-dir", str(dev.state), "--lang", "en"]).output
        assert "the server cut the upload; the device sends smaller batches (body_timeout)" in shown
        assert agent.sync_once().complete
        agent.close()
    finally:
        srv.stop()


# ---------------------------------------------------------------- shares per device and per address


def test_one_device_or_address_cannot_hold_more_than_its_share(tmp_path, verdicts):
    srv = _server(tmp_path, per_device=2, legacy_inflight=2, legacy_per_peer=1, body_grace_s=WAIT * 2)
    held: list[socket.socket] = []
    try:
        a = provision_device(srv, tmp_path, "a")
        b = provision_device(srv, tmp_path, "b")
        ka, kb = identity.load(a.state), identity.load(b.state)
        data = _batch(a, ka, verdicts)

        def in_progress(pool: str, who: str) -> int:
            return srv.app.state.gate.held[(pool, who)]

        def hold(head: bytes, pool: str, who: str, source: str = "127.0.0.1") -> socket.socket:
            """Headers and no body, once the server holds the request in progress (so that a probe
            sent after it can never be admitted ahead of it)."""
            before = in_progress(pool, who)
            s = _connect(srv, source)
            s.sendall(head)  # and no body
            held.append(s)
            wait_for(lambda: in_progress(pool, who) > before, f"{pool} request from {who or source} in progress")
            return s

        def signed_head() -> bytes:
            return _head(protocol.BATCHES, len(data),
                         protocol.auth_header_v2(a.device_id, ka, "POST", protocol.BATCHES, now_ms(), data))

        def refused(head: bytes, source: str = "127.0.0.1") -> tuple[int | None, str | None, str | None]:
            """The answer to headers alone; (None, None, None) if admitted (waiting for the body) while
            the places above were still being taken."""
            with _connect(srv, source) as s:
                s.sendall(head)
                s.settimeout(1.0)
                try:
                    status, headers, doc = _answer(s)
                except TimeoutError:
                    return None, None, None
                return status, doc["error"], headers.get("retry-after")

        hold(signed_head(), "device", a.device_id)
        hold(signed_head(), "device", a.device_id)
        wait_for(lambda: refused(signed_head())[:2] == (429, protocol.E_TOO_MANY), "device a at its share")
        assert 2 <= int(refused(signed_head())[2]) <= 4  # Retry-After 2 s, jittered up to twice that
        hold(_head(protocol.BATCHES, 100_000), "unauthenticated", peer_key("127.0.0.2"), "127.0.0.2")
        wait_for(lambda: refused(_head(protocol.BATCHES, 100_000), "127.0.0.2")[:2] == (429, protocol.E_TOO_MANY),
                 "address 127.0.0.2 at its share")
        hold(_head(protocol.BATCHES, 100_000), "unauthenticated", peer_key("127.0.0.3"), "127.0.0.3")
        wait_for(lambda: refused(_head(protocol.BATCHES, 100_000), "127.0.0.4")[:2] == (503, protocol.E_BUSY),
                 "the unauthenticated budget spent")
        # device b is not affected by any of it
        client = SyncClient(srv.url, kb, device_id=b.device_id)
        assert client.upload(_batch(b, kb, verdicts)).stored == 5
        client.close()
    finally:
        for s in held:
            s.close()
        srv.stop()


def test_connections_per_address_and_the_header_deadline(tmp_path, verdicts):
    srv = _server(tmp_path, connections_per_peer=4, header_timeout_s=0.5)
    try:
        dev = provision_device(srv, tmp_path)
        key = identity.load(dev.state)
        idle = [_connect(srv, "127.0.0.2") for _ in range(6)]
        slow_headers = _connect(srv, "127.0.0.3")
        for part in (b"POST /v1/batches HTTP/1.1\r\n", b"Host: t\r\n", b"X-Pad: 1\r\n"):
            slow_headers.sendall(part)
        t0 = time.monotonic()
        assert all(closed_by_peer(s) for s in idle + [slow_headers])  # 2 at once (over 4), the rest at the deadline
        assert time.monotonic() - t0 < WAIT
        client = SyncClient(srv.url, key, device_id=dev.device_id)
        assert client.upload(_batch(dev, key, verdicts)).stored == 5
        time.sleep(0.8)  # longer than the header deadline: a kept-alive connection is not cut by it
        assert client.acks(0)["held_seq"] == 5
        client.close()
        for s in idle + [slow_headers]:
            s.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("pad", [b"X-Pad: " + b"a" * 1000 + b"\r\n", b"a" * 1000], ids=["many headers", "one endless"])
def test_request_headers_are_bounded_however_fast_they_come(tmp_path, pad):
    """A request's line and headers are bounded (HEAD_BYTES_MAX) within the header deadline too: a
    client sending more, as many headers or as one endless one, gets 400 and is closed."""
    srv = _server(tmp_path)
    try:
        with _connect(srv) as s:
            s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: t\r\nX-Long: ")
            t0 = time.monotonic()
            with contextlib.suppress(OSError):  # closed while it sends
                for _ in range(HEAD_BYTES_MAX // len(pad) + 2):
                    s.sendall(pad)
            answer = b""
            while b"\r\n" not in answer and (chunk := s.recv(65536)):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 400 ") and closed_by_peer(s)
            assert time.monotonic() - t0 < Limits().header_timeout_s  # not at the deadline
        client = requests.get(srv.url + protocol.HEALTH, timeout=WAIT)  # the server goes on serving
        assert client.ok
    finally:
        srv.stop()


def test_a_tls_connection_that_never_finishes_its_handshake_is_closed_at_its_deadline(tmp_path):
    srv, cert = _tls_server(tmp_path, handshake_timeout_s=0.5)
    try:
        silent = [_connect(srv, "127.0.0.2") for _ in range(3)]
        for s in silent:
            s.settimeout(WAIT / 3)  # well before asyncio's own deadline (60 s), which uvicorn leaves as it is
        assert all(closed_by_peer(s) for s in silent)
        for s in silent:
            s.close()
        assert requests.get(srv.url + protocol.HEALTH, verify=cert, timeout=WAIT).status_code == 200
    finally:
        srv.stop()


def test_a_server_stops_soon_though_an_idle_tls_client_keeps_its_connection(tmp_path):
    srv, cert = _tls_server(tmp_path, tls_close_timeout_s=0.5)
    browser = requests.Session()  # keeps its connection open, and never answers the server's TLS close
    try:
        assert browser.get(srv.url + protocol.HEALTH, verify=cert, timeout=WAIT).status_code == 200
        srv.server.should_exit = True
        srv.thread.join(WAIT / 3)  # asyncio's own wait for the peer's TLS close is 30 s
        assert not srv.thread.is_alive()
    finally:
        browser.close()
        srv.stop()




def test_replay_cache_and_peer_keys():
    cache = ReplayCache(window_ms=1000, per_device=2)
    assert cache.fresh(5000, 5900) and not cache.fresh(5000, 6100)
    assert cache.first_use("d", "n1", 5000, 5000) is True
    assert cache.first_use("d", "n1", 5000, 5100) is False
    assert cache.first_use("d", "n2", 5000, 5100) is True
    assert cache.first_use("d", "n3", 5000, 5100) is None  # more than a device sends: refused
    assert cache.first_use("d", "n3", 5200, 6100) is True  # n1, n2 have left the window
    cache.sweep(10_000)
    assert cache.first_use("d", "n1", 9500, 10_000) is True
    assert peer_key("192.0.2.7") == "192.0.2.7"
    assert peer_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert peer_key("2001:db8:1:2:aaaa::1") == peer_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert peer_key(None) == "-"
