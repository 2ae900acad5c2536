"""The central console for the tests: a server database with a published trust bundle, two wards'
devices (one of them silent) and an infected person's visits among other people's entries, holder
details sealed to the server's key; the opener on a Unix socket in a thread; the console on uvicorn
over TLS on 127.0.0.1; one account per role with its TOTP secret; and logging in as a person does
(the password, then a code computed by pyotp)."""
from __future__ import annotations

import datetime as dt
import ipaddress
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyotp
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.procs import free_port
from scanner.base.timeutil import now_ms
from scanner.cards import keys as keymod
from scanner.cards.bundle import BundleKey, make_bundle
from scanner.cards.verdict import Holder
from support.entries import chain_entries
from support.pki import OPERATOR_ROOT, Pki, make_pki
from support.servers import enroll_direct, ingest_entries
from support.waiting import HTTP_TIMEOUT, WAIT, wait_for
from sync.server import bundles
from sync.server.app import make_server
from sync.server.console import accounts
from sync.server.console.app import ConsoleConfig, create_console
from sync.server.console.openerclient import OpenerClient
from sync.server.console.sessions import Policy
from sync.server.console.store import ConsoleStore
from sync.server.keys import load_or_create_sealing_key
from sync.server.opener import ANCHORS_NAME, Opener, bind
from sync.server.opener import Policy as OpenerPolicy
from sync.server.storage import open_storage

WARD_A, WARD_B = "phuong-thuan-hoa", "phuong-vinh-ninh"
INFECTED_NAME = "Trần Văn Bệnh"
# contacts whose names try to run in a spreadsheet, or to break the page
HOSTILE_NAMES = ("=HYPERLINK(\"http://evil.example/\",\"bấm\")", "+cmd|' /C calc'!A0", "@SUM(1+1)*cmd",
                 "-2+3", "<script>alert(1)</script>")
CONTACT_NAMES = ("Nguyễn Thị Lan", "Lê Văn Hùng", "Phạm Thu Hà", *HOSTILE_NAMES)
OUTSIDER_NAME = "Hoàng Minh Ngoài"  # at ward B, hours away from the infected person: no contact
ROLE_ACCOUNTS = {"admin": "quan-tri", "tracer": "truy-vet", "officer": "can-bo-a", "auditor": "kiem-toan"}
PASSWORD = "mat-khau-rat-dai-2026"


def tls_files(directory: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    certf, keyf = directory / "console.crt", directory / "console.key"
    certf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    keyf.chmod(0o600)
    return str(certf), str(keyf)


def heartbeat(seq: int, **kw) -> dict:
    doc = {"hb_seq": seq, "device_time_ms": now_ms(), "software_version": "0.2.0", "queue_depth": 3,
           "oldest_unsynced_age_s": None, "last_acked_seq": 0, "trust_version": 1, "trust_age_s": 60,
           "clock_offset_ms": 12, "inputs": {"cam0": "up"}, "disk_free_bytes": 10 ** 9, "alarms": [],
           "last_error": None}
    doc.update(kw)
    return doc


@dataclass
class World:
    """What the console shows: the database (SQLite file), its keys, the issuer whose cards the
    bundle trusts, the infected person's card, the devices."""

    db: Path
    keys_dir: Path
    pki: Pki
    infected_card: str  # the card's QR text
    infected_id: str
    devices: dict  # name -> device id
    at_ms: int  # when the infected person was at ward A


def make_world(tmp: Path) -> World:
    """The database of a province: a bundle trusting the issuer, devices at two wards (the second
    device of ward B silent for an hour), and entries: the infected person at ward A with seven
    people around, at ward B with one, and an outsider at ward B hours later."""
    server_dir = tmp / "server"
    server_dir.mkdir(parents=True)
    db = server_dir / "central.db"
    storage = open_storage(str(db))
    try:
        sealing_pub = load_or_create_sealing_key(server_dir).public_key()
        pki = make_pki(tmp / "pki")
        now_s = now_ms() // 1000
        pub = pki.key.public_key()
        bundles.publish(storage, make_bundle(OPERATOR_ROOT, version=1, issued_at=now_s - 3600,
                                             expires_at=now_s + 86400 * 30,
                                             keys=[BundleKey(keymod.kid_of(pub), "EdDSA", "VN-HUE", pub)]),
                        now_ms=now_ms(), root=OPERATOR_ROOT.public_key())
        card_bytes = bytes.fromhex("c0ffee" * 5 + "aa")
        infected_card = pki.card(name=INFECTED_NAME, birth="1980-02-03", card_id=card_bytes)
        devices = {}
        key_a, devices["a1"] = enroll_direct(storage, WARD_A)
        key_b, devices["b1"] = enroll_direct(storage, WARD_B)
        _, devices["b2"] = enroll_direct(storage, WARD_B)
        now = now_ms()
        storage.record_heartbeat(devices["a1"], heartbeat(1), now)
        storage.record_heartbeat(devices["b1"], heartbeat(1, alarms=["trust_update_failed"]), now)
        storage.record_heartbeat(devices["b2"], heartbeat(1), now - 3_600_000)  # silent for an hour
        at = now - 2 * 3_600_000
        infected = card_bytes.hex()
        times = [at - 40 * 60_000 + i * 11 * 60_000 for i in range(len(CONTACT_NAMES))]
        people = sorted([(at, infected, Holder(INFECTED_NAME, "1980-02-03", "079******0042"))] +
                        [(t, f"{i + 1:02x}" * 16, Holder(n, f"1990-01-0{i % 9 + 1}", f"079******{i:04d}"))
                         for i, (t, n) in enumerate(zip(times, CONTACT_NAMES))])
        entries = chain_entries(devices["a1"], WARD_A, [p[0] for p in people], [p[1] for p in people],
                                holders=[p[2] for p in people], seal_to=sealing_pub)
        ingest_entries(storage, key_a, devices["a1"], entries)
        later = at + 26 * 3_600_000 - 2 * 86_400_000  # a day before, at ward B
        b_people = [(later, infected, Holder(INFECTED_NAME, "1980-02-03", "079******0042")),
                    (later + 5 * 60_000, "ab" * 16, Holder("Võ Thị Bình", "1975-07-07", None)),
                    (later + 5 * 3_600_000, "cd" * 16, Holder(OUTSIDER_NAME, "1966-06-06", None))]
        b_entries = chain_entries(devices["b1"], WARD_B, [p[0] for p in b_people], [p[1] for p in b_people],
                                  holders=[p[2] for p in b_people], seal_to=sealing_pub)
        ingest_entries(storage, key_b, devices["b1"], b_entries)
    finally:
        storage.close()
    return World(db, server_dir, pki, infected_card, card_bytes.hex(), devices, at)


@dataclass
class StaffAccount:
    username: str
    role: str
    password: str
    totp_secret: str


def make_accounts(db: Path) -> dict[str, StaffAccount]:
    """One account per role (the officer scoped to ward A), made as `server user add` does."""
    storage = open_storage(str(db))
    try:
        store = ConsoleStore(storage)
        out = {}
        for role, name in ROLE_ACCOUNTS.items():
            scope = (WARD_A,) if role == "officer" else ()
            new = accounts.add(store, name, role, scope, actor="cli:test", now_ms=now_ms(), password=PASSWORD)
            out[role] = StaffAccount(name, role, new.password, new.totp_secret)
    finally:
        storage.close()
    return out


def totp_codes(secret: str) -> list[str]:
    """The codes a person could type now: this 30 s step's, then the next one's (one is good once)."""
    totp = pyotp.TOTP(secret)
    now = time.time()
    return [totp.at(now), totp.at(now + totp.interval)]


class OpenerThread:
    """The opener in this process, on a Unix socket, with its own connection to the database."""

    def __init__(self, db: Path, keys_dir: Path, socket_path: Path, policy: OpenerPolicy | None = None) -> None:
        self.storage = open_storage(str(db))
        self.opener = Opener(load_or_create_sealing_key(keys_dir), ConsoleStore(self.storage),
                             keys_dir / ANCHORS_NAME, policy or OpenerPolicy())
        self.socket_path = socket_path
        self.server = bind(socket_path, self.opener)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT)
        self.storage.close()


class ConsoleThread:
    """The console on uvicorn over TLS (or plain HTTP with ``tls=False``) on 127.0.0.1."""

    def __init__(self, db: Path, tmp: Path, *, opener_socket: Path | None, tls: bool = True,
                 policy: Policy | None = None, server_url: str = "https://sync.example.vn",
                 login_limit: int = 1000, opener: OpenerClient | None = None) -> None:
        """``login_limit``: login attempts per address per 5 minutes (every test client is 127.0.0.1);
        ``opener``: another opener client than the Unix socket's (e.g. over TLS)."""
        self.storage = open_storage(str(db))
        self.cert, self.key = tls_files(tmp / "tls") if tls else (None, None)
        if opener is None and opener_socket is not None:
            opener = OpenerClient(str(opener_socket))
        config = ConsoleConfig(opener=opener,
                               policy=policy or Policy(secure=tls), server_url=server_url, login_limit=login_limit)
        self.app = create_console(self.storage, config)
        self.clients: list[Client] = []  # closed (as browsers going away) before the console stops
        self.port = free_port()
        self.server = make_server(self.app, "127.0.0.1", self.port, tls_cert=self.cert, tls_key=self.key)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, "console start")

    @property
    def url(self) -> str:
        return f"{'https' if self.cert else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for client in self.clients:
            client.http.close()
        self.server.should_exit = True
        self.thread.join(WAIT)
        self.storage.close()


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_LOGIN_TOKEN = re.compile(r'name="login_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    m = _CSRF.search(html)
    assert m, "no CSRF token on the page"
    return m.group(1)


class Client:
    """A person's browser as far as HTTP goes (requests, with the console's certificate trusted)."""

    def __init__(self, console: ConsoleThread) -> None:
        self.base = console.url
        self.http = requests.Session()
        console.clients.append(self)
        self.verify = console.cert if console.cert else True  # per request: REQUESTS_CA_BUNDLE beats Session.verify
        self.csrf = ""

    def get(self, path: str, **kw) -> requests.Response:
        return self.http.get(self.base + path, timeout=HTTP_TIMEOUT, allow_redirects=False, verify=self.verify, **kw)

    def post(self, path: str, data: dict | None = None, *, csrf: bool = True, **kw) -> requests.Response:
        data = dict(data or {})
        if csrf:
            data.setdefault("csrf", self.csrf)
        headers = {"Origin": self.base, **kw.pop("headers", {})}
        return self.http.post(self.base + path, data=data, timeout=HTTP_TIMEOUT, allow_redirects=False,
                              headers=headers, verify=self.verify, **kw)

    def login(self, account: StaffAccount) -> None:
        """The password, then a code; logged in with a CSRF token for the forms (AssertionError else)."""
        page = self.get("/login")
        token = _LOGIN_TOKEN.search(page.text).group(1)
        r = self.post("/login", {"username": account.username, "password": account.password,
                                 "login_token": token}, csrf=False)
        assert r.status_code == 303 and r.headers["location"] == "/login/code", (r.status_code, r.text[:300])
        self.csrf = csrf_of(self.get("/login/code").text)
        for code in totp_codes(account.totp_secret):
            r = self.post("/login/code", {"code": code})
            if r.status_code == 303:
                break
        assert r.status_code == 303 and r.headers["location"] == "/", (r.status_code, r.text[:300])
        self.csrf = csrf_of(self.get("/").text)
