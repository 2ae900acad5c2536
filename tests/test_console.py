"""The central console over real HTTPS on 127.0.0.1, with the real opener on a Unix socket and the
server's SQLite database: logging in (argon2 password, then a TOTP code good once), lock-out, CSRF,
a new session token at each step, the idle timeout; every route tried as every role and anonymous;
ward officers kept to their checkpoints and tracers to their own cases; the security headers and no
CORS; a trace from the card's text to a contact list, exported as CSV and XLSX with no formula in
any cell; the audit trail of all of it, its chain verified and a tampered record found."""
from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import re
import sqlite3
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.console import (
    HOSTILE_NAMES,
    INFECTED_NAME,
    OUTSIDER_NAME,
    PASSWORD,
    WARD_A,
    WARD_B,
    Client,
    ConsoleThread,
    OpenerThread,
    StaffAccount,
    make_accounts,
    make_world,
    totp_codes,
)
from support.pki import OPERATOR_ROOT

from scanner.base.timeutil import now_ms
from scanner.cards import keys as keymod
from scanner.cards.bundle import BundleKey, make_bundle
from sync.server.console import audit
from sync.server.console.app import ANY, PENDING, PUBLIC, routes_of
from sync.server.console.sessions import Policy, token_hash
from sync.server.console.store import ConsoleStore
from sync.server.storage import open_storage

CASE = {"case_number": "ĐN-2026/0153", "reason": "ca bệnh xác nhận ngày 5/12, cần gọi người tiếp xúc",
        "days": "14", "window_min": "60", "hours": "4"}


class Collected(logging.Handler):
    """Every log record of every logger while the module's console runs (for the no-holder check)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.exc_text or ''}")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    logs = Collected()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(logs)
    root.setLevel(logging.DEBUG)
    try:
        yield from _site(tmp, logs)
    finally:
        root.removeHandler(logs)
        root.setLevel(old_level)


def _site(tmp, logs):
    world = make_world(tmp)
    staff = make_accounts(world.db)
    opener = OpenerThread(world.db, world.keys_dir, tmp / "opener.sock")
    console = ConsoleThread(world.db, tmp, opener_socket=tmp / "opener.sock")
    clients = {}
    for role, account in staff.items():
        clients[role] = Client(console)
        clients[role].login(account)
    yield {"world": world, "staff": staff, "console": console, "clients": clients, "opener": opener, "tmp": tmp,
           "logs": logs}
    console.stop()
    opener.stop()


def store_of(site) -> ConsoleStore:
    return site["console"].app.state.store


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# ---------------------------------------------------------------- every route, every role

# What each role may do, written out here independently of the app's own table: path -> roles.
ALLOWED = {
    "/fleet": {"admin", "officer"}, "/fleet/device/{device_id}": {"admin", "officer"},
    "/fleet/revoke": {"admin"}, "/enroll": {"admin"}, "/trust": {"admin"}, "/trust/publish": {"admin"},
    "/accounts": {"admin"}, "/accounts/add": {"admin"}, "/accounts/{username}/role": {"admin"},
    "/accounts/{username}/disable": {"admin"}, "/accounts/{username}/reset": {"admin"},
    "/counts": {"admin", "officer"}, "/trace": {"tracer"}, "/trace/find": {"tracer"},
    "/trace/card/{card_id}": {"tracer"}, "/trace/card/{card_id}/open": {"tracer"},
    "/cases/{case_id}": {"tracer"}, "/cases/{case_id}/export.csv": {"tracer"},
    "/cases/{case_id}/export.xlsx": {"tracer"}, "/cases/{case_id}/print": {"tracer"}, "/audit": {"auditor"},
    "/approvals": {"admin", "tracer"}, "/approvals/{case_id}": {"admin", "tracer"},
}
OPEN_TO_ALL = {"/login", "/login/code", "/logout", "/", "/static/console.css"}
ROLES = ("admin", "tracer", "officer", "auditor")


def test_the_route_table_is_the_one_tested(site):
    paths = {path for path, _, _ in routes_of(site["console"].app)}
    assert paths == set(ALLOWED) | OPEN_TO_ALL, "a route was added or removed: say here who may use it"
    for path, _, rule in routes_of(site["console"].app):
        if path in OPEN_TO_ALL:
            assert rule in (PUBLIC, PENDING, ANY), path


def _concrete(path: str, site) -> str:
    w = site["world"]
    return (path.replace("{device_id}", w.devices["a1"]).replace("{username}", "khong-ton-tai")
            .replace("{card_id}", w.infected_id).replace("{case_id}", "0" * 32))


@pytest.mark.parametrize("role", [*ROLES, None], ids=[*ROLES, "anonymous"])
def test_every_route_as_every_role(site, role):
    """A role outside a route's list gets 403 (a page saying so, nothing of the route's data); an
    anonymous visitor is sent to log in (GET) or refused (POST); a role in the list gets past the
    check (a page, a redirect, or the route's own 400/404 for the placeholder values used here)."""
    client = site["clients"][role] if role else Client(site["console"])
    for path, methods, _ in routes_of(site["console"].app):
        if path in OPEN_TO_ALL:
            continue
        url = _concrete(path, site)
        for method in methods:
            r = client.get(url) if method == "GET" else client.post(url, {"confirm": "no", "device_id": "x"})
            if role is None:
                assert (r.status_code, r.headers.get("location")) == ((303, "/login") if method == "GET" else
                                                                      (401, None)), (method, path)
            elif role in ALLOWED[path]:
                assert r.status_code in (200, 303, 400, 404), (role, method, path, r.status_code)
            else:
                assert r.status_code == 403, (role, method, path, r.status_code)
                assert "Vai trò của bạn không được phép" in r.text


def test_officers_see_their_own_checkpoints_only(site):
    officer, admin = site["clients"]["officer"], site["clients"]["admin"]
    w = site["world"]
    fleet = officer.get("/fleet").text
    assert w.devices["a1"] in fleet and w.devices["b1"] not in fleet and w.devices["b2"] not in fleet
    assert officer.get(f"/fleet/device/{w.devices['a1']}").status_code == 200
    assert officer.get(f"/fleet/device/{w.devices['b1']}").status_code == 404  # not "forbidden": not there for them
    day_a, day_b = (dt.datetime.fromtimestamp(at / 1000, ZoneInfo("Asia/Ho_Chi_Minh")).date().isoformat()
                    for at in (w.at_ms, w.at_ms - 22 * 3_600_000))
    counts = officer.get(f"/counts?day={day_a}").text
    assert f'data-checkpoint="{WARD_A}"' in counts and WARD_B not in counts
    assert WARD_B not in officer.get(f"/counts?day={day_b}").text
    assert f'data-checkpoint="{WARD_A}"' in admin.get(f"/counts?day={day_a}").text
    assert f'data-checkpoint="{WARD_B}"' in admin.get(f"/counts?day={day_b}").text
    for page in (fleet, counts):
        assert INFECTED_NAME not in page and "Nguyễn Thị Lan" not in page


def test_fleet_shows_every_device_and_the_silent_one_stands_out(site):
    w = site["world"]
    html = site["clients"]["admin"].get("/fleet").text
    rows = {device: cls for cls, device in re.findall(r'<tr class="(\w*)" data-device="([^"]+)"', html)}
    assert rows == {w.devices["a1"]: "", w.devices["b1"]: "", w.devices["b2"]: "stale"}
    assert "MẤT LIÊN LẠC" in html and "trust_update_failed" in html and "0.2.0" in html


# ---------------------------------------------------------------- logging in


def test_login_needs_password_then_a_code_good_once_and_rotates_the_session(site):
    staff = site["staff"]["auditor"]
    c = Client(site["console"])
    login = c.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', login.text).group(1)
    c.http.cookies.set("__Host-ck-console", "planted-by-an-attacker", domain="127.0.0.1", path="/")
    r = c.post("/login", {"username": staff.username, "password": staff.password, "login_token": token}, csrf=False)
    assert r.status_code == 303
    pending = c.http.cookies.get("__Host-ck-console")
    assert pending and pending != "planted-by-an-attacker"  # a new token, never the one brought
    set_cookie = r.headers["set-cookie"]
    assert all(flag in set_cookie.lower() for flag in ("httponly", "secure", "samesite=strict", "path=/"))
    assert c.get("/audit").headers.get("location") == "/login"  # the password alone opens nothing
    c.csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login/code").text).group(1)
    r = c.post("/login/code", {"code": "000000" if totp_codes(staff.totp_secret)[0] != "000000" else "111111"})
    assert r.status_code == 401
    for code in totp_codes(staff.totp_secret):
        r = c.post("/login/code", {"code": code})
        if r.status_code == 303:
            break
    assert r.status_code == 303
    full = c.http.cookies.get("__Host-ck-console")
    assert full != pending
    assert c.get("/audit").status_code == 200
    # the same code again, in another login: refused (a code is good once)
    d = Client(site["console"])
    token = re.search(r'name="login_token" value="([^"]+)"', d.get("/login").text).group(1)
    d.post("/login", {"username": staff.username, "password": staff.password, "login_token": token}, csrf=False)
    d.csrf = re.search(r'name="csrf" value="([^"]+)"', d.get("/login/code").text).group(1)
    assert d.post("/login/code", {"code": code}).status_code == 401


def test_five_failures_lock_the_account_and_it_is_audited(site):
    admin = site["clients"]["admin"]
    r = admin.post("/accounts/add", {"username": "tam-thoi", "role": "auditor"})
    assert r.status_code == 200
    password = re.search(r'id="new-password">([^<]+)<', r.text).group(1)
    c = Client(site["console"])
    for i in range(5):
        token = re.search(r'name="login_token" value="([^"]+)"', c.get("/login").text).group(1)
        r = c.post("/login", {"username": "tam-thoi", "password": f"wrong-password-{i}", "login_token": token},
                   csrf=False)
        assert r.status_code == (423 if i == 4 else 401)
    token = re.search(r'name="login_token" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", {"username": "tam-thoi", "password": password, "login_token": token}, csrf=False)
    assert r.status_code == 423 and "bị khóa" in r.text  # the right password does not open a locked account
    actions = [(rec.actor, rec.action) for rec in store_of(site).audit_tail(10)]
    assert ("tam-thoi", audit.LOGIN_LOCKED) in actions and ("tam-thoi", audit.LOGIN_FAILED) in actions
    unknown = Client(site["console"])
    token = re.search(r'name="login_token" value="([^"]+)"', unknown.get("/login").text).group(1)
    r = unknown.post("/login", {"username": "khong-co", "password": PASSWORD, "login_token": token}, csrf=False)
    # the same words as a wrong password
    assert r.status_code == 401 and "Sai tên tài khoản, mật khẩu hoặc mã" in r.text


def test_login_attempts_from_one_address_are_limited(site, tmp_path):
    console = ConsoleThread(site["world"].db, tmp_path, opener_socket=None, login_limit=3)
    try:
        c = Client(console)
        codes = []
        for _ in range(4):
            token = re.search(r'name="login_token" value="([^"]+)"', c.get("/login").text).group(1)
            codes.append(c.post("/login", {"username": "khong-co", "password": "x" * 12, "login_token": token},
                                csrf=False).status_code)
        assert codes == [401, 401, 401, 429]
    finally:
        console.stop()


def test_forms_without_the_sessions_csrf_token_or_from_elsewhere_are_refused(site):
    admin = site["clients"]["admin"]
    before = store_of(site).account("truy-vet")
    r = admin.post("/accounts/truy-vet/disable", {"disabled": "1", "csrf": "not-the-token"})
    assert r.status_code == 403
    r = admin.post("/accounts/truy-vet/disable", {"disabled": "1"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    r = admin.post("/accounts/truy-vet/disable", {"disabled": "1"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert store_of(site).account("truy-vet") == before
    c = Client(site["console"])  # the login form needs its own token (login CSRF)
    r = c.post("/login", {"username": "quan-tri", "password": PASSWORD, "login_token": "guess"}, csrf=False)
    assert r.status_code == 403


def test_sessions_end_when_idle(site, tmp_path):
    console = ConsoleThread(site["world"].db, tmp_path, opener_socket=None)
    try:
        c = Client(console)
        staff = site["staff"]["officer"]
        c.login(staff)
        assert c.get("/counts").status_code == 200
        mine = token_hash(c.http.cookies.get("__Host-ck-console"))
        with sqlite3.connect(str(site["world"].db)) as db:  # as if this session had been left for a while
            db.execute("UPDATE console_sessions SET last_ms = ? WHERE token_hash = ?",
                       (now_ms() - Policy().idle_ms - 1000, mine))
        assert c.get("/counts").headers.get("location") == "/login"
    finally:
        console.stop()


def test_security_headers_and_no_cors(site):
    c = site["clients"]["tracer"]
    for path in ("/login", "/trace", "/static/console.css", "/no-such-page"):
        r = c.get(path, headers={"Origin": "https://evil.example"})
        h = r.headers
        assert "default-src 'none'" in h["content-security-policy"] and "script-src" not in h["content-security-policy"]
        assert "frame-ancestors 'none'" in h["content-security-policy"]
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
        assert h["referrer-policy"] == "same-origin" and "max-age" in h["strict-transport-security"]
        assert not any(k.lower().startswith("access-control-") for k in h), path
    r = c.http.options(c.base + "/trace", headers={"Origin": "https://evil.example",
                                                   "Access-Control-Request-Method": "POST"}, verify=c.verify)
    assert r.status_code in (404, 405) and not any(k.lower().startswith("access-control-") for k in r.headers)


# ---------------------------------------------------------------- tracing, cases, exports


def _open_case(client, site, case=CASE) -> str:
    r = client.post(f"/trace/card/{site['world'].infected_id}/open", case)
    assert r.status_code == 303, r.text[:500]
    return r.headers["location"]


def test_trace_from_the_cards_text_to_the_contact_list_and_exports(site):
    tracer = site["clients"]["tracer"]
    w = site["world"]
    r = tracer.post("/trace/find", {"text": w.infected_card})
    assert r.status_code == 303
    page = tracer.get(r.headers["location"]).text
    assert "2 lần xuất hiện" in page and "9 lượt tiếp xúc" in page
    assert INFECTED_NAME not in page and "Nguyễn Thị Lan" not in page  # no holder before a case is opened
    bad = tracer.post(f"/trace/card/{w.infected_id}/open", {**CASE, "reason": "vì"})
    assert bad.status_code == 400 and "Cần lý do" in bad.text
    case_url = _open_case(tracer, site)
    page = tracer.get(case_url).text
    names = re.findall(r'<td class="name">([^<]*)</td>', page)
    assert "Nguyễn Thị Lan" in names and "Võ Thị Bình" in names and OUTSIDER_NAME not in page
    assert "&lt;script&gt;" in page and "<script>" not in page
    csv_data = tracer.get(case_url + "/export.csv")
    assert csv_data.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(csv_data.content.decode("utf-8-sig"))))
    names_csv = [row[13] for row in rows[1:]]
    assert len(rows) == 10 and "Nguyễn Thị Lan" in names_csv
    for row in rows:
        for cell in row:
            assert cell[:1] not in ("=", "+", "-", "@") or re.fullmatch(r"-\d+", cell), cell  # offsets are numbers
    for hostile in HOSTILE_NAMES[:4]:
        assert "'" + hostile in names_csv
    xlsx = tracer.get(case_url + "/export.xlsx")
    book = openpyxl.load_workbook(io.BytesIO(xlsx.content))
    sheet = book.active
    cells = [cell for row in sheet.iter_rows() for cell in row]
    assert len(cells) == 10 * 16
    assert all(cell.data_type == "s" for cell in cells if cell.value is not None)  # no formula, no number
    assert not any(str(cell.value).startswith(("=", "+", "@")) for cell in cells if cell.value)
    assert "Nguyễn Thị Lan" in [c.value for c in cells]
    printable = tracer.get(case_url + "/print")
    assert printable.status_code == 200 and "Nguyễn Thị Lan" in printable.text


def test_a_case_is_its_tracers_own_and_time_boxed(site):
    tracer = site["clients"]["tracer"]
    case_url = _open_case(tracer, site)
    admin = site["clients"]["admin"]
    r = admin.post("/accounts/add", {"username": "truy-vet-2", "role": "tracer"})
    other = Client(site["console"])
    secret = re.search(r'id="new-totp">([^<]+)<', r.text).group(1)
    password = re.search(r'id="new-password">([^<]+)<', r.text).group(1)
    other.login(StaffAccount("truy-vet-2", "tracer", password, secret))
    assert other.get(case_url).status_code == 404
    assert other.get(case_url + "/export.csv").status_code == 404
    case_id = case_url.rsplit("/", 1)[1]
    with sqlite3.connect(str(site["world"].db)) as db:
        db.execute("UPDATE console_cases SET expires_ms = ? WHERE case_id = ?", (now_ms() - 1, case_id))
    r = tracer.get(case_url)
    assert r.status_code == 400 and "hết thời hạn" in r.text and INFECTED_NAME not in r.text


def test_every_step_is_in_the_audit_trail_and_its_chain_verifies(site):
    tracer = site["clients"]["tracer"]
    case_url = _open_case(tracer, site, {**CASE, "case_number": "HUE-77"})
    tracer.get(case_url + "/export.xlsx")
    records = list(store_of(site).audit_all())
    mine = [r for r in records if r.case_number == "HUE-77"]
    assert [r.action for r in mine] == [audit.OPEN_REQUESTED, audit.CASE_OPEN, audit.HOLDERS_OPENED, audit.EXPORT]
    opened = mine[3]
    assert opened.actor == "truy-vet" and opened.reason == CASE["reason"] and opened.holders == 11
    assert any(r.action == audit.LOGIN_OK and r.actor == "quan-tri" for r in records)
    assert any(r.action == audit.TRACE and r.target == site["world"].infected_id for r in records)
    for r in records:  # no holder detail in the trail
        assert INFECTED_NAME not in f"{r.detail} {r.target} {r.reason}"
    page = site["clients"]["auditor"].get("/audit").text
    assert "Chuỗi kiểm toán nguyên vẹn" in page and "HUE-77" in page
    anchors = [(seq, bytes.fromhex(digest)) for seq, digest in site["opener"].opener.anchors()]
    assert anchors and audit.verify(records, anchors).ok


def test_a_tampered_audit_record_is_found(tmp_path):
    storage = open_storage(str(tmp_path / "c.db"))
    try:
        store = ConsoleStore(storage)
        for i in range(5):
            store.append(audit.Event("truy-vet", audit.EXPORT, "C-1", "lý do đủ dài", target="csv", holders=i), i)
        assert audit.verify(store.audit_all()).ok
        with pytest.raises(sqlite3.IntegrityError, match="append-only"), storage._tx() as tx:
            tx.execute("UPDATE console_audit SET holders = 0 WHERE seq = 3")
        with storage._tx() as tx:  # an attacker with the file drops the guard, then edits
            tx.execute("DROP TRIGGER console_audit_no_update")
            tx.execute("UPDATE console_audit SET holders = 0 WHERE seq = 3")
        check = audit.verify(store.audit_all())
        assert (check.ok, check.bad_seq, check.problem, check.records) == (False, 3, "altered", 2)
        anchors = [(r.seq, r.hash) for r in store.audit_all()]
        with storage._tx() as tx:  # ...or rewrites the chain from there on: the opener's anchors disagree
            tx.execute("DROP TRIGGER console_audit_no_delete")
            tx.execute("DELETE FROM console_audit WHERE seq >= 3")
        store.append(audit.Event("truy-vet", audit.EXPORT, "C-1", "lý do đủ dài", target="csv", holders=0), 2)
        store.append(audit.Event("truy-vet", audit.EXPORT, "C-1", "lý do đủ dài", target="csv", holders=0), 3)
        assert audit.verify(store.audit_all()).ok  # consistent in itself
        check = audit.verify(store.audit_all(), anchors)
        assert not check.ok and check.problem in ("anchor_mismatch", "anchor_missing")
    finally:
        storage.close()


# ---------------------------------------------------------------- the administrator's work


def test_the_administrator_revokes_a_device_prints_enrollment_qrs_and_publishes_a_bundle(tmp_path):
    world = make_world(tmp_path)
    staff = make_accounts(world.db)
    console = ConsoleThread(world.db, tmp_path, opener_socket=None)
    try:
        admin = Client(console)
        admin.login(staff["admin"])
        device = world.devices["b2"]
        asked = admin.post("/fleet/revoke", {"device_id": device})
        assert asked.status_code == 200 and 'name="confirm" value="yes"' in asked.text  # asks first
        assert console.app.state.store.storage.device(device).revoked_ms is None
        done = admin.post("/fleet/revoke", {"device_id": device, "confirm": "yes"})
        assert done.status_code == 303
        assert console.app.state.store.storage.device(device).revoked_ms is not None
        assert admin.post("/fleet/revoke", {"device_id": "d-no-such", "confirm": "yes"}).status_code == 404

        printed = admin.post("/enroll", {"checkpoint": WARD_A, "count": "3", "ttl_hours": "24"})
        assert printed.status_code == 200 and printed.text.count('src="data:image/svg+xml') == 3
        assert admin.post("/enroll", {"checkpoint": WARD_A, "count": "500"}).status_code == 400

        now_s = now_ms() // 1000
        pub = world.pki.key.public_key()
        bundle = make_bundle(OPERATOR_ROOT, version=2, issued_at=now_s - 60, expires_at=now_s + 86400 * 30,
                             keys=[BundleKey(keymod.kid_of(pub), "EdDSA", "VN-HUE", pub)],
                             revoked_cards=[bytes.fromhex(world.infected_id)])
        staged = admin.post("/trust/publish", files={"bundle": ("bundle.cbor", bundle)})
        assert staged.status_code == 200 and 'id="revoked-count">1 (+1)' in staged.text
        assert console.app.state.store.storage.latest_bundle().version == 1  # not before the confirmation
        stage = re.search(r'name="stage" value="([^"]+)"', staged.text).group(1)
        assert admin.post("/trust/publish", {"stage": stage}).status_code == 303
        assert console.app.state.store.storage.latest_bundle().version == 2
        assert admin.post("/trust/publish", {"stage": stage}).status_code == 400  # a confirmation is good once
        forged = make_bundle(Ed25519PrivateKey.generate(), version=3, issued_at=now_s, expires_at=now_s + 86400,
                             keys=[BundleKey(keymod.kid_of(pub), "EdDSA", "VN-HUE", pub)])
        refused = admin.post("/trust/publish", files={"bundle": ("bundle.cbor", forged)})
        assert refused.status_code == 400 and console.app.state.store.storage.latest_bundle().version == 2
        actions = [(r.action, r.target) for r in console.app.state.store.audit_all()]
        assert (audit.DEVICE_REVOKE, device) in actions and (audit.ENROLL_CODES, WARD_A) in actions
        assert (audit.BUNDLE_PUBLISH, "2") in actions
    finally:
        console.stop()


def test_no_holder_detail_in_any_log(site):
    """Everything the module's console, opener and library logged, at every level."""
    test_trace_from_the_cards_text_to_the_contact_list_and_exports(site)  # a whole trace, whatever ran before
    lines = site["logs"].lines
    assert any("opened" in line for line in lines)  # the opener's line about an opening is there...
    text = "\n".join(lines)
    for detail in (INFECTED_NAME, "Nguyễn Thị Lan", "Võ Thị Bình", "1980-02-03", "079******0042", "HYPERLINK"):
        assert detail not in text  # ...without whose details
