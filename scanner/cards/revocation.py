"""Revoked card ids at the scale of a province (a million and more) in little memory.

Ids are 16-byte card ids (CWT ``cti``) kept as one sorted byte string (16 bytes an id) with a
65,536-bucket index on the first two bytes, so a look-up is a short binary search and one
``bytes.find`` over at most 32 records, memory is about 16 MB per million ids, and there is no
per-id Python object.
"""
from __future__ import annotations

import mmap
from array import array
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from scanner.base.lazy import lazy_module

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_module("numpy")  # loaded at its first use: ~13 MB a process without a camera may never need


ID_SIZE = 16
_BUCKETS = 1 << 16
_SCAN = 32  # at most this many records are searched linearly (512 bytes)
_EMPTY_INDEX = array("I", bytes(4 * (_BUCKETS + 1)))  # every bucket empty (shared by the empty sets)


class RevocationSet:
    """An immutable set of 16-byte card ids with O(log n) membership."""

    __slots__ = ("_blob", "_count", "_index")
    _blob: bytes | bytearray | mmap.mmap

    def __init__(self, ids: Iterable[bytes] = ()) -> None:
        ids = list(ids)
        for rid in ids:
            if type(rid) is not bytes or len(rid) != ID_SIZE:
                raise ValueError("a revoked card id must be 16 bytes")
        self._set_blob(b"".join(ids))

    def _set_blob(self, blob: bytes | bytearray) -> None:
        """Sort and deduplicate concatenated ids and build the prefix index (NumPy, no Python loop)."""
        if not blob:  # the empty set needs no NumPy (a device may never load it)
            self._blob, self._count, self._index = b"", 0, _EMPTY_INDEX
            return
        rows = np.frombuffer(blob, dtype=np.uint8).reshape(-1, ID_SIZE)
        if len(rows) > 1:
            # big-endian 64-bit halves compare in the same order as the bytes
            halves = np.frombuffer(blob, dtype=">u8").reshape(-1, 2)
            hi, lo = halves[:, 0], halves[:, 1]
            if not _strictly_increasing(hi, lo):  # bundles list their ids sorted: skip the sort
                order = np.lexsort((lo, hi))
                rows = rows[order]
                keep = np.ones(len(rows), dtype=bool)
                keep[1:] = (rows[1:] != rows[:-1]).any(axis=1)
                rows = rows[keep]
                blob = rows.tobytes()
        self._blob = blob if type(blob) is bytearray else bytes(blob)  # a bytearray only from adopt()
        self._count = len(rows)
        prefix = rows[:, 0].astype(np.uint32) << 8 | rows[:, 1]
        counts = np.bincount(prefix, minlength=_BUCKETS)
        index = np.zeros(_BUCKETS + 1, dtype=np.uint32)
        np.cumsum(counts, out=index[1:])
        self._index = array("I", index.tobytes())

    @classmethod
    def from_blob(cls, blob: bytes | bytearray) -> RevocationSet:
        """Build from concatenated 16-byte ids, in any order (duplicates are dropped)."""
        if len(blob) % ID_SIZE:
            raise ValueError("a revoked card id must be 16 bytes")
        self = cls.__new__(cls)
        self._set_blob(bytes(blob))
        return self

    @classmethod
    def adopt(cls, buffer: bytearray) -> RevocationSet:
        """from_blob without a copy: the set keeps ``buffer`` as its storage when it is sorted
        already (as a bundle lists its ids); the caller must not use ``buffer`` again."""
        if len(buffer) % ID_SIZE:
            raise ValueError("a revoked card id must be 16 bytes")
        self = cls.__new__(cls)
        self._set_blob(buffer)
        return self

    @classmethod
    def mapped(cls, ids: mmap.mmap | bytes | bytearray, index: array) -> RevocationSet:
        """A set over ids already sorted, deduplicated and indexed (a checked trust file, see
        scanner/cards/trustfile.py, or a format-2 bundle's checked ids): ``ids`` is a read-only map
        of the file (the ids then cost no anonymous memory) or a buffer the set keeps; NumPy is not
        needed; ``index`` their 65,537 bucket starts."""
        if len(ids) % ID_SIZE or len(index) != _BUCKETS + 1 or index[0] != 0 or index[-1] != len(ids) // ID_SIZE:
            raise ValueError("revocation index does not match the ids")
        self = cls.__new__(cls)
        self._blob, self._count, self._index = ids, len(ids) // ID_SIZE, index
        return self

    def index(self) -> array:
        """The 65,537 bucket starts (by the ids' first two bytes) of the sorted ids."""
        return self._index

    def blob(self) -> bytes | bytearray | mmap.mmap:
        """The ids, sorted and distinct, 16 bytes each, as one buffer."""
        return self._blob

    @classmethod
    def from_hex(cls, hex_ids: Iterable[str]) -> RevocationSet:
        """Build from hex strings of 32 digits; raise ValueError naming the first bad one."""
        hex_ids = list(hex_ids)
        if any(type(h) is not str or len(h) != 2 * ID_SIZE for h in hex_ids):
            bad = next(h for h in hex_ids if type(h) is not str or len(h) != 2 * ID_SIZE)
            raise ValueError(f"revoked card id {str(bad)[:40]!r} is not 32 hex digits")
        try:
            blob = bytes.fromhex("".join(hex_ids))
        except ValueError:
            blob = None
        # fromhex skips whitespace between bytes, so 32 characters may hold fewer than 32 digits
        if blob is None or len(blob) != ID_SIZE * len(hex_ids):
            bad = next(h for h in hex_ids if not _is_hex(h))
            raise ValueError(f"revoked card id {bad!r} is not 32 hex digits")
        self = cls.__new__(cls)
        self._set_blob(blob)
        return self

    def __len__(self) -> int:
        return self._count

    def __contains__(self, card_id: object) -> bool:
        if type(card_id) is not bytes or len(card_id) != ID_SIZE:
            return False
        b = card_id[0] << 8 | card_id[1]
        lo = self._index[b]
        hi = self._index[b + 1]
        blob = self._blob
        while hi - lo > _SCAN:  # binary search (a bucket is large only if ids are not random)...
            mid = (lo + hi) >> 1
            rec = blob[mid * ID_SIZE:(mid + 1) * ID_SIZE]
            if rec < card_id:
                lo = mid + 1
            elif rec > card_id:
                hi = mid
            else:
                return True
        # ... then one C-speed scan of the few records left; a match must start on a record boundary
        stop = hi * ID_SIZE
        pos = blob.find(card_id, lo * ID_SIZE, stop)
        while pos > 0 and pos % ID_SIZE:  # found across two records: look further
            pos = blob.find(card_id, pos + 1, stop)
        return pos >= 0

    def __iter__(self) -> Iterator[bytes]:
        blob = self._blob
        for i in range(0, len(blob), ID_SIZE):
            yield bytes(blob[i:i + ID_SIZE])

    def union(self, other: RevocationSet) -> RevocationSet:
        """A new set holding the ids of both."""
        if not other:
            return self
        if not self:
            return other
        new = RevocationSet.__new__(RevocationSet)
        new._set_blob(bytes(self._blob) + bytes(other._blob))
        return new

    def nbytes(self) -> int:
        """Bytes held by the set's own buffers (for the benchmarks)."""
        return len(self._blob) + self._index.itemsize * len(self._index)


def _is_hex(text: str) -> bool:
    """True if ``text`` (32 characters) is 32 hex digits, i.e. one whole id."""
    try:
        return len(bytes.fromhex(text)) == ID_SIZE
    except ValueError:
        return False


def _strictly_increasing(hi: np.ndarray, lo: np.ndarray) -> bool:
    """True if the 128-bit keys (hi, lo) are in strictly increasing order (sorted, no duplicates)."""
    h0, h1 = hi[:-1], hi[1:]
    return bool(((h1 > h0) | ((h1 == h0) & (lo[1:] > lo[:-1]))).all())
