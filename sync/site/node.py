"""A gate's part in its site: the shared view, kept current over UDP with the site's other gates.

After each entry is committed the lane hands it to `SiteNode.note` (a queue put: the lane never
waits for the network); the "site-send" thread signs it and sends it to every peer whose
messages have opened. Every ``heartbeat_s`` each gate says which of its own seqs it holds today
("have"); a peer that lacks some asks for them ("want") and gets them ("events"): so a lost
datagram, a restart or a partition heals by the same anti-entropy, and the merge (sync/site/view.py)
counts each entry once. A gate that has heard no peer for ``peer_timeout_s`` is isolated.
`SiteNode.site_for` gives admission its input (scanner/store/admission.py `Site`).
docs/site.md.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.fsutil import Dir, atomic_write
from scanner.base.safetext import escape
from scanner.base.timeutil import now_ms as wall_ms
from scanner.store import admission
from scanner.store.entry import Entry
from sync.site import credential as sitecred
from sync.site.credential import SiteCredential, SiteCredentialError
from sync.site.discovery import Discovery, ip_version, local_addresses
from sync.site.message import (
    MAX_EVENTS,
    MAX_HIGHS,
    MAX_WANT,
    Inbox,
    Message,
    SiteEvent,
    SiteMessageError,
    card_key,
    day_of,
    encode,
    sign_event,
)
from sync.site.view import SiteView

log = logging.getLogger(__name__)

RECV_BYTES = 65535
REFUSALS_KEPT = 20
REFUSAL_LOG_EVERY_MS = 60_000
REPLAY_FILE_BYTES = 1024 * 1024
REPLAY_FILE_NAME = "site-replay.json"


def _plain(raw: tuple) -> tuple[str, int]:
    """A socket address as (host, port): an IPv6 link-local one with its interface (``%2``), an
    IPv4 one that came to a socket taking both without its ``::ffff:``."""
    host, port = raw[0], raw[1]
    if len(raw) == 4 and raw[3] and "%" not in host:
        host = f"{host}%{raw[3]}"
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:"):]
    return host, port


def shown(addr: tuple[str, int]) -> str:
    """HOST:PORT, an IPv6 host in brackets."""
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


@dataclass(frozen=True, slots=True)
class Settings:
    """The ``[site]`` section as the node uses it (docs/configuration.md#site)."""

    site_id: str
    secret: bytes
    listen: tuple[str, int]
    peers: tuple[tuple[str, int], ...] = ()
    discovery: bool = True
    heartbeat_s: float = 1.0
    peer_timeout_s: float = 5.0
    max_skew_s: float = 5.0
    when_isolated: str = admission.OPEN
    capacity: int | None = None


@dataclass(frozen=True, slots=True)
class Peer:
    """A gate this one has heard: where, when last, its clock against ours, its log's last seq."""

    device_id: str
    address: str
    last_heard_ms: int
    last_kind: str
    skew_ms: int
    clock: str
    last_seq: int
    alive: bool

    def to_dict(self) -> dict:
        return {"device_id": self.device_id, "address": self.address, "last_heard_ms": self.last_heard_ms,
                "last_kind": self.last_kind, "skew_ms": self.skew_ms, "clock": self.clock,
                "last_seq": self.last_seq, "alive": self.alive}


class SiteNode:
    """This gate's node (see the module docstring). ``now_ms`` is the device's confirmed wall
    clock (the clock guard's); ``clock_confirmed`` says whether it is confirmed now."""

    def __init__(self, settings: Settings, key: ed25519.Ed25519PrivateKey, credential: SiteCredential,
                 roots: Sequence[ed25519.Ed25519PublicKey], *, now_ms: Callable[[], int] = wall_ms,
                 clock_confirmed: Callable[[], bool] = lambda: True, tz: dt.tzinfo | None = None,
                 on_events: Callable[[list[SiteEvent]], None] | None = None,
                 state_dir: Path | None = None) -> None:
        self.settings = settings
        # where the replay cache and the site's revocation list are kept across restarts (None: memory only)
        self.replay_path = state_dir / REPLAY_FILE_NAME if state_dir is not None else None
        self.revocations_path = state_dir / sitecred.REVOCATIONS_FILE_NAME if state_dir is not None else None
        self.on_events = on_events  # told of each other gate's events new to the view (receive thread)
        self.key = key
        self.credential = credential
        self.device_id = credential.device_id
        self.now_ms = now_ms
        self.clock_confirmed = clock_confirmed
        self.tz = tz or dt.datetime.now().astimezone().tzinfo
        self.inbox = Inbox(roots, settings.site_id, self.device_id, max_skew_ms=round(settings.max_skew_s * 1000))
        self.view = SiteView(self._day_start(now_ms()))
        self._lock = threading.Lock()
        self._n = 0
        self._peers: dict[str, Peer] = {}
        self._verified: dict[str, tuple[str, int]] = {}  # device -> address its messages came from
        self._candidates: set[tuple[str, int]] = set(settings.peers)  # configured or discovered: heartbeats only
        self._own_ids: dict[str, int] = {}  # entry_id -> seq of today's own entries (follow-ups name them)
        self._creds: dict[str, bytes] = {credential.device_id: credential.data}  # each gate's credential, to pass
        # its signed events on to gates that cannot hear it
        self._outbox: queue.Queue[SiteEvent | None] = queue.Queue()
        self._stop = threading.Event()
        self._started_mono = time.monotonic()
        self.refused: list[tuple[int, str, str]] = []  # (ms, code, from) of the last refused datagrams
        self._logged: dict[tuple[tuple[str, int], str], int] = {}  # (address, code) -> when last logged
        host = settings.listen[0]
        self.ipv6 = ":" in host
        self.sock = socket.socket(socket.AF_INET6 if self.ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
        if host == "::":  # both: IPv4 peers arrive as ::ffff:a.b.c.d
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind(settings.listen)
        self.address = _plain(self.sock.getsockname())
        self.discovery: Discovery | None = None
        self._threads = [threading.Thread(target=self._receive, name="site-recv", daemon=True),
                         threading.Thread(target=self._send, name="site-send", daemon=True),
                         threading.Thread(target=self._heartbeat, name="site-heartbeat", daemon=True)]

    # ------------------------------------------------------------ life

    def start(self, own: Iterable[Entry] = ()) -> None:
        """Load this gate's entries of today into the view, then start talking."""
        if self.replay_path is not None:
            self.inbox.restore(self._read_json(self.replay_path), self.now_ms())
            self._save_replay(clean=False)  # from now on a crash leaves it unclean
        if self.revocations_path is not None:
            data = self._read(self.revocations_path, sitecred.REVOCATIONS_MAX_BYTES)
            if data is not None:
                try:
                    self.install_revocations(data, save=False)
                except SiteCredentialError as exc:
                    log.warning("site: %s not used: %s (%s)", self.revocations_path, escape(str(exc)), exc.code)
        for entry in own:
            self._own(entry)
        for t in self._threads:
            t.start()
        if self.settings.discovery:
            host, port = self.address
            addresses = local_addresses(ipv6=host == "::") if host in ("0.0.0.0", "::") else [host]
            self.discovery = Discovery(self.settings.site_id, self.device_id, port, addresses, self._discovered,
                                       ip_version(host))
            self.discovery.start()
        log.info("site %s: gate %s listening on %s, %d configured peers, discovery %s",
                 escape(self.settings.site_id), self.device_id, shown(self.address), len(self.settings.peers),
                 "on" if self.settings.discovery else "off")

    def stop(self) -> None:
        self._stop.set()
        self._outbox.put(None)
        if self.discovery is not None:
            self.discovery.close()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # a UDP socket that never connected: shutdown is refused, close below still ends recv
        self.sock.close()
        for t in self._threads:
            if t.is_alive():
                t.join(2.0)
        if self.replay_path is not None and not self._threads[0].is_alive():  # nothing is received any more
            self._save_replay(clean=True)

    def _read(self, path: Path, max_bytes: int) -> bytes | None:
        """A file of the state directory, or None (missing; unreadable: logged)."""
        try:
            with Dir.open(path.parent) as d:
                return d.read(path.name, max_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("site: %s not used: %s", path, escape(str(exc)))
            return None

    def _read_json(self, path: Path) -> object:
        """The saved replay cache, or None (missing, unreadable, not JSON: the inbox then refuses
        what was sent before now)."""
        data = self._read(path, REPLAY_FILE_BYTES)
        try:
            return None if data is None else json.loads(data)
        except ValueError as exc:
            log.warning("site: %s not used: %s", path, escape(str(exc)))
            return None

    def install_revocations(self, data: bytes, *, save: bool = True) -> bool:
        """Adopt the site's revocation list if it is newer than the one held: the gates it names
        are dropped from the peers and their messages refused; kept in the state directory and
        passed on to the peers. False if it is not newer; SiteCredentialError if it does not verify."""
        rev = self.inbox.revoke(data)
        if rev is None:
            return False
        with self._lock:
            for device in rev.revoked & set(self._peers):
                self._peers.pop(device, None)
                self._verified.pop(device, None)
        log.warning("site: revocation list v%d: %d gate(s) revoked%s", rev.version, len(rev.revoked),
                    "".join(f" {escape(d)}" for d in sorted(rev.revoked)[:10]))
        if save and self.revocations_path is not None:
            try:
                atomic_write(self.revocations_path, rev.data, 0o600)
            except OSError as exc:  # kept in memory: a restart gets it again from a peer
                log.warning("site: cannot save %s: %s", self.revocations_path, escape(str(exc)))
        return True

    def _save_replay(self, *, clean: bool) -> None:
        assert self.replay_path is not None
        data = json.dumps(self.inbox.saved_state(self.now_ms(), clean=clean), separators=(",", ":")).encode()
        try:
            atomic_write(self.replay_path, data, 0o600)
        except OSError as exc:  # a full disk: the next start refuses what was sent before it instead
            log.warning("site: cannot save the replay cache %s: %s", self.replay_path, escape(str(exc)))

    # ------------------------------------------------------------ the lane's side

    def _day_start(self, at_ms: int) -> int:
        d = dt.datetime.fromtimestamp(at_ms / 1000, self.tz)
        return round(d.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)

    def card(self, card_id: str, at_ms: int) -> str:
        return card_key(self.settings.secret, self.settings.site_id, day_of(at_ms, self.tz), card_id)

    def _event(self, entry: Entry) -> SiteEvent | None:
        cancels = None
        if entry.is_followup:
            if entry.kind != "did_not_pass" or entry.ref_entry_id is None:
                return None
            cancels = self._own_ids.get(entry.ref_entry_id)
            if cancels is None:  # an entry of another day: nothing of today to cancel
                return None
        card = self.card(entry.card_id, entry.at_ms) if entry.card_id else None
        return sign_event(self.key, self.settings.site_id, SiteEvent(
            self.device_id, entry.seq, entry.at_ms, entry.checkpoint_id, entry.direction, entry.decision, card,
            cancels))

    def _own(self, entry: Entry) -> SiteEvent | None:
        with self._lock:
            if not entry.is_followup:
                self._own_ids[entry.entry_id] = entry.seq
            event = self._event(entry)
        if event is None or not self.view.add([event]):
            return None
        return event

    def note(self, entry: Entry) -> None:
        """A committed entry of this gate: into the view now, to the peers from the sender thread."""
        event = self._own(entry)
        if event is not None:
            self._outbox.put(event)

    def site_for(self, card_id: str | None, at_s: float) -> admission.Site:
        """What the site's view says for this card now: admission's input."""
        last = None
        if card_id:
            e = self.view.last_admission(self.card(card_id, round(at_s * 1000)))
            if e is not None:
                last = admission.SiteLast(e.device, e.gate, e.direction, e.at_ms)
        s = self.settings
        return admission.Site(last, self.view.occupancy(), s.capacity, self.isolated(), s.when_isolated)

    # ------------------------------------------------------------ peers

    def isolated(self) -> bool:
        """No peer heard for ``peer_timeout_s`` (after as long since start)."""
        timeout = self.settings.peer_timeout_s
        if time.monotonic() - self._started_mono < timeout:
            return False
        now = self.now_ms()
        with self._lock:
            return not any(now - p.last_heard_ms <= timeout * 1000 for p in self._peers.values())

    def peers(self) -> list[Peer]:
        now = self.now_ms()
        limit = self.settings.peer_timeout_s * 1000
        with self._lock:
            peers = list(self._peers.values())
        return sorted((Peer(p.device_id, p.address, p.last_heard_ms, p.last_kind, p.skew_ms, p.clock,
                            self.view.high(p.device_id), now - p.last_heard_ms <= limit) for p in peers),
                      key=lambda p: p.device_id)

    def summary(self) -> dict:
        """What the status page, the kiosk and the doctor show."""
        n_in, n_out = self.view.totals()
        return {"site_id": self.settings.site_id, "device_id": self.device_id,
                "listen": shown(self.address), "isolated": self.isolated(),
                "when_isolated": self.settings.when_isolated, "occupancy": self.view.occupancy(),
                "capacity": self.settings.capacity, "in": n_in, "out": n_out, "events": len(self.view),
                "peers": [p.to_dict() for p in self.peers()],
                "discovery": None if self.discovery is None else (self.discovery.error or "ok"),
                "revocations": self.inbox.revocations_version,
                "refused": [{"at_ms": at, "code": code, "from": src} for at, code, src in self.refused[-5:]]}

    def _discovered(self, device_id: str, address: tuple[str, int]) -> None:
        self.add_peer(address)

    def add_peer(self, address: tuple[str, int]) -> None:
        """An address to send heartbeats to until a message from it opens."""
        if address == self.address:
            return
        with self._lock:
            self._candidates.add(address)

    def _targets(self, *, verified_only: bool) -> list[tuple[str, int]]:
        with self._lock:
            verified = set(self._verified.values())
            return sorted(verified if verified_only else verified | self._candidates)

    # ------------------------------------------------------------ sending

    def _datagram(self, kind: str, **kw) -> bytes:
        now = self.now_ms()
        with self._lock:
            self._n = max(self._n + 1, now * 1000)  # strictly increasing, across restarts too (a microsecond clock)
            n = self._n
        return encode(self.key, self.credential, kind=kind, n=n, at_ms=now,
                      clock="confirmed" if self.clock_confirmed() else "unconfirmed",
                      rl=self.inbox.revocations_version, **kw)

    def _sendto(self, data: bytes, targets: Iterable[tuple[str, int]]) -> None:
        for addr in targets:
            host, port = addr
            if self.ipv6 and ":" not in host:
                host = "::ffff:" + host  # an IPv4 peer, from a socket that takes both
            try:
                self.sock.sendto(data, (host, port))
            except OSError as exc:  # unreachable now (a partition, a peer gone): anti-entropy catches up later
                log.debug("site: send to %s failed: %s", shown(addr), exc)

    def _send(self) -> None:
        while True:
            first = self._outbox.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_EVENTS:
                try:
                    more = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._outbox.put(None)
                    break
                batch.append(more)
            self._sendto(self._datagram("events", events=batch), self._targets(verified_only=True))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            self.beat()

    def beat(self) -> None:
        """Roll the view over at midnight, then tell every peer (and candidate) what this gate holds."""
        start = self._day_start(self.now_ms())
        if start != self.view.since_ms:
            self.view.reset(start)
            with self._lock:
                self._own_ids.clear()
        high = self.view.high(self.device_id)
        first = self._first_own() if high else None
        self._sendto(self._datagram("have", first=first, last=high or None, highs=self.view.holdings(MAX_HIGHS)),
                     self._targets(verified_only=False))

    def _first_own(self) -> int:
        with self._lock:
            return min(self._own_ids.values(), default=self.view.high(self.device_id))

    # ------------------------------------------------------------ receiving

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, raw = self.sock.recvfrom(RECV_BYTES)
            except OSError:
                return  # closed by stop()
            if not data or raw is None:  # stop() shut the socket down
                continue
            addr = _plain(raw)
            now = self.now_ms()
            try:
                msg = self.inbox.open(data, now)
            except SiteMessageError as exc:
                if exc.code != "site_own":
                    self._refused(now, exc, addr)
                continue
            self._heard(msg, addr, now)
            self._handle(msg, addr)

    def _refused(self, now: int, exc: SiteMessageError, addr: tuple[str, int]) -> None:
        """Kept for the status page; logged once a minute per sender and reason (a stranger's
        heartbeats would fill the journal)."""
        self.refused = (self.refused + [(now, exc.code, shown(addr))])[-REFUSALS_KEPT:]
        key = (addr, exc.code)
        if now - self._logged.get(key, 0) >= REFUSAL_LOG_EVERY_MS:
            if len(self._logged) > 1000:
                self._logged.clear()
            self._logged[key] = now
            log.info("site: refused a datagram from %s (%s): %s", shown(addr), exc.code, escape(str(exc)))

    def _heard(self, msg: Message, addr: tuple[str, int], now: int) -> None:
        with self._lock:
            known = self._peers.get(msg.sender)
            if known is None or now - known.last_heard_ms > self.settings.peer_timeout_s * 1000:
                log.info("site: gate %s heard at %s", msg.sender, shown(addr))
            self._verified[msg.sender] = addr
            self._creds[msg.sender] = msg.credential.data
            if msg.origin is not None:
                self._creds.setdefault(msg.origin.device_id, msg.origin.data)
            self._candidates.discard(addr)
            self._peers[msg.sender] = Peer(msg.sender, shown(addr), now, msg.kind, msg.at_ms - now,
                                           msg.clock, 0, True)

    def _handle(self, msg: Message, addr: tuple[str, int]) -> None:
        held = self.inbox.revocations
        if held is not None and msg.rl < held.version:  # the sender lacks the newest list: pass it on
            self._sendto(self._datagram("revocations", rlist=held.data), [addr])
        if msg.kind == "revocations" and msg.rlist is not None:
            try:
                self.install_revocations(msg.rlist)
            except SiteCredentialError as exc:
                self._refused(self.now_ms(), SiteMessageError(str(exc), code=exc.code), addr)
        elif msg.kind == "events":
            new = self.view.add(msg.events)
            if new and self.on_events is not None:
                self.on_events(new)
        elif msg.kind == "have":
            self._catch_up(msg, addr)
        elif msg.kind == "want":
            device = msg.wdev or self.device_id
            origin = None if device == self.device_id else self._creds.get(device)
            if device != self.device_id and origin is None:
                return
            found = [e for e in self.view.get(device, msg.want) if e.sig is not None or origin is None]
            for i in range(0, len(found), MAX_EVENTS):
                self._sendto(self._datagram("events", events=found[i:i + MAX_EVENTS], origin=origin), [addr])

    def _catch_up(self, msg: Message, addr: tuple[str, int]) -> None:
        """Ask the sender of a heartbeat for the events its view holds and this one lacks: its own,
        and those of gates this one does not hear itself (passed on: relaying). A device's seqs
        are asked for only while the sender holds more of them, or a higher one, than this view,
        so the seqs a gate never shares (follow-ups) are not asked for again and again."""
        highs = dict(msg.highs)
        if msg.first is not None and msg.last is not None and msg.sender not in highs:
            highs[msg.sender] = (msg.first, msg.last, msg.last - msg.first + 1)
        now = self.now_ms()
        limit = self.settings.peer_timeout_s * 1000
        with self._lock:
            direct = {d for d, p in self._peers.items() if now - p.last_heard_ms <= limit}
        for device, (low, high, count) in highs.items():
            if device == self.device_id or (device != msg.sender and device in direct):
                continue  # a gate heard directly answers for itself
            if count <= self.view.count(device) and high <= self.view.high(device):
                continue
            missing = self.view.missing(device, low, high, MAX_WANT)
            if missing:
                self._sendto(self._datagram("want", want=missing, wdev=None if device == msg.sender else device),
                             [addr])
