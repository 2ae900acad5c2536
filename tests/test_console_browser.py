"""The central console in a real headless Chromium (Debian's chromium and chromedriver, driven by
selenium), against the console over TLS on 127.0.0.1 with the real opener on a Unix socket: each
role logs in as a person does (password, then a TOTP code computed by pyotp) and sees only what the
role may see; a tracer finds an infected person from a photo of their card, asks to open a case with
a number and a reason, the administrator approves it, the tracer sees the contact list with names
and downloads it as CSV and XLSX (no formula in any cell); the auditor sees every step in the trail
and its chain verified; the pages switch to English; the main pages fit a 360 px wide phone screen
with no sideways scrolling. Screenshots of the main pages are taken at 1280x800; with
CHECKPOINT_SCREENSHOTS=1 they are written to docs/screenshots/ (the committed ones), else to the
test's temporary directory."""
from __future__ import annotations

import csv
import datetime as dt
import io
import os
from pathlib import Path

import cv2
import openpyxl
import pyotp
import pytest
from support.cameras import card_frame
from support.console import (
    HOSTILE_NAMES,
    INFECTED_NAME,
    OUTSIDER_NAME,
    WARD_B,
    ConsoleThread,
    OpenerThread,
    StaffAccount,
    make_accounts,
    make_world,
    totp_codes,
)
from support.paths import ROOT
from support.waiting import wait_for

from bench import browser
from sync.server.console import audit
from sync.server.console.store import ConsoleStore
from sync.server.opener import Policy as OpenerPolicy
from sync.server.storage import open_storage

pytestmark = pytest.mark.skipif(browser.unavailable() is not None, reason=str(browser.unavailable()))

W, H = 1280, 800
FORBIDDEN_VI = "Vai trò của bạn không được phép"
# what each role's menu holds (written here, not taken from the app)
MENUS = {"admin": {"/fleet", "/counts", "/enroll", "/trust", "/accounts", "/approvals"},
         "tracer": {"/trace", "/approvals"}, "officer": {"/fleet", "/counts"}, "auditor": {"/audit"}}
ALL_PAGES = ("/fleet", "/counts", "/enroll", "/trust", "/accounts", "/trace", "/approvals", "/audit")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    if os.environ.get("CHECKPOINT_SCREENSHOTS"):
        return ROOT / "docs" / "screenshots"
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console-browser")
    world = make_world(tmp)
    staff = make_accounts(world.db)
    opener = OpenerThread(world.db, world.keys_dir, tmp / "opener.sock",
                          OpenerPolicy(approver_roles=frozenset({"tracer", "admin"})))
    console = ConsoleThread(world.db, tmp, opener_socket=tmp / "opener.sock")
    yield {"world": world, "staff": staff, "console": console, "opener": opener, "tmp": tmp}
    console.stop()
    opener.stop()


@pytest.fixture(scope="module")
def chrome(site):
    driver = browser.launch(W, H)
    # the console's certificate is self-signed for 127.0.0.1; the page is still a secure context
    driver.execute_cdp_cmd("Security.setIgnoreCertificateErrors", {"ignore": True})
    downloads = site["tmp"] / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.ck_downloads = downloads
    yield driver
    browser.close(driver)


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By  # deferred like bench/browser's: selenium is a test extra

    return driver.find_element(By.ID, element_id)


def page_text(driver) -> str:
    return driver.execute_script("return document.body.innerText;")


def menu(driver) -> set[str]:
    return set(driver.execute_script(
        "return Array.from(document.querySelectorAll('header nav a')).map(a => a.getAttribute('href'));")) - {"/"}


def devices(driver) -> list[str]:
    return driver.execute_script("return Array.from(document.querySelectorAll('tr[data-device]'))"
                                 ".map(r => r.getAttribute('data-device'));")


def first_code_unused(db: Path, account: StaffAccount) -> None:
    """Wait until the account's code of this 30 s step is unused (it logged in a moment ago, in an
    earlier test), so that the first code typed is taken."""
    storage = open_storage(str(db))
    try:
        used = ConsoleStore(storage).secrets(account.username).totp_step
    finally:
        storage.close()
    totp = pyotp.TOTP(account.totp_secret)
    wait_for(lambda: totp.timecode(dt.datetime.now(dt.UTC)) > used, "a fresh code step", timeout=2 * totp.interval)


def login(driver, base: str, account: StaffAccount, db: Path | None = None) -> None:
    """As a person: the password form, then the code form with the code of the authenticator app
    (with ``db``: once the account's code of this step is unused, for a second login soon after)."""
    if db is not None:
        first_code_unused(db, account)
    driver.delete_all_cookies()
    driver.get(base + "/login")
    by_id(driver, "username").send_keys(account.username)
    by_id(driver, "password").send_keys(account.password)
    by_id(driver, "login-submit").click()
    wait_for(lambda: driver.current_url.endswith("/login/code"),
             lambda: f"the code form ({driver.current_url}: {page_text(driver)[:300]})")
    for code in totp_codes(account.totp_secret):  # this step's code, or the next one's if it was used
        by_id(driver, "code").send_keys(code)
        by_id(driver, "code-submit").click()
        browser.wait_js(driver, f"location.href.replace(/\\/$/, '') === {base!r} || "
                        "(document.readyState === 'complete' && document.getElementById('error') !== null)",
                        what="the code's answer")
        if driver.current_url.rstrip("/") == base:
            break
    # the last submit may be judged on the previous answer's page (its error still showing): wait for the new one
    wait_for(lambda: driver.current_url.rstrip("/") == base, lambda: page_text(driver))


def test_each_role_sees_only_its_own_pages(site, chrome, shots):
    base = site["console"].url
    w = site["world"]
    for role, account in site["staff"].items():
        login(chrome, base, account)
        assert menu(chrome) == MENUS[role], role
        assert account.username in by_id(chrome, "me").text
        for page in ALL_PAGES:
            chrome.get(base + page)
            text = page_text(chrome)
            if page in MENUS[role]:
                assert FORBIDDEN_VI not in text, (role, page)
            else:
                assert FORBIDDEN_VI in text, (role, page)
            assert INFECTED_NAME not in text and "Nguyễn Thị Lan" not in text  # no holder without a case
        if role == "officer":
            chrome.get(base + "/fleet")
            assert devices(chrome) == [w.devices["a1"]]
            chrome.get(base + "/counts")
            assert WARD_B not in page_text(chrome)
            browser.screenshot(chrome, shots / "console-counts.png")
        if role == "admin":
            chrome.get(base + "/fleet")
            stale = chrome.execute_script("return Array.from(document.querySelectorAll('tr.stale'))"
                                          ".map(r => r.getAttribute('data-device'));")
            assert stale == [w.devices["b2"]]  # the silent device stands out
            assert sorted(devices(chrome)) == sorted(w.devices.values())
            browser.screenshot(chrome, shots / "console-fleet.png")
        by_id(chrome, "logout").click()
        wait_for(lambda: chrome.current_url.endswith("/login"), "the login page after logging out")
        chrome.get(base + "/")
        assert chrome.current_url.endswith("/login")
    chrome.get(base + "/login")
    browser.screenshot(chrome, shots / "console-login.png")


def approve_as_admin(site, chrome, case_url: str, shots: Path | None = None) -> None:
    """The administrator approves the tracer's case waiting at ``case_url``; the tracer logs back
    in and is on the case's page."""
    base = site["console"].url
    case_id = case_url.split("/cases/")[1]
    login(chrome, base, site["staff"]["admin"], site["world"].db)
    chrome.get(base + "/approvals")
    if shots is not None:
        browser.screenshot(chrome, shots / "console-approvals.png")
    by_id(chrome, f"approve-{case_id[:8]}").click()
    wait_for(lambda: chrome.current_url.endswith("/approvals") and f'data-case="{case_id}"' not in chrome.page_source,
             lambda: f"the approval ({page_text(chrome)[:300]})")
    login(chrome, base, site["staff"]["tracer"], site["world"].db)
    chrome.get(case_url)


def _downloaded(chrome, name: str) -> bytes:
    path = chrome.ck_downloads / name
    wait_for(lambda: path.exists() and path.stat().st_size > 0 and not any(
        p.suffix == ".crdownload" for p in chrome.ck_downloads.iterdir()), f"the download {name}")
    return path.read_bytes()


def test_a_tracer_goes_from_a_photo_to_the_contact_list_and_exports_it(site, chrome, shots):
    base = site["console"].url
    w = site["world"]
    photo = site["tmp"] / "the-card.png"
    cv2.imwrite(str(photo), card_frame(w.infected_card, "perspective", size=(1024, 768), scale=5))
    login(chrome, base, site["staff"]["tracer"])
    chrome.get(base + "/trace")
    browser.screenshot(chrome, shots / "console-trace.png")
    by_id(chrome, "photo").send_keys(str(photo))
    by_id(chrome, "find").click()
    wait_for(lambda: "/trace/card/" in chrome.current_url, lambda: f"the card's page ({page_text(chrome)[:300]})")
    assert chrome.current_url.split("/trace/card/")[1].split("?")[0] == w.infected_id
    text = page_text(chrome)
    assert "2 lần xuất hiện" in text and "9 lượt tiếp xúc" in text
    assert INFECTED_NAME not in text and "Nguyễn Thị Lan" not in text  # no holder before a case
    browser.screenshot(chrome, shots / "console-trace-card.png")

    by_id(chrome, "case-number").send_keys("ĐN-2026/0153")
    by_id(chrome, "case-reason").send_keys("ca bệnh xác nhận ngày 5/12, cần gọi người tiếp xúc")
    by_id(chrome, "open-case").click()
    wait_for(lambda: "/cases/" in chrome.current_url, lambda: f"the case page ({page_text(chrome)[:300]})")
    case_url = chrome.current_url
    assert "chờ phê duyệt" in by_id(chrome, "case-waiting").text and "Nguyễn Thị Lan" not in page_text(chrome)
    approve_as_admin(site, chrome, case_url, shots)
    names = chrome.execute_script("return Array.from(document.querySelectorAll('#contacts td.name'))"
                                  ".map(td => td.textContent);")
    assert "Nguyễn Thị Lan" in names and "Võ Thị Bình" in names and OUTSIDER_NAME not in names
    assert "<script>alert(1)</script>" in names  # shown as text, not run
    browser.screenshot(chrome, shots / "console-case.png")
    export_name = "contacts-" + chrome.current_url.split("/cases/")[1][:8]

    by_id(chrome, "export-csv").click()
    rows = list(csv.reader(io.StringIO(_downloaded(chrome, export_name + ".csv").decode("utf-8-sig"))))
    flat = [cell for row in rows for cell in row]
    assert len(rows) == 10 and "Nguyễn Thị Lan" in flat
    for hostile in HOSTILE_NAMES[:4]:
        assert "'" + hostile in flat and hostile not in flat
    by_id(chrome, "export-xlsx").click()
    book = openpyxl.load_workbook(io.BytesIO(_downloaded(chrome, export_name + ".xlsx")))
    cells = [cell for row in book.active.iter_rows() for cell in row if cell.value is not None]
    assert all(cell.data_type == "s" for cell in cells)  # strings only: no formula ("f"), no number
    assert not any(str(cell.value).startswith(("=", "+", "@")) for cell in cells)
    assert "Nguyễn Thị Lan" in [c.value for c in cells]

    by_id(chrome, "export-print").click()
    wait_for(lambda: chrome.current_url.endswith("/print"), "the printable page")
    assert "Nguyễn Thị Lan" in page_text(chrome)

    chrome.get(chrome.current_url + "?lang=en")
    assert "Contacts" in page_text(chrome)
    chrome.get(base + "/trace?lang=vi")

    login(chrome, base, site["staff"]["auditor"])
    chrome.get(base + "/audit")
    assert "Chuỗi kiểm toán nguyên vẹn" in by_id(chrome, "chain").text
    actions = chrome.execute_script("return Array.from(document.querySelectorAll('#audit tr[data-action]'))"
                                    ".map(r => [r.getAttribute('data-action'), r.cells[4].textContent]);")
    mine = [a for a, case in actions if case == "ĐN-2026/0153"]
    for step in (audit.OPEN_REQUESTED, audit.CASE_OPEN, audit.OPEN_APPROVED, audit.HOLDERS_OPENED, audit.EXPORT):
        assert step in mine, (step, mine)
    assert mine.count(audit.EXPORT) >= 3  # CSV, XLSX and the printable page
    assert audit.TRACE in [a for a, _ in actions] and audit.LOGIN_OK in [a for a, _ in actions]
    assert INFECTED_NAME not in page_text(chrome)
    browser.screenshot(chrome, shots / "console-audit.png")




PHONE_W, PHONE_H = 360, 740
# What sticks out of a phone's screen: the page's own width, and every element reaching past the
# viewport's edges that is not inside a box scrolling on its own (a wide table may scroll in its box).
OVERFLOW_JS = """
const width = document.documentElement.clientWidth;
const out = [];
for (const el of document.body.querySelectorAll('*')) {
  const box = el.getBoundingClientRect();
  if (box.width === 0 || (box.right <= width + 0.5 && box.left >= -0.5)) continue;
  let p = el.parentElement, boxed = false;
  for (; p && p !== document.body; p = p.parentElement) {
    if (['auto', 'scroll'].includes(getComputedStyle(p).overflowX)) { boxed = true; break; }
  }
  if (!boxed) {
    out.push(`${el.tagName.toLowerCase()}#${el.id}.${el.className} ${Math.round(box.left)}..${Math.round(box.right)}`);
  }
}
return [document.documentElement.scrollWidth, width, out.slice(0, 8)];
"""


def overflow(driver) -> list:
    """[the page's scroll width, the viewport's width, elements sticking out (at most 8)]."""
    return driver.execute_script(OVERFLOW_JS)


def test_the_main_pages_fit_a_phone_screen(site, chrome, shots):
    """At 360x740 (a small phone) no page scrolls sideways: text wraps, forms fit, and wide tables
    scroll inside their own box."""
    base = site["console"].url
    w = site["world"]
    pages = {"admin": ("/", "/fleet", f"/fleet/device/{w.devices['a1']}", "/counts", "/enroll", "/trust",
                       "/accounts", "/approvals"),
             "officer": ("/", "/fleet", "/counts"),
             "auditor": ("/", "/audit"),
             "tracer": ("/", "/trace", f"/trace/card/{w.infected_id}")}
    browser.set_viewport(chrome, PHONE_W, PHONE_H, mobile=True)
    try:
        chrome.delete_all_cookies()
        chrome.get(base + "/login")
        assert overflow(chrome) == [PHONE_W, PHONE_W, []], "/login"
        for role, paths in pages.items():
            login(chrome, base, site["staff"][role], w.db)
            for path in paths:
                chrome.get(base + path)
                assert overflow(chrome) == [PHONE_W, PHONE_W, []], (role, path)
        by_id(chrome, "case-number").send_keys("ĐN-2026/0154")
        by_id(chrome, "case-reason").send_keys("ca bệnh xác nhận ngày 5/12, gọi từ điện thoại")
        by_id(chrome, "open-case").click()
        wait_for(lambda: "/cases/" in chrome.current_url, lambda: f"the case page ({page_text(chrome)[:300]})")
        assert overflow(chrome) == [PHONE_W, PHONE_W, []], "the case waiting for its approval"
        approve_as_admin(site, chrome, chrome.current_url)
        assert "Nguyễn Thị Lan" in page_text(chrome)
        assert overflow(chrome) == [PHONE_W, PHONE_W, []], "the case page"
        browser.screenshot(chrome, shots / "console-case-phone.png")
    finally:
        browser.set_viewport(chrome, W, H)
