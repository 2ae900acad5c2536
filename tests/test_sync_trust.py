"""Trust updates: deltas rebuild the exact root-signed bundle; the device checks root signature
and version before an atomic swap and keeps the old bundle on any failure; over real HTTP:
not modified, delta, full, a tampered bundle, a rollback."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings, strategies
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from support.devices import assert_exactly_once, provision_device, record
from support.paths import ROOT
from support.servers import BACKENDS, free_port, running_server
from support.waiting import WAIT, wait_for
from support.words import foreign

from scanner.base.errors import TrustError
from scanner.base.timeutil import now_ms
from scanner.cards import keys as keymod
from scanner.cards import verifier
from scanner.cards.bundle import BundleKey, make_bundle, open_bundle
from scanner.cards.trust import load_device_trust
from scanner.store.entrylog import EntryLogError
from sync import trustupdate
from sync.agent import ProcessBuilder, SyncAgent, make_builder
from sync.client import SyncClient, SyncError
from sync.server.app import make_server
from sync.server.bundles import publish
from sync.state import StateFile
from sync.wire import batch as batchmod
from sync.wire import delta as deltamod
from sync.wire import identity, protocol


def ids(n):
    return [os.urandom(16) for _ in range(n)]


@pytest.fixture(scope="module")
def other_key():
    k = ed25519.Ed25519PrivateKey.generate()
    return BundleKey(keymod.kid_of(k.public_key()), "EdDSA", "VN-SGN", k.public_key())


def test_split_join_is_exact(make_bundle_bytes, root_key):
    for cards in ([], ids(1), ids(500)):
        data = make_bundle_bytes(revoked_cards=cards, revoked_kids=[b"12345678"])
        payload, _, _ = deltamod.file_parts(data)
        assert deltamod.join_payload(deltamod.split_payload(payload)) == payload


def test_delta_rebuilds_the_exact_new_bundle(make_bundle_bytes, root_key, bundle_keys, other_key):
    cards = ids(2000)
    old = make_bundle_bytes(version=1, revoked_cards=cards)
    new = make_bundle_bytes(version=2, revoked_cards=cards[10:] + ids(300), keys=bundle_keys[1:] + [other_key],
                            revoked_kids=[b"abcdefgh"])
    delta = deltamod.make_delta(root_key, old, new)
    assert delta is not None and len(delta) < len(new) // 3
    cur = open_bundle(old, [root_key.public_key()])
    data, bundle = deltamod.apply_delta(old, cur, delta, [root_key.public_key()])
    assert data == new and bundle.version == 2 and len(bundle.revoked_cards) == 2290


def test_delta_applies_to_the_installed_file_read_from_its_path(tmp_path, make_bundle_bytes, root_key):
    """The device gives the path of its bundle (the file is then not held beside the rebuilt one);
    a file changed since its digest was taken, or gone, is refused (the full bundle is fetched)."""
    roots = [root_key.public_key()]
    old = make_bundle_bytes(version=1, revoked_cards=ids(500))
    new = make_bundle_bytes(version=2, revoked_cards=ids(520))
    delta = deltamod.make_delta(root_key, old, new)
    cur = open_bundle(old, roots)
    path = tmp_path / "bundle.json"
    path.write_bytes(old)
    data, bundle = deltamod.apply_delta(path, cur, delta, roots)
    assert data == new and bundle.version == 2 and len(bundle.revoked_cards) == 520
    path.write_bytes(make_bundle_bytes(version=1, revoked_cards=ids(3)))
    with pytest.raises(deltamod.DeltaError, match="digest"):
        deltamod.apply_delta(path, cur, delta, roots)
    with pytest.raises(deltamod.DeltaError, match="unreadable"):
        deltamod.apply_delta(tmp_path / "gone.json", cur, delta, roots)


def test_delta_checks(make_bundle_bytes, root_key, other_root_key):
    roots = [root_key.public_key()]
    old = make_bundle_bytes(version=1, revoked_cards=ids(10))
    new = make_bundle_bytes(version=2, revoked_cards=ids(12))
    delta = deltamod.make_delta(root_key, old, new)
    cur = open_bundle(old, roots)
    with pytest.raises(deltamod.DeltaError, match="does not trust"):  # signed by another root
        deltamod.open_delta(deltamod.make_delta(other_root_key, make_bundle_bytes(root=other_root_key),
                                                      make_bundle_bytes(root=other_root_key, version=8)), roots)
    other_base = open_bundle(make_bundle_bytes(version=1, revoked_cards=ids(3)), roots)
    with pytest.raises(deltamod.DeltaError, match="for version"):  # another version-1 bundle
        deltamod.apply_delta(old, other_base, delta, roots)
    tampered = delta.replace(b'"delta": "', b'"delta": "A', 1)
    with pytest.raises(deltamod.DeltaError):
        deltamod.apply_delta(old, cur, tampered, roots)
    assert deltamod.make_delta(root_key, new, old) is None  # never a delta backwards


def test_install_keeps_the_old_bundle_on_failure(tmp_path, make_bundle_bytes, root_key):
    roots = [root_key.public_key()]
    v7 = make_bundle_bytes(version=7)
    trustupdate.install(tmp_path, v7, roots, min_version=None)
    forged = bytearray(make_bundle_bytes(version=8))
    forged[40] ^= 1
    for bad, code in ((bytes(forged), None), (make_bundle_bytes(version=6), "bundle_rollback"),
                      (make_bundle_bytes(version=7), "bundle_rollback")):
        with pytest.raises(TrustError) as exc_info:
            trustupdate.install(tmp_path, bad, roots, min_version=7)
        if code:
            assert exc_info.value.code == code
        assert (tmp_path / trustupdate.BUNDLE_NAME).read_bytes() == v7
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- over HTTP


@pytest.fixture(params=BACKENDS)
def server(request, tmp_path):
    """The real server on uvicorn, on SQLite and on PostgreSQL (the same tests for both)."""
    with running_server(request.param, tmp_path) as srv:
        yield srv


def test_not_modified_delta_and_full_over_http(server, tmp_path, make_bundle_bytes, root_key):
    cards = ids(3000)
    v1 = make_bundle_bytes(version=1, revoked_cards=cards)
    publish(server.storage, v1, now_ms=now_ms(), root=root_key.public_key())
    dev = provision_device(server, tmp_path)
    assert (dev.state / trustupdate.BUNDLE_NAME).read_bytes() == v1  # enrollment brought it
    agent = SyncAgent(dev.state, dev.log)
    assert agent.update_trust(StateFile(dev.state).load()) == "not_modified"
    v2 = make_bundle_bytes(version=2, revoked_cards=cards + ids(5))
    _, deltas = publish(server.storage, v2, now_ms=now_ms(), root_private=root_key)
    assert deltas == [1]
    events = []
    agent.on_trust = events.append
    st = StateFile(dev.state).load()
    assert agent.update_trust(st) == "delta"
    assert (dev.state / trustupdate.BUNDLE_NAME).read_bytes() == v2 and st.trust_version == 2
    assert events == [2]  # on_trust: the version now in bundle.json
    v3 = make_bundle_bytes(version=3, revoked_cards=cards)  # no root key: no delta, the full bundle
    publish(server.storage, v3, now_ms=now_ms())
    assert agent.update_trust(st) == "full"
    assert (dev.state / trustupdate.BUNDLE_NAME).read_bytes() == v3
    agent.close()


def test_streamed_bundles_delta_and_full_over_http(server, tmp_path, make_bundle_bytes, root_key, bundle_keys):
    """Format-2 bundles end to end: enrollment brings one, a v2 delta is merged as the installed
    file is read, a full one is written to bundle.json.new as it arrives and checked from there; a
    switch from format 1 is a full bundle."""
    def v2(version, cards):
        return make_bundle(root_key, version=version, issued_at=now_ms() // 1000 - 60,
                           expires_at=now_ms() // 1000 + 86400, keys=bundle_keys, revoked_cards=cards, fmt=2)
    cards = sorted(ids(70_000))  # more than one chunk of ids
    v1 = make_bundle_bytes(version=1, revoked_cards=cards[:10])
    publish(server.storage, v1, now_ms=now_ms(), root=root_key.public_key())
    dev = provision_device(server, tmp_path)
    agent = SyncAgent(dev.state, dev.log)
    st = StateFile(dev.state).load()
    b2 = v2(2, cards)
    assert publish(server.storage, b2, now_ms=now_ms(), root_private=root_key)[1] == []  # format 1 -> 2: no delta
    assert agent.update_trust(st) == "full" and st.trust_version == 2
    assert (dev.state / trustupdate.BUNDLE_NAME).read_bytes() == b2
    assert not trustupdate.download_path(dev.state).exists()
    more = sorted(ids(30))
    b3 = v2(3, cards[5:] + more)
    assert publish(server.storage, b3, now_ms=now_ms(), root_private=root_key)[1] == [2]
    assert agent.update_trust(st) == "delta" and st.trust_version == 3
    assert (dev.state / trustupdate.BUNDLE_NAME).read_bytes() == b3
    store = load_device_trust(dev.state)
    assert store.version == 3 and more[0] in store.revoked_cards and cards[0] not in store.revoked_cards
    b4 = v2(4, cards)
    publish(server.storage, b4, now_ms=now_ms())  # no root key: no delta
    assert agent.update_trust(st) == "full" and (dev.state / trustupdate.BUNDLE_NAME).read_bytes() == b4
    agent.close()


class Impostor:
    """A server (real HTTP) that answers trust requests with whatever bundle bytes it is given:
    a man in the middle, or a compromised or misconfigured central server."""

    def __init__(self, body: bytes, media: str = protocol.BUNDLE_TYPE) -> None:
        async def trust(request):
            return Response(body, media_type=media, headers={protocol.BUNDLE_VERSION_HEADER: "99"})
        self.port = free_port()
        self.server = make_server(Starlette(routes=[Route(protocol.TRUST, trust)]), "127.0.0.1", self.port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, "impostor start")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(60)


@pytest.mark.parametrize("attack", ["tampered", "other_root", "rollback", "delta_tampered"])
def test_bad_bundles_are_refused_and_the_old_one_kept(server, tmp_path, make_bundle_bytes, root_key,
                                                      other_root_key, attack):
    v5 = make_bundle_bytes(version=5)
    publish(server.storage, v5, now_ms=now_ms(), root=root_key.public_key())
    dev = provision_device(server, tmp_path)
    media = protocol.BUNDLE_TYPE
    if attack == "tampered":
        body = bytearray(make_bundle_bytes(version=6))
        body[60] = ord("A") if body[60] != ord("A") else ord("B")
        body = bytes(body)
    elif attack == "other_root":
        body = make_bundle_bytes(version=6, root=other_root_key)
    elif attack == "rollback":
        body = make_bundle_bytes(version=4)  # genuine, but older
    else:
        body = deltamod.make_delta(root_key, v5, make_bundle_bytes(version=6, revoked_cards=ids(2)))
        body = body.replace(b'"sig": "', b'"sig": "AAAA', 1)
        media = protocol.DELTA_TYPE
    impostor = Impostor(body, media)
    try:
        cfg_key = identity.load(dev.state)
        client = SyncClient(f"http://127.0.0.1:{impostor.port}", cfg_key, device_id=dev.device_id)
        agent = SyncAgent(dev.state, dev.log, client=client)
        st = StateFile(dev.state).load()
        assert agent.update_trust(st) == "failed"
        assert (dev.state / trustupdate.BUNDLE_NAME).read_bytes() == v5  # old bundle untouched
        assert "trust_update_failed" in st.alarms and st.trust_version in (None, 5)
        if attack == "rollback":
            assert st.trust_error.startswith("bundle_rollback")
        agent.close()
        # `sync status` says why, in the reader's words with the stable code (the detail stays in the journal)
        StateFile(dev.state).save(st)
        r = subprocess.run([sys.executable, "-m", "scanner", "sync", "status", "--state-dir", str(dev.state)],
                           capture_output=True, text=True, cwd=ROOT, timeout=WAIT, check=False,
                           env={**os.environ, "CHECKPOINT_LANG": "vi"})
        assert r.returncode == 0, r.stderr
        (line,) = [line for line in r.stdout.splitlines() if line.startswith("Cập nhật bộ tin cậy bị từ chối")]
        assert line.endswith(f"({st.trust_error_code})") and st.trust_error.startswith(st.trust_error_code), line
        assert not foreign(line, [f"({st.trust_error_code})"]), line
    finally:
        impostor.stop()


def test_server_refuses_to_publish_a_rollback_or_another_root(server, make_bundle_bytes, root_key, other_root_key):
    publish(server.storage, make_bundle_bytes(version=3), now_ms=now_ms(), root=root_key.public_key())
    with pytest.raises(TrustError) as exc_info:
        publish(server.storage, make_bundle_bytes(version=2), now_ms=now_ms())
    assert exc_info.value.code == "bundle_rollback"
    with pytest.raises(TrustError):
        publish(server.storage, make_bundle_bytes(version=9, root=other_root_key), now_ms=now_ms(),
                root=other_root_key.public_key())


def test_process_builder_uploads_and_updates_trust(server, tmp_path, make_bundle_bytes, root_key, make_card,
                                                   trust, now):
    """The appliance's default: batches and trust checks in a separate process."""
    publish(server.storage, make_bundle_bytes(version=1, revoked_cards=ids(50)), now_ms=now_ms(),
            root=root_key.public_key())
    dev = provision_device(server, tmp_path)
    record(dev, [verifier.verify(make_card(), trust, now)], 40)
    publish(server.storage, make_bundle_bytes(version=2, revoked_cards=ids(60)), now_ms=now_ms(),
            root_private=root_key)
    builder = ProcessBuilder(dev.log.path, dev.state, dev.device_id)
    agent = SyncAgent(dev.state, dev.log, builder=builder, min_batch=10, max_batch=15)
    try:
        res = agent.sync_once(trust=True)
        assert res.complete and res.batches == 3 and res.trust == "delta"
        assert StateFile(dev.state).load().trust_version == 2
        assert_exactly_once(server.storage, dev)
        # the worker never keeps a scan thread off the CPU: SCHED_IDLE, nice 10
        pid = builder.pid
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    finally:
        agent.close()


def test_a_trust_check_runs_in_a_process_that_ends_beside_the_builder(server, tmp_path, make_bundle_bytes,
                                                                      root_key, make_card, trust, now):
    """A trust check loads the trust code, and installing a bundle leaves an allocator holding what
    the bundle took: the check runs in a process of its own that ends (its memory goes back to the
    system), with the batch builder ended meanwhile (started again by the next build)."""
    publish(server.storage, make_bundle_bytes(version=1, revoked_cards=ids(50)), now_ms=now_ms(),
            root=root_key.public_key())
    dev = provision_device(server, tmp_path)
    record(dev, [verifier.verify(make_card(), trust, now)], 3)
    builder = ProcessBuilder(dev.log.path, dev.state, dev.device_id)
    client = SyncClient(server.url, identity.load(dev.state), device_id=dev.device_id)
    try:
        assert builder.build(0, 10, [], now_ms()).info.count == 3
        worker = builder.pid
        assert worker is not None
        assert builder.refresh_trust(client, dev.state)["status"] == "not_modified"
        publish(server.storage, make_bundle_bytes(version=2, revoked_cards=ids(60)), now_ms=now_ms(),
                root_private=root_key)
        assert builder.refresh_trust(client, dev.state)["status"] == "delta"
        assert trustupdate.current(dev.state, [root_key.public_key()])[1].version == 2
        assert _children() == [] and builder.pid is None and not os.path.exists(f"/proc/{worker}")
        assert builder.build(0, 10, [], now_ms()).info.count == 3
        assert builder.pid not in (None, worker) and _children() == [builder.pid]
    finally:
        client.close()
        builder.close()


@pytest.mark.parametrize("kind", ["process", "inline"])
def test_the_daemons_trust_checks_run_in_a_process_of_their_own_with_either_builder(
        kind, server, tmp_path, make_bundle_bytes, root_key):
    """`[sync] builder` decides where batches are built; a trust check (seconds of CPU for a big bundle,
    memory an allocator would keep) runs in a short-lived process with either, off the scan loop's GIL."""
    publish(server.storage, make_bundle_bytes(version=1, revoked_cards=ids(50)), now_ms=now_ms(),
            root=root_key.public_key())
    dev = provision_device(server, tmp_path)
    builder = make_builder(kind, dev.log, dev.state, dev.device_id)
    client = SyncClient(server.url, identity.load(dev.state), device_id=dev.device_id)
    try:
        publish(server.storage, make_bundle_bytes(version=2, revoked_cards=ids(60)), now_ms=now_ms(),
                root_private=root_key)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert builder.refresh_trust(client, dev.state)["status"] == "delta"
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # the check's CPU was a child's (ended and reaped), not this process's
        assert after.ru_utime + after.ru_stime > before.ru_utime + before.ru_stime
        assert _children() == [] and trustupdate.current(dev.state, [root_key.public_key()])[1].version == 2
    finally:
        client.close()
        builder.close()


def _children() -> list[int]:
    """This process's child processes (of any of its threads)."""
    kids = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children", encoding="ascii") as fh:
            kids += [int(k) for k in fh.read().split()]
    return kids


def test_the_batch_builder_process_loads_neither_the_sync_loop_nor_the_trust_code():
    """What the worker imports to build batches: not the sync loop, nor the bundle and delta code."""
    code = ("import sys, sync.builder; "
            "print(sorted(m for m in ('sync.agent', 'scanner.cards.bundle', 'sync.wire.delta') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=WAIT).stdout
    assert out.strip() == "[]"


def test_the_batch_builder_builds_without_the_heavy_libraries(server, tmp_path, make_card, trust, now):
    """A worker that opens a real log and assembles a batch loads no NumPy, sqlite-utils, requests,
    TLS, cryptography at all, nor the texts' catalogue: none is needed to read entries, encode and
    compress (each would add megabytes to a process that lives as long as the daemon; the daemon signs)."""
    dev = provision_device(server, tmp_path)
    record(dev, [verifier.verify(make_card(), trust, now)], 5)
    heavy = ("numpy", "sqlite_utils", "requests", "urllib3", "ssl", "cryptography.x509", "click",
             "cryptography.hazmat", "_cffi_backend", "scanner.base.catalogue")
    code = ("import sys, sync.builder as b; "
            f"b.init({str(dev.log.path)!r}, {dev.device_id!r}, 0); "
            "sb = b.build(0, 10, [], 1); "
            f"print(sb.info.count, sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=WAIT).stdout
    assert out.strip() == "5 []"


def test_the_process_builders_worker_maps_no_openssl_and_its_batches_verify(server, tmp_path, make_card, trust,
                                                                            now):
    """The daemon's builder process, as the daemon runs it, never maps cryptography's library (~11 MB of
    a process that lives as long as the daemon): the daemon signs what it assembles, and the server's
    check of the device's signature passes."""
    dev = provision_device(server, tmp_path)
    record(dev, [verifier.verify(make_card(), trust, now)], 7)
    builder = ProcessBuilder(dev.log.path, dev.state, dev.device_id)
    try:
        sb = builder.build(0, 10, [], now_ms())
        assert sb is not None and sb.info.count == 7
        parsed = batchmod.open_batch(sb.data, identity.load(dev.state).public_key())
        assert [e.seq for e in parsed.entries] == list(range(1, 8))
        with open(f"/proc/{builder.pid}/maps", encoding="utf-8", errors="replace") as fh:
            mapped = {line.split()[-1] for line in fh if "/" in line}
        assert not [p for p in mapped if "cryptography" in p or "_cffi_backend" in p or "libssl" in p]
        assert builder.build(7, 10, [], now_ms()) is None
    finally:
        builder.close()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def test_the_batch_builder_gives_back_what_a_large_batch_took(server, tmp_path, make_card, trust, now):
    """Between builds the worker holds only what it keeps: the memory a large batch took goes back
    to the system once the batch is answered, so the appliance's memory does not follow the largest
    batch built so far."""
    dev = provision_device(server, tmp_path)
    record(dev, [verifier.verify(make_card(), trust, now)], 5000)
    builder = ProcessBuilder(dev.log.path, dev.state, dev.device_id)
    try:
        for _ in range(3):  # warmed up on small batches: the modules a build needs are loaded
            assert builder.build(0, 50, [], now_ms()).info.count == 50
        small = _rss_kb(builder.pid)
        assert builder.build(0, 5000, [], now_ms()).info.count == 5000
        # it answers first, then lets go: within moments it is back near where it was
        wait_for(lambda: _rss_kb(builder.pid) - small < 3072,
                 lambda: f"the builder holds {_rss_kb(builder.pid) - small} kB more after a batch of 5,000",
                 timeout=10)
    finally:
        builder.close()


def test_process_builder_replaces_a_killed_worker_and_leaves_nothing(server, tmp_path, make_card, trust, now):
    """A worker killed under it is a clean `builder_died` and a new worker at the next request (an
    interrupt does not kill it); an error in the worker comes back as itself; close() leaves no
    process behind."""

    dev = provision_device(server, tmp_path)
    record(dev, [verifier.verify(make_card(), trust, now)], 3)
    builder = ProcessBuilder(dev.log.path, dev.state, dev.device_id)
    try:
        assert builder.pid is None  # started by the first request
        assert builder.build(0, 10, [], now_ms()).info.count == 3
        first = builder.pid
        os.kill(first, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group: for the daemon only
        assert builder.build(0, 10, [], now_ms()).info.count == 3 and builder.pid == first
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: builder.pid is None, "the worker gone")
        with pytest.raises(SyncError) as info:
            builder.build(0, 10, [], now_ms())
        assert info.value.code == "builder_died"
        assert builder.build(0, 10, [], now_ms()).info.count == 3
        second = builder.pid
        assert second not in (None, first)
    finally:
        builder.close()
    assert builder.pid is None and not os.path.exists(f"/proc/{second}")
    missing = ProcessBuilder(tmp_path / "no.db", dev.state, dev.device_id)
    try:
        with pytest.raises(EntryLogError) as info:
            missing.build(0, 10, [], now_ms())
        assert info.value.code == "no_log"
    finally:
        missing.close()


@settings(max_examples=200, deadline=None)
@given(old=strategies.sets(strategies.integers(0, 2000), max_size=60),
       removed=strategies.sets(strategies.integers(0, 2000), max_size=20),
       added=strategies.sets(strategies.integers(0, 2000), max_size=20))
def test_a_delta_s_card_changes_give_exactly_the_new_set(old, removed, added):
    """apply_parts copies the kept runs of the old sorted list around the removals and additions:
    the result is the old set less the removed cards (absent ones ignored) plus the added ones, in
    order; an addition already revoked is refused."""
    def rows(ids) -> np.ndarray:
        return np.array(sorted(f"{i:032x}".encode() for i in ids), dtype="S32")
    parts = deltamod.Parts(1, 0, 9, [], rows(old), [])
    d = deltamod.Delta(1, "", 2, 0, 9, [], [], rows(removed), rows(added), [], [], b"", b"")
    if added & (old - removed):
        with pytest.raises(deltamod.DeltaError):
            deltamod.apply_parts(parts, d)
        return
    got = deltamod.apply_parts(parts, d)
    assert got.cards.tolist() == rows((old - removed) | added).tolist()
