"""Signed batches: a contiguous run of entries as the exact bytes a device sends (pure functions).

Layout (docs/sync-protocol.md#batch-format)::

    "CKB1" | u32be header length | header (canonical JSON) | body (zlib) | Ed25519 signature (64)

The signature covers every byte before it. The header names the device, the run (first_seq,
last_seq, count), the chain links (prev_hash of the first entry, hash of the last) and the body's
decompressed length. The body is JSON Lines, one array per entry in ROW_FIELDS order. Parsing
checks the signature before it decompresses anything, and bounds every size.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.errors import CheckpointError
from scanner.cards.scan import DIRECTIONS, SOURCES
from scanner.store.clock import STATES as CLOCK_STATES
from scanner.store.entry import (
    DECISIONS,
    FOLLOWUP_KINDS,
    MAX_AT_MS,
    MIN_AT_MS,
    REASONS,
    Entry,
)
from scanner.store.sealing import MAX_BLOB
from sync.wire import protocol

MAGIC = b"CKB1"
FORMAT_VERSION = 1
SIG_LEN = 64
MAX_HEADER = 4096
FILE_SUFFIX = ".ckb"  # a batch kept as a file (offline export, quarantine): exactly the bytes a push sends
MAX_ROW_BYTES = 16 * 1024
MAX_RAW_BYTES = 64 * 1024 * 1024
CHUNK = 256  # rows serialised per step (callers may yield between steps)

ROW_FIELDS = ("seq", "entry_id", "device_id", "checkpoint_id", "direction", "at_ms", "clock", "source",
              "source_id", "decision", "reason", "format", "card_id", "issuer", "kid", "kind",
              "ref_entry_id", "sealed", "hash")
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
class ParsedBatch:
    """A batch whose signature checked out, with its entries (prev_hash filled in from the chain)."""

    info: BatchInfo
    entries: tuple[Entry, ...]
    size: int


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


def build(entries: Sequence[Entry], key: ed25519.Ed25519PrivateKey, *, device_id: str, created_ms: int,
          level: int = 6, step: Callable[[], None] | None = None) -> SignedBatch:
    """Sign a contiguous run of entries (seq order, no gaps) as one batch.

    ``step`` is called between chunks of CHUNK rows, so a caller in a thread can yield the GIL.
    """
    if not entries:
        raise ValueError("a batch needs at least one entry")
    if len(entries) > protocol.MAX_BATCH_ENTRIES:
        raise ValueError(f"a batch holds at most {protocol.MAX_BATCH_ENTRIES} entries")
    first, last = entries[0], entries[-1]
    if last.seq - first.seq + 1 != len(entries):
        raise ValueError("a batch must be a contiguous run of entries")
    comp = zlib.compressobj(level)
    parts: list[bytes] = []
    raw_len = 0
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    prev = first.seq - 1
    for i in range(0, len(entries), CHUNK):
        chunk = entries[i:i + CHUNK]
        for e in chunk:
            if e.seq != prev + 1:
                raise ValueError("a batch must be a contiguous run of entries")
            prev = e.seq
        text = "\n".join(dumps(_row(e)) for e in chunk) + "\n"
        raw = text.encode("utf-8")
        raw_len += len(raw)
        parts.append(comp.compress(raw))
        if step is not None:
            step()
    parts.append(comp.flush())
    body = b"".join(parts)
    info = BatchInfo(device_id, batch_id_for(device_id, first.seq, last.seq, last.hash), first.seq,
                     last.seq, len(entries), first.prev_hash, last.hash, raw_len, created_ms)
    header = json.dumps({
        "v": FORMAT_VERSION, "device_id": info.device_id, "batch_id": info.batch_id,
        "first_seq": info.first_seq, "last_seq": info.last_seq, "count": info.count,
        "prev_hash": info.prev_hash.hex(), "last_hash": info.last_hash.hex(), "raw_len": raw_len,
        "created_ms": created_ms,
    }, sort_keys=True, separators=(",", ":")).encode("ascii")
    signed = MAGIC + struct.pack(">I", len(header)) + header + body
    data = signed + key.sign(signed)
    if len(data) > protocol.MAX_BATCH_BYTES:
        raise ValueError(f"batch of {len(data)} bytes exceeds {protocol.MAX_BATCH_BYTES}")
    return SignedBatch(data, info)


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
    if h["v"] != FORMAT_VERSION:
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
                     last_hash, h["raw_len"], h["created_ms"])


def verify_signature(data: bytes, public_key: ed25519.Ed25519PublicKey) -> None:
    try:
        public_key.verify(data[-SIG_LEN:], data[:-SIG_LEN])
    except InvalidSignature:
        raise _fail("batch signature does not verify against the device key",
                    protocol.E_BAD_SIGNATURE) from None


def open_batch(data: bytes, public_key: ed25519.Ed25519PublicKey) -> ParsedBatch:
    """Check the signature, then decompress (bounded) and parse every entry.

    The entries' prev_hash links are filled in from the header and the previous row's hash; the
    hashes themselves are the device's and are checked by the caller (scanner.store.entry.verify_chain).
    """
    info = read_header(data)
    verify_signature(data, public_key)
    (hlen,) = struct.unpack(">I", data[4:8])
    body = data[8 + hlen:-SIG_LEN]
    d = zlib.decompressobj()
    try:
        raw = d.decompress(body, info.raw_len + 1)
    except zlib.error:
        raise _fail("batch body is not zlib data") from None
    if len(raw) != info.raw_len or d.unconsumed_tail or not d.eof or d.unused_data:
        raise _fail("batch body length differs from its header")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail("batch body is not UTF-8") from None
    del raw
    lines = text.split("\n")
    if lines[-1] != "" or len(lines) - 1 != info.count:
        raise _fail(f"batch body holds {len(lines) - 1} rows, header says {info.count}")
    entries = []
    prev_hash = info.prev_hash
    for i, line in enumerate(lines[:-1]):
        if len(line) > MAX_ROW_BYTES:
            raise _fail(f"row {i} is too long")
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise _fail(f"row {i} is not JSON") from None
        e = _entry(row, i, info, prev_hash)
        entries.append(e)
        prev_hash = e.hash
    if entries[-1].hash != info.last_hash:
        raise _fail("the last entry's hash differs from the header")
    return ParsedBatch(info, tuple(entries), len(data))


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)
_CARD = re.compile(r"(?:[0-9a-f]{2}){1,256}", re.ASCII)


def _text(v: object, limit: int = 256, optional: bool = False) -> bool:
    if v is None:
        return optional
    return isinstance(v, str) and 0 < len(v) <= limit


def _entry(row: object, i: int, info: BatchInfo, prev_hash: bytes) -> Entry:
    if not isinstance(row, list) or len(row) != len(ROW_FIELDS):
        raise _fail(f"row {i} must be an array of {len(ROW_FIELDS)} values")
    (seq, entry_id, device_id, checkpoint_id, direction, at_ms, clock, source, source_id, decision,
     reason, fmt, card_id, issuer, kid, kind, ref_entry_id, sealed, hash_hex) = row
    problems = []
    if type(seq) is not int or seq != info.first_seq + i:
        problems.append("seq out of order")
    if not (isinstance(entry_id, str) and _UUID.fullmatch(entry_id)):
        problems.append("entry_id")
    if device_id != info.device_id:
        problems.append("device_id differs from the batch's device")
    if not _text(checkpoint_id):
        problems.append("checkpoint_id")
    if direction not in DIRECTIONS:
        problems.append("direction")
    if type(at_ms) is not int or not MIN_AT_MS <= at_ms <= MAX_AT_MS:
        problems.append("at_ms")
    if clock not in CLOCK_STATES:
        problems.append("clock")
    if source not in SOURCES:
        problems.append("source")
    if not _text(source_id):
        problems.append("source_id")
    if decision not in DECISIONS:
        problems.append("decision")
    if reason not in REASONS:
        problems.append(f"reason {str(reason)[:32]!r}")
    if not _text(fmt, 32, True):
        problems.append("format")
    if not (card_id is None or (isinstance(card_id, str) and _CARD.fullmatch(card_id))):
        problems.append("card_id")
    if not _text(issuer, 256, True):
        problems.append("issuer")
    if not _text(kid, 512, True):
        problems.append("kid")
    if not (kind is None or kind in FOLLOWUP_KINDS):
        problems.append("kind")
    if not (ref_entry_id is None or (isinstance(ref_entry_id, str) and _UUID.fullmatch(ref_entry_id))):
        problems.append("ref_entry_id")
    if not (isinstance(hash_hex, str) and _HEX64.fullmatch(hash_hex)):
        problems.append("hash")
    blob = None
    if sealed is not None:
        if not isinstance(sealed, str) or len(sealed) > (MAX_BLOB * 4 // 3 + 4):
            problems.append("sealed")
        else:
            try:
                blob = binascii.a2b_base64(sealed, strict_mode=True)
            except (binascii.Error, ValueError):
                problems.append("sealed")
    if kid is not None and isinstance(kid, str) and "kid" not in problems:
        try:
            binascii.a2b_base64(kid, strict_mode=True)
        except (binascii.Error, ValueError):
            problems.append("kid")
    if problems:
        raise _fail(f"row {i}: bad {', '.join(problems[:4])}")
    return Entry(seq=seq, entry_id=entry_id, device_id=device_id, checkpoint_id=checkpoint_id,
                 direction=direction, at_ms=at_ms, clock=clock, source=source, source_id=source_id,
                 decision=decision, reason=reason, format=fmt, card_id=card_id, issuer=issuer, kid=kid,
                 kind=kind, ref_entry_id=ref_entry_id, prev_hash=prev_hash, hash=bytes.fromhex(hash_hex),
                 sealed=blob)
