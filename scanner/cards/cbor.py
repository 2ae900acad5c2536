"""A small, bounded CBOR (RFC 8949) decoder and deterministic encoder for signed cards.

Hostile input is the normal case at a checkpoint, so the decoder never trusts a length: every
string, array and map must fit in the bytes that remain, nesting is capped (default 16), map keys
must be int/text/bytes and unique, and nothing follows the top-level item. It supports exactly the
data model cards use: integers, byte and text strings (definite or indefinite), arrays, maps, tags,
false/true/null/undefined and floats.

`loads` first tries cbor2's compiled decoder and keeps its result only when it is exactly what the
Python decoder here would return (plain data, every byte used, no tag below the top); anything else
is decoded again here, so errors and edge cases are this module's alone.
"""
from __future__ import annotations

import io
import struct
import threading
from typing import Any, NamedTuple

import cbor2

MAX_DEPTH = 16


class CborError(ValueError):
    """Bytes that are not one well-formed CBOR item within the limits."""


class Tag(NamedTuple):
    """A tagged item (major type 6), e.g. Tag(18, [...]) for a tagged COSE_Sign1."""

    tag: int
    value: Any


class _Undefined:
    __slots__ = ()

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED = _Undefined()
_BREAK = object()
_HALF = struct.Struct(">e").unpack_from
_SINGLE = struct.Struct(">f").unpack_from
_DOUBLE = struct.Struct(">d").unpack_from
_SIMPLE = {20: False, 21: True, 22: None, 23: UNDEFINED}
_KEY_TYPES = frozenset((int, str, bytes))


def loads(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode exactly one CBOR item from ``data``; raise CborError on anything else."""
    if type(data) is not bytes:
        data = bytes(data)
    value = compiled_loads(data, max_depth)
    if value is MISS:
        return python_loads(data, max_depth=max_depth)
    return value


def python_loads(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """`loads` by this module's own decoder alone: the reference the compiled path must agree with."""
    if type(data) is not bytes:
        data = bytes(data)
    end = len(data)
    try:
        value, pos = _item(data, 0, end, 0, max_depth)
    except RecursionError:
        raise CborError("nested too deeply") from None
    except (IndexError, struct.error):  # a read past the end of ``data``
        raise CborError("truncated") from None
    if value is _BREAK:
        raise CborError("unexpected break")
    if pos != end:
        raise CborError(f"{end - pos} bytes after the item")
    return value


class _Tagged(Exception):
    """A tag inside the item: cbor2 would give it meaning (datetime, shared value, ...), we do not."""


def _tagged(*_: Any) -> Any:
    raise _Tagged


MISS = object()  # compiled_loads: "decode it with the Python decoder"
# Every tag cbor2 6.3 decodes itself (datetimes, bignums, string references, shared values, sets,
# ...): each is routed to _tagged like any other tag (tests/test_cbor.py checks the list is whole).
CBOR2_SEMANTIC_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261,
                       1004, 43000, 55799)
_NO_SEMANTICS = dict.fromkeys(CBOR2_SEMANTIC_TAGS, _tagged)
_SCALARS = frozenset((int, str, bytes, float, bool, type(None)))


# A cbor2 decoder costs more to make (and to point at new bytes) than a card's claims cost to
# decode: each thread keeps one buffer, and one decoder per depth limit reading from it.
_THREAD = threading.local()


def _decoder(depth: int) -> tuple[io.BytesIO, cbor2.CBORDecoder]:
    try:
        buffer, decoders = _THREAD.buffer, _THREAD.decoders
    except AttributeError:  # this thread's first item
        buffer, decoders = _THREAD.buffer, _THREAD.decoders = io.BytesIO(), {}
    decoder = decoders.get(depth)
    if decoder is None:
        decoder = decoders[depth] = cbor2.CBORDecoder(
            buffer, semantic_decoders=_NO_SEMANTICS, tag_hook=_tagged, max_depth=depth,
            allow_duplicate_keys=False)
    return buffer, decoder


def compiled_loads(data: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """``data`` decoded by cbor2 when the result is exactly this module's, else MISS.

    Tags at the top (a COSE_Sign1's 18) are taken off here; any tag below, a simple value other
    than false/true/null, undefined, a key that is not an integer, text or bytes, and bytes after
    the item all give MISS, and so does every error (the Python decoder then gives its own)."""
    tags = []
    pos = 0
    end = len(data)
    while pos < end and 0xC0 <= data[pos] <= 0xD8:
        if data[pos] == 0xD8:
            if pos + 1 >= end:
                return MISS
            tags.append(data[pos + 1])
            pos += 2
        else:
            tags.append(data[pos] - 0xC0)
            pos += 1
    # cbor2's limit counts the containers around an item, ours the containers down to it (an empty
    # array 17 deep is too deep here, not for cbor2 at 16): one less for cbor2 accepts only items
    # within ours, and a scalar inside exactly ``max_depth`` containers goes to the Python decoder.
    depth = max_depth - len(tags) - 1
    if depth < 0:
        return MISS
    buffer, decoder = _decoder(depth)
    buffer.seek(0)
    buffer.truncate()
    buffer.write(data)
    buffer.seek(pos)
    try:
        value = decoder.decode()
    except BaseException as exc:
        # Any failure, cbor2's, a tag's, or a panic of its Rust code (pyo3's PanicException is a
        # BaseException): the Python decoder decides and explains. A decoder that failed part-way
        # keeps state that breaks its next item, so it is dropped.
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        del _THREAD.decoders[depth]
        return MISS
    if buffer.tell() != end or not _plain(value):
        return MISS
    for tag in reversed(tags):
        value = Tag(tag, value)
    return value


def _plain(value: Any) -> bool:
    """Only what this module's decoder returns: scalars, lists and maps with int/text/bytes keys."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) not in _KEY_TYPES or (type(item) not in _SCALARS and not _plain(item)):
                return False
        return True
    if kind is list:
        return all(type(item) in _SCALARS or _plain(item) for item in value)
    return kind in _SCALARS


# The decoder is a plain recursive function over (data, pos) rather than a closure, and decodes the
# head inline: a card is decoded on every scan, so per-item overhead matters. Reads of one or two
# head bytes past the end raise IndexError, which loads() reports as "truncated"; every length is
# checked against the bytes that remain before anything is sliced or allocated.

_INDEFINITE = -1  # the length of an indefinite-length item (a real length is never negative)


def _item(data: bytes, pos: int, end: int, depth: int, max_depth: int) -> tuple[Any, int]:
    ib = data[pos]
    pos += 1
    major = ib >> 5
    ai = ib & 31
    if ai < 24:
        arg = ai
    elif ai == 24:
        arg = data[pos]
        pos += 1
    elif ai == 25:
        arg = data[pos] << 8 | data[pos + 1]
        pos += 2
    elif ai < 28:
        size = 4 if ai == 26 else 8
        if pos + size > end:
            raise CborError("truncated")
        arg = int.from_bytes(data[pos:pos + size], "big")
        pos += size
    elif ai == 31 and major not in (0, 1, 6):
        arg = _INDEFINITE
    else:
        raise CborError(f"reserved or invalid additional information {ai}")
    if major == 3 or major == 2:
        if arg == _INDEFINITE:
            raw, pos = _chunks(data, pos, end, major)
        else:
            if arg > end - pos:
                raise CborError("string longer than the data")
            raw = data[pos:pos + arg]
            pos += arg
        if major == 2:
            return raw, pos
        try:
            return raw.decode("utf-8"), pos
        except UnicodeDecodeError:
            raise CborError("text string is not UTF-8") from None
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major == 7:
        if ai < 24:
            if ai in _SIMPLE:
                return _SIMPLE[ai], pos
            raise CborError(f"unsupported simple value {ai}")
        if ai == 25:
            return _HALF(data, pos - 2)[0], pos
        if ai == 26:
            return _SINGLE(data, pos - 4)[0], pos
        if ai == 27:
            return _DOUBLE(data, pos - 8)[0], pos
        if ai == 31:
            return _BREAK, pos
        raise CborError(f"unsupported simple value {arg}")
    depth += 1
    if depth > max_depth:
        raise CborError(f"nested deeper than {max_depth}")
    if major == 5:
        out: dict = {}
        if arg == _INDEFINITE:
            while True:
                key, pos = _item(data, pos, end, depth, max_depth)
                if key is _BREAK:
                    return out, pos
                if type(key) not in _KEY_TYPES:
                    raise CborError("map key is not an integer, text or bytes")
                value, pos = _item(data, pos, end, depth, max_depth)
                if value is _BREAK:
                    raise CborError("unexpected break")
                if key in out:
                    raise CborError("duplicate map key")
                out[key] = value
        if 2 * arg > end - pos:
            raise CborError("map longer than the data")
        for _ in range(arg):
            # fast path for the keys cards use: small unsigned integers and short text
            ib = data[pos]
            if ib < 0x18:
                key = ib
                pos += 1
            elif 0x60 <= ib < 0x78:
                n = ib - 0x60
                pos += 1
                if n > end - pos:
                    raise CborError("string longer than the data")
                try:
                    key = data[pos:pos + n].decode("utf-8")
                except UnicodeDecodeError:
                    raise CborError("text string is not UTF-8") from None
                pos += n
            elif ib == 0x3A:  # negative integer with a 4-byte argument (private claims: -65537)
                if pos + 5 > end:
                    raise CborError("truncated")
                key = -1 - int.from_bytes(data[pos + 1:pos + 5], "big")
                pos += 5
            else:
                key, pos = _item(data, pos, end, depth, max_depth)
                if key is _BREAK:
                    raise CborError("unexpected break")
                if type(key) not in _KEY_TYPES:
                    raise CborError("map key is not an integer, text or bytes")
            # the same for values: short text and small unsigned integers
            ib = data[pos]
            if 0x60 <= ib <= 0x78:
                if ib == 0x78:
                    n = data[pos + 1]
                    pos += 2
                else:
                    n = ib - 0x60
                    pos += 1
                if n > end - pos:
                    raise CborError("string longer than the data")
                try:
                    value = data[pos:pos + n].decode("utf-8")
                except UnicodeDecodeError:
                    raise CborError("text string is not UTF-8") from None
                pos += n
            elif ib < 0x18:
                value = ib
                pos += 1
            elif ib == 0x1A:  # 4-byte unsigned integer (CWT times)
                if pos + 5 > end:
                    raise CborError("truncated")
                value = int.from_bytes(data[pos + 1:pos + 5], "big")
                pos += 5
            elif 0x40 <= ib < 0x58:  # short byte string (card id)
                n = ib - 0x40
                pos += 1
                if n > end - pos:
                    raise CborError("string longer than the data")
                value = data[pos:pos + n]
                pos += n
            else:
                value, pos = _item(data, pos, end, depth, max_depth)
                if value is _BREAK:
                    raise CborError("unexpected break")
            if key in out:
                raise CborError("duplicate map key")
            out[key] = value
        return out, pos
    if major == 4:
        items: list = []
        if arg == _INDEFINITE:
            while True:
                value, pos = _item(data, pos, end, depth, max_depth)
                if value is _BREAK:
                    return items, pos
                items.append(value)
        if arg > end - pos:
            raise CborError("array longer than the data")
        for _ in range(arg):
            ib = data[pos]
            if 0x40 <= ib <= 0x58:  # fast path for short byte strings (COSE_Sign1 is four of them)
                if ib == 0x58:
                    n = data[pos + 1]
                    pos += 2
                else:
                    n = ib - 0x40
                    pos += 1
                if n > end - pos:
                    raise CborError("string longer than the data")
                items.append(data[pos:pos + n])
                pos += n
                continue
            if ib == 0xA0:  # an empty map (COSE_Sign1's usual unprotected header)
                items.append({})
                pos += 1
                continue
            value, pos = _item(data, pos, end, depth, max_depth)
            if value is _BREAK:
                raise CborError("unexpected break")
            items.append(value)
        return items, pos
    # major == 6
    value, pos = _item(data, pos, end, depth, max_depth)
    if value is _BREAK:
        raise CborError("unexpected break")
    return Tag(arg, value), pos


def _chunks(data: bytes, pos: int, end: int, major: int) -> tuple[bytes, int]:
    """The joined chunks of an indefinite-length byte or text string (each of the same major type)."""
    chunks: list[bytes] = []
    while True:
        if pos >= end:
            raise CborError("truncated")
        ib = data[pos]
        if ib == 0xFF:
            return b"".join(chunks), pos + 1
        cmajor = ib >> 5
        ai = ib & 31
        pos += 1
        if ai < 24:
            clen = ai
        elif ai < 28:
            size = 1 << (ai - 24)
            if pos + size > end:
                raise CborError("truncated")
            clen = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        elif ai == 31 and cmajor not in (0, 1, 6):
            clen = None
        else:
            raise CborError(f"reserved or invalid additional information {ai}")
        if cmajor != major or clen is None:
            raise CborError("bad chunk in indefinite-length string")
        if clen > end - pos:
            raise CborError("string longer than the data")
        chunk = data[pos:pos + clen]
        if major == 3:  # RFC 8949 3.2.3: each chunk of a text string is itself valid UTF-8
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError:
                raise CborError("text string chunk is not UTF-8") from None
        chunks.append(chunk)
        pos += clen


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes((major << 5 | n,))
    if n < 0x100:
        return bytes((major << 5 | 24, n))
    if n < 0x10000:
        return bytes((major << 5 | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major << 5 | 26,)) + n.to_bytes(4, "big")
    if n < 0x10000000000000000:
        return bytes((major << 5 | 27,)) + n.to_bytes(8, "big")
    raise ValueError("integer too large for CBOR major types 0/1")


def _float(value: float) -> bytes:
    """The shortest of half, single and double precision that keeps the value (NaN as f97e00)."""
    if value != value:
        return b"\xf9\x7e\x00"
    for head, fmt in ((b"\xf9", ">e"), (b"\xfa", ">f")):
        try:
            packed = struct.pack(fmt, value)
        except OverflowError:
            continue
        if struct.unpack(fmt, packed)[0] == value:
            return head + packed
    return b"\xfb" + struct.pack(">d", value)


def string_at(data: bytes, pos: int, major: int) -> tuple[bytes, int]:
    """The content of the definite-length byte (major 2) or text (major 3) string whose head, with
    up to two length bytes, is at ``pos``, and where it ends (the fast paths' reader of issued
    layouts). CborError for any other head or a string running past the data; IndexError for a
    head cut short."""
    ib = data[pos]
    base = major << 5
    if base <= ib < base + 24:
        n = ib - base
        pos += 1
    elif ib == base + 24:
        n = data[pos + 1]
        pos += 2
    elif ib == base + 25:
        n = data[pos + 1] << 8 | data[pos + 2]
        pos += 3
    else:
        raise CborError("not a string head of up to two length bytes")
    end = pos + n
    if end > len(data):
        raise CborError("a string longer than the data")
    return data[pos:end], end


def bstr_head(n: int) -> bytes:
    """The head of a byte string of length n (for building Sig_structure without copying)."""
    return _head(2, n)


def dumps(value: Any) -> bytes:
    """Encode with RFC 8949 section 4.2.1 core deterministic rules (shortest heads, sorted map keys)."""
    if value is False:
        return b"\xf4"
    if value is True:
        return b"\xf5"
    if value is None:
        return b"\xf6"
    if value is UNDEFINED:
        return b"\xf7"
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        return _head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _head(3, len(raw)) + raw
    if isinstance(value, (list, tuple)) and not isinstance(value, Tag):
        return _head(4, len(value)) + b"".join(dumps(v) for v in value)
    if isinstance(value, dict):
        pairs = sorted((dumps(k), dumps(v)) for k, v in value.items())
        return _head(5, len(pairs)) + b"".join(k + v for k, v in pairs)
    if isinstance(value, Tag):
        return _head(6, value.tag) + dumps(value.value)
    if isinstance(value, float):
        return _float(value)
    raise TypeError(f"cannot encode {type(value).__name__} as CBOR")
