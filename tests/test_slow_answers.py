"""Answers that come too slowly, over real sockets on 127.0.0.1: a peer that sends a byte now and
then, each wait shorter than the read timeout, is cut once it falls behind the answer rule (the
device's sync client, its bundle download into a file, the server's puller); a slow but steady
answer still gets through."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.waiting import wait_for

from sync.client import SyncClient, TransientError
from sync.server.puller import PullClient, PullFailed
from sync.wire.http import AnswerRule

RULE = AnswerRule(grace_s=1.0, min_rate_bps=20_000)  # one 16 KiB read in 0.8 s at the rate
GIVE_UP_S = 8.0  # the peer stops trickling (and closes) after this long, so old code ends too


@contextlib.contextmanager
def peer(head: bytes, body: bytes, pause_s: float, step: int = 1) -> Iterator[tuple[str, list[float]]]:
    """An HTTP peer on 127.0.0.1 answering every request with ``head`` at once, then ``body``
    ``step`` bytes at a time, ``pause_s`` apart; yields (its URL, when each connection ended)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    ended: list[float] = []
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            try:
                conn.recv(65536)  # the request (small, one read)
                conn.sendall(head)
                start = time.monotonic()
                for i in range(0, len(body), step):
                    if stop.is_set() or time.monotonic() - start > GIVE_UP_S:
                        break
                    conn.sendall(body[i:i + step])
                    time.sleep(pause_s)
            except OSError:  # the client hung up: what a cut looks like from here
                pass
            ended.append(time.monotonic())

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}", ended
    finally:
        stop.set()
        srv.close()


def sized_head(n: int, content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {n}\r\n\r\n").encode()


CLOSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
BODY = b'{"ok": true, "pad": "' + b"x" * 60000 + b'"}'


def client(url: str) -> SyncClient:
    return SyncClient(url, ed25519.Ed25519PrivateKey.generate(), read_timeout=5.0, answer_rule=RULE)


@pytest.mark.parametrize("head", [sized_head(len(BODY)), CLOSE_HEAD], ids=["content-length", "until-close"])
def test_a_trickled_answer_is_cut_with_a_timeout_not_held_or_taken(head):
    """Ten bytes a second, each wait far under the 5 s read timeout: cut as a timeout soon after
    the grace, also when the answer's end is the connection's end (a cut body must not pass as whole)."""
    with peer(head, BODY, 0.1) as (url, ended):
        c = client(url)
        t0 = time.monotonic()
        with pytest.raises(TransientError) as err:
            c.health()
        took = time.monotonic() - t0
        c.close()
        assert err.value.code == "timeout", err.value
        assert "bytes/s" in str(err.value)
        assert took < GIVE_UP_S - 2, f"cut after {took:.1f} s, not soon after the grace"
        wait_for(lambda: ended, "the peer to see the connection closed")
        assert ended[0] - t0 < GIVE_UP_S - 1  # hung up on, not left to run out


def test_a_trickled_bundle_download_leaves_no_file(tmp_path):
    """The trust bundle streams into a file: a trickle is cut, and no partial file is left."""
    target = tmp_path / "bundle.json.new"
    with peer(sized_head(len(BODY), "application/vnd.checkpoint.bundle+json"), BODY, 0.1) as (url, _):
        c = client(url)
        with pytest.raises(TransientError) as err:
            c.trust(None, None, into=target)
        c.close()
    assert err.value.code == "timeout"
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_the_servers_puller_cuts_a_device_that_trickles():
    """A device is the less trusted side of a pull: trickling its answer must not hold the puller."""
    with peer(sized_head(len(BODY)), BODY, 0.1) as (url, _):
        pc = PullClient(url, token="t" * 32, read_timeout=5.0, answer_rule=RULE)
        with pytest.raises(PullFailed) as err:
            pc.info()
        pc.close()
    assert err.value.code == "timeout"


def test_a_slow_but_steady_answer_gets_through():
    """About 100,000 bytes a second against a 20,000 bytes/s rule: read whole (no false cut)."""
    with peer(sized_head(len(BODY)), BODY, 0.02, step=2000) as (url, _):
        c = client(url)
        doc = c.health()
        c.close()
    assert doc["ok"] is True and len(doc["pad"]) == 60000


def test_the_rule_allows_the_grace_then_the_rate():
    rule = AnswerRule(grace_s=30.0, min_rate_bps=2048)
    assert rule.deadline(100.0, 0) == 130.0
    assert rule.deadline(100.0, 2048 * 60) == 190.0
