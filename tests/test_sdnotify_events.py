"""sd_notify over a real unix datagram socket, and the event hub the kiosk's stream is built on."""
from __future__ import annotations

import asyncio
import os
import socket
import uuid

from scanner.appliance.events import EventHub
from scanner.appliance.sdnotify import Notifier


def _recv(sock: socket.socket) -> dict:
    sock.settimeout(30)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_notify_to_a_path_socket(tmp_path):
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_s == 4.0
        assert n.ready("ok\nsecond line")
        assert _recv(sock) == {"READY": "1", "STATUS": "ok second line"}
        assert n.watchdog() and _recv(sock) == {"WATCHDOG": "1"}
        assert n.reloading()
        msg = _recv(sock)
        assert msg["RELOADING"] == "1" and int(msg["MONOTONIC_USEC"]) > 0
        assert n.stopping() and _recv(sock) == {"STOPPING": "1"}
        n.close()


def test_notify_to_an_abstract_socket():
    name = f"checkpoint-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.status("hello") and _recv(sock) == {"STATUS": "hello"}


def test_without_systemd_nothing_happens_and_a_dead_socket_is_no_crash(tmp_path):
    n = Notifier({})
    assert not n.enabled and n.watchdog_s is None and n.ready() is False
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert gone.ready() is False and gone.watchdog() is False


def test_hub_streams_to_subscribers_and_forgets_the_holder_after_the_display_time():
    t = [0.0]
    hub = EventHub(display_s=5, max_subscribers=2, mono=lambda: t[0])
    heard = []
    hub.listen(heard.append)

    async def scenario():
        loop = asyncio.get_running_loop()
        sub, first = hub.subscribe(loop)
        assert first == []
        hub.publish("state", {"state": "ok"})
        v = hub.publish("verdict", {"holder": {"name": "Nguyễn\u202e", "birth_year": "1985"}})
        got = [await asyncio.wait_for(sub.queue.get(), 30) for _ in range(2)]
        assert [e.kind for e in got] == ["state", "verdict"]
        assert "\\u202e" in v.json and "\u202e" not in v.sse()  # escaped for the wire
        late, first2 = hub.subscribe(loop)
        assert [e.kind for e in first2] == ["state", "verdict"]  # a screen that connects now sees it
        assert hub.subscribe(loop) is None  # too many clients
        t[0] = 4.9
        assert not hub.expire()
        t[0] = 5.0
        assert hub.expire() and hub.current() is None
        assert (await asyncio.wait_for(sub.queue.get(), 30)).kind == "clear"
        hub.unsubscribe(late)
        again, first3 = hub.subscribe(loop)
        assert [e.kind for e in first3] == ["state"]  # the name is gone from memory
        hub.close()
        assert await asyncio.wait_for(again.queue.get(), 30) is None

    asyncio.run(scenario())
    assert [e.kind for e in heard] == ["state", "verdict", "clear"]


def test_a_slow_subscriber_loses_its_oldest_events_not_the_newest():
    hub = EventHub(queue_size=3)

    async def scenario():
        sub, _ = hub.subscribe(asyncio.get_running_loop())
        for i in range(10):
            hub.publish("partial", {"i": i})
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        items = [sub.queue.get_nowait().data["i"] for _ in range(sub.queue.qsize())]
        assert items == [7, 8, 9] and sub.dropped == 7

    asyncio.run(scenario())
