"""Contact tracing on the central server (`checkpoint server trace`, docs/tracing.md): where and when
a card was seen, and which other cards were seen at the same checkpoints within a window around
each visit, with the holders' details opened with the server's sealing key, for the call centre.

Two indexed lookups do the work (storage.visits: card_id, at_ms; storage.seen_at: checkpoint_id,
at_ms), so the answer takes milliseconds on a database of tens of millions of entries
(docs/benchmarks.md#tracing). Holder details are personal data: they are only ever written to the
report (CSV or JSON, to a file of mode 0600 or stdout), never logged.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TextIO

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from scanner.base import i18n
from scanner.base.errors import CheckpointError
from scanner.base.safetext import escape
from scanner.store import sealing
from sync.server.model import SeenEntry, Storage

MAX_VISITS = 10_000
MAX_CONTACTS_PER_VISIT = 20_000
MAX_WINDOW_MS = 24 * 3_600_000
_CARD = re.compile(r"(?:[0-9a-f]{2}){1,256}", re.ASCII)
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)


class TraceError(CheckpointError):
    code = "trace"


def parse_card(text: str) -> str:
    """A card id as stored (lowercase hex); TraceError for anything else."""
    card = text.strip().lower()
    if not _CARD.fullmatch(card):
        raise TraceError(f"card id must be hex (an even number of digits, at most 512): {escape(text[:80])!r}",
                         text=i18n.text("trace_error.card", value=repr(escape(text[:80]))))
    return card


def parse_window(text: str) -> int:
    """"1h", "90m", "1h30m", "45s" → milliseconds (more than 0, at most 24 h)."""
    m = _DURATION.fullmatch(text.strip().lower())
    if not m or not any(m.groups()):
        raise TraceError(f"window must look like 1h, 90m, 1h30m or 600s, not {escape(text[:40])!r}",
                         text=i18n.text("trace_error.window", value=repr(escape(text[:40]))))
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    ms = ((h * 60 + mi) * 60 + s) * 1000
    if not 0 < ms <= MAX_WINDOW_MS:
        raise TraceError("window must be more than 0 and at most 24h", text=i18n.text("trace_error.window_range"))
    return ms


@dataclass(frozen=True, slots=True)
class HolderView:
    """``status``: "ok" (opened), "none" (the device stored no details), "not_opened" (no key
    given) or "unreadable" (sealed to another key, or altered)."""

    status: str
    name: str | None = None
    birth_date: str | None = None
    id_masked: str | None = None


@dataclass(frozen=True, slots=True)
class Visit:
    entry: SeenEntry
    holder: HolderView


@dataclass(frozen=True, slots=True)
class Contact:
    visit_entry_id: str  # the visit this contact is nearest to in time
    entry: SeenEntry
    offset_ms: int  # contact time minus visit time
    holder: HolderView


@dataclass(frozen=True, slots=True)
class TraceReport:
    card_id: str
    since_ms: int
    until_ms: int
    window_ms: int | None  # None: contacts were not asked for
    visits: tuple[Visit, ...]
    contacts: tuple[Contact, ...]
    truncated: bool  # a limit was reached: narrow the period or the window

    @property
    def contact_cards(self) -> int:
        return len({c.entry.card_id for c in self.contacts})


def open_holder(entry_id: str, sealed: bytes | None, key: X25519PrivateKey | None) -> HolderView:
    """The holder details of one entry's sealed blob (the entry id is the sealing context)."""
    if sealed is None:
        return HolderView("none")
    if key is None:
        return HolderView("not_opened")
    try:
        h = sealing.open(sealed, key, entry_id)
    except sealing.SealError:
        return HolderView("unreadable")
    return HolderView("ok", h.name, h.birth_date, h.id_masked)


OpenMany = Callable[[Sequence[SeenEntry]], Sequence[HolderView]]


def trace(storage: Storage, card_id: str, *, since_ms: int, until_ms: int, window_ms: int | None = None,
          sealing_key: X25519PrivateKey | None = None, max_visits: int = MAX_VISITS,
          max_contacts_per_visit: int = MAX_CONTACTS_PER_VISIT, open_many: OpenMany | None = None) -> TraceReport:
    """The visits of ``card_id`` with since_ms <= at_ms < until_ms and, with ``window_ms``, the
    entries of other cards at the same checkpoint within ±window_ms of a visit (each contact entry
    once, attached to its nearest visit). Entries without a card id (unreadable codes) are no
    contacts: nobody could call them. Holder details are opened with ``sealing_key`` here, or by
    ``open_many`` (one call for every entry of the answer: the console's opener process)."""
    card_id = parse_card(card_id)
    if until_ms <= since_ms:
        raise TraceError("the period is empty", text=i18n.text("trace_error.empty_period"))

    def open_holder_here(e: SeenEntry) -> HolderView:
        return open_holder(e.entry_id, e.sealed, sealing_key)
    rows = storage.visits(card_id, since_ms, until_ms, max_visits + 1)
    truncated = len(rows) > max_visits
    rows = rows[:max_visits]
    visits = tuple(Visit(e, open_holder_here(e)) for e in rows)
    contacts: list[Contact] = []
    if window_ms is not None:
        nearest: dict[str, tuple[int, SeenEntry, SeenEntry]] = {}
        for v in rows:
            seen = storage.seen_at(v.checkpoint_id, v.at_ms - window_ms, v.at_ms + window_ms,
                                   max_contacts_per_visit + 1)
            if len(seen) > max_contacts_per_visit:
                truncated = True
                seen = seen[:max_contacts_per_visit]
            for e in seen:
                if e.card_id is None or e.card_id == card_id:
                    continue
                off = e.at_ms - v.at_ms
                best = nearest.get(e.entry_id)
                if best is None or abs(off) < abs(best[0]):
                    nearest[e.entry_id] = (off, v, e)
        ordered = sorted(nearest.values(), key=lambda t: (t[1].at_ms, t[1].entry_id, t[2].at_ms, t[2].entry_id))
        contacts = [Contact(v.entry_id, e, off, open_holder_here(e)) for off, v, e in ordered]
    if open_many is not None:
        views = list(open_many([v.entry for v in visits] + [c.entry for c in contacts]))
        if len(views) != len(visits) + len(contacts):
            raise TraceError("the holder details came back for other entries than asked",
                             text=i18n.text("trace_error.holders_mismatch"))
        visits = tuple(replace(v, holder=h) for v, h in zip(visits, views))
        contacts = [replace(c, holder=h) for c, h in zip(contacts, views[len(visits):])]
    return TraceReport(card_id, since_ms, until_ms, window_ms, visits, tuple(contacts), truncated)


# ---------------------------------------------------------------- output


def _iso(at_ms: int, tz: dt.tzinfo) -> str:
    try:
        moment = dt.datetime.fromtimestamp(at_ms / 1000, tz)
    except (OverflowError, OSError, ValueError):
        return ""
    return moment.isoformat(timespec="seconds")


def _holder_dict(h: HolderView) -> dict:
    return {"holder_status": h.status, "name": h.name, "birth_date": h.birth_date, "id_masked": h.id_masked}


def _entry_dict(e: SeenEntry, tz: dt.tzinfo) -> dict:
    return {"entry_id": e.entry_id, "at_ms": e.at_ms, "at": _iso(e.at_ms, tz), "checkpoint_id": e.checkpoint_id,
            "device_id": e.device_id, "direction": e.direction, "decision": e.decision, "reason": e.reason,
            "clock": e.clock, "card_id": e.card_id}


def to_dict(report: TraceReport, tz: dt.tzinfo = dt.UTC) -> dict:
    """The report as one JSON document: visits, each with its contacts."""
    by_visit: dict[str, list[Contact]] = {}
    for c in report.contacts:
        by_visit.setdefault(c.visit_entry_id, []).append(c)
    visits = []
    for v in report.visits:
        d = _entry_dict(v.entry, tz) | _holder_dict(v.holder)
        if report.window_ms is not None:
            d["contacts"] = [_entry_dict(c.entry, tz) | {"offset_s": round(c.offset_ms / 1000)} | _holder_dict(c.holder)
                             for c in by_visit.get(v.entry.entry_id, [])]
        visits.append(d)
    return {"card_id": report.card_id, "since": _iso(report.since_ms, tz), "until": _iso(report.until_ms, tz),
            "window_s": None if report.window_ms is None else report.window_ms // 1000,
            "visits": visits, "contacts": len(report.contacts), "contact_cards": report.contact_cards,
            "truncated": report.truncated}


VISIT_COLUMNS = ("entry_id", "at", "checkpoint_id", "device_id", "direction", "decision", "reason", "clock",
                 "holder_status", "name", "birth_date", "id_masked")
CONTACT_COLUMNS = ("visit_entry_id", "visit_at", "checkpoint_id", "contact_card_id", "contact_at", "offset_s",
                   "contact_entry_id", "contact_device_id", "contact_direction", "contact_decision",
                   "contact_reason", "contact_clock", "holder_status", "name", "birth_date", "id_masked")


def _cell(value: object) -> str:
    """A CSV cell that a spreadsheet shows as text: control characters escaped (safetext), and a
    leading = + - @ (a formula to Excel or LibreOffice) neutralised with a quote."""
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    text = escape(str(value))
    if text[:1] in ("=", "+", "-", "@"):
        text = "'" + text
    return text


def csv_rows(report: TraceReport, tz: dt.tzinfo = dt.UTC) -> Iterable[tuple[str, ...]]:
    """Header, then one row per visit (no window) or one row per contact (with a window)."""
    if report.window_ms is None:
        yield VISIT_COLUMNS
        for visit in report.visits:
            e, h = visit.entry, visit.holder
            yield tuple(_cell(x) for x in (e.entry_id, _iso(e.at_ms, tz), e.checkpoint_id, e.device_id, e.direction,
                                           e.decision, e.reason, e.clock, h.status, h.name, h.birth_date,
                                           h.id_masked))
        return
    visited = {v.entry.entry_id: v.entry for v in report.visits}
    yield CONTACT_COLUMNS
    for c in report.contacts:
        v, e, h = visited[c.visit_entry_id], c.entry, c.holder
        yield tuple(_cell(x) for x in (v.entry_id, _iso(v.at_ms, tz), e.checkpoint_id, e.card_id, _iso(e.at_ms, tz),
                                       round(c.offset_ms / 1000), e.entry_id, e.device_id, e.direction, e.decision,
                                       e.reason, e.clock, h.status, h.name, h.birth_date, h.id_masked))


def write_csv(report: TraceReport, out: TextIO, tz: dt.tzinfo = dt.UTC) -> None:
    writer = csv.writer(out, lineterminator="\r\n")
    for row in csv_rows(report, tz):
        writer.writerow(row)


def csv_text(report: TraceReport, tz: dt.tzinfo = dt.UTC) -> str:
    buf = io.StringIO()
    write_csv(report, buf, tz)
    return buf.getvalue()
