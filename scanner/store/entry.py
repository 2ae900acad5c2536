"""One entry of the log: the value type, its hash chain, and its export forms (JSONL, CSV).

Spec: docs/entry-log.md (fields, chain hash encoding, export formats). Entries carry no personal
data in the clear: the holder's details exist only as an opaque blob sealed to the server
(scanner.store.sealing), and exports carry only that blob's SHA-256, never the blob.
"""
from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import datetime as dt
import hashlib
import io
import itertools
import json
import operator
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from scanner.base.errors import CheckpointError, Reason
from scanner.base.safetext import json_line
from scanner.cards.scan import DIRECTIONS, SOURCES
from scanner.cards.verdict import Decision
from scanner.store.clock import STATES as CLOCK_STATES

GENESIS = bytes(32)  # prev_hash of a device's first entry
HASH_DOMAIN = b"CKE1"
FOLLOWUP_KINDS = ("did_not_pass",)
DECISIONS = tuple(str(d) for d in Decision)
REASONS = tuple(str(r) for r in Reason)
FORMATS = ("jsonl", "csv")
MAX_BLOB = 4096  # the largest sealed holder blob: far above any real card (names are at most 80 characters)

class ExportFormatError(CheckpointError):
    """An export line or file that is not what `checkpoint log export` writes."""

    code = "export_malformed"


@dataclass(frozen=True, slots=True)
class Entry:
    """One committed log entry (a scan, or a follow-up such as "did_not_pass" of an earlier one).

    ``at_ms`` is UTC epoch milliseconds; ``card_id`` hex, ``kid`` base64; ``sealed`` the holder
    details sealed to the server (None when not stored, and always None in exports, which keep
    only ``sealed_sha256``). ``kind`` is None for a scan; a follow-up names the original entry in
    ``ref_entry_id``.
    """

    seq: int
    entry_id: str
    device_id: str
    checkpoint_id: str
    direction: str
    at_ms: int
    clock: str
    source: str
    source_id: str
    decision: str
    reason: str
    format: str | None = None
    card_id: str | None = None
    issuer: str | None = None
    kid: str | None = None
    kind: str | None = None
    ref_entry_id: str | None = None
    sealed_sha256: str | None = None
    batch_id: str | None = None
    prev_hash: bytes = GENESIS
    hash: bytes = b""
    sealed: bytes | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.sealed is not None and self.sealed_sha256 is None:
            object.__setattr__(self, "sealed_sha256", sealed_digest(self.sealed))

    @property
    def is_followup(self) -> bool:
        return self.kind is not None

    @property
    def accepted(self) -> bool:
        return self.decision == "accept"

    @property
    def holder(self) -> str:
        """"sealed" when holder details were stored (sealed), else "none"."""
        return "none" if self.sealed_sha256 is None else "sealed"

    @property
    def at_iso(self) -> str:
        return iso_ms(self.at_ms)

    def hash_fields(self) -> dict[str, str]:
        return hash_fields(self)

    def computed_hash(self) -> bytes:
        """What ``hash`` must be, given ``prev_hash`` and the fields."""
        return entry_hash(self)


# SHA-256 for one new entry (its chain hash and its sealed blob's digest, a few hundred bytes once a
# scan): CPython's own implementation, what hashlib falls back on without OpenSSL. For one small input
# it costs less than OpenSSL's EVP layer (a context allocated and dispatched per call), most of all
# right after a commit's fsync, when the caches are cold (bench entrylog: record's own work a few µs
# less). What hashes many entries in a loop (reads, verify_chain, column_hashes) keeps hashlib.sha256,
# faster while warm. The same digests either way.
try:
    new_entry_sha256: Callable[[bytes], Any] = vars(hashlib)["__get_builtin_constructor"]("sha256")
except (KeyError, ValueError):  # a Python without it: OpenSSL's
    new_entry_sha256 = hashlib.sha256


def sealed_digest(sealed: bytes, sha256: Callable[[bytes], Any] = hashlib.sha256) -> str:
    """``sealed_sha256`` of a sealed blob: its SHA-256 in hex (what the chain hash covers instead
    of the blob); ``sha256``: the implementation (new_entry_sha256 for a new entry)."""
    return sha256(sealed).hexdigest()


# ---------------------------------------------------------------- the field registry
# Every list of an entry's fields (table columns, rows, hash input, export record) is derived
# from Entry's own fields here, so a field is added in one place: the dataclass.

ENTRY_FIELDS = tuple(f.name for f in dataclasses.fields(Entry))  # in the order of Entry(*values)
COMPUTED_FIELDS = ("sealed_sha256",)  # derived from ``sealed``: never stored
SYNC_FIELDS = ("batch_id",)  # the device keeps it with the acknowledged runs (scanner/store/synced.py)
STORED_FIELDS = tuple(n for n in ENTRY_FIELDS if n not in COMPUTED_FIELDS + SYNC_FIELDS)  # an entries row
# Fields covered by the chain hash, in the order they are hashed (sorted by name). Not covered:
# batch_id (set later, when the entry is synced), the links themselves, and the sealed blob (its
# SHA-256 is covered instead).
NOT_HASHED = ("batch_id", "prev_hash", "hash", "sealed")
HASHED_FIELDS = tuple(sorted(n for n in ENTRY_FIELDS if n not in NOT_HASHED))
# The fields of an export record, in order (docs/entry-log.md#export): Entry's, with the time as
# text (``at``) and the sealed blob replaced by ``holder`` (whether there is one) before its digest.
_EXPORTED_AS = {"at_ms": ("at",), "sealed_sha256": ("holder", "sealed_sha256"), "sealed": ()}
EXPORT_FIELDS = tuple(name for f in ENTRY_FIELDS for name in _EXPORTED_AS.get(f, (f,)))


# ---------------------------------------------------------------- chain


def hash_fields(entry: Entry) -> dict[str, str]:
    """The hashed fields as text, omitting those that are None (so new optional fields added by a
    later schema never change the hash of an older entry)."""
    return {name: str(value) for name, value in zip(HASHED_FIELDS, _hashed_values(entry))
            if value is not None}


_hashed_values = operator.attrgetter(*HASHED_FIELDS)
_FIELD_PREFIX = {name: bytes([len(name)]) + name.encode("ascii") for name in HASHED_FIELDS}
# the hash input is assembled as text whose Latin-1 encoding is the bytes hashed: ASCII values (nearly
# all) as they are, other text as its UTF-8 bytes read as Latin-1; one encode per entry, not one per field
_PREFIXES = tuple(_FIELD_PREFIX[name].decode("latin-1") for name in HASHED_FIELDS)
_LEN4 = tuple(n.to_bytes(4, "big").decode("latin-1") for n in range(1024))
_DOMAIN = HASH_DOMAIN.decode("latin-1")
_PREFIX_BYTES = tuple(_FIELD_PREFIX[name] for name in HASHED_FIELDS)  # column_hashes works in bytes
_LEN4_BYTES = tuple(n.to_bytes(4, "big") for n in range(1024))


def chain_hash(prev_hash: bytes, fields: Mapping[str, object]) -> bytes:
    """SHA-256 over "CKE1" ‖ prev_hash ‖ for each field in name order: u8 len(name) ‖ name ‖
    u32be len(value) ‖ value (UTF-8 text; integers in decimal). Fields whose value is None are
    left out (docs/entry-log.md#hash-chain)."""
    if len(prev_hash) != 32:
        raise ValueError("prev_hash must be 32 bytes")
    parts = [HASH_DOMAIN, bytes(prev_hash)]
    for name in sorted(fields):
        value = fields[name]
        if value is None:
            continue
        k = _FIELD_PREFIX.get(name) or bytes([len(name)]) + name.encode("ascii")
        v = str(value).encode("utf-8")
        parts += (k, len(v).to_bytes(4, "big"), v)
    return hashlib.sha256(b"".join(parts)).digest()


def entry_hash(entry: Entry, prev_hash: bytes | None = None) -> bytes:
    """chain_hash(prev_hash, hash_fields(entry)), without the intermediate dict (the hot path)."""
    return values_hash(entry.prev_hash if prev_hash is None else prev_hash, _hashed_values(entry))


def values_hash(prev_hash: bytes, values: Iterable[object],
                sha256: Callable[[bytes], Any] = hashlib.sha256) -> bytes:
    """chain_hash of the HASHED_FIELDS values in that order (a server checks rows without making
    Entry values of them); ``sha256``: the implementation (new_entry_sha256 for a new entry)."""
    if len(prev_hash) != 32:
        raise ValueError("prev_hash must be 32 bytes")
    parts = [_DOMAIN, bytes(prev_hash).decode("latin-1")]
    add = parts.append
    for prefix, value in zip(_PREFIXES, values):
        if value is None:
            continue
        v = value if type(value) is str else str(value)
        if not v.isascii():
            v = v.encode("utf-8").decode("latin-1")
        n = len(v)
        add(prefix)
        add(_LEN4[n] if n < 1024 else n.to_bytes(4, "big").decode("latin-1"))
        add(v)
    return sha256("".join(parts).encode("latin-1")).digest()


# A new entry's own fields, in Entry's order: what record() and follow-ups give (the seq, the sealed
# blob's digest and the links are added by `link`; the batch comes later, from the server)
LINK_FIELDS = ENTRY_FIELDS[1:ENTRY_FIELDS.index("sealed_sha256")]
_hashed_of_values = operator.itemgetter(*(ENTRY_FIELDS.index(name) for name in HASHED_FIELDS))
_SLOT_SETTERS = tuple(getattr(Entry, name).__set__ for name in ENTRY_FIELDS)
_new_object = object.__new__


def link(prev_seq: int, prev_hash: bytes, values: tuple, sealed: bytes | None, digest: str | None = None) -> Entry:
    """The entry after the one with ``prev_seq`` and ``prev_hash``: ``values`` (LINK_FIELDS, in
    order), ``sealed`` and its digest (``digest``: sealed_digest(sealed), when the caller made it
    already), hashed. A scan's hot path: the values are hashed as they are, and the frozen Entry is
    filled through its slots (Entry(...) sets its 22 fields one object.__setattr__ at a time: twice
    the cost), once, before anyone sees it; what ``Entry.__post_init__`` would add (the blob's
    digest) is computed here (tests/test_entry.py compares the two ways)."""
    if digest is None and sealed is not None:
        digest = sealed_digest(sealed, new_entry_sha256)
    values = (prev_seq + 1, *values, digest, None, prev_hash)
    values += (values_hash(prev_hash, _hashed_of_values(values), new_entry_sha256), sealed)
    entry = _new_object(Entry)
    for set_slot, value in zip(_SLOT_SETTERS, values):
        set_slot(entry, value)
    return entry


def _encoded(prefix: bytes, values: Sequence[object]) -> list[bytes]:
    """One field's part of the hash input for each of ``values`` (b"" for None), as values_hash
    writes it, value by value."""
    texts = [None if v is None else (v if type(v) is str else str(v)).encode("utf-8") for v in values]
    return [b"" if v is None else prefix + (_LEN4_BYTES[n] if (n := len(v)) < 1024 else n.to_bytes(4, "big")) + v
            for v in texts]


def _column_parts(prefix: bytes, values: Sequence[object]) -> list[bytes | Iterable[bytes]]:
    """A column's parts of each row's hash input: bytes for a part the same in every row, else an
    iterable with a part for each row. A value in every row (a device's checkpoint, its reader)
    encoded once; a column with few distinct values or with None each distinct value once; any
    other by maps in C, no Python step per value."""
    n = len(values)
    if n > 1 and values.count(values[0]) == n:
        return [_encoded(prefix, values[:1])[0]]
    distinct = set(values)
    if None in distinct or 4 * len(distinct) <= n:
        enc = dict(zip(distinct, _encoded(prefix, list(distinct)), strict=True))
        return [list(map(enc.__getitem__, values))]
    strings: Iterable[str] = values if set(map(type, values)) == {str} else map(str, values)  # type: ignore[assignment]
    texts = list(map(str.encode, strings))
    lengths = list(map(len, texts))
    words = map(_LEN4_BYTES.__getitem__, lengths) if max(lengths) < 1024 else [n.to_bytes(4, "big") for n in lengths]
    return [prefix, words, texts]


def column_hashes(prev_hashes: Sequence[bytes], columns: Sequence[Sequence[object]]) -> list[bytes]:
    """values_hash of many rows given column by column (``columns``: the HASHED_FIELDS values in
    that order, each as long as ``prev_hashes``): the same digests, a few times faster for a
    batch, as every field is encoded in one pass over its column, and parts the same in every row
    (adjacent constant columns) are joined once."""
    if len(columns) != len(_PREFIX_BYTES):
        raise ValueError(f"{len(_PREFIX_BYTES)} columns are hashed, not {len(columns)}")
    if any(len(p) != 32 for p in prev_hashes):
        raise ValueError("prev_hash must be 32 bytes")
    n = len(prev_hashes)
    if any(len(col) != n for col in columns):
        raise ValueError("every column must be as long as prev_hashes")
    parts: list[bytes | Iterable[bytes]] = [HASH_DOMAIN, prev_hashes]
    for prefix, col in zip(_PREFIX_BYTES, columns, strict=True):
        for part in _column_parts(prefix, col):
            if isinstance(part, bytes) and isinstance(parts[-1], bytes):
                parts[-1] += part
            else:
                parts.append(part)
    rows = zip(*(itertools.repeat(p, n) if isinstance(p, bytes) else p for p in parts))
    return list(map(_digest, map(hashlib.sha256, map(b"".join, rows))))


_digest = operator.methodcaller("digest")


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where the chain kept in the log starts: the last purged entry (seq 0 + GENESIS if none)."""

    seq: int = 0
    hash: bytes = GENESIS
    purged: int = 0


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Result of checking a chain: ``ok``, how many entries were checked, and the first problem."""

    ok: bool
    checked: int
    first_seq: int | None
    last_seq: int | None
    anchor_seq: int | None
    bad_seq: int | None = None
    problem: str = ""  # "gap" | "relinked" | "altered" | "order" (stable codes)
    detail: str = ""


def verify_chain(entries: Iterable[Entry], anchor: Anchor | None = None) -> ChainReport:
    """Check seq continuity, prev_hash links and every hash, in seq order.

    With ``anchor`` None (an export that may start anywhere) the first entry's prev_hash is taken
    as given; otherwise the first entry must follow the anchor.
    """
    prev_seq = anchor.seq if anchor is not None else None
    prev_hash = anchor.hash if anchor is not None else None
    first = last = None
    n = 0
    for e in entries:
        if prev_seq is not None and e.seq != prev_seq + 1:
            problem = "gap" if e.seq > prev_seq + 1 else "order"
            return ChainReport(False, n, first, last, anchor.seq if anchor else None, e.seq, problem,
                               f"expected seq {prev_seq + 1}, found {e.seq}")
        if prev_hash is not None and e.prev_hash != prev_hash:
            return ChainReport(False, n, first, last, anchor.seq if anchor else None, e.seq, "relinked",
                               f"seq {e.seq} does not link to the entry before it")
        if e.computed_hash() != e.hash:
            return ChainReport(False, n, first, last, anchor.seq if anchor else None, e.seq, "altered",
                               f"seq {e.seq} does not match its hash")
        if first is None:
            first = e.seq
        last = e.seq
        prev_seq, prev_hash = e.seq, e.hash
        n += 1
    return ChainReport(True, n, first, last, anchor.seq if anchor else None)


# ---------------------------------------------------------------- time


def iso_ms(at_ms: int) -> str:
    """UTC ISO 8601 with milliseconds and a Z: 2025-06-15T15:06:40.123Z."""
    secs, ms = divmod(at_ms, 1000)
    if 0 <= at_ms <= MAX_AT_MS:
        t = time.gmtime(secs)
        return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
                f"{t.tm_sec:02d}.{ms:03d}Z")
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=at_ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{3})Z", re.ASCII)


def parse_iso_ms(text: str) -> int:
    m = _ISO.fullmatch(text)
    if not m:
        raise ExportFormatError(f"time {text[:40]!r} is not YYYY-MM-DDTHH:MM:SS.mmmZ")
    y, mo, d, h, mi, s, ms = (int(g) for g in m.groups())
    try:
        moment = dt.datetime(y, mo, d, h, mi, s, tzinfo=dt.UTC)
    except ValueError:
        raise ExportFormatError(f"time {text[:40]!r} is not a valid date") from None
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86400 + delta.seconds) * 1000 + ms


MIN_AT_MS = 0
MAX_AT_MS = 253402300799999  # 9999-12-31T23:59:59.999Z


# ---------------------------------------------------------------- export


_export_sources = operator.attrgetter(*("at_ms" if n == "at" else n for n in EXPORT_FIELDS))


def to_export_dict(entry: Entry) -> dict:
    """The export record of an entry: no sealed blob, only whether there is one and its digest."""
    d = dict(zip(EXPORT_FIELDS, _export_sources(entry)))
    d["at"], d["prev_hash"], d["hash"] = iso_ms(entry.at_ms), entry.prev_hash.hex(), entry.hash.hex()
    return d


_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)
_CARD_ID = re.compile(r"(?:[0-9a-f]{2}){1,256}", re.ASCII)
_REQUIRED_TEXT = ("device_id", "checkpoint_id", "source_id")
# the fields taken from an export record as they are (once checked)
_EXPORTED_UNCHANGED = tuple(n for n in EXPORT_FIELDS if n in ENTRY_FIELDS
                            and n not in ("sealed_sha256", "prev_hash", "hash"))
_OPTIONAL_TEXT = ("format", "issuer", "batch_id")


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ExportFormatError(what)


def from_export_dict(d: Mapping) -> Entry:
    """An Entry (without the sealed blob) from an export record; ExportFormatError if malformed."""
    _need(isinstance(d, Mapping), "an export record must be an object")
    keys = set(d)
    _need(keys == set(EXPORT_FIELDS), f"export record fields differ: "
          f"missing {sorted(set(EXPORT_FIELDS) - keys)[:5]}, unexpected {len(keys - set(EXPORT_FIELDS))}")
    seq = d["seq"]
    _need(type(seq) is int and 1 <= seq < 1 << 63, "seq must be a positive integer")
    for name in _REQUIRED_TEXT:
        _need(isinstance(d[name], str), f"{name} must be text")
    for name in _OPTIONAL_TEXT:
        _need(d[name] is None or isinstance(d[name], str), f"{name} must be text or null")
    for name in ("entry_id",):
        _need(isinstance(d[name], str) and bool(_UUID.fullmatch(d[name])), f"{name} must be a UUID")
    _need(d["ref_entry_id"] is None or (isinstance(d["ref_entry_id"],
                                                   str) and bool(_UUID.fullmatch(d["ref_entry_id"]))),
          "ref_entry_id must be a UUID or null")
    _need(d["direction"] in DIRECTIONS, "direction must be in or out")
    _need(d["clock"] in CLOCK_STATES, "clock must be synced, unsynced or unknown")
    _need(d["source"] in SOURCES, "unknown source")
    _need(d["decision"] in DECISIONS, "unknown decision")
    _need(d["reason"] in REASONS, "unknown reason")
    _need(d["kind"] is None or d["kind"] in FOLLOWUP_KINDS, "unknown kind")
    _need(d["card_id"] is None or (isinstance(d["card_id"], str) and bool(_CARD_ID.fullmatch(d["card_id"]))),
          "card_id must be lowercase hex or null")
    kid = d["kid"]
    if kid is not None:
        _need(isinstance(kid, str) and len(kid) <= 512, "kid must be base64 text or null")
        try:
            base64.b64decode(kid, validate=True)
        except (binascii.Error, ValueError):
            raise ExportFormatError("kid must be base64") from None
    _need(isinstance(d["at"], str), "at must be text")
    at_ms = parse_iso_ms(d["at"])
    _need(MIN_AT_MS <= at_ms <= MAX_AT_MS, "at out of range")
    holder, digest = d["holder"], d["sealed_sha256"]
    _need(holder in ("sealed", "none"), "holder must be sealed or none")
    if holder == "sealed":
        _need(isinstance(digest, str) and bool(_HEX64.fullmatch(digest)), "sealed_sha256 must be 64 hex digits")
    else:
        _need(digest is None, "sealed_sha256 must be null when holder is none")
    hashes = []
    for name in ("prev_hash", "hash"):
        v = d[name]
        _need(isinstance(v, str) and bool(_HEX64.fullmatch(v)), f"{name} must be 64 hex digits")
        hashes.append(bytes.fromhex(v))
    same = {name: d[name] for name in _EXPORTED_UNCHANGED}
    return Entry(**same, at_ms=at_ms, sealed_sha256=digest, prev_hash=hashes[0], hash=hashes[1])


# CSV cells: None is an empty cell. Text is escaped reversibly: "\" -> "\\", control and bidi
# characters -> "\uXXXX"; a cell that would be empty or start with = + - @ ' (spreadsheet
# formulas) gets a leading "'", removed again on import.
_CSV_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
_CSV_UNESCAPE = re.compile(r"\\(\\|u[0-9a-f]{4})")
_FORMULA = ("=", "+", "-", "@", "'")
_INT_FIELDS = ("seq",)


def _csv_escape_char(m: re.Match[str]) -> str:
    c = m.group()
    return "\\\\" if c == "\\" else f"\\u{ord(c):04x}"


def csv_cell(value: object) -> str:
    if value is None:
        return ""
    text = _CSV_UNSAFE.sub(_csv_escape_char, str(value))
    if text == "" or text.startswith(_FORMULA):
        text = "'" + text
    return text


def _csv_unescape_char(m: re.Match[str]) -> str:
    g = m.group(1)
    return "\\" if g == "\\" else chr(int(g[1:], 16))


def csv_value(cell: str) -> str | None:
    if cell == "":
        return None
    if cell.startswith("'"):
        cell = cell[1:]
    # every backslash written by csv_cell starts a \\ or \uXXXX escape
    if "\\" in _CSV_UNESCAPE.sub("", cell):
        raise ExportFormatError("stray backslash in a CSV cell")
    return _CSV_UNESCAPE.sub(_csv_unescape_char, cell)


def write_export(entries: Iterable[Entry], out: IO[str], fmt: str = "jsonl") -> int:
    """Write entries as JSONL (one object per line) or CSV (header + rows); returns the count."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    n = 0
    if fmt == "jsonl":
        for e in entries:
            out.write(json_line(to_export_dict(e)))
            out.write("\n")
            n += 1
        return n
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_FIELDS)
    for e in entries:
        d = to_export_dict(e)
        writer.writerow([csv_cell(d[k]) for k in EXPORT_FIELDS])
        n += 1
    return n


def read_export(lines: Iterable[str], fmt: str = "jsonl") -> Iterator[Entry]:
    """Entries back from an export (what write_export wrote); ExportFormatError on anything else."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    if fmt == "jsonl":
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                raise ExportFormatError(f"line {lineno}: not JSON") from None
            try:
                yield from_export_dict(doc)
            except ExportFormatError as exc:
                raise ExportFormatError(f"line {lineno}: {exc}") from None
        return
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        if tuple(header) != EXPORT_FIELDS:
            raise ExportFormatError("CSV header is not the export header")
        for row in reader:
            if len(row) != len(EXPORT_FIELDS):
                raise ExportFormatError(f"line {reader.line_num}: {len(row)} cells, expected {len(EXPORT_FIELDS)}")
            record: dict = {}
            for k, cell in zip(EXPORT_FIELDS, row):
                value = csv_value(cell)
                if k in _INT_FIELDS and value is not None:
                    if not value.isascii() or not value.isdigit():
                        raise ExportFormatError(f"line {reader.line_num}: {k} is not an integer")
                    record[k] = int(value)
                else:
                    record[k] = value
            try:
                yield from_export_dict(record)
            except ExportFormatError as exc:
                raise ExportFormatError(f"line {reader.line_num}: {exc}") from None
    except csv.Error as exc:
        raise ExportFormatError(f"CSV: {exc}") from None


def export_text(entries: Iterable[Entry], fmt: str = "jsonl") -> str:
    """The export as one string (small exports and tests)."""
    buf = io.StringIO()
    write_export(entries, buf, fmt)
    return buf.getvalue()
