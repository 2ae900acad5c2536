"""Which batch format a device sends: format 2 to a server whose answers say it reads it (every
answer carries X-Checkpoint-Batch-Formats), format 1 to one that does not say so (an older server,
or one told `--batch-formats 1` during a rolling upgrade), and format 1 again at once when a format 2
batch is refused by a server behind the same address that reads only format 1. Against a real
`checkpoint server run` process; every entry stored once either way."""
from __future__ import annotations

import pytest
import requests
from support.devices import Device, assert_exactly_once
from support.entries import bulk_fill
from support.servers import BACKENDS, ServerProcess, db_url_for

from scanner.base.backoff import Backoff
from scanner.base.timeutil import now_ms
from scanner.store.entrylog import EntryLog
from sync.agent import SyncAgent
from sync.client import SyncClient
from sync.provision import provision
from sync.server.storage import open_storage
from sync.server.tokens import issue_tokens
from sync.state import DeviceConfig
from sync.wire import identity, protocol


def test_the_formats_header_names_what_a_server_reads_and_defaults_to_format_1():
    assert protocol.parse_formats("1,2") == (1, 2)
    assert protocol.parse_formats(" 2 , 1 ") == (1, 2)
    assert protocol.parse_formats(None) == (1,)  # a server from before the header: format 1 only
    assert protocol.parse_formats("") == (1,)
    assert protocol.parse_formats("x,99999999999") == (1,)


def _agent(state, log) -> SyncAgent:
    cfg = DeviceConfig.load(state)
    client = SyncClient(cfg.server_url, identity.load(state), device_id=cfg.device_id, read_timeout=30)
    return SyncAgent(state, log, client=client, min_batch=100, max_batch=100,
                     backoff=Backoff(base_s=0.01, cap_s=0.05, jitter=True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_device_sends_format_2_where_the_server_reads_it_and_format_1_where_not(tmp_path, backend):
    (tmp_path / "s").mkdir()
    db = tmp_path / "s" / "c.db"
    url = db_url_for(backend, db)
    srv = ServerProcess(db, url=url).start()
    st = open_storage(url)
    try:
        answer = requests.get(srv.url + protocol.HEALTH, timeout=30)
        assert answer.headers[protocol.FORMATS_HEADER] == "1,2" and answer.json()["batch_formats"] == [1, 2]
        token = issue_tokens(st, "gate-1", now_ms=now_ms())[0]
        res = provision(srv.url, token, tmp_path / "dev", trust_root=srv.root_pub)
        log = EntryLog(tmp_path / "dev" / "entries.db", device_id=res.device_id, checkpoint_id=res.checkpoint_id,
                       holder_details="none", synchronous="NORMAL")
        dev = Device(tmp_path / "dev", log, res.device_id, res.checkpoint_id)
        bulk_fill(log, 300)
        agent = _agent(dev.state, log)
        assert agent.sync_once().complete
        assert agent.sent_formats == {2: 3}  # the server said it reads format 2
        assert_exactly_once(st, dev)
        agent.close()

        srv.stop()  # the same server, now told to read format 1 only (as one from before format 2)
        srv.args = ("--batch-formats", "1")
        srv.start()
        answer = requests.get(srv.url + protocol.HEALTH, timeout=30)
        assert answer.headers[protocol.FORMATS_HEADER] == "1" and answer.json()["batch_formats"] == [1]
        bulk_fill(log, 200)
        agent = _agent(dev.state, log)
        assert agent.sync_once().complete
        assert agent.sent_formats == {1: 2}
        assert_exactly_once(st, dev)

        # a device that last heard from a server reading format 2, its batch reaching one that does not
        # (two versions behind one load balancer): refused as malformed, sent again in format 1 at once,
        # nothing quarantined
        bulk_fill(log, 200)
        with agent.files.lock():
            state = agent._load_state()
            agent.client.batch_formats = (1, 2)
            batches, entries, _, _, quarantined = agent.upload_pending(state)
        assert (batches, entries, quarantined) == (2, 200, 0) and not state.quarantined
        assert agent.sent_formats == {1: 4}
        assert_exactly_once(st, dev)
        assert st.stats().entries == 700
        agent.close()
    finally:
        st.close()
        srv.stop()
