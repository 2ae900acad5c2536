"""Frame → decoded text: find QR codes in a grayscale image (zxing-cpp preferred, pyzbar as fallback).

Only QR codes are looked for (a stray EAN on a parcel must not reach the verifier). The decoders
are interchangeable behind `Decoder`; `scan_file` backs `checkpoint scan-image`. The default
("auto") is `ApplianceDecoder`: one zxing-cpp pass, a cheap low-resolution probe, and a second pass
only around symbols that were seen but not read. Why, with measurements: docs/decoding.md.
"""
from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hardware import enhance, erasure
from scanner.base.errors import CheckpointError, UsageError, os_error_code
from scanner.base.i18n import Text, text
from scanner.base.lazy import lazy_module

if TYPE_CHECKING:
    import cv2
    import numpy as np
else:
    np = lazy_module("numpy")  # loaded at its first use: ~13 MB a process without a camera may never need
    cv2 = lazy_module("cv2")  # loaded at its first use: a device without a camera never needs OpenCV

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Larger image files are refused before they are read."""
MAX_PIXELS = 50_000_000
"""Larger images are refused (a 50 MP phone photo still passes; a decompression bomb does not)."""

NAMES = ("auto", "zxing", "pyzbar")
"""Decoder names `make_decoder` accepts ("zxing-cpp" is accepted for "zxing"; "auto" is the two-pass one)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
"""File name endings read as images by folder sources."""

Roi = tuple[float, float, float, float]
"""A region of interest: (x, y, width, height) as fractions of the frame, each in [0, 1]."""


class DecoderUnavailable(CheckpointError):
    """The asked-for decoder (or, for "auto", every decoder) cannot be used on this machine."""

    code = "decoder_unavailable"


class ImageUnreadable(UsageError):
    """A file that is missing, not an image OpenCV can read, or absurdly large; ``why`` omits the path."""

    code = "image_unreadable"

    def __init__(self, path: str | os.PathLike, why: str, words: Text) -> None:
        super().__init__(f"{path}: {why}", text=text("os_error.at", path=str(path), what=words))
        self.path = str(path)
        self.why = why
        self.words = words  # ``why`` in the catalogue's words


Corners = tuple[tuple[int, int], ...]  # four points going round the symbol


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


def _as_gray(gray: np.ndarray, *, row_strided_ok: bool = False) -> np.ndarray:
    """Check the decoders' input: a 2-D uint8 array, made C-contiguous.

    With ``row_strided_ok`` (zxing-cpp reads a row stride itself) a view whose pixels are adjacent
    in each row, such as a region of interest or a camera's padded Y plane, is passed on uncopied.
    """
    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError("expected a 2-D uint8 grayscale image (see read_gray)")
    if row_strided_ok and gray.strides[1] == 1 and gray.strides[0] >= gray.shape[1]:
        return gray
    return np.ascontiguousarray(gray)


class ZxingDecoder:
    """zxing-cpp restricted to (full-size) QR codes, inverted codes included (dark-mode phone screens)."""

    name = "zxing-cpp"

    def __init__(self) -> None:
        try:
            import zxingcpp  # deferred: a native decoder, loaded when this decoder is chosen
        except ImportError:
            raise DecoderUnavailable("zxing-cpp is not installed: pip install zxing-cpp") from None
        self._zx = zxingcpp
        fmt = zxingcpp.BarcodeFormat
        # zxing-cpp 3 widened QRCode to Micro QR and rMQR as well; keep classic QR only there.
        self._formats = ([fmt.QRCodeModel1, fmt.QRCodeModel2] if hasattr(fmt, "QRCodeModel2")
                         else fmt.QRCode)

    def decode(self, gray: np.ndarray) -> list[DecodedCode]:
        gray = _as_gray(gray, row_strided_ok=True)
        if gray.size == 0:
            return []
        # zxing-cpp's stubs type formats as BarcodeFormats; zxing-cpp 3 takes the list of formats too
        found = self._zx.read_barcodes(gray, formats=self._formats, try_invert=True,  # type: ignore[arg-type]
                                       text_mode=self._zx.TextMode.Plain)
        return _unique([_zx_code(r) for r in found])


def _corners(position, scale: float = 1.0, dx: int = 0, dy: int = 0) -> Corners:
    p = position
    return tuple((int(round(pt.x * scale)) + dx, int(round(pt.y * scale)) + dy)
                 for pt in (p.top_left, p.top_right, p.bottom_right, p.bottom_left))


def _zx_code(r, scale: float = 1.0, dx: int = 0, dy: int = 0) -> DecodedCode:
    """A zxing-cpp result as a DecodedCode, its corners mapped back to the caller's image."""
    raw = bytes(r.bytes)
    return DecodedCode(_text(raw, r.text), raw, _corners(r.position, scale, dx, dy))


class PyzbarDecoder:
    """pyzbar (libzbar0) restricted to QR codes; retries on the inverted image, which zbar does not do."""

    name = "pyzbar"

    def __init__(self) -> None:
        try:
            from pyzbar import pyzbar  # deferred: needs libzbar0, loaded when this decoder is chosen
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


@dataclass(frozen=True, slots=True)
class FrameDecode:
    """What the appliance decoder made of one frame: the codes, and how hard it had to try.

    ``seen`` counts symbols whose finder patterns were found but whose text was not read by the
    first pass; ``stage`` is "pass1", "probe", "pass2", "search" (where the codes came from) or
    "none". ``located`` outlines, in frame pixels, what was looked at without being read: symbols
    seen but not read, or regions of code-like texture (the kiosk's aiming hint reads them).
    ``attempts`` counts second-pass decodes tried on this frame.
    """

    codes: tuple[DecodedCode, ...]
    seen: int
    stage: str
    located: tuple[Corners, ...] = ()
    attempts: int = 0


DOWNSCALE_ABOVE = 1600
"""Pixels: larger images (photos) also get zxing-cpp's own downscaled looks in the first pass; camera
frames (up to 1280x720) do not, the half-resolution probe stands in for it at a fraction of the cost."""

SECOND_PASS_SYMBOLS = 2
"""At most this many seen-but-unread symbols (or code-like regions) per frame get a second pass."""

MODULE_GUESS = 60
"""Modules across a symbol, to guess the module size from its outline (CK1 cards are 65, EU DCCs 53-77)."""
READABLE_MODULE_PX = 3.5
"""A crop whose modules are smaller than this (pixels) is upscaled for the second pass."""
SLANTED_ASPECT = 1.3
"""An outline this much longer than wide is a code seen at a slant: unslanting and squaring up are tried first."""
STREAK_FIRST = 1.5
"""A crop squeezed this much (`enhance.squeeze`) and not slanted is streaked: its streak is undone before
its defocus (a hand's shake, under a module, squeezes a defocused code 1.0-1.35x; a two-module streak 1.8x)."""
UNSLANT_SCALE = 1.5
"""An unslanted crop is also enlarged at least this much (its squeezed modules were smeared)."""
OUTLINE_MARGIN = 0.5
"""An outline of a code's modules with a corner on its crop's edge runs out of the crop: it is looked for
again in a crop widened by this share of the symbol's longest side (on a card seen 60° from the side with
a skew, the texture search's region is only part of the code, whose far corner has sparse modules)."""
OUTLINE_STREAK = 1.15
"""A code squared up on its outline (`enhance.code_outline`) whose gradients are still this squeezed
(`enhance.squeeze`) is streaked: the streak is then measured on the squared code and undone."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One way of looking again at a symbol: a name, and how to make the image zxing-cpp is given.

    ``make()`` returns (image, binarizer name, to_frame), where ``to_frame(x, y)`` takes a point of
    that image back to the frame's pixels. Images are made only when an attempt is tried.
    """

    name: str
    make: Callable[[], tuple[np.ndarray, str, Callable[[float, float], tuple[int, int]]]]


class ApplianceDecoder:
    """zxing-cpp (QR only) in up to four steps; the default decoder (docs/decoding.md).

    1. one zxing-cpp pass over the frame (local-average binarizer, inverted codes too; at full
       resolution only, unless the image is larger than DOWNSCALE_ABOVE), asking it to also report
       symbols it located but could not read;
    2. nothing read: a probe at half resolution with the global-histogram binarizer (a few percent
       of step 1 on an empty frame; it reads busy "artistic" codes the local binarizer breaks up);
    3. only where step 1 or 2 located a symbol without reading it: a second pass on that symbol's
       crop, through the `attempts` (deblurred for the defocus or motion its spectrum shows,
       squared up, upscaled, sharpened, other binarizers, pyzbar when installed), stopping at the
       first text;
    4. with ``search`` (single images): nothing located at all, the regions of code-like texture
       (a code too blurred or too tilted for its finder patterns to be found) get that second pass.

    `StreamDecoder` (hardware/stream_decode.py) runs the same steps on a camera's frames, spread
    over consecutive frames so that an empty frame costs no more than step 1.
    """

    name = "zxing-cpp+2pass"

    def __init__(self, *, probe: bool = True, second_pass: bool = True, search: bool = True,
                 downscale: bool | None = None, helper: Decoder | None = None) -> None:
        self._zxing = ZxingDecoder()
        self._zx = self._zxing._zx
        self._formats = self._zxing._formats
        self._binarizers = {"local": self._zx.Binarizer.LocalAverage, "global": self._zx.Binarizer.GlobalHistogram}
        self._probe = probe
        self._downscale = downscale
        self._second_pass = second_pass
        self._search = search
        if helper is None and second_pass:
            try:
                helper = PyzbarDecoder()
            except DecoderUnavailable:
                helper = None  # the second pass works without it, one strategy fewer
        self._helper = helper

    def decode(self, gray: np.ndarray) -> list[DecodedCode]:
        return list(self.analyse(gray).codes)

    def analyse(self, gray: np.ndarray, detail: np.ndarray | None = None) -> FrameDecode:
        """Decode one frame and say which step found the codes (for benchmarks and statistics).

        ``detail``, when given, is the same picture at a higher resolution (a camera's main stream
        beside the low-resolution one ``gray`` is): second passes crop from it.
        """
        gray = _as_gray(gray, row_strided_ok=True)
        if gray.size == 0:
            return FrameDecode((), 0, "none")
        codes, seen = self.first_pass(gray)
        if codes:
            return FrameDecode(codes, 0, "pass1")
        stage = "pass2"
        if self._probe:
            codes, probed = self.probe(gray)
            if codes:
                return FrameDecode(codes, len(seen), "probe")
            seen = seen + probed
        quads = _distinct(seen)[:SECOND_PASS_SYMBOLS]
        if not quads and self._search:
            quads, stage = self.search(gray), "search"
        if not quads:
            return FrameDecode((), 0, "none")
        tried = 0
        if self._second_pass:
            for quad in quads:
                for attempt in self.attempts(gray, quad, detail):
                    tried += 1
                    codes, _ = self.attempt(attempt)
                    if codes:
                        return FrameDecode(codes, len(seen), stage, attempts=tried)
        return FrameDecode((), len(seen), "none", tuple(quads), tried)

    def first_pass_options(self, shape: tuple[int, ...], invert: bool = True) -> dict:
        """The keyword arguments of step 1's ``zxingcpp.read_barcodes`` for a frame of ``shape``
        (the benchmark's raw-library peer makes the same call)."""
        downscale = self._downscale if self._downscale is not None else max(shape[:2]) > DOWNSCALE_ABOVE
        return {"formats": self._formats, "try_invert": invert, "try_downscale": downscale,
                "text_mode": self._zx.TextMode.Plain, "return_errors": True}

    def first_pass(self, gray: np.ndarray, invert: bool = True) -> tuple[tuple[DecodedCode, ...], list[Corners]]:
        """Step 1: the codes read, else the outlines of the symbols located but not read.

        ``invert=False`` leaves out zxing-cpp's look at the inverted image (light codes on dark
        screens): a third of the call's CPU time on an empty frame, nearly half on a noisy one."""
        found = self._zx.read_barcodes(gray, **self.first_pass_options(gray.shape, invert))
        codes = [_zx_code(r) for r in found if r.valid]
        if codes:
            return tuple(_unique(codes)), []
        return (), [_corners(r.position) for r in found]

    def probe(self, gray: np.ndarray) -> tuple[tuple[DecodedCode, ...], list[Corners]]:
        """Step 2: half resolution, global-histogram binarizer; codes read, else symbols located."""
        h, w = gray.shape
        if h < 64 or w < 64:
            return (), []
        zx = self._zx
        half = cv2.resize(gray, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        sx, sy = w / (w // 2), h / (h // 2)
        probed = zx.read_barcodes(half, formats=self._formats, try_invert=False, try_rotate=False,
                                  try_downscale=False, binarizer=zx.Binarizer.GlobalHistogram,
                                  text_mode=zx.TextMode.Plain, return_errors=True)
        codes = [_scaled(_zx_code(r), sx, sy) for r in probed if r.valid]
        if codes:
            return tuple(_unique(codes)), []
        return (), [_scaled_corners(_corners(r.position), sx, sy) for r in probed]

    @staticmethod
    def search(gray: np.ndarray) -> list[Corners]:
        """Step 4: regions of code-like texture where no finder pattern was found (enhance.texture_regions)."""
        return enhance.texture_regions(gray, limit=SECOND_PASS_SYMBOLS)

    def attempt(self, attempt: Attempt) -> tuple[tuple[DecodedCode, ...], list[Corners]]:
        """Try one attempt: the codes it reads (frame corners), else the symbols it located (frame corners)."""
        img, binarizer, to_frame = attempt.make()
        if img is None or min(img.shape) < 16:
            return (), []
        if binarizer == "pyzbar":
            if self._helper is None:
                return (), []
            return tuple(DecodedCode(c.text, c.raw, None) for c in self._helper.decode(img)), []
        zx = self._zx
        found = zx.read_barcodes(np.ascontiguousarray(img), formats=self._formats, try_invert=True,
                                 binarizer=self._binarizers[binarizer], text_mode=zx.TextMode.Plain,
                                 return_errors=True)
        codes, located = [], []
        for r in found:
            p = r.position
            quad = tuple(to_frame(pt.x, pt.y) for pt in (p.top_left, p.top_right, p.bottom_right, p.bottom_left))
            if r.valid:
                raw = bytes(r.bytes)
                codes.append(DecodedCode(_text(raw, r.text), raw, quad))
            else:
                located.append(quad)
        return tuple(_unique(codes)), located

    def attempts(self, gray: np.ndarray, quad: Corners, detail: np.ndarray | None = None) -> list[Attempt]:
        """The second pass's ways of looking again at one symbol (or code-like region), likeliest first.

        The crop is taken from ``detail`` when given (the same picture at a higher resolution).
        Deblurring comes first when the crop's spectrum shows a defocus disc or a motion streak;
        the rest are the cheap fixes that read small, low-contrast or busy codes.
        """
        src, scale = (gray, 1.0) if detail is None else (_as_gray(detail), detail.shape[1] / gray.shape[1])
        crop = enhance.crop_around(src, quad, 1 / 6, scale=scale)
        if crop is None:
            return []
        return self.attempts_on(np.ascontiguousarray(crop.image), quad, crop, scale, src)

    def attempts_on(self, img: np.ndarray, quad: Corners, crop: enhance.Crop, scale: float,
                    src: np.ndarray | None = None) -> list[Attempt]:
        """`attempts` for ``img``, a picture of ``crop``'s place (the crop itself, or several frames'
        crops averaged); squaring up needs the whole ``src`` image and is left out without it."""
        module = enhance.quad_side(quad) * scale / MODULE_GUESS
        up = min(3.0, max(1.0, READABLE_MODULE_PX / module))
        big = max(img.shape) > 500 and up == 1.0  # large crops (photos) are downscaled rather than upscaled
        factor = 0.5 if big else 2.0
        inv = 1 / scale

        def back(f: float) -> Callable[[float, float], tuple[int, int]]:
            return lambda x, y: (int(round((x / f + crop.x0) * inv)), int(round((y / f + crop.y0) * inv)))

        def sized(image: np.ndarray, f: float) -> np.ndarray:
            if f == 1.0:
                return image
            return cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)

        def resized(f: float, binarizer: str = "local"):
            return lambda: (sized(img, f), binarizer, back(f))

        def deblurred(psf: np.ndarray, nsr: float = enhance.WIENER_NSR, at_least: float = 1.0):
            f = up if big else max(up, at_least)
            return lambda: (sized(enhance.wiener(img, psf, nsr), f), "local", back(f))

        def squared():
            side = int(min(900, max(64, enhance.quad_side(quad) * scale * up)))
            frame_quad = tuple((x * scale, y * scale) for x, y in quad)
            square, to_src = enhance.square_up(src, frame_quad, side)

            def to_frame(x: float, y: float) -> tuple[int, int]:
                px, py, pw = to_src @ (x, y, 1.0)
                return int(round(px / pw * inv)), int(round(py / pw * inv))
            return square, "local", to_frame

        def unslanted():
            got = enhance.unslant(img, max(up, UNSLANT_SCALE))
            if got is None:
                return None, "local", back(1.0)
            image, to_img = got

            def to_frame(x: float, y: float) -> tuple[int, int]:
                px, py = to_img @ (x, y, 1.0)
                return int(round((px + crop.x0) * inv)), int(round((py + crop.y0) * inv))
            return image, "local", to_frame

        def outlined():
            # modules across the squeezed direction: an outline seen at a slant is that much narrower
            across = module / enhance.quad_aspect(quad)
            corners, area = enhance.code_outline(img, across), crop
            if corners is not None and src is not None and _on_edge(corners, img.shape, module):
                wide = enhance.crop_around(src, quad, OUTLINE_MARGIN, scale=scale)
                if wide is not None:
                    area = wide
                    corners = enhance.code_outline(np.ascontiguousarray(wide.image), across)
            if corners is None:
                return None, "local", back(1.0)
            side = int(min(900, max(READABLE_MODULE_PX * MODULE_GUESS, enhance.quad_side(corners))))
            square, to_img = enhance.square_up(area.image, corners, side)
            if enhance.squeeze(square) >= OUTLINE_STREAK:
                # squared up, the grid has no main direction of its own: what is left is the hand's streak
                angle = enhance.streak_direction(square)
                length = enhance.streak_length(square, angle) * enhance.STREAK_ACF_SHORTEN
                square = enhance.wiener(square, enhance.streak_psf(length, angle), enhance.STREAK_NSR)

            def to_frame(x: float, y: float) -> tuple[int, int]:
                px, py, pw = to_img @ (x, y, 1.0)
                return int(round((px / pw + area.x0) * inv)), int(round((py / pw + area.y0) * inv))
            return square, "local", to_frame

        outline = np.asarray([(x * scale - crop.x0, y * scale - crop.y0) for x, y in quad], np.float32)

        def unglared():
            corners = erasure.outline(img)
            clean = erasure.read_clean(img, outline if corners is None else corners)
            if clean is None:
                return None, "local", back(1.0)
            to_img = clean.to_image

            def to_frame(x: float, y: float) -> tuple[int, int]:
                px, py, pw = to_img @ (x, y, 1.0)
                return int(round((px / pw + crop.x0) * inv)), int(round((py / pw + crop.y0) * inv))
            return clean.image, "local", to_frame

        sharp = lambda: (sized(enhance.unsharp(img), factor), "local", back(factor))  # noqa: E731

        def motion(length: float, angle: float) -> Attempt:
            return Attempt("motion", deblurred(enhance.streak_psf(length, angle), enhance.STREAK_NSR, 2.0))

        blur = enhance.estimate_blur(img)
        slanted = enhance.quad_aspect(quad) >= SLANTED_ASPECT
        defocus = [Attempt("defocus", deblurred(enhance.disc_psf(r))) for r in blur.radii]
        streaks = [motion(length, blur.streak[1]) for length in (blur.streak[0], *blur.streak_lengths)] \
            if blur.streak else []
        plain = Attempt("crop", resized(factor))
        square = [Attempt("square", squared)] if src is not None else []
        # a code seen at a slant: squared up on the outline of its modules' area (its streak undone),
        # unslanted, squared up on the outline given, before the plain crop (on the development clips
        # the first reads the most, the hand's streak included; each of the others reads some it misses)
        out = [Attempt("outline", outlined), Attempt("unslant", unslanted), *square, plain] if slanted else [plain]
        if erasure.washed_share(img, outline, module) >= erasure.WASHED_SHARE:  # glare: read around the washed-out part
            out.append(Attempt("erasures", unglared))
        if slanted:  # its squeeze also looks like a streak to the spectrum
            out += defocus[:1] + streaks[:1]
        elif streaks and enhance.squeeze(img) >= STREAK_FIRST:  # a long streak: every guess at its length first
            out += streaks + defocus[:1]
            streaks = []
        else:
            out += defocus[:1] + streaks[:1]
        if not slanted:
            out += [Attempt("unslant", unslanted), *square]
        out.append(Attempt("sharpen", sharp))
        out += defocus[1:] + streaks[1:]  # the spectrum's dips are shallow: its other guesses
        if not big:
            out.append(Attempt("upscale", resized(3.0)))
        out += [Attempt("global", resized(factor, "global")),
                Attempt("equalise", lambda: (cv2.createCLAHE(3.0, (4, 4)).apply(img), "local", back(1.0)))]
        if self._helper is not None:
            out.append(Attempt("pyzbar", resized(factor, "pyzbar")))
        return out


def _on_edge(corners: np.ndarray, shape: tuple[int, ...], module_px: float) -> bool:
    """Whether a corner of an outline lies within a module of its image's edge, or beyond it."""
    h, w = shape[:2]
    return any(min(x, y, w - 1 - x, h - 1 - y) < module_px for x, y in corners)


def _scaled_corners(corners: Corners, sx: float, sy: float) -> Corners:
    return tuple((int(round(x * sx)), int(round(y * sy))) for x, y in corners)


def _scaled(code: DecodedCode, sx: float, sy: float) -> DecodedCode:
    corners = _scaled_corners(code.corners, sx, sy) if code.corners else None
    return DecodedCode(code.text, code.raw, corners)


def _distinct(quads: list[Corners]) -> list[Corners]:
    """Located symbols with the duplicates dropped (the probe often sees what pass 1 saw)."""
    out: list[Corners] = []
    for q in quads:
        cx, cy = sum(p[0] for p in q) / 4, sum(p[1] for p in q) / 4
        side = max(abs(q[0][0] - q[2][0]), abs(q[0][1] - q[2][1]), 1)
        if all(abs(cx - sum(p[0] for p in o) / 4) > side / 3 or abs(cy - sum(p[1] for p in o) / 4) > side / 3
               for o in out):
            out.append(q)
    return out


def roi_view(gray: np.ndarray, roi: Roi | None) -> tuple[np.ndarray, int, int]:
    """The region of interest of a frame as a view (no copy) and its (x, y) offset in the frame."""
    if roi is None:
        return gray, 0, 0
    check_roi(roi)
    h, w = gray.shape[:2]
    x0, y0 = int(roi[0] * w), int(roi[1] * h)
    x1, y1 = min(w, int(round((roi[0] + roi[2]) * w))), min(h, int(round((roi[1] + roi[3]) * h)))
    return gray[y0:y1, x0:x1], x0, y0


def check_roi(roi: Roi) -> None:
    """Raise ValueError unless ``roi`` is (x, y, w, h) fractions describing a non-empty part of the frame."""
    if len(roi) != 4 or not all(isinstance(v, (int, float)) for v in roi):
        raise ValueError(f"region of interest must be 4 numbers (x, y, width, height), got {roi!r}")
    x, y, w, h = roi
    if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 and 0 < h <= 1
            and x + w <= 1.0 + 1e-9 and y + h <= 1.0 + 1e-9):
        raise ValueError(f"region of interest {roi!r} must be fractions of the frame: "
                         "0 <= x, y < 1, 0 < width, height, x + width <= 1, y + height <= 1")


def decode_region(decoder: Decoder, gray: np.ndarray, roi: Roi | None = None) -> list[DecodedCode]:
    """Decode the region of interest of a frame; corners are given in whole-frame pixels."""
    view, dx, dy = roi_view(gray, roi)
    codes = decoder.decode(view)
    if not (dx or dy):
        return codes
    return [DecodedCode(c.text, c.raw, tuple((x + dx, y + dy) for x, y in c.corners) if c.corners else None)
            for c in codes]


def y_plane(buffer: np.ndarray, width: int, height: int, stride: int) -> np.ndarray:
    """The luma (Y) plane of a YUV420 frame buffer as a (height, width) view, without copying.

    picamera2's ``capture_buffer("lores")`` hands over the whole YUV420 buffer as flat bytes: the
    Y plane is its first ``height`` rows of ``stride`` bytes (stride ≥ width, padding at row ends),
    followed by the U and V planes. Grayscale is all a QR decoder needs, so this is the frame.
    """
    flat = np.asarray(buffer, dtype=np.uint8).reshape(-1)
    if width <= 0 or height <= 0 or stride < width:
        raise ValueError(f"bad YUV420 geometry {width}x{height}, stride {stride}")
    if flat.size < stride * height:
        raise ValueError(f"YUV420 buffer of {flat.size} bytes is smaller than its Y plane "
                         f"({stride} x {height})")
    return flat[:stride * height].reshape(height, stride)[:, :width]


_FACTORIES: dict[str, Callable[[], Decoder]] = {"zxing": ZxingDecoder, "zxing-cpp": ZxingDecoder,
                                                "pyzbar": PyzbarDecoder}


def make_decoder(name: str = "auto") -> Decoder:
    """A decoder by name; "auto" is the two-pass zxing-cpp `ApplianceDecoder`, else pyzbar when zxing-cpp is missing."""
    key = name.strip().lower()
    if key == "auto":
        try:
            return ApplianceDecoder()
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


@contextlib.contextmanager
def _opencv_silent():
    """Silence OpenCV's own log for a moment: cv2.utils.logging in OpenCV 5, cv2.setLogLevel in 4.x
    (the 4.x build is what pip picks beside Raspberry Pi OS's numpy 1.x for picamera2)."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    get, set_ = (log.getLogLevel, log.setLogLevel) if log is not None else (cv2.getLogLevel, cv2.setLogLevel)
    level = get()
    set_(0)  # LOG_LEVEL_SILENT in both
    try:
        yield
    finally:
        set_(level)


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Load any image OpenCV reads (PNG, JPEG, WebP...) as 8-bit grayscale; raise ImageUnreadable otherwise."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageUnreadable(path, f"file too large for an image ({size} bytes)",
                                  text("image_error.file_too_large", size=size))
        data = path.read_bytes()
    except OSError as exc:
        raise ImageUnreadable(path, exc.strerror or str(exc), text("os_error." + os_error_code(exc))) from None
    dims = _dimensions(data)
    if dims is not None and dims[0] * dims[1] > MAX_PIXELS:
        raise ImageUnreadable(path, f"image too large ({dims[0]}x{dims[1]} pixels)",
                              text("image_error.too_many_pixels", width=dims[0], height=dims[1]))
    with _opencv_silent():  # broken files are reported once, by us, not by OpenCV on stderr
        try:
            gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None
        except cv2.error:
            gray = None
    if gray is None or gray.size == 0:  # imdecode reports failure by returning None, not raising
        raise ImageUnreadable(path, "not an image OpenCV can read", text("image_error.not_an_image"))
    if gray.shape[0] * gray.shape[1] > MAX_PIXELS:
        raise ImageUnreadable(path, f"image too large ({gray.shape[1]}x{gray.shape[0]} pixels)",
                              text("image_error.too_many_pixels", width=gray.shape[1], height=gray.shape[0]))
    return gray


@dataclass(frozen=True, slots=True)
class ScanResult:
    """The codes found in one image file; ``ms`` is decode time only (file reading excluded)."""

    file: str
    codes: tuple[str, ...]
    ms: float
    error: str | None = None  # English, as the JSON line has it
    problem: Text | None = None  # the error in the catalogue's words, for a person

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
        return ScanResult(str(path), (), 0.0, exc.why, exc.words)
    t0 = time.perf_counter()
    codes = decoder.decode(gray)
    ms = (time.perf_counter() - t0) * 1000
    return ScanResult(str(path), tuple(c.text for c in codes), ms)
