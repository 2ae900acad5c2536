"""Per-device chain checks on the server, with the device's own code (scanner.store.entry.verify_chain):
does a batch hash correctly, and does it link to the stored entries on both sides."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scanner.store.entry import GENESIS, Entry, verify_chain


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """``kind``: "altered" (an entry does not match its hash) or "relinked" (an entry does not
    link to the one before it: the chain is broken there), at ``seq``."""

    kind: str
    seq: int
    detail: str


def check(entries: Sequence[Entry], below_hash: bytes | None, above_prev_hash: bytes | None
          ) -> list[ChainProblem]:
    """Problems of a run of entries (contiguous, seq order) given the stored neighbours: the hash of
    the entry just before it (None if not stored) and the prev_hash of the entry just after it."""
    first = entries[0]
    if first.seq == 1:
        below_hash = GENESIS
    out = []
    if below_hash is not None and first.prev_hash != below_hash:
        out.append(ChainProblem("relinked", first.seq, f"seq {first.seq} does not link to the entry before it"))
    report = verify_chain(entries, None)  # links inside the run, and every hash
    if not report.ok:
        bad = report.bad_seq if report.bad_seq is not None else first.seq  # a broken chain names its entry
        out.append(ChainProblem(report.problem, bad, report.detail))
    if above_prev_hash is not None and above_prev_hash != entries[-1].hash:
        seq = entries[-1].seq + 1
        out.append(ChainProblem("relinked", seq, f"seq {seq} does not link to the entry before it"))
    return out
