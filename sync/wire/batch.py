"""Signed batches: a contiguous run of entries as the exact bytes a device sends (pure functions).

Layout (docs/sync-protocol.md#batch-format)::

    "CKB1" | u32be header length | header (canonical JSON) | body (zlib) | Ed25519 signature (64)

The signature covers every byte before it. The header names the device, the run (first_seq,
last_seq, count), the chain links (prev_hash of the first entry, hash of the last) and the body's
decompressed length. The body, in format 1, is JSON Lines, one array per entry in ROW_FIELDS order
(sealed in base64, hash in hex); in format 2 (header "v": 2) it is one MessagePack array of such
arrays with sealed and hash as bytes: less to inflate, decode and convert per entry. Parsing checks
the signature before it decompresses anything, and bounds every size; rows are decoded and
type-checked by msgspec in one pass and kept as tuples (a server reads many thousands a second),
turned into Entry values only where a caller asks for them.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import operator
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

import msgspec

from scanner.base.errors import CheckpointError
from scanner.base.lazy import lazy_module
from scanner.cards.scan import DIRECTIONS, SOURCES
from scanner.store.clock import STATES as CLOCK_STATES
from scanner.store.entry import (
    DECISIONS,
    FOLLOWUP_KINDS,
    MAX_AT_MS,
    MAX_BLOB,
    MIN_AT_MS,
    REASONS,
    STORED_FIELDS,
    Entry,
)
from sync.wire import protocol

_InflateError: type[Exception]
try:  # ISA-L's inflate (the server extra): the same zlib streams and bounds in half zlib's time
    from isal import isal_zlib

    _inflater = isal_zlib.decompressobj
    _InflateError = isal_zlib.error  # type: ignore[assignment]  # a class; its stub says an instance
except ImportError:  # a device, which builds batches and never opens one at this rate
    _inflater = zlib.decompressobj  # type: ignore[assignment]
    _InflateError = zlib.error

if TYPE_CHECKING:
    from cryptography import exceptions as crypto_errors
    from cryptography.hazmat.primitives.asymmetric import ed25519
else:  # loaded at the first signature: the batch builder process assembles batches and never needs OpenSSL (~11 MB)
    crypto_errors = lazy_module("cryptography.exceptions")

MAGIC = b"CKB1"
FORMAT_VERSION = 1  # what build() writes unless told (every server reads it)
FORMAT_VERSIONS = (1, 2)  # what open_batch() reads
SIG_LEN = 64
MAX_HEADER = 4096
FILE_SUFFIX = ".ckb"  # a batch kept as a file (offline export, quarantine): exactly the bytes a push sends
MAX_RAW_BYTES = 64 * 1024 * 1024
CHUNK = 256  # rows serialised per step (callers may yield between steps)

ROW_FIELDS = ("seq", "entry_id", "device_id", "checkpoint_id", "direction", "at_ms", "clock", "source",
              "source_id", "decision", "reason", "format", "card_id", "issuer", "kid", "kind",
              "ref_entry_id", "sealed", "hash")
# What a parsed row holds, in this order: an entry's stored fields but the batch it came in
# (the server's columns, sync/server/sqlstorage.py ENTRY_COLUMNS, add batch_id and received_ms).
RECEIVED_FIELDS = tuple(n for n in STORED_FIELDS if n != "batch_id")
_HASH = RECEIVED_FIELDS.index("hash")
HEADER_FIELDS = ("v", "device_id", "batch_id", "first_seq", "last_seq", "count", "prev_hash",
                 "last_hash", "raw_len", "created_ms")


class BatchError(CheckpointError):
    """A batch refused as a whole; ``code`` is a protocol error code (batch_malformed,
    batch_too_large, bad_signature, unknown_device, device_revoked)."""

    code = protocol.E_MALFORMED


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """What the (signed) header of a batch says."""

    device_id: str
    batch_id: str
    first_seq: int
    last_seq: int
    count: int
    prev_hash: bytes
    last_hash: bytes
    raw_len: int
    created_ms: int
    version: int = FORMAT_VERSION

    @property
    def file_name(self) -> str:
        """The batch's file name, FIRST-LAST-BATCHID.ckb (sequence numbers zero-padded: names sort in order)."""
        return f"{self.first_seq:012d}-{self.last_seq:012d}-{self.batch_id}{FILE_SUFFIX}"


@dataclass(frozen=True, slots=True)
class SignedBatch:
    """A batch ready to send or write to a file: ``data`` are the exact signed bytes."""

    data: bytes
    info: BatchInfo


@dataclass(frozen=True, slots=True)
class UnsignedBatch:
    """A batch before its signature: ``signed`` are the exact bytes the signature will cover."""

    signed: bytes
    info: BatchInfo


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    """A batch whose signature checked out: its rows (RECEIVED_FIELDS values, seq order, prev_hash
    filled in from the chain)."""

    info: BatchInfo
    rows: tuple[tuple, ...]
    size: int

    @property
    def entries(self) -> tuple[Entry, ...]:
        """The rows as Entry values (made on each call)."""
        return tuple(Entry(**dict(zip(RECEIVED_FIELDS, r, strict=True))) for r in self.rows)


def batch_id_for(device_id: str, first_seq: int, last_seq: int, last_hash: bytes) -> str:
    """Deterministic: the same run of the same device always gets the same id (32 hex digits)."""
    h = hashlib.sha256(b"CKB1-id\n" + device_id.encode("utf-8") + b"\n" +
                       f"{first_seq}-{last_seq}\n".encode("ascii") + last_hash)
    return h.hexdigest()[:32]


def _row(e: Entry) -> list:
    sealed = None if e.sealed is None else base64.b64encode(e.sealed).decode("ascii")
    return [e.seq, e.entry_id, e.device_id, e.checkpoint_id, e.direction, e.at_ms, e.clock, e.source,
            e.source_id, e.decision, e.reason, e.format, e.card_id, e.issuer, e.kid, e.kind,
            e.ref_entry_id, sealed, e.hash.hex()]


def _row2(e: Entry) -> list:
    return [e.seq, e.entry_id, e.device_id, e.checkpoint_id, e.direction, e.at_ms, e.clock, e.source,
            e.source_id, e.decision, e.reason, e.format, e.card_id, e.issuer, e.kid, e.kind,
            e.ref_entry_id, e.sealed, e.hash]


def build(entries: Sequence[Entry], key: ed25519.Ed25519PrivateKey, *, device_id: str, created_ms: int,
          level: int = 6, step: Callable[[], None] | None = None, version: int = FORMAT_VERSION) -> SignedBatch:
    """Sign a contiguous run of entries (seq order, no gaps) as one batch in format ``version``
    (FORMAT_VERSIONS; 2 only for a server that reads it).

    ``step`` is called between chunks of CHUNK rows, so a caller in a thread can yield the GIL.
    """
    return sign(assemble(entries, device_id=device_id, created_ms=created_ms, level=level, step=step,
                         version=version), key)


def sign(unsigned: UnsignedBatch, key: ed25519.Ed25519PrivateKey) -> SignedBatch:
    """The batch ``unsigned`` with its Ed25519 signature (OpenSSL does not hold the GIL meanwhile)."""
    data = unsigned.signed + key.sign(unsigned.signed)
    if len(data) > protocol.MAX_BATCH_BYTES:
        raise ValueError(f"batch of {len(data)} bytes exceeds {protocol.MAX_BATCH_BYTES}")
    return SignedBatch(data, unsigned.info)


def assemble(entries: Sequence[Entry], *, device_id: str, created_ms: int, level: int = 6,
             step: Callable[[], None] | None = None, version: int = FORMAT_VERSION) -> UnsignedBatch:
    """The header and compressed body of a batch of ``entries``, all but the signature (build()):
    what the builder process makes without the device key or a cryptography library."""
    if not entries:
        raise ValueError("a batch needs at least one entry")
    if len(entries) > protocol.MAX_BATCH_ENTRIES:
        raise ValueError(f"a batch holds at most {protocol.MAX_BATCH_ENTRIES} entries")
    if version not in FORMAT_VERSIONS:
        raise ValueError(f"batch format version {version} is not one of {FORMAT_VERSIONS}")
    first, last = entries[0], entries[-1]
    if last.seq - first.seq + 1 != len(entries):
        raise ValueError("a batch must be a contiguous run of entries")
    comp = zlib.compressobj(level)
    parts: list[bytes] = []
    raw_len = 0
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    packs = _PACK.encode
    if version == 2:  # one MessagePack array (array 32 header) of the rows, each packed on its own
        head = b"\xdd" + struct.pack(">I", len(entries))
        raw_len += len(head)
        parts.append(comp.compress(head))
    prev = first.seq - 1
    for i in range(0, len(entries), CHUNK):
        chunk = entries[i:i + CHUNK]
        for e in chunk:
            if e.seq != prev + 1:
                raise ValueError("a batch must be a contiguous run of entries")
            prev = e.seq
        if version == 2:
            raw = b"".join(packs(_row2(e)) for e in chunk)
        else:
            raw = ("\n".join(dumps(_row(e)) for e in chunk) + "\n").encode("utf-8")
        raw_len += len(raw)
        parts.append(comp.compress(raw))
        if step is not None:
            step()
    parts.append(comp.flush())
    body = b"".join(parts)
    info = BatchInfo(device_id, batch_id_for(device_id, first.seq, last.seq, last.hash), first.seq,
                     last.seq, len(entries), first.prev_hash, last.hash, raw_len, created_ms, version)
    header = json.dumps({
        "v": version, "device_id": info.device_id, "batch_id": info.batch_id,
        "first_seq": info.first_seq, "last_seq": info.last_seq, "count": info.count,
        "prev_hash": info.prev_hash.hex(), "last_hash": info.last_hash.hex(), "raw_len": raw_len,
        "created_ms": created_ms,
    }, sort_keys=True, separators=(",", ":")).encode("ascii")
    return UnsignedBatch(MAGIC + struct.pack(">I", len(header)) + header + body, info)


def _fail(message: str, code: str = protocol.E_MALFORMED) -> BatchError:
    return BatchError(message, code=code)


_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
_BATCH_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)


def header_end(prefix: bytes, total: int) -> int:
    """How many leading bytes of a batch of ``total`` bytes hold its header, from its first 8 bytes
    (``prefix``); BatchError if they are not the start of a batch."""
    if total > protocol.MAX_BATCH_BYTES:
        raise _fail(f"batch larger than {protocol.MAX_BATCH_BYTES} bytes", protocol.E_TOO_LARGE)
    if total < 8 + SIG_LEN or len(prefix) < 8 or prefix[:4] != MAGIC:
        raise _fail("not a CKB1 batch")
    (hlen,) = struct.unpack(">I", prefix[4:8])
    if hlen > MAX_HEADER or 8 + hlen + SIG_LEN > total:
        raise _fail("batch header length out of bounds")
    return 8 + hlen


def read_header(data: bytes, total: int | None = None) -> BatchInfo:
    """The header of a batch, bounded and type-checked, WITHOUT checking the signature (to find
    the device's key). ``data`` may be only the first header_end() bytes of a batch of ``total``
    bytes (the server looks before it reads the rest). BatchError if the bytes are not a batch."""
    total = len(data) if total is None else total
    hlen = header_end(data[:8], total) - 8
    if len(data) < 8 + hlen:
        raise _fail("batch header truncated")
    try:
        h = json.loads(data[8:8 + hlen].decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _fail("batch header is not ASCII JSON") from None
    if not isinstance(h, dict) or set(h) != set(HEADER_FIELDS):
        raise _fail("batch header fields differ")
    if type(h["v"]) is not int or h["v"] not in FORMAT_VERSIONS:
        raise _fail(f"batch format version {h['v']!r} is not supported")
    ints = ("first_seq", "last_seq", "count", "raw_len", "created_ms")
    if not all(type(h[k]) is int and 0 <= h[k] < 1 << 63 for k in ints):
        raise _fail("batch header numbers out of range")
    if not (isinstance(h["device_id"], str) and _ID.fullmatch(h["device_id"])):
        raise _fail("batch header device_id malformed")
    if not (isinstance(h["batch_id"], str) and _BATCH_ID.fullmatch(h["batch_id"])):
        raise _fail("batch header batch_id malformed")
    if not all(isinstance(h[k], str) and _HEX64.fullmatch(h[k]) for k in ("prev_hash", "last_hash")):
        raise _fail("batch header hashes malformed")
    first, last, count = h["first_seq"], h["last_seq"], h["count"]
    if not (1 <= first <= last and count == last - first + 1 and count <= protocol.MAX_BATCH_ENTRIES):
        raise _fail("batch header run is inconsistent")
    if h["raw_len"] > MAX_RAW_BYTES:
        raise _fail("batch body too large when decompressed", protocol.E_TOO_LARGE)
    last_hash = bytes.fromhex(h["last_hash"])
    if h["batch_id"] != batch_id_for(h["device_id"], first, last, last_hash):
        raise _fail("batch id does not match its run")
    return BatchInfo(h["device_id"], h["batch_id"], first, last, count, bytes.fromhex(h["prev_hash"]),
                     last_hash, h["raw_len"], h["created_ms"], h["v"])


def verify_signature(data: bytes, public_key: ed25519.Ed25519PublicKey) -> None:
    try:
        public_key.verify(data[-SIG_LEN:], data[:-SIG_LEN])
    except crypto_errors.InvalidSignature:
        raise _fail("batch signature does not verify against the device key",
                    protocol.E_BAD_SIGNATURE) from None


def open_batch(data: bytes, public_key: ed25519.Ed25519PublicKey, *, header: BatchInfo | None = None) -> ParsedBatch:
    """Check the signature, then decompress (bounded) and parse and validate every row.
    ``header``: what read_header(data) returned, if the caller has it already.

    The rows' prev_hash links are filled in from the header and the previous row's hash; the
    hashes themselves are the device's and are checked by the caller (sync.server.chain).
    """
    info = read_header(data) if header is None else header
    verify_signature(data, public_key)
    (hlen,) = struct.unpack(">I", data[4:8])
    body = data[8 + hlen:-SIG_LEN]
    d = _inflater()
    try:
        raw = d.decompress(body, info.raw_len + 1)
    except _InflateError:
        raise _fail("batch body is not zlib data") from None
    if len(raw) != info.raw_len or d.unconsumed_tail or not d.eof or d.unused_data:
        raise _fail("batch body length differs from its header")
    decoded: list[Any]
    if info.version == 2:
        try:
            decoded = _ROWS2.decode(raw)
        except msgspec.ValidationError as exc:
            raise _fail(_row_problem(str(exc))) from None
        except msgspec.DecodeError as exc:
            raise _fail(f"batch body is not a MessagePack array: {exc}") from None
    else:
        lines = raw.count(b"\n")
        if lines != info.count or not raw.endswith(b"\n"):
            raise _fail(f"batch body holds {lines} rows, header says {info.count}")
        try:
            decoded = _ROWS.decode_lines(raw)
        except msgspec.ValidationError as exc:
            raise _fail(_row_problem(str(exc))) from None
        except msgspec.DecodeError as exc:
            raise _fail(f"batch body is not JSON Lines: {exc}") from None
    del raw
    if len(decoded) != info.count:
        raise _fail(f"batch body holds {len(decoded)} rows, header says {info.count}")
    rows = _received_rows(decoded, info)
    if rows[-1][_HASH] != info.last_hash:
        raise _fail("the last entry's hash differs from the header")
    return ParsedBatch(info, rows, len(data))


_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_uuid = re.compile(_UUID, re.ASCII).fullmatch
_hex = re.compile(r"[0-9a-f]{2,512}", re.ASCII).fullmatch  # a card id: this and an even length (cheaper
# than one pattern of pairs)


def _text(limit: int = 256) -> Any:
    return Annotated[str, msgspec.Meta(min_length=1, max_length=limit)]


# msgspec checks a row against the constrained types below as it decodes; they are built from the
# vocabularies at run time, which a type checker cannot follow, so it sees the plain str they hold
if TYPE_CHECKING:
    _Text: TypeAlias = str
    _Text32: TypeAlias = str
    _Text512: TypeAlias = str
    _Direction: TypeAlias = str
    _Clock: TypeAlias = str
    _Source: TypeAlias = str
    _Decision: TypeAlias = str
    _Reason: TypeAlias = str
    _Kind: TypeAlias = str
else:
    _Text, _Text32, _Text512 = _text(), _text(32), _text(512)
    _Direction, _Clock, _Source = Literal[DIRECTIONS], Literal[CLOCK_STATES], Literal[SOURCES]
    _Decision, _Reason, _Kind = Literal[DECISIONS], Literal[REASONS], Literal[FOLLOWUP_KINDS]


class _WireRow(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True, gc=False):
    """One row of a batch body as it is on the wire (ROW_FIELDS): types, lengths, ranges and the
    closed vocabularies are checked by msgspec as it decodes; what a pattern checks is left to
    _received_rows (cheaper in one pass there)."""

    seq: int
    entry_id: str
    device_id: str
    checkpoint_id: _Text
    direction: _Direction
    at_ms: Annotated[int, msgspec.Meta(ge=MIN_AT_MS, le=MAX_AT_MS)]
    clock: _Clock
    source: _Source
    source_id: _Text
    decision: _Decision
    reason: _Reason
    format: _Text32 | None
    card_id: Annotated[str, msgspec.Meta(min_length=2, max_length=512)] | None
    issuer: _Text | None
    kid: _Text512 | None
    kind: _Kind | None
    ref_entry_id: str | None
    sealed: Annotated[str, msgspec.Meta(max_length=MAX_BLOB * 4 // 3 + 4)] | None
    hash: Annotated[str, msgspec.Meta(min_length=64, max_length=64)]


assert _WireRow.__struct_fields__ == ROW_FIELDS
_ROWS = msgspec.json.Decoder(_WireRow)
# format 2: the same row with the sealed blob and the hash as bytes (MessagePack bin), in one array
_BINARY = {"sealed": Annotated[bytes, msgspec.Meta(max_length=MAX_BLOB)] | None,
           "hash": Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]}
_WireRow2 = msgspec.defstruct(
    "_WireRow2", [(f.name, _BINARY.get(f.name, f.type)) for f in msgspec.structs.fields(_WireRow)],
    array_like=True, forbid_unknown_fields=True, frozen=True, gc=False)
_ROWS2 = msgspec.msgpack.Decoder(list[_WireRow2])  # type: ignore[valid-type]
_PACK = msgspec.msgpack.Encoder()
_AT = re.compile(r"\$\[(\d+)\]\[(\d+)\]")


def _row_problem(message: str) -> str:
    """A decoder's complaint as "row I: bad FIELD (what)"."""
    m = _AT.search(message)
    if m is None:
        return f"batch rows: {message}"
    i, k = int(m.group(1)), int(m.group(2))
    field = ROW_FIELDS[k] if k < len(ROW_FIELDS) else "length"
    return f"row {i}: bad {field} ({message.split(' - at ')[0]})"


def _b64(text: str) -> bytes | None:
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


_uuids = re.compile(rf"(?:{_UUID}\n)*{_UUID}", re.ASCII).fullmatch
_hexes = re.compile(r"[0-9a-f]*", re.ASCII).fullmatch
_astuple = msgspec.structs.astuple
# a row's columns (ROW_FIELDS, then prev_hash last) in RECEIVED_FIELDS order
_as_received = operator.itemgetter(*(ROW_FIELDS.index(n) if n in ROW_FIELDS else -1 for n in RECEIVED_FIELDS))


def _good_uuids(values: Sequence[str]) -> bool:
    """Every value a UUID: each 36 characters and all of them, one a line, match line by line."""
    return not values or (set(map(len, values)) == {36} and _uuids("\n".join(values)) is not None)


def _columns_pass(decoded: list[Any], info: BatchInfo) -> tuple[tuple, ...] | None:
    """The received rows of a format-2 batch whose rows all pass _received_rows' checks, checked
    column by column (each check one pass in C over a column: a server reads many thousands of
    rows a second); None if any row fails one (then _received_rows finds and names it)."""
    n = len(decoded)
    cols = list(zip(*map(_astuple, decoded)))
    (seq, entry_id, device_id, _, _, _, _, _, _, _, _, _, card_id, _, kid, _, ref_entry_id, _,
     hashes) = cols
    cards = [c for c in card_id if c is not None] if None in card_id else card_id
    refs = [r for r in ref_entry_id if r is not None]
    good = (seq == tuple(range(info.first_seq, info.first_seq + n)) and device_id.count(info.device_id) == n
            and _good_uuids(entry_id) and _good_uuids(refs)
            and _hexes("".join(cards)) is not None and not any(map(operator.mod, map(len, cards), itertools.repeat(2)))
            and all(_b64(k) is not None for k in set(kid) if k is not None))
    if not good:
        return None
    cols.append((info.prev_hash, *hashes[:-1]))  # prev_hash: the header's, then each row's hash
    return tuple(zip(*_as_received(cols)))


def _received_rows(decoded: list[Any], info: BatchInfo) -> tuple[tuple, ...]:
    """RECEIVED_FIELDS tuples of decoded rows, after the checks msgspec leaves: sequence, ids,
    hex and base64 fields (format 1: hash and sealed are text there); prev_hash from the header,
    then each row's hash."""
    if info.version == 2 and decoded and (rows := _columns_pass(decoded, info)) is not None:
        return rows
    out = []
    prev_hash = info.prev_hash
    seq = info.first_seq
    device_id = info.device_id
    text = info.version == 1
    kids: dict[str, bool] = {}
    for i, r in enumerate(decoded):
        problems = []
        if r.seq != seq + i:
            problems.append("seq out of order")
        if not _uuid(r.entry_id):
            problems.append("entry_id")
        if r.device_id != device_id:
            problems.append("device_id differs from the batch's device")
        card = r.card_id
        if card is not None and (not _hex(card) or len(card) % 2):
            problems.append("card_id")
        if r.ref_entry_id is not None and not _uuid(r.ref_entry_id):
            problems.append("ref_entry_id")
        if text:
            try:
                digest = bytes.fromhex(r.hash)
            except ValueError:
                digest = b""
            if digest.hex() != r.hash:
                problems.append("hash")
            blob = None
            if r.sealed is not None and (blob := _b64(r.sealed)) is None:
                problems.append("sealed")
        else:
            digest, blob = r.hash, r.sealed
        kid = r.kid
        if kid is not None:
            if (good := kids.get(kid)) is None:
                good = kids[kid] = _b64(kid) is not None  # a device has few key ids: each checked once
            if not good:
                problems.append("kid")
        if problems:
            raise _fail(f"row {i}: bad {', '.join(problems[:4])}")
        out.append((r.seq, r.entry_id, r.device_id, r.checkpoint_id, r.direction, r.at_ms, r.clock, r.source,
                    r.source_id, r.decision, r.reason, r.format, r.card_id, r.issuer, r.kid, r.kind,
                    r.ref_entry_id, prev_hash, digest, blob))
        prev_hash = digest
    return tuple(out)
