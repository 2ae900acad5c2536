"""The demo: the whole appliance on built-in defaults, without hardware.

Fresh keys and a signed trust bundle; a reference server (sync/server) on 127.0.0.1 with the
bundle and its root-signed credential published and a one-time enrollment QR; the device has the
root pinned in its config, as from its installation media; a simulated camera playing a generated video
(scanner/demo/video.py) that shows the enrollment QR, then cards: valid, expired, not yet valid,
revoked, forged, signed by an unknown issuer, not a card, a phone screen in dark mode, the same
card held for seconds (one scan) and shown again later (anti-passback: duplicate). The device in a
temporary state directory enrolls itself from the QR (zero-touch), verifies, logs, shows LEDs and
buzzer as a live terminal line, syncs to the server, and serves its local API. The summary counts
scans, verdicts by reason, entries logged and entries the server acknowledged. Exit status 0 only
when every scan gave its expected verdict and the server holds every entry exactly once, so it
doubles as an end-to-end smoke test on a new device.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import webbrowser
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.appliance import logsetup
from scanner.appliance.config import load
from scanner.appliance.daemon import Appliance
from scanner.base import i18n
from scanner.base.errors import Reason
from scanner.base.fsutil import atomic_write, open_log
from scanner.base.safetext import escape
from scanner.base.timeutil import now_ms
from scanner.cards import base45, cbor, cose, issuer, keys, render
from scanner.cards.bundle import BundleKey, make_bundle, open_bundle
from scanner.cards.formats import ck1
from scanner.cards.trust import TrustStore
from scanner.cards.verdict import Holder, Shown, shown_as
from scanner.cards.verifier import verify
from scanner.demo import video as demo_video
from scanner.demo.video import Shot
from scanner.store.entrylog import EntryLog
from sync.server import credentials, enrollcodes
from sync.server.app import serve
from sync.server.bundles import publish
from sync.server.keys import load_or_create_pull_key, load_or_create_sealing_key
from sync.server.storage import open_storage
from sync.wire import credential

DAY = 86400
CHECKPOINT = "cho-dong-demo"


@dataclass(frozen=True, slots=True)
class DemoCard:
    label: str
    text: str
    expected: Reason


def forge(text: str, new_name: str) -> str:
    """Change the holder's name in a signed card but keep its signature (a forgery)."""
    msg = cose.parse_sign1(ck1.unwrap(text))
    claims = cbor.loads(msg.payload)
    claims[ck1.CLAIM_CARD]["n"] = new_name
    forged = cbor.dumps(cbor.Tag(18, [msg.protected, {}, cbor.dumps(claims), msg.signature]))
    return ck1.PREFIX + base45.encode(forged)


def make_cards(now: int, hue: keys.PrivateKey, dng: keys.PrivateKey, rogue: keys.PrivateKey,
               revoked_id: bytes) -> list[DemoCard]:
    """The demo's cards: two genuine ones, and one for each way a card can fail."""
    an = issuer.CardSpec("VN-HUE", Holder("Nguyễn Văn An", "1985-03-02", "*********123", "vaccinated",
                                          "2021-10-15"), now - 30 * DAY, now + 335 * DAY)
    ngoc = issuer.CardSpec("VN-DNG", Holder("Trần Thị Bích Ngọc", "1992-11", None, "vaccinated"),
                           now - 10 * DAY, now + 355 * DAY)
    valid = issuer.issue(an, hue)
    return [
        DemoCard("valid-ed25519", valid, Reason.OK),
        DemoCard("valid-es256", issuer.issue(ngoc, dng), Reason.OK),
        DemoCard("expired", issuer.issue(issuer.renew(
            an, holder=Holder("Lê Văn Cường", "1970"), issued_at=now - 400 * DAY,
            expires_at=now - 35 * DAY), hue), Reason.EXPIRED),
        DemoCard("not-yet-valid", issuer.issue(issuer.renew(
            ngoc, holder=Holder("Phạm Minh Đức", "2001-07-30"), not_before=now + 7 * DAY), dng),
            Reason.NOT_YET_VALID),
        DemoCard("revoked", issuer.issue(issuer.renew(
            an, holder=Holder("Hoàng Thị Em", "1999-01-09"), card_id=revoked_id), hue), Reason.REVOKED),
        DemoCard("forged-name", forge(valid, "Kẻ Mạo Danh"), Reason.BAD_SIGNATURE),
        DemoCard("forged-key", issuer.issue(an, rogue, kid=keys.kid_of(hue.public_key())),
                 Reason.BAD_SIGNATURE),
        DemoCard("unknown-issuer", issuer.issue(issuer.renew(an, issuer="XX-FAKE"), rogue), Reason.UNKNOWN_KEY),
        DemoCard("not-a-card", "https://example.vn/thuc-don", Reason.UNSUPPORTED_FORMAT),
    ]


# The case each scan of the video shows ([demo_case] of the catalogue), in the order of timeline()'s scans.
CASES = ("held", "expired", "not_yet_valid", "revoked", "forged_name", "forged_key", "phone_dark", "unknown_issuer",
         "not_a_card", "again")


def timeline(cards: list[DemoCard], enroll_text: str):
    """The video's shots and the verdict expected for each scan, in order (their cases: CASES)."""
    by = {c.label: c for c in cards}
    gap = Shot(None, 0.5)
    shots = [Shot(None, 0.5), Shot(enroll_text, 1.0), Shot(None, 1.5),
             Shot(by["valid-ed25519"].text, 3.0), gap]  # held for 3 seconds: one scan
    expected = [Reason.OK]
    for label in ("expired", "not-yet-valid", "revoked", "forged-name", "forged-key"):
        shots += [Shot(by[label].text, 1.0), gap]
        expected.append(by[label].expected)
    shots += [Shot(by["valid-es256"].text, 1.5, "phone_dark"), gap]
    expected.append(Reason.OK)
    for label in ("unknown-issuer", "not-a-card"):
        shots += [Shot(by[label].text, 1.0), gap]
        expected.append(by[label].expected)
    shots += [Shot(by["valid-ed25519"].text, 1.0), Shot(None, 1.0)]  # the same card again: anti-passback
    expected.append(Reason.DUPLICATE)
    return shots, expected


class ReferenceServer:
    """The reference central server (sync.server.app.serve, as `checkpoint server run` runs it) on
    127.0.0.1 in a thread, and a second handle on its database to publish bundles and make tokens."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.db = str(directory / "central.db")
        self.keys_dir = str(directory)
        with socket.socket() as probe:  # a free port for the server to listen on
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.storage = open_storage(self.db)
        self.server = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="demo-server", daemon=True)

    def _serve(self) -> None:
        def ready(server) -> None:
            self.server = server
            self._ready.set()
        try:
            serve(self.db, "127.0.0.1", self.port, keys_dir=self.keys_dir, ready=ready)
        finally:
            self._ready.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ReferenceServer:
        self.thread.start()
        self._ready.wait(30)
        deadline = time.monotonic() + 30
        while self.server is not None and not self.server.started and self.thread.is_alive() \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.server is None or not self.server.started:
            raise RuntimeError("the reference server did not start")
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread.ident is not None:  # started
            self.thread.join(10)

    def close(self) -> None:
        self.storage.close()


def publish_credential(server: ReferenceServer, root, now: int) -> None:
    """What the operator does once per server: the root signs the server's URL and public keys
    (`checkpoint issuer server-credential`), the server publishes it."""
    sealing_key = load_or_create_sealing_key(server.keys_dir).public_key()
    pull_key = load_or_create_pull_key(server.keys_dir).public_key()
    data = credential.issue(root, urls=[server.url], sealing_key=sealing_key, pull_key=pull_key,
                            server_id="demo-server", issued_at=now)
    credentials.publish(server.storage, data, sealing_public=sealing_key, pull_public=pull_key,
                        root=root.public_key())


def _config_text(base: Path, video: Path, server_url: str, fps: float, speed: float, loop: bool,
                 lang: str, root_pub: Path) -> str:
    return f"""# The demo device's configuration (written by `checkpoint demo`; see docs/configuration.md).
[device]
state_dir = "{base / 'state'}"
name = "{i18n.t('demo_run.place', lang)}"
lang = "{lang}"

[scan]
cooldown_s = {3.0 / speed:.3f}

[sync]
server = "{server_url}"
builder = "inline"
interval_s = 2

[enroll]
trust_root = "{root_pub}"

[api]
listen = "127.0.0.1:0"

[feedback]
pin_factory = "mock"
console = true

[feedback.green]
pin = 17
[feedback.red]
pin = 27
[feedback.amber]
pin = 22
[feedback.buzzer]
pin = 18
[feedback.relay]
pin = 23
pulse_s = 1.0

[[camera]]
name = "demo-camera"
device = "{video}"
backend = "opencv"
kind = "file"
pace = {fps * speed:g}
loop = {str(loop).lower()}
"""


def run_demo(out_dir: Path | None, lang: str, echo: Callable[[str], None] = print, *,
             duration: float | None = None, speed: float = 1.0, stdout=None, open_browser: bool = False) -> int:
    """Run the demo (see the module docstring); 0 when every scan gave its expected verdict and the
    server acknowledged every entry exactly once. On a terminal the kiosk stays up after the
    summary until Ctrl-C; ``open_browser`` shows it in this machine's browser."""
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="checkpoint-demo-") as tmp:
            return _run(Path(tmp), lang, echo, duration, speed, stdout, open_browser)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _run(out_dir, lang, echo, duration, speed, stdout, open_browser)


def on_terminal(stdout) -> bool:
    """A person at a terminal runs the demo (and can press Ctrl-C): stdin and the output are ttys."""
    try:
        return sys.stdin.isatty() and (stdout or sys.stdout).isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def start_browser(url: str) -> bool:
    """Open ``url`` in this machine's graphical browser ($BROWSER, else what Python's webbrowser finds
    in the desktop session: xdg-open, Chromium, Firefox...), in the background. False when there is
    none: no $BROWSER and no graphical session (a text browser would take over the demo's terminal)."""
    if not (os.environ.get("BROWSER") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    # some browsers' open() waits until the browser ends: never hold the demo for it
    threading.Thread(target=browser.open, args=(url,), name="browser", daemon=True).start()
    return True


def _run(base: Path, lang: str, echo, duration: float | None, speed: float, stdout, open_browser: bool) -> int:
    t = lambda key, **kw: i18n.t("demo_run." + key, lang, **kw)  # noqa: E731
    interactive = on_terminal(stdout)
    now = int(time.time())
    key_dir, card_dir = base / "keys", base / "cards"
    key_dir.mkdir(parents=True, exist_ok=True)
    card_dir.mkdir(parents=True, exist_ok=True)
    root = ed25519.Ed25519PrivateKey.generate()  # bundles are signed by an Ed25519 root
    hue, dng, rogue = (keys.generate(a) for a in ("EdDSA", "ES256", "EdDSA"))
    for name, key in (("root", root), ("vn-hue", hue), ("vn-dng", dng), ("rogue", rogue)):
        keys.write_private_key(key_dir / f"{name}.key", key)
        atomic_write(key_dir / f"{name}.pub", keys.public_pem(key.public_key()))
    revoked_id = issuer.new_card_id()
    bundle_bytes = make_bundle(
        root, version=1, issued_at=now, expires_at=now + 30 * DAY,
        keys=[BundleKey(keys.kid_of(hue.public_key()), "EdDSA", "VN-HUE", hue.public_key(), frozenset({"CK1"})),
              BundleKey(keys.kid_of(dng.public_key()), "ES256", "VN-DNG", dng.public_key(), frozenset({"CK1"}))],
        revoked_cards=[revoked_id])
    atomic_write(base / "bundle.json", bundle_bytes)
    cards = make_cards(now, hue, dng, rogue, revoked_id)
    trust = TrustStore.build(bundles=[open_bundle(bundle_bytes, [root.public_key()])])
    for i, card in enumerate(cards, 1):  # the printed cards a person would carry
        png = card_dir / f"{i:02d}-{card.label}.png"
        render.qr_png(card.text, png)
        verdict = verify(card.text, trust, now)
        c = verdict.card
        if verdict.accepted and c is not None and c.expires_at is not None:
            render.card_svg(card.text, name=c.holder.name, birth_date=c.holder.birth_date, issuer=c.issuer,
                            expires_at=c.expires_at, card_id_hex=c.card_id.hex(), path=png.with_suffix(".svg"))

    echo(t("title"))
    # the log lines (English, for engineers) go to a file: the terminal is for the live line and the verdicts
    log_path = base / "daemon.log"
    log_file = open_log(log_path)  # closed after the last log line, below
    recent = logsetup.setup(level=logging.WARNING, stream=log_file)  # as the terminal had: the run's timing stays
    server = ReferenceServer(base / "server")
    try:
        # published before the server starts, as an operator does before devices enroll
        publish(server.storage, bundle_bytes, now_ms=now_ms(), root=root.public_key())
        publish_credential(server, root, now)
        server.start()
        code = enrollcodes.create(server.storage, server.url, CHECKPOINT, now_ms=now_ms(),
                             ttl_hours=1, root_public_key=root.public_key())
        render.qr_png(code.text(), base / "enroll.png")
        shots, expected = timeline(cards, code.text())
        video = base / "camera.avi"
        demo_video.write(video, shots, demo_video.FPS)
        config_path = base / "checkpoint.toml"
        atomic_write(config_path, _config_text(base, video, server.url, demo_video.FPS, speed, duration is not None,
                                               lang, key_dir / "root.pub").encode("utf-8"))
        echo(t("files", dir=escape(str(base))))
        echo(t("server", url=server.url))
        echo(t("log", path=escape(str(log_path))))
        config = load(config_path)
        appliance = Appliance(config, once=duration is None, stdout=stdout, recent_errors=recent,
                              sync_timeout_s=30.0)
        seen: list[str] = []
        printer = _Printer(stdout, lang, seen, CASES, place=config.device.name)
        appliance.hub.listen(printer)
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        interrupted = threading.Event()

        def stop(*_) -> None:
            interrupted.set()
            appliance.request_stop()

        for s in previous:
            signal.signal(s, stop)
        timer = threading.Timer(duration, appliance.request_stop) if duration is not None else None
        def summary() -> int:
            device_id = appliance.core.device_id if appliance.core is not None else None
            held = server.storage.entry_hashes(device_id) if device_id else {}
            local = _local_hashes(config.db_path) if device_id else {}
            return _summary(echo, t, seen, expected, appliance.logged, held, local, looping=duration is not None)

        # once through on a terminal, the kiosk stays up after the summary until Ctrl-C; a timed run ends with it
        linger = interactive and duration is None
        status = None
        try:
            appliance.start()
            kiosk = appliance.api.url if appliance.api is not None else None
            if kiosk is not None:
                echo(t("kiosk", url=kiosk))
                if not linger:
                    echo(t("kiosk_while"))
                if open_browser:
                    echo(t("browser", url=kiosk) if start_browser(kiosk + "/") else t("no_browser", url=kiosk))
            echo("")
            if timer is not None:
                timer.start()
            appliance.supervise()
            if duration is not None:  # --once drains by itself; after a timed run, deliver the rest too
                appliance.drain_sync(interruptible=False)
            if linger and kiosk is not None and not interrupted.is_set():
                status = summary()  # --once: every input is done, nothing more comes in
                echo("")
                echo(t("kiosk_until_ctrl_c", url=kiosk))
                interrupted.wait()  # set by the signal handler: Ctrl-C, or SIGTERM
        finally:
            if timer is not None:
                timer.cancel()
            appliance.shutdown()
            for s, h in previous.items():
                signal.signal(s, h)
        if status is None:
            status = summary()
    finally:
        server.stop()
        server.close()
        logsetup.detach(log_file)
        log_file.close()
    return status


def _local_hashes(db: Path) -> dict[int, bytes]:
    with EntryLog(db, create=False) as entries:
        return {e.seq: e.hash for e in entries.entries()}


def _summary(echo, t, seen: list[str], expected: list[Reason], logged: int, held: dict, local: dict, *,
             looping: bool) -> int:
    counts = Counter(seen)
    echo("")
    echo(t("summary", scans=len(seen), logged=len(local), acked=len(held)))
    echo("  " + " · ".join(f"{reason} {n}" for reason, n in sorted(counts.items())))
    mismatches = 0
    for i, got in enumerate(seen):
        want = expected[i % len(expected)]
        if i < len(expected) or not looping:
            ok = got == want
        else:  # later rounds of a looping video: genuine cards may be duplicates or admitted again
            ok = got == want or (want in (Reason.OK, Reason.DUPLICATE) and got in (Reason.OK, Reason.DUPLICATE))
        if not ok:
            mismatches += 1
            echo(t("mismatch_line", n=i + 1, got=got, want=want))
    # once through, every shot must have been scanned; a timed run may stop in the middle of a round
    missing = len(expected) - len(seen) if not looping else (0 if seen else len(expected))
    if missing > 0:
        mismatches += missing
        echo(t("missing", n=missing))
    exactly_once = held == local and len(local) == logged
    if not exactly_once:
        echo(t("not_synced", logged=len(local), acked=len(held)))
    echo(t("all_ok", n=len(seen)) if not mismatches and exactly_once else t("failed", n=mismatches))
    return 0 if not mismatches and exactly_once else 1


def _reason_words(d: dict, shown: Shown, lang: str, place: str | None = None) -> str:
    """A verdict event's reason as the kiosk words it: an admission repeated says when and where
    (``place``: the device's name, else the checkpoint) the person was let in; kiosk.js does the
    same from the same event."""
    before, inside = d.get("duplicate_of"), d.get("inside")
    if shown is Shown.DUPLICATE and before:
        return i18n.t(f"kiosk.duplicate_{'out' if before['direction'] == 'out' else 'in'}", lang,
                      time=_clock_hm(before["at_ms"]), place=escape(place or before["checkpoint_id"]))
    if shown is Shown.DUPLICATE and inside:
        return i18n.t("kiosk.entered_at", lang, gate=escape(inside["gate"]), time=_clock_hm(inside["at_ms"]))
    return i18n.t("reason." + d["reason"], lang)


def _clock_hm(at_ms: float) -> str:
    return time.strftime("%H:%M", time.localtime(at_ms / 1000))


class _Printer:
    """Verdict and device events as terminal lines (the live feedback line is the daemon's own)."""

    def __init__(self, stream, lang: str, seen: list[str], cases: tuple[str, ...] = (),
                 place: str | None = None) -> None:
        self.stream = stream or sys.stdout
        self.place = place  # the device's name, as the kiosk says where a person was let in
        self.lang = lang
        self.seen = seen
        self.cases = cases  # what each scan in turn shows, said before its verdict
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.lock = threading.Lock()

    def __call__(self, event) -> None:
        d = event.data
        lang = self.lang
        if event.kind == "verdict":
            self.seen.append(d["reason"])
            shown = shown_as(d["decision"], d["reason"])
            who = ""
            if d["holder"]:
                who = f" · {escape(d['holder']['name'])} ({i18n.t('label.born', lang)} {d['holder']['birth_year']})"
            flags = f" [{', '.join(i18n.t(f'degraded.{f}', lang) for f in d['degraded'])}]" if d["degraded"] else ""
            case = ""
            if self.cases:
                case = f"[{i18n.t('demo_case.' + self.cases[(len(self.seen) - 1) % len(self.cases)], lang)}] "
            line = (f"{time.strftime('%H:%M:%S')} {case}{d['source']}:{escape(d['source_id'])} #{d['seq']} "
                    f"{shown.mark} {i18n.t('decision.' + shown, lang)} · {_reason_words(d, shown, lang, self.place)} "
                    f"({d['reason']}){who}{flags}")
        elif event.kind == "enrolled":
            line = i18n.t("demo_run.enrolled", lang, device=d["device_id"], checkpoint=escape(d["checkpoint_id"]))
        elif event.kind == "state":
            state = i18n.t(f"status_page.state_{d['state']}", lang)
            why = [i18n.problem_text(p, lang) for p in d["problems"]]
            why += [i18n.t(f"degraded.{f}", lang) for f in d["degraded"]]
            line = (i18n.t("demo_run.state", lang, state=state, why="; ".join(why)) if why
                    else i18n.t("demo_run.state_plain", lang, state=state))
        else:
            return
        with self.lock:
            self.stream.write(("\r\x1b[K" if self.tty else "") + line + "\n")
            self.stream.flush()
