"""Two officers open each case: a tracer's request waits for a second, different account of an
approving role, within a time limit, and the opener itself refuses to open a case without an
approval it recorded and anchored. Over real HTTPS on 127.0.0.1 with the real opener on a Unix
socket; then the opener asked directly, as a console taken over would (its own approval, another
role's, a forged approval record, a forged approval row), and with a clock of its own for the
time limits."""
from __future__ import annotations

import os

import pytest
from support.console import (
    INFECTED_NAME,
    PASSWORD,
    Client,
    ConsoleThread,
    OpenerThread,
    StaffAccount,
    make_accounts,
    make_world,
)

from scanner.base.timeutil import DAY_MS, now_ms
from sync.server.console import accounts, audit
from sync.server.console.openerclient import OpenerClient, OpenerUnavailable
from sync.server.console.store import ConsoleStore
from sync.server.keys import load_or_create_sealing_key
from sync.server.opener import ANCHORS_NAME, Opener, OpenerError
from sync.server.opener import Policy as OpenerPolicy
from sync.server.storage import open_storage

CASE = {"case_number": "ĐN-2026/0200", "reason": "ca bệnh xác nhận ngày 6/12, cần gọi người tiếp xúc",
        "days": "14", "window_min": "60", "hours": "4"}
APPROVERS = frozenset({"tracer", "admin"})


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console-approval")
    world = make_world(tmp)
    staff = make_accounts(world.db)
    storage = open_storage(str(world.db))
    try:
        new = accounts.add(ConsoleStore(storage), "truy-vet-2", "tracer", (), actor="cli:test", now_ms=now_ms(),
                           password=PASSWORD)
    finally:
        storage.close()
    staff["tracer2"] = StaffAccount("truy-vet-2", "tracer", new.password, new.totp_secret)
    opener = OpenerThread(world.db, world.keys_dir, tmp / "opener.sock",
                          OpenerPolicy(approver_roles=APPROVERS, approval_s=1800))
    console = ConsoleThread(world.db, tmp, opener_socket=tmp / "opener.sock")
    clients = {}
    for who, account in staff.items():
        clients[who] = Client(console)
        clients[who].login(account)
    yield {"world": world, "staff": staff, "console": console, "clients": clients, "opener": opener, "tmp": tmp}
    console.stop()
    opener.stop()


def request_case(tracer: Client, site, case: dict) -> str:
    r = tracer.post(f"/trace/card/{site['world'].infected_id}/open", case)
    assert r.status_code == 303 and r.headers["location"].startswith("/cases/"), (r.status_code, r.text[:300])
    return r.headers["location"].split("/cases/")[1]


def records_of(site, case_id: str) -> list[audit.Record]:
    store = site["console"].app.state.store
    return [r for r in store.audit_all() if r.target == case_id or f"case_id={case_id}" in r.detail]


def test_a_case_opens_only_after_another_officer_approves_it(site):
    c = site["clients"]
    case_id = request_case(c["tracer"], site, CASE)
    page = c["tracer"].get(f"/cases/{case_id}")
    assert page.status_code == 200 and 'id="case-waiting"' in page.text and INFECTED_NAME not in page.text
    for export in ("export.csv", "export.xlsx", "print"):
        r = c["tracer"].get(f"/cases/{case_id}/{export}")
        assert r.status_code == 400 and INFECTED_NAME not in r.text, export
    # the requester may not approve their own case; an officer or an auditor may not approve at all
    assert c["tracer"].post(f"/approvals/{case_id}").status_code == 403
    assert c["officer"].post(f"/approvals/{case_id}").status_code == 403
    assert c["auditor"].post(f"/approvals/{case_id}").status_code == 403
    listing = c["admin"].get("/approvals").text
    assert f'data-case="{case_id}"' in listing and CASE["case_number"] in listing
    assert f'data-case="{case_id}"' not in c["tracer"].get("/approvals").text  # not one's own to approve

    r = c["admin"].post(f"/approvals/{case_id}")
    assert r.status_code == 303, r.text[:300]
    assert f'data-case="{case_id}"' not in c["admin"].get("/approvals").text
    page = c["tracer"].get(f"/cases/{case_id}")
    assert page.status_code == 200 and INFECTED_NAME in page.text and "Nguyễn Thị Lan" in page.text
    assert c["tracer"].get(f"/cases/{case_id}/export.csv").status_code == 200
    assert c["tracer2"].post(f"/approvals/{case_id}").status_code == 409  # approved once is enough

    mine = records_of(site, case_id)
    assert [r.action for r in mine][:4] == [audit.OPEN_REQUESTED, audit.CASE_OPEN, audit.OPEN_APPROVED,
                                            audit.HOLDERS_OPENED]
    requested, approved = mine[0], mine[2]
    assert requested.actor == "truy-vet" and approved.actor == "quan-tri"
    assert "requested_by=truy-vet" in approved.detail and approved.case_number == CASE["case_number"]
    store = site["console"].app.state.store
    anchors = [(seq, bytes.fromhex(h)) for seq, h in site["opener"].opener.anchors()]
    assert audit.verify(store.audit_all(), anchors).ok
    assert {(requested.seq, requested.hash), (approved.seq, approved.hash)} <= set(anchors)


def test_the_opener_itself_refuses_an_opening_without_a_valid_approval(site):
    """Asked directly, as a console taken over would ask: its own approval, an officer's, an unknown
    account's, an approval record written into the trail by someone else, an approval row in the
    console's table: none opens the case; a second tracer's approval does, for that request only."""
    c = site["clients"]
    client = OpenerClient(str(site["tmp"] / "opener.sock"))
    case_id = request_case(c["tracer"], site, {**CASE, "case_number": "HUE-2026/0201"})
    storage = open_storage(str(site["world"].db))
    try:
        entries = storage.visits(site["world"].infected_id, 0, now_ms() + DAY_MS, 10)
    finally:
        storage.close()

    def open_as(actor: str = "truy-vet", case_number: str = "HUE-2026/0201", reason: str = CASE["reason"]):
        return client.open(entries, actor=actor, case_number=case_number, reason=reason, case_id=case_id)

    for attempt in (open_as,
                    lambda: client.open(entries, actor="truy-vet", case_number="HUE-2026/0201",
                                        reason=CASE["reason"])):
        with pytest.raises(OpenerUnavailable) as err:
            attempt()
        assert err.value.code == "approval_required"
    for actor, code in (("truy-vet", "same_officer"), ("can-bo-a", "approver_role"), ("kiem-toan", "approver_role"),
                        ("khong-ton-tai", "approver_role")):
        with pytest.raises(OpenerUnavailable) as err:
            client.approve(actor=actor, case_id=case_id)
        assert err.value.code == code, actor

    store = site["console"].app.state.store
    forged = store.append(audit.Event("quan-tri", audit.OPEN_APPROVED, "HUE-2026/0201", CASE["reason"],
                                      target=case_id, detail="requested_by=truy-vet"), now_ms())
    assert store.audit_of(case_id, audit.OPEN_APPROVED) == [forged]
    store.approve_case(case_id, "quan-tri", now_ms())  # the console's own table says approved
    with pytest.raises(OpenerUnavailable) as err:
        open_as()
    assert err.value.code == "approval_required"
    page = c["tracer"].get(f"/cases/{case_id}")
    assert page.status_code == 403 and INFECTED_NAME not in page.text

    assert client.approve(actor="truy-vet-2", case_id=case_id) > 0
    assert open_as()[0].name == INFECTED_NAME
    for kw in ({"actor": "truy-vet-2"}, {"case_number": "HUE-2026/9999"}, {"reason": "một lý do khác hẳn lý do cũ"}):
        with pytest.raises(OpenerUnavailable) as err:
            open_as(**kw)
        assert err.value.code == "approval_mismatch", kw
    with pytest.raises(OpenerUnavailable) as err:
        client.approve(actor="quan-tri", case_id=case_id)
    assert err.value.code == "already_approved"
    refused = [r for r in records_of(site, case_id) if r.action == audit.OPEN_REFUSED]
    codes = [r.detail.split()[0] for r in refused]
    # asked with the case's id: before the forgeries, after them, and by the console's page
    assert codes.count("approval_required") == 3 and codes.count("approver_role") == 3
    assert {"same_officer", "approval_mismatch", "already_approved"} <= set(codes)


def test_the_approval_and_the_case_have_time_limits(site, tmp_path):
    """A request approved after the policy's time is refused; an approved case opens for its hours
    from the approval, then no more (the opener's own clock, moved by the test)."""
    storage = open_storage(str(site["world"].db))
    clock = [now_ms()]
    try:
        store = ConsoleStore(storage)
        opener = Opener(load_or_create_sealing_key(site["world"].keys_dir), store, tmp_path / ANCHORS_NAME,
                        OpenerPolicy(approver_roles=frozenset({"admin"}), approval_s=600), clock=lambda: clock[0])
        peer = (os.getpid(), os.getuid(), os.getgid())
        entries = [[e.entry_id, None] for e in storage.visits(site["world"].infected_id, 0, now_ms() + DAY_MS, 2)]

        def ask(op: str, case_id: str, **kw):
            return opener.handle({"op": op, "actor": kw.pop("actor", "truy-vet"), "case_id": case_id,
                                  "case": "T-1", "reason": CASE["reason"], **kw}, peer)

        late, timely = "a" * 32, "b" * 32
        for case_id in (late, timely):
            assert ask("request", case_id, card=site["world"].infected_id, hours=2)["approval"] is True
        with pytest.raises(OpenerError) as err:
            ask("request", late, card=site["world"].infected_id, hours=2)
        assert err.value.code == "case_exists"
        with pytest.raises(OpenerError) as err:
            ask("approve", timely, actor="truy-vet-2")  # a tracer, where only administrators approve
        assert err.value.code == "approver_role"
        clock[0] += 599_000
        assert ask("approve", timely, actor="quan-tri")["approved_ms"] == clock[0]
        clock[0] += 2_000
        with pytest.raises(OpenerError) as err:
            ask("approve", late, actor="quan-tri")
        assert err.value.code == "approval_expired"
        clock[0] += 2 * 3_600_000 - 2_000  # the case's two hours from its approval
        assert ask("open", timely, entries=entries)["ok"]
        clock[0] += 1
        with pytest.raises(OpenerError) as err:
            ask("open", timely, entries=entries)
        assert err.value.code == "case_expired"
    finally:
        storage.close()
