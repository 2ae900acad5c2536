"""Server pull over real HTTP: the device's pull endpoints (sync/pull.py) mounted in front of a local
API app on uvicorn (127.0.0.1), the server pulling with its key or a token (never anonymously),
acknowledgements marking the device's log, a bad entry quarantined as a push would, a lost
acknowledgement, and push, pull and USB import mixed: every entry stored exactly once, on SQLite
and PostgreSQL."""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Self

import pytest
import requests
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ed25519
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from support.devices import assert_exactly_once, provision_device, record
from support.servers import BACKENDS, Faults, free_port, running_server
from support.waiting import wait_for
from support.words import foreign

from scanner.base.backoff import Backoff
from scanner.cards import keys, verifier
from scanner.cli.main import main
from sync import credential
from sync import pull as pullmod
from sync.agent import SyncAgent
from sync.client import SyncClient
from sync.export import export_pending
from sync.server.app import make_server
from sync.server.imports import import_dir
from sync.server.puller import PullClient, PullFailed, check_device_url, pull_device
from sync.state import StateFile, status_dict
from sync.wire import batch as batchmod
from sync.wire import credential as credwire
from sync.wire import identity, protocol, pullauth


@pytest.fixture(scope="module")
def verdicts(make_card, trust, now):
    return [verifier.verify(make_card(card_id=os.urandom(16), name=f"Võ Thị {i}"), trust, now) for i in range(3)]


@pytest.fixture(params=BACKENDS)
def server(request, tmp_path):
    """The real server on uvicorn, on SQLite and on PostgreSQL (the same tests for both)."""
    with running_server(request.param, tmp_path) as srv:
        yield srv


def local_api() -> Starlette:
    """Stands in for the daemon's local API (scanner/appliance/api.py): the pull endpoints go in front of it."""
    async def health(request):
        return JSONResponse({"ok": True})
    return Starlette(routes=[Route("/api/v1/health", health)])


class DeviceApi:
    """An ASGI app on uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.server = make_server(app, "127.0.0.1", self.port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        wait_for(lambda: self.server.started, "device API start")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def test_pull_everything_exactly_once_then_nothing(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    assert credential.load(dev.state).pull_key is not None  # the server's pull key, vouched for by the root
    record(dev, verdicts, 130)
    # as the daemon mounts it: the log by its path (the pull side opens its own connection)
    app = pullmod.with_pull(local_api(), dev.state, str(dev.log.path))
    with DeviceApi(app) as api:
        assert requests.get(api.url + "/api/v1/health", timeout=30).json() == {"ok": True}  # passed through
        res = pull_device(server.storage, api.url, key=server.pull_key, limit=50)
        assert res.error is None and res.complete and res.device_id == dev.device_id
        assert (res.batches, res.entries, res.stored, res.duplicates, res.marked) == (3, 130, 130, 0, 130)
        assert_exactly_once(server.storage, dev)
        assert server.storage.stats().by_source["pull"] == 3
        again = pull_device(server.storage, api.url, key=server.pull_key)
        assert again.complete and again.batches == 0
    app.pull_app.state.pull.close()
    st = status_dict(dev.state, dev.log)
    assert st["pending"] == 0 and st["pull"]["acked_seq"] == 130 and st["pull"]["puller"].startswith("key:")
    dev.log.close()
    out = CliRunner().invoke(main, ["sync", "status", "--state-dir", str(dev.state), "--lang", "en"])
    assert out.exit_code == 0 and "Last pulled by the server" in out.output
    assert "seq acknowledged by pull 130" in out.output


def test_a_device_not_provisioned_yet_says_so(tmp_path):
    token = "pull-token-" + os.urandom(12).hex()
    with DeviceApi(pullmod.create_pull_app(tmp_path / "state", tmp_path / "state" / "entries.db", token=token)) as api:
        r = requests.get(api.url + pullauth.INFO, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 503 and r.json()["error"] == pullauth.E_NOT_PROVISIONED


def _signed(key, method: str, url: str, path_qs: str, *, device_id="-", nonce="-", body=b""):
    headers = {"Authorization": pullauth.auth_header(key, device_id, nonce, method, path_qs, body)}
    if body:
        headers["Content-Type"] = "application/json"
    return requests.request(method, url + path_qs, data=body or None, headers=headers, timeout=30)


def test_pull_is_never_anonymous(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 12)
    app = pullmod.with_pull(local_api(), dev.state, dev.log)
    with DeviceApi(app) as api:
        u = api.url
        r = requests.get(u + pullauth.INFO, timeout=30)
        assert r.status_code == 401 and r.json()["error"] == pullauth.E_UNAUTHORIZED
        r = requests.get(u + pullauth.BATCH, headers={"Authorization": "Bearer guess-guess-guess"}, timeout=30)
        assert r.status_code == 401  # no token configured: no token is right
        stranger = ed25519.Ed25519PrivateKey.generate()
        assert _signed(stranger, "GET", u, pullauth.INFO).status_code == 401
        info = _signed(server.pull_key, "GET", u, pullauth.INFO)
        assert info.status_code == 200
        nonce = info.json()["nonce"]
        assert info.json()["pending"] == 12 and info.json()["device_id"] == dev.device_id
        r = _signed(server.pull_key, "GET", u, pullauth.BATCH + "?after=0")  # only /info goes without a nonce
        assert r.status_code == 401 and r.json()["error"] == pullauth.E_NONCE
        r = _signed(server.pull_key, "GET", u, pullauth.BATCH + "?after=0", device_id=dev.device_id, nonce="0" * 32)
        assert r.json()["error"] == pullauth.E_NONCE
        # signed for one query, sent with another: refused
        h = pullauth.auth_header(server.pull_key, dev.device_id, nonce, "GET", pullauth.BATCH + "?after=0", b"")
        r = requests.get(u + pullauth.BATCH + "?after=5", headers={"Authorization": h}, timeout=30)
        assert r.status_code == 401
        # signed for another device: refused
        r = _signed(server.pull_key, "GET", u, pullauth.BATCH + "?after=0", device_id="d-" + "0" * 24, nonce=nonce)
        assert r.status_code == 401
        ok = _signed(server.pull_key, "GET", u, pullauth.BATCH + "?after=0&limit=5", device_id=dev.device_id,
                     nonce=nonce)
        assert ok.status_code == 200 and ok.headers["content-type"] == protocol.BATCH_TYPE
        head = batchmod.read_header(ok.content)
        assert (head.first_seq, head.last_seq) == (1, 5)
        # an acknowledgement that is not of this device's entries marks nothing
        body = json.dumps({"batches": [["0" * 32, 1, 5]], "held_seq": 5}).encode()
        r = _signed(server.pull_key, "POST", u, pullauth.ACK, device_id=dev.device_id, nonce=nonce, body=body)
        assert r.status_code == 400 and r.json()["error"] == pullauth.E_ACK_MISMATCH
        assert len(dev.log.pending(0, 100)) == 12
    # a device with neither a server key nor a token refuses everything: its credential names no pull key,
    # and a key file planted where older versions kept it is never read
    no_pull = credwire.issue(server.root, urls=[server.url], sealing_key=server.sealing_key.public_key(),
                             serial=2, issued_at=int(time.time()))
    credential.install(dev.state, no_pull, [server.root.public_key()], server.url)
    stranger = ed25519.Ed25519PrivateKey.generate()
    (dev.state / "server-pull.pub").write_bytes(keys.public_pem(stranger.public_key()))
    with DeviceApi(pullmod.create_pull_app(dev.state, dev.log)) as api:
        for key in (server.pull_key, stranger):
            r = _signed(key, "GET", api.url, pullauth.INFO)
            assert r.status_code == 403 and r.json()["error"] == pullauth.E_DISABLED
    # with a token (and no key): the token works, over http only to loopback
    token = "pull-token-" + os.urandom(12).hex()
    with DeviceApi(pullmod.create_pull_app(dev.state, dev.log, token=token)) as api:
        assert requests.get(api.url + pullauth.INFO, headers={"Authorization": "Bearer nope-nope"},
                            timeout=30).status_code == 401
        res = pull_device(server.storage, api.url, token=token)
        assert res.complete and res.stored == 12
        bad = pull_device(server.storage, api.url, key=server.pull_key)
        assert bad.error_code == pullauth.E_UNAUTHORIZED and not bad.complete
    with pytest.raises(PullFailed, match="never sent over plain http"):
        check_device_url("http://10.8.0.12:8080", token=True)
    assert check_device_url("http://10.8.0.12:8080/", token=False) == "http://10.8.0.12:8080"
    assert_exactly_once(server.storage, dev)
    dev.log.close()


def test_nonce_lost_with_a_device_restart_is_renewed(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 5)
    app = pullmod.create_pull_app(dev.state, dev.log)
    with DeviceApi(app) as api:
        client = PullClient(api.url, key=server.pull_key)
        client.info()
        app.state.pull._nonces.clear()  # what a restart of the daemon does
        data = client.batch(0, 10)
        assert batchmod.read_header(data).count == 5
        client.close()
    dev.log.close()


def test_bad_entry_is_quarantined_and_a_lost_ack_is_learned_later(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 10)
    record(dev, verdicts, 1, source_id="x" * 300)  # the server bounds source_id at 256 characters
    record(dev, verdicts, 10)
    faults = Faults(pullmod.with_pull(local_api(), dev.state, dev.log))
    faults.fail(pullauth.ACK, 500)  # the first acknowledgement is lost (the server has committed)
    with DeviceApi(faults) as api:
        first = pull_device(server.storage, api.url, key=server.pull_key, limit=4)
        assert first.error_code == "injected" and not first.complete
        assert first.stored == 4 and len(dev.log.pending(0, 100)) == 21  # stored, but the device never heard
        res = pull_device(server.storage, api.url, key=server.pull_key, limit=4)
        assert res.error is None and res.quarantined == 1 and res.pending == 1 and not res.complete
        assert res.marked >= 20  # the 4 held ones learned from the server's batch list, the rest acknowledged
    st = StateFile(dev.state).load()
    assert "batch_quarantined" in st.alarms and [(q["first_seq"], q["last_seq"]) for q in st.quarantined] == [(11, 11)]
    assert os.path.exists(st.quarantined[0]["file"])
    assert server.storage.gaps(dev.device_id) == [(11, 11)]
    assert server.storage.stats().entries == 20 and server.storage.stats().duplicates_dropped == 0
    assert [e.seq for e in dev.log.pending(0, 100)] == [11]
    dev.log.close()


def test_push_pull_and_usb_import_mixed_store_every_entry_once(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    key = identity.load(dev.state)
    es = record(dev, verdicts, 60)
    usb = tmp_path / "usb"
    export_pending(dev.state, dev.log, usb, batch_size=25)  # 1..60 on a stick
    # a push whose answer the device never got: 20..45
    r = requests.post(server.url + protocol.BATCHES, timeout=30,
                      data=batchmod.build(es[19:45], key, device_id=dev.device_id, created_ms=1).data)
    assert r.status_code == 200 and r.json()["stored"] == 26
    imp = import_dir(server.storage, usb)  # the stick arrives: 1..19 and 46..60 are new
    assert (imp.stored, imp.duplicates) == (34, 26)
    record(dev, verdicts, 40)  # 61..100
    app = pullmod.with_pull(local_api(), dev.state, dev.log)
    with DeviceApi(app) as api:
        res = pull_device(server.storage, api.url, key=server.pull_key, limit=30)
        assert res.complete and res.stored == 40 and res.duplicates == 0  # 1..60 learned, not sent again
        record(dev, verdicts, 20)  # 101..120: pushed by the device itself
        cfg_key = identity.load(dev.state)
        client = SyncClient(server.url, cfg_key, device_id=dev.device_id)
        agent = SyncAgent(dev.state, dev.log, client=client, backoff=Backoff(base_s=0.01, cap_s=0.05, jitter=True))
        pushed = agent.sync_once()
        assert pushed.complete and pushed.stored == 20
        agent.close()
        assert pull_device(server.storage, api.url, key=server.pull_key).batches == 0
    again = import_dir(server.storage, usb)
    assert again.stored == 0
    assert_exactly_once(server.storage, dev)
    s = server.storage.stats()
    assert s.entries == 120 and all(s.by_source[k] > 0 for k in ("push", "pull", "import"))
    dev.log.close()


def test_server_pull_cli(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 7)
    dead = f"http://127.0.0.1:{free_port()}"
    with DeviceApi(pullmod.with_pull(local_api(), dev.state, dev.log)) as api:
        listing = tmp_path / "devices.txt"
        listing.write_text(f"# the fleet\n{api.url}  # gate 1\n\n")
        r = CliRunner()
        out = r.invoke(main, ["server", "pull", "--db", server.db_url, "--keys", str(server.keys_dir),
                              "--devices", str(listing), "--json"])
        assert out.exit_code == 0, out.output
        row = json.loads(out.stdout.splitlines()[0])
        assert row["complete"] and row["stored"] == 7 and row["device_id"] == dev.device_id
        out = r.invoke(main, ["server", "pull", "--db", server.db_url, "--keys", str(server.keys_dir),
                              "--device", api.url, "--device", dead, "--lang", "en"])
        assert out.exit_code == 1 and "error network" in out.stdout
        out = r.invoke(main, ["server", "pull", "--db", server.db_url, "--keys", str(server.keys_dir),
                              "--device", api.url, "--lang", "vi"])
        assert out.exit_code == 0 and not foreign(out.stdout, [api.url, dev.device_id]), out.stdout
        out = r.invoke(main, ["server", "pull", "--db", server.db_url, "--keys", str(tmp_path / "nokeys"),
                              "--device", api.url, "--lang", "en"])
        assert out.exit_code == 2 and "no pull key" in out.output
    assert_exactly_once(server.storage, dev)
    dev.log.close()
