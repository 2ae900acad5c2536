"""Frame → decoded text: find QR codes in a grayscale image (zxing-cpp preferred, pyzbar as fallback).

Only QR codes are looked for (a stray EAN on a parcel must not reach the verifier). The decoders
are interchangeable behind `Decoder`; `scan_file` backs `checkpoint scan-image`.
"""
from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from .errors import CheckpointError, UsageError

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Larger image files are refused before they are read."""
MAX_PIXELS = 50_000_000
"""Larger images are refused (a 50 MP phone photo still passes; a decompression bomb does not)."""

NAMES = ("auto", "zxing", "pyzbar")
"""Decoder names `make_decoder` accepts ("zxing-cpp" is accepted for "zxing")."""


class DecoderUnavailable(CheckpointError):
    """The asked-for decoder (or, for "auto", every decoder) cannot be used on this machine."""

    code = "decoder_unavailable"


class ImageUnreadable(UsageError):
    """A file that is missing, not an image OpenCV can read, or absurdly large; ``why`` omits the path."""

    code = "image_unreadable"

    def __init__(self, path: str | os.PathLike, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = str(path)
        self.why = why


Corners = tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass(frozen=True, slots=True)
class DecodedCode:
    """One QR code found in an image.

    ``raw`` is the content as the library hands it over (zxing-cpp: the symbol's bytes; zbar: its
    own UTF-8 conversion). ``corners`` outline the symbol in image pixels, going round it
    (zxing-cpp starts at the symbol's top-left, clockwise); None when the library gives no quad.
    """

    text: str
    raw: bytes
    corners: Corners | None = None


class Decoder(Protocol):
    """Anything that finds QR codes in an 8-bit grayscale image."""

    name: str

    def decode(self, gray: np.ndarray) -> list[DecodedCode]: ...


def _text(raw: bytes, fallback: str | None) -> str:
    """UTF-8 when the bytes are valid UTF-8 (CK1 is ASCII); else the library's charset-aware text, else latin-1.

    A strict latin-1 fallback alone turns Shift_JIS codes into mojibake (a wrong text, worse than
    none), so the library's reading, which honours ECI and guesses Shift_JIS, comes first.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return fallback if fallback else raw.decode("latin-1")


def _unique(codes: list[DecodedCode]) -> list[DecodedCode]:
    """Drop codes whose text was already found in the same image (first one wins)."""
    seen: set[str] = set()
    out = []
    for code in codes:
        if code.text not in seen:
            seen.add(code.text)
            out.append(code)
    return out


def _as_gray(gray: np.ndarray) -> np.ndarray:
    """Check the decoders' input: a 2-D uint8 array, made C-contiguous."""
    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError("expected a 2-D uint8 grayscale image (see read_gray)")
    return np.ascontiguousarray(gray)


class ZxingDecoder:
    """zxing-cpp restricted to (full-size) QR codes, inverted codes included (dark-mode phone screens)."""

    name = "zxing-cpp"

    def __init__(self) -> None:
        try:
            import zxingcpp
        except ImportError:
            raise DecoderUnavailable("zxing-cpp is not installed: pip install zxing-cpp") from None
        self._zx = zxingcpp
        fmt = zxingcpp.BarcodeFormat
        # zxing-cpp 3 widened QRCode to Micro QR and rMQR as well; keep classic QR only there.
        self._formats = ([fmt.QRCodeModel1, fmt.QRCodeModel2] if hasattr(fmt, "QRCodeModel2")
                         else fmt.QRCode)

    def decode(self, gray: np.ndarray) -> list[DecodedCode]:
        gray = _as_gray(gray)
        if gray.size == 0:
            return []
        found = self._zx.read_barcodes(gray, formats=self._formats, try_invert=True,
                                       text_mode=self._zx.TextMode.Plain)
        codes = []
        for r in found:
            raw = bytes(r.bytes)
            p = r.position
            corners = tuple((int(pt.x), int(pt.y))
                            for pt in (p.top_left, p.top_right, p.bottom_right, p.bottom_left))
            codes.append(DecodedCode(_text(raw, r.text), raw, corners))
        return _unique(codes)


class PyzbarDecoder:
    """pyzbar (libzbar0) restricted to QR codes; retries on the inverted image, which zbar does not do."""

    name = "pyzbar"

    def __init__(self) -> None:
        try:
            from pyzbar import pyzbar
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] == "pyzbar":
                raise DecoderUnavailable("pyzbar is not installed: pip install pyzbar") from None
            raise DecoderUnavailable(f"pyzbar cannot be loaded: {exc}") from None
        except (ImportError, OSError):  # pyzbar loads libzbar when imported
            raise DecoderUnavailable("pyzbar needs the zbar library: apt install libzbar0") from None
        self._pyzbar = pyzbar
        self._symbols = [pyzbar.ZBarSymbol.QRCODE]

    def decode(self, gray: np.ndarray) -> list[DecodedCode]:
        gray = _as_gray(gray)
        if gray.size == 0:
            return []
        found = self._pyzbar.decode(gray, symbols=self._symbols)
        if not found:
            found = self._pyzbar.decode(np.ascontiguousarray(255 - gray), symbols=self._symbols)
        codes = []
        for r in found:
            if r.type != "QRCODE":
                continue
            raw = bytes(r.data)
            polygon = list(r.polygon or ())
            corners = tuple((int(pt.x), int(pt.y)) for pt in polygon) if len(polygon) == 4 else None
            codes.append(DecodedCode(_text(raw, None), raw, corners))
        return _unique(codes)


_FACTORIES = {"zxing": ZxingDecoder, "zxing-cpp": ZxingDecoder, "pyzbar": PyzbarDecoder}


def make_decoder(name: str = "auto") -> Decoder:
    """A decoder by name; "auto" prefers zxing-cpp (faster and finds more here) and falls back to pyzbar."""
    key = name.strip().lower()
    if key == "auto":
        try:
            return ZxingDecoder()
        except DecoderUnavailable as zx_exc:
            try:
                return PyzbarDecoder()
            except DecoderUnavailable as zb_exc:
                raise DecoderUnavailable(f"no QR decoder available: {zx_exc}; or {zb_exc}") from None
    factory = _FACTORIES.get(key)
    if factory is None:
        raise DecoderUnavailable(f"unknown decoder {name!r} (choose from {', '.join(NAMES)})")
    return factory()


def _dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG or WebP header without decoding pixels; None if not found."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        chunk = data[12:16]
        if chunk == b"VP8 " and len(data) >= 30:
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if chunk == b"VP8L" and len(data) >= 25:
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X" and len(data) >= 30:
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
        return None
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD8)):  # no length field
                i += 2
                continue
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return w, h
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Load any image OpenCV reads (PNG, JPEG, WebP...) as 8-bit grayscale; raise ImageUnreadable otherwise."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageUnreadable(path, f"file too large for an image ({size} bytes)")
        data = path.read_bytes()
    except OSError as exc:
        raise ImageUnreadable(path, exc.strerror or str(exc)) from None
    dims = _dimensions(data)
    if dims is not None and dims[0] * dims[1] > MAX_PIXELS:
        raise ImageUnreadable(path, f"image too large ({dims[0]}x{dims[1]} pixels)")
    log = cv2.utils.logging
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)  # broken files are reported once, by us, not by OpenCV on stderr
    try:
        gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None
    except cv2.error:
        gray = None
    finally:
        log.setLogLevel(level)
    if gray is None or gray.size == 0:  # imdecode reports failure by returning None, not raising
        raise ImageUnreadable(path, "not an image OpenCV can read")
    if gray.shape[0] * gray.shape[1] > MAX_PIXELS:
        raise ImageUnreadable(path, f"image too large ({gray.shape[1]}x{gray.shape[0]} pixels)")
    return gray


@dataclass(frozen=True, slots=True)
class ScanResult:
    """The codes found in one image file; ``ms`` is decode time only (file reading excluded)."""

    file: str
    codes: tuple[str, ...]
    ms: float
    error: str | None = None

    def to_dict(self) -> dict:
        """The JSON line of `checkpoint scan-image --json`; "error" only when there is one."""
        out: dict = {"file": self.file, "codes": list(self.codes), "ms": round(self.ms, 2)}
        if self.error is not None:
            out["error"] = self.error
        return out


def scan_file(path: str | os.PathLike, decoder: Decoder) -> ScanResult:
    """Decode every QR code in an image file; an unreadable file gives a result with ``error`` set."""
    try:
        gray = read_gray(path)
    except ImageUnreadable as exc:
        return ScanResult(str(path), (), 0.0, exc.why)
    t0 = time.perf_counter()
    codes = decoder.decode(gray)
    ms = (time.perf_counter() - t0) * 1000
    return ScanResult(str(path), tuple(c.text for c in codes), ms)
