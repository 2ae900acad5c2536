"""Per-device chain checks on the server, with the device's own hash (scanner.store.entry.values_hash):
does a batch hash correctly, and does it link to the stored entries on both sides."""
from __future__ import annotations

import hashlib
import operator
from collections.abc import Sequence
from dataclasses import dataclass

from scanner.store.entry import GENESIS, HASHED_FIELDS, column_hashes, values_hash
from sync.wire.batch import RECEIVED_FIELDS


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """``kind``: "altered" (an entry does not match its hash) or "relinked" (an entry does not
    link to the one before it: the chain is broken there), at ``seq``."""

    kind: str
    seq: int
    detail: str


_SEALED_AT = HASHED_FIELDS.index("sealed_sha256")  # derived from the sealed blob, not a column
_before = operator.itemgetter(*(RECEIVED_FIELDS.index(n) for n in HASHED_FIELDS[:_SEALED_AT]))
_after = operator.itemgetter(*(RECEIVED_FIELDS.index(n) for n in HASHED_FIELDS[_SEALED_AT + 1:]))
_SEQ, _PREV, _HASH, _SEALED = (RECEIVED_FIELDS.index(n) for n in ("seq", "prev_hash", "hash", "sealed"))


def row_hash(row: tuple) -> bytes:
    """What the hash of a received row (sync.wire.batch.RECEIVED_FIELDS) must be."""
    sealed = row[_SEALED]
    digest = None if sealed is None else hashlib.sha256(sealed).hexdigest()
    return values_hash(row[_PREV], (*_before(row), digest, *_after(row)))


# where each hashed field is in a received row (None: sealed_sha256, the digest of the sealed blob)
_HASHED_AT = tuple(None if n == "sealed_sha256" else RECEIVED_FIELDS.index(n) for n in HASHED_FIELDS)


def altered(rows: Sequence[tuple]) -> ChainProblem | None:
    """The first received row (contiguous, seq order, each linked to the one before by the parser)
    that does not match its hash; pure, so a server checks it before it opens a transaction. The
    rows are hashed column by column (scanner.store.entry.column_hashes): the same digests as
    row_hash, in a fraction of the time."""
    if not rows:
        return None
    cols = tuple(zip(*rows, strict=True))
    sha256 = hashlib.sha256
    digests = [None if s is None else sha256(s).hexdigest() for s in cols[_SEALED]]
    hashes = column_hashes(cols[_PREV], [digests if i is None else cols[i] for i in _HASHED_AT])
    if hashes == list(cols[_HASH]):
        return None
    for r, h in zip(rows, hashes, strict=True):
        if h != r[_HASH]:
            return ChainProblem("altered", r[_SEQ], f"seq {r[_SEQ]} does not match its hash")
    return None


def check(rows: Sequence[tuple], below_hash: bytes | None, above_prev_hash: bytes | None,
          altered_row: ChainProblem | None) -> list[ChainProblem]:
    """Problems of a run of received rows given the stored neighbours (the hash of the entry just
    before it, None if not stored; the prev_hash of the entry just after it) and ``altered(rows)``."""
    first, last = rows[0], rows[-1]
    if first[_SEQ] == 1:
        below_hash = GENESIS
    out = []
    if below_hash is not None and first[_PREV] != below_hash:
        seq = first[_SEQ]
        out.append(ChainProblem("relinked", seq, f"seq {seq} does not link to the entry before it"))
    if altered_row is not None:
        out.append(altered_row)
    if above_prev_hash is not None and above_prev_hash != last[_HASH]:
        seq = last[_SEQ] + 1
        out.append(ChainProblem("relinked", seq, f"seq {seq} does not link to the entry before it"))
    return out
