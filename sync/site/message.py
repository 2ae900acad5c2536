"""The site's signed datagram and the events it carries.

An event is one entry of a gate's log as the other gates need it: (device, seq), time, gate,
direction, decision, and the card only as a keyed hash per site and day (`card_key`), so a
sniffer learns nothing across sites or days; never holder details. A message is signed with the
sender's device key and carries its site credential; `Inbox.open` believes it only if the
credential is signed by a pinned root for this site and names the key that signed, the sender's
clock is within the allowed skew, and its counter is higher than any seen from it before (a
replayed datagram is refused). Format: docs/site.md#messages.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.errors import CheckpointError
from scanner.cards.scan import DIRECTIONS
from sync.site.credential import (
    REVOCATIONS_MAX_BYTES,
    Revocations,
    SiteCredential,
    SiteCredentialError,
    open_credential,
    open_revocations,
)

MAGIC = b"CKS1"
DOMAIN = b"CKSITEMSG1\n"  # signed with the payload: a message signature is never a credential's or a batch's
SIG_BYTES = 64
MAX_DATAGRAM = 32 * 1024
MAX_EVENTS = 64  # per datagram
MAX_WANT = 256
MAX_HIGHS = 64  # devices a heartbeat describes (a site has at most a few dozen gates)
EVENT_DOMAIN = b"CKSITEEVT1\n"  # an event signed by its own gate: it can be passed on by another
REPLAY_KEPT = 4096  # senders whose last counter the saved replay cache keeps
KINDS = ("events", "have", "want", "revocations")
CLOCK_STATES = ("confirmed", "unconfirmed")  # the sender's clock (scanner/store/clock.py ClockStatus.confirmed)
DECISIONS = ("accept", "reject")
CARD_KEY_BYTES = 16
_FIELDS = ("at", "clock", "cred", "events", "first", "from", "highs", "kind", "last", "n", "ocred", "rl", "rlist",
           "site", "v", "want", "wdev")
_EVENT_FIELDS = ("at", "cancels", "card", "decision", "dir", "gate", "seq", "sig")
_HEX = frozenset("0123456789abcdef")


class SiteMessageError(CheckpointError):
    """A datagram refused: not a site message, forged, from a stranger, replayed, stale."""

    code = "site_message_invalid"


@dataclass(frozen=True, slots=True)
class SiteEvent:
    """One entry of a gate's log, as shared: ``card`` the keyed hash (hex) or None for a scan
    without a card; ``cancels`` the seq of the same device's earlier admission this follow-up
    cancels ("did not pass"); ``sig`` the device's own signature of it (`sign_event`), which lets
    any gate pass it on to gates that cannot hear that device (not part of its identity)."""

    device: str
    seq: int
    at_ms: int
    gate: str
    direction: str
    decision: str
    card: str | None = None
    cancels: int | None = None
    sig: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.device, self.seq)

    def to_wire(self) -> dict:
        return {"at": self.at_ms, "cancels": self.cancels, "card": self.card, "decision": self.decision,
                "dir": self.direction, "gate": self.gate, "seq": self.seq,
                "sig": None if self.sig is None else base64.b64encode(self.sig).decode("ascii")}

    def signed_bytes(self, site_id: str) -> bytes:
        """What the device signs: the site, the device and the event, canonical."""
        body = {**self.to_wire(), "device": self.device, "sig": None, "site": site_id}
        return EVENT_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_event(key: ed25519.Ed25519PrivateKey, site_id: str, event: SiteEvent) -> SiteEvent:
    """The event with its device's signature (``key`` is that device's)."""
    return dataclasses.replace(event, sig=key.sign(event.signed_bytes(site_id)))


@dataclass(frozen=True, slots=True)
class Message:
    """A verified message. ``kind``: "events" (entries of the sender's log, or of ``origin``'s),
    "have" (its log holds seqs ``first``..``last`` of today: the heartbeat), "want" (the seqs of
    the receiver's log the sender lacks; of the device ``wdev`` when it is another's),
    "revocations" (``rlist``: the site's revocation list, root-signed, passed on to a gate whose
    ``rl`` says it holds an older one). ``rl``: the version of the
    revocation list the sender holds (0: none). ``highs``: per device, the (lowest seq, highest
    seq, number of events) the sender's view holds today (the heartbeat). ``origin``: for events
    passed on from another gate, that gate's credential (each event is then signed by it)."""

    sender: str
    kind: str
    n: int
    at_ms: int
    clock: str
    credential: SiteCredential
    events: tuple[SiteEvent, ...] = ()
    first: int | None = None
    last: int | None = None
    want: tuple[int, ...] = field(default=())
    rl: int = 0
    rlist: bytes | None = None
    highs: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    wdev: str | None = None
    origin: SiteCredential | None = None


def day_of(at_ms: int, tz: dt.tzinfo | None = None) -> str:
    """The local day (YYYY-MM-DD) of a time: the day the card key and the occupancy belong to."""
    return dt.datetime.fromtimestamp(at_ms / 1000, tz or dt.datetime.now().astimezone().tzinfo).date().isoformat()


def card_key(secret: bytes, site_id: str, day: str, card_id: str) -> str:
    """The card as the site shares it: HMAC-SHA256 over the site, the day and the card id with the
    site's secret, first 16 bytes in hex. Without the secret it links nothing; the same card on
    another day or at another site gives an unrelated key."""
    mac = hmac.new(secret, f"{site_id}\n{day}\n{card_id}".encode(), hashlib.sha256).digest()
    return mac[:CARD_KEY_BYTES].hex()


def encode(key: ed25519.Ed25519PrivateKey, credential: SiteCredential, *, kind: str, n: int, at_ms: int,
           clock: str, events: Sequence[SiteEvent] = (), first: int | None = None, last: int | None = None,
           want: Sequence[int] = (), rl: int = 0, rlist: bytes | None = None,
           highs: dict[str, tuple[int, int, int]] | None = None, wdev: str | None = None,
           origin: bytes | None = None) -> bytes:
    """A signed datagram from this device (``credential`` is its own; ``origin`` the credential
    of the gate whose signed events it passes on)."""
    body = {"at": at_ms, "clock": clock, "cred": base64.b64encode(credential.data).decode("ascii"),
            "events": [e.to_wire() for e in events], "first": first, "from": credential.device_id,
            "highs": None if highs is None else {d: list(v) for d, v in highs.items()}, "kind": kind,
            "last": last, "n": n, "ocred": _b64text(origin), "rl": rl, "rlist": _b64text(rlist),
            "site": credential.site_id, "v": 1, "want": list(want), "wdev": wdev}
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return MAGIC + key.sign(DOMAIN + payload) + payload


def _b64text(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _int(v: object, what: str, *, nullable: bool = False) -> int | None:
    if v is None and nullable:
        return None
    if type(v) is not int or not 0 <= v < 2 ** 63:
        raise SiteMessageError(f"{what} must be a non-negative integer", code="site_message_malformed")
    return v


def _text(v: object, what: str, max_len: int = 64) -> str:
    if not isinstance(v, str) or not 1 <= len(v) <= max_len or not v.isprintable():
        raise SiteMessageError(f"{what} must be 1-{max_len} printable characters", code="site_message_malformed")
    return v


def _event(device: str, raw: object) -> SiteEvent:
    if not isinstance(raw, dict) or sorted(raw) != list(_EVENT_FIELDS):
        raise SiteMessageError(f"an event must have exactly the fields {', '.join(_EVENT_FIELDS)}",
                               code="site_message_malformed")
    card = raw["card"]
    if card is not None and (not isinstance(card, str) or len(card) != 2 * CARD_KEY_BYTES or not set(card) <= _HEX):
        raise SiteMessageError("an event's card must be 32 hex digits or null", code="site_message_malformed")
    if raw["dir"] not in DIRECTIONS or raw["decision"] not in DECISIONS:
        raise SiteMessageError("an event's direction or decision is unknown", code="site_message_malformed")
    seq = _int(raw["seq"], "seq")
    assert seq is not None
    at = _int(raw["at"], "at")
    assert at is not None
    sig = raw["sig"]
    if sig is not None:
        sig = _b64(sig, "an event's sig", 128)
        if len(sig) != SIG_BYTES:
            raise SiteMessageError("an event's sig must be 64 bytes", code="site_message_malformed")
    return SiteEvent(device, seq, at, _text(raw["gate"], "gate"), raw["dir"], raw["decision"], card,
                     _int(raw["cancels"], "cancels", nullable=True), sig)


def _b64(v: object, what: str, limit: int) -> bytes:
    if not isinstance(v, str) or len(v) > limit:
        raise SiteMessageError(f"{what} is not base64 text", code="site_message_malformed")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise SiteMessageError(f"{what} is not base64", code="site_message_malformed") from None


def _highs(raw: object) -> dict[str, tuple[int, int, int]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_HIGHS:
        raise SiteMessageError(f"highs must map at most {MAX_HIGHS} devices", code="site_message_malformed")
    out = {}
    for device, v in raw.items():
        if not isinstance(v, list) or len(v) != 3:
            raise SiteMessageError("highs must give [low, high, count]", code="site_message_malformed")
        low, high, count = (_int(x, "highs") for x in v)
        assert low is not None and high is not None and count is not None
        out[_text(device, "a device id", 128)] = (low, high, count)
    return out


class Inbox:
    """Opens datagrams for one device of one site (see the module docstring). Thread-safe."""

    def __init__(self, roots: Sequence[ed25519.Ed25519PublicKey], site_id: str, own_device: str, *,
                 max_skew_ms: int, cache: int = 256) -> None:
        self.roots = list(roots)
        self.site_id = site_id
        self.own_device = own_device
        self.max_skew_ms = max_skew_ms
        self._creds: OrderedDict[bytes, SiteCredential] = OrderedDict()  # verified credentials, by their bytes
        self._cache = cache
        self._last_n: dict[str, int] = {}
        self._floor_ms = 0  # messages sent before this are refused (a restart whose replay cache was not saved)
        self.revocations: Revocations | None = None  # the site's newest revocation list this gate holds
        self._lock = threading.Lock()

    # A restarted receiver must still refuse what it accepted before. Each counter ``n`` is at
    # least its message's time in microseconds (sync/site/node.py), and a message older than
    # ``max_skew_ms`` is refused anyway, so the cache only needs the senders heard within that
    # time: saved at a clean stop, it is bounded by the site's size. After an unclean stop the
    # cache is incomplete: then every message sent before the restart is refused instead.

    def restore(self, saved: object, now_ms: int) -> None:
        """Start from a saved cache (`saved_state`), or, when it is missing, not from a clean stop
        or not well-formed, refuse every message sent before ``now_ms``."""
        last = saved.get("last") if isinstance(saved, dict) else None
        ok = isinstance(saved, dict) and saved.get("v") == 1 and saved.get("clean") is True and isinstance(last, dict)
        with self._lock:
            if not ok:
                self._floor_ms = now_ms
                return
            assert isinstance(last, dict)
            good = [(n, s) for s, n in last.items() if isinstance(s, str) and len(s) <= 128 and type(n) is int]
            for n, sender in sorted(good, reverse=True)[:REPLAY_KEPT]:  # the latest, as saved_state keeps
                self._last_n[sender] = max(n, self._last_n.get(sender, -1))

    def saved_state(self, now_ms: int, *, clean: bool) -> dict:
        """The replay cache to save: the senders whose last message may still be replayed (within
        ``max_skew_ms`` of ``now_ms``), at most REPLAY_KEPT; ``clean`` only when no message can
        be accepted after it (the receiver has stopped)."""
        oldest = (now_ms - self.max_skew_ms) * 1000
        with self._lock:
            live = sorted(((n, s) for s, n in self._last_n.items() if n >= oldest), reverse=True)[:REPLAY_KEPT]
        return {"v": 1, "clean": clean, "saved_ms": now_ms, "last": {s: n for n, s in live}}

    def revoke(self, data: bytes) -> Revocations | None:
        """Adopt a revocation list (root-signed, for this site) if it is newer than the one held:
        its gates' messages are refused from now on (``site_revoked``). Returns it if adopted;
        SiteCredentialError (a reason code) if it does not verify."""
        rev = open_revocations(data, self.roots, site_id=self.site_id)
        with self._lock:
            if self.revocations is not None and rev.version <= self.revocations.version:
                return None
            self.revocations = rev
            for device in rev.revoked:
                self._last_n.pop(device, None)
        return rev

    @property
    def revocations_version(self) -> int:
        rev = self.revocations
        return 0 if rev is None else rev.version

    def _credential(self, data: bytes, now_ms: int) -> SiteCredential:
        with self._lock:
            cred = self._creds.get(data)
            if cred is not None:
                self._creds.move_to_end(data)
        if cred is None:
            try:
                cred = open_credential(data, self.roots)
            except SiteCredentialError as exc:
                raise SiteMessageError(f"sender's site credential refused: {exc}", code="site_stranger") from None
            with self._lock:
                self._creds[data] = cred
                while len(self._creds) > self._cache:
                    self._creds.popitem(last=False)
        if cred.site_id != self.site_id:
            raise SiteMessageError(f"sender is a gate of site {cred.site_id!r}", code="site_stranger")
        if not cred.valid_at(now_ms / 1000):
            raise SiteMessageError("sender's site credential is expired", code="site_stranger")
        return cred

    def open(self, datagram: bytes, now_ms: int) -> Message:
        """The verified message in ``datagram``; SiteMessageError (a reason code) otherwise."""
        if len(datagram) > MAX_DATAGRAM or not datagram.startswith(MAGIC) or len(datagram) < len(MAGIC) + SIG_BYTES + 2:
            raise SiteMessageError("not a site message", code="site_message_malformed")
        sig, payload = datagram[len(MAGIC):len(MAGIC) + SIG_BYTES], datagram[len(MAGIC) + SIG_BYTES:]
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise SiteMessageError("payload is not JSON", code="site_message_malformed") from None
        if not isinstance(body, dict) or sorted(body) != list(_FIELDS) or body["v"] != 1:
            raise SiteMessageError("not a site message of format 1", code="site_message_malformed")
        if not isinstance(body["cred"], str) or len(body["cred"]) > 8192:
            raise SiteMessageError("cred is not base64 text", code="site_message_malformed")
        try:
            cred_data = base64.b64decode(body["cred"], validate=True)
        except (binascii.Error, ValueError):
            raise SiteMessageError("cred is not base64", code="site_message_malformed") from None
        cred = self._credential(cred_data, now_ms)
        if body["from"] != cred.device_id:
            raise SiteMessageError("the sender is not the device its credential names", code="site_forged")
        try:
            cred.device_key.verify(sig, DOMAIN + payload)
        except InvalidSignature:
            raise SiteMessageError("the message's signature does not verify", code="site_forged") from None
        sender = cred.device_id
        rev = self.revocations
        if rev is not None and sender in rev.revoked:
            raise SiteMessageError(f"gate {sender} is revoked by the site's revocation list v{rev.version}",
                                   code="site_revoked")
        if body["site"] != self.site_id:
            raise SiteMessageError(f"message for site {body['site']!r}", code="site_stranger")
        if sender == self.own_device:
            raise SiteMessageError("a message from this device itself", code="site_own")
        n, at = _int(body["n"], "n"), _int(body["at"], "at")
        assert n is not None and at is not None
        if abs(at - now_ms) > self.max_skew_ms:
            raise SiteMessageError(f"sender's clock is {(at - now_ms) / 1000:+.1f} s off (limit "
                                   f"{self.max_skew_ms / 1000:g} s)", code="site_clock_skew")
        with self._lock:
            if at < self._floor_ms:
                raise SiteMessageError(f"message {n} from {sender} was sent before this gate restarted without "
                                       "saving its replay cache", code="site_replayed")
            if n <= self._last_n.get(sender, -1):
                raise SiteMessageError(f"message {n} from {sender} seen before", code="site_replayed")
            self._last_n[sender] = n
        kind = body["kind"]
        if kind not in KINDS or body["clock"] not in CLOCK_STATES:
            raise SiteMessageError("unknown message kind or clock state", code="site_message_malformed")
        events, want = body["events"], body["want"]
        if not isinstance(events, list) or len(events) > MAX_EVENTS or not isinstance(want, list) \
                or len(want) > MAX_WANT:
            raise SiteMessageError("events or want is not a list of the allowed size", code="site_message_malformed")
        rl = _int(body["rl"], "rl")
        assert rl is not None
        rlist = None if body["rlist"] is None else _b64(body["rlist"], "rlist", 2 * REVOCATIONS_MAX_BYTES)
        wdev = None if body["wdev"] is None else _text(body["wdev"], "wdev", 128)
        origin, device = None, sender
        if body["ocred"] is not None:  # events of another gate, passed on: each must be signed by that gate
            origin = self._credential(_b64(body["ocred"], "ocred", 8192), now_ms)
            device = origin.device_id
            held = self.revocations
            if held is not None and device in held.revoked:
                raise SiteMessageError(f"events of gate {device}, revoked by the site's revocation list "
                                       f"v{held.version}", code="site_revoked")
        parsed = tuple(_event(device, e) for e in events)
        if origin is not None:
            for e in parsed:
                try:
                    if e.sig is None:
                        raise InvalidSignature
                    origin.device_key.verify(e.sig, e.signed_bytes(self.site_id))
                except InvalidSignature:
                    raise SiteMessageError(f"an event passed on as gate {device}'s is not signed by it",
                                           code="site_forged") from None
        return Message(sender, kind, n, at, body["clock"], cred, parsed,
                       _int(body["first"], "first", nullable=True), _int(body["last"], "last", nullable=True),
                       tuple(int(_int(s, "want") or 0) for s in want), rl, rlist, _highs(body["highs"]), wdev, origin)
