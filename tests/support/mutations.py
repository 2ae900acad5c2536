"""Byte-level mutations for hypothesis tests of parsers' fast paths: one to three flips, inserts,
deletes, overwrites, appends or cuts, the new bytes drawn from values the parser treats specially."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st


def mutated(data: bytes, draw: Callable[[st.SearchStrategy], Any], special: Sequence[int]) -> bytes:
    """``data`` changed in one to three places (``draw`` is hypothesis' data.draw)."""
    raw = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "set", "append", "cut"]))
        pos = draw(st.integers(0, len(raw)))
        byte = draw(st.sampled_from(list(special)))
        if op == "insert":
            raw.insert(pos, byte)
        elif op == "append":
            raw.append(byte)
        elif op == "cut":
            del raw[pos:]
        elif raw and pos < len(raw):
            if op == "delete":
                del raw[pos]
            elif op == "flip":
                raw[pos] ^= 1 << draw(st.integers(0, 7))
            else:
                raw[pos] = byte
    return bytes(raw)
