"""Issuer side: card QR text → printable images (a PNG of the code, a credit-card-sized SVG card).

The SVG card is for people without a smartphone: the code large on the left, the holder's
details beside it in Vietnamese and English. Everything printed comes from untrusted input and is
escaped for XML; control and bidi characters are shown as \\uXXXX, as on the checkpoint screen.
"""
from __future__ import annotations

import datetime as dt
import io
import os
import re
import textwrap
import unicodedata
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape as xml_escape

import segno

from scanner.base.errors import UsageError
from scanner.base.fsutil import write_output
from scanner.base.safetext import escape as safe_escape

ERROR_LEVEL = "M"
"""QR error correction: M keeps CK1 codes small enough to print large; never boosted."""

_ALNUM = re.compile(r"[0-9A-Z $%*+\-./:]+")
# Characters XML 1.0 forbids that safetext leaves alone (lone surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")

CARD_W, CARD_H = 85.6, 54.0  # ISO/IEC 7810 ID-1, millimetres
FONT = "'Noto Sans', 'DejaVu Sans', 'Liberation Sans', Arial, sans-serif"
HEADLINE = ("THẺ KIỂM SOÁT", "CHECKPOINT CARD")
_EM = 0.62  # average glyph width in em (DejaVu Sans is wide), to estimate text width without a font


def _qr(text: str) -> segno.QRCode:
    """The QR code of a card text: alphanumeric mode for CK1 text, UTF-8 bytes for anything else."""
    if not text:
        raise UsageError("cannot render an empty text as a QR code")
    alnum = _ALNUM.fullmatch(text) is not None
    try:
        qr = segno.make_qr(text, error=ERROR_LEVEL, boost_error=False,
                           mode="alphanumeric" if alnum else "byte", encoding=None if alnum else "utf-8")
    except segno.DataOverflowError:
        raise UsageError(f"text of {len(text)} characters does not fit in a QR code") from None
    if alnum and qr.mode != "alphanumeric":
        raise UsageError(f"segno chose {qr.mode} mode for alphanumeric text")
    return qr


def qr_png(text: str, path: str | os.PathLike, *, scale: int = 8, border: int = 4) -> None:
    """Write the QR code of ``text`` as a black-on-white PNG (``scale`` px per module, ``border`` modules)."""
    if scale < 1 or border < 0:
        raise UsageError("scale must be at least 1 and border at least 0")
    buf = io.BytesIO()
    _qr(text).save(buf, kind="png", scale=scale, border=border, dark="#000", light="#fff")
    write_output(path, buf.getvalue(), 0o644)


def _qr_path(qr: segno.QRCode) -> str:
    """The ``d`` of segno's SVG path at one unit per module, no border (stroked lines, width 1)."""
    buf = io.BytesIO()
    qr.save(buf, kind="svg", scale=1, border=0, xmldecl=False, svgns=True, nl=False)
    path = ET.fromstring(buf.getvalue()).find("{http://www.w3.org/2000/svg}path")
    d = None if path is None else path.get("d")
    if not d:
        raise RuntimeError("segno's SVG has no path")
    return d


def _printable(text: str) -> str:
    """NFC text with unsafe and XML-1.0-forbidden characters shown as \\uXXXX (as on the screen)."""
    text = safe_escape(unicodedata.normalize("NFC", str(text)))
    return _NOT_XML.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _xml(text: str) -> str:
    """Printable text escaped for XML content and attributes."""
    return xml_escape(_printable(text), {'"': "&quot;"})


def _n(value: float) -> str:
    """A length for SVG: rounded, no trailing zeros."""
    return f"{round(value, 3):g}"


def _fit(text: str, width: float, size: float, min_size: float, max_lines: int,
         em: float) -> tuple[list[str], float, bool]:
    """Wrap printable text into at most ``max_lines`` lines at the largest font size (mm) that fits ``width``.

    Words are broken only if nothing else fits. Returns the lines (not yet XML-escaped), the size,
    and whether they must still be squeezed (textLength) because even the smallest size overflows.
    """
    words = " ".join(_printable(text).split()) or "—"
    fitted = size
    while True:
        per_line = max(1, int(width / (em * fitted)))
        lines = textwrap.wrap(words, per_line, break_long_words=False)
        if len(lines) <= max_lines and all(len(line) <= per_line for line in lines):
            return lines, fitted, False
        if fitted <= min_size:
            break
        fitted = max(min_size, round(fitted - 0.2, 2))
    lines = textwrap.wrap(words, per_line, break_long_words=True)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [" ".join(lines[max_lines - 1:])]
    return lines, fitted, True


def _text(x: float, y: float, text: str, *, size: float, width: float, weight: str = "normal",
          fill: str = "#000", max_lines: int = 1, min_size: float | None = None) -> tuple[str, float]:
    """One (possibly wrapped) text element; returns the SVG and the y below it."""
    em = _EM * (1.12 if weight == "bold" else 1.0)
    lines, fitted, squeeze = _fit(text, width, size, min_size or size, max_lines, em)
    spans = []
    for i, line in enumerate(lines):
        squeeze_attr = (f' textLength="{_n(width)}" lengthAdjust="spacingAndGlyphs"'
                        if squeeze and len(line) * em * fitted > width else "")
        spans.append(f'<tspan x="{_n(x)}" y="{_n(y + i * fitted * 1.2)}"{squeeze_attr}>'
                     f'{xml_escape(line)}</tspan>')
    svg = (f'<text font-size="{_n(fitted)}" font-weight="{weight}" fill="{fill}">'
           + "".join(spans) + "</text>")
    return svg, y + (len(lines) - 1) * fitted * 1.2


def card_svg(text: str, *, name: str, birth_date: str, issuer: str, expires_at: int, card_id_hex: str,
             path: str | os.PathLike | None = None) -> str:
    """A printable 85.6×54 mm card (SVG, viewBox in mm) with the QR code and the holder's details.

    Returns the SVG text and writes it (UTF-8) to ``path`` when given. ``card_id_hex`` may be empty.
    """
    qr = _qr(text)
    cid = card_id_hex.strip().lower()
    if cid and not re.fullmatch(r"[0-9a-f]+", cid):
        raise UsageError(f"card id {card_id_hex!r} is not hexadecimal")
    try:
        expires = dt.datetime.fromtimestamp(expires_at, dt.UTC).strftime("%Y-%m-%d") + " UTC"
    except (OverflowError, OSError, ValueError):
        raise UsageError(f"expiry {expires_at!r} is not a usable epoch time") from None

    side = CARD_H - 6  # QR square including its 4-module quiet zone
    modules = qr.symbol_size(scale=1, border=4)[0]
    unit = side / modules
    qx, qy = 2.0, (CARD_H - side) / 2
    x, width = qx + side + 1.5, CARD_W - (qx + side + 1.5) - 2.5
    label_size, label_fill = 1.7, "#555"

    parts = [
        (f'<rect x="0.2" y="0.2" width="{_n(CARD_W - 0.4)}" height="{_n(CARD_H - 0.4)}" rx="3.18" '
        'fill="#fff" stroke="#999" stroke-width="0.2"/>'),
        (f'<path transform="translate({_n(qx + 4 * unit)} {_n(qy + 4 * unit)}) scale({unit:.6g})" '
        f'stroke="#000" stroke-width="1" fill="none" shape-rendering="crispEdges" d="{_qr_path(qr)}"/>'),
    ]
    y = 7.0
    for line, size, weight in ((HEADLINE[0], 3.0, "bold"), (HEADLINE[1], 2.4, "bold")):
        svg, y = _text(x, y, line, size=size, width=width, weight=weight, min_size=1.8)
        parts.append(svg)
        y += size * 1.15
    parts.append(f'<line x1="{_n(x)}" y1="{_n(y - 1.6)}" x2="{_n(x + width)}" y2="{_n(y - 1.6)}" '
                 'stroke="#999" stroke-width="0.2"/>')
    y += 1.0
    fields = (("Họ tên / Name", name, 3.4, "bold", 2),
              ("Ngày sinh / Date of birth", birth_date, 2.6, "normal", 1),
              ("Cơ quan cấp / Issuer", issuer, 2.6, "normal", 2),
              ("Hết hạn / Expires", expires, 2.6, "normal", 1),
              ("Mã thẻ / Card ID", cid[:8] or "—", 2.6, "normal", 1))
    for caption, value, size, weight, max_lines in fields:
        svg, y = _text(x, y, caption, size=label_size, width=width, fill=label_fill)
        parts.append(svg)
        y += size * 1.05
        svg, y = _text(x, y, value, size=size, width=width, weight=weight, max_lines=max_lines, min_size=1.8)
        parts.append(svg)
        y += 2.0 + 1.7 * 0.6

    svg = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(CARD_W)}mm" height="{_n(CARD_H)}mm" '
        f'viewBox="0 0 {_n(CARD_W)} {_n(CARD_H)}" font-family="{FONT}">\n'
        f'<title>{_xml(" / ".join(HEADLINE))}: {_xml(name)}</title>\n'
        + "\n".join(parts) + "\n</svg>\n"
    )
    if path is not None:
        write_output(path, svg.encode("utf-8"), 0o644)
    return svg
