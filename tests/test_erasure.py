"""Codes partly washed out by glare: the module grid sampled from the symbol's corners, saturated
modules as Reed-Solomon erasures, the corrected symbol redrawn for zxing-cpp (hardware/erasure.py)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import segno
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import frames as F
from hardware import erasure
from hardware.decode import ApplianceDecoder

zxingcpp = pytest.importorskip("zxingcpp")
QR = [zxingcpp.BarcodeFormat.QRCodeModel1, zxingcpp.BarcodeFormat.QRCodeModel2]
PX = 4  # pixels per module of the synthetic symbols
QUIET = 4
PAPER = 215  # light modules: bright, but not washed out


def zxing_alone(image: np.ndarray) -> list[str]:
    found = zxingcpp.read_barcodes(image, formats=QR, try_invert=True, text_mode=zxingcpp.TextMode.Plain)
    return [r.text for r in found]


def drawn(matrix: np.ndarray, washed: np.ndarray, flipped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A symbol's picture: ``washed`` modules saturated (255), ``flipped`` ones the wrong colour; and its corners."""
    dark = matrix ^ flipped
    modules = np.where(dark, 30, PAPER).astype(np.uint8)
    modules[washed] = 255
    image = np.kron(np.pad(modules, QUIET, constant_values=PAPER), np.ones((PX, PX), np.uint8))
    n = matrix.shape[0]
    a, b = QUIET * PX, (QUIET + n) * PX
    return image, np.array([(a, a), (b, a), (b, b), (a, b)], np.float32)


def read(image: np.ndarray, corners: np.ndarray) -> list[str] | None:
    clean = erasure.read_clean(image, corners)
    return None if clean is None else zxing_alone(clean.image)


def cost_per_block(version: int, level: int, matrix: np.ndarray, washed: np.ndarray) -> list[int]:
    """2 x errors + erasures per block: codewords with a module washed out all around are erasures;
    a dark module washed out at the edge of the patch is read as light, an error."""
    lay = erasure.layout(version)
    square = np.ones((erasure.WASHED_MODULES, erasure.WASHED_MODULES), np.uint8)
    gone = cv2.erode(washed.astype(np.uint8), square, borderType=cv2.BORDER_REPLICATE).astype(bool)
    erased = gone[lay.rows, lay.cols].reshape(-1, 8).any(axis=1)
    wrong = (washed & ~gone & matrix)[lay.rows, lay.cols].reshape(-1, 8).any(axis=1) & ~erased
    return [int(erased[idx].sum() + 2 * wrong[idx].sum()) for idx in erasure.block_places(version, level)]


LEVELS = {"l": segno.consts.ERROR_LEVEL_L, "m": segno.consts.ERROR_LEVEL_M,
          "q": segno.consts.ERROR_LEVEL_Q, "h": segno.consts.ERROR_LEVEL_H}


@st.composite
def glared(draw):
    """A random symbol (versions 2-12, every level), a washed-out rectangle and a few flipped modules."""
    text = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=120))
    level = draw(st.sampled_from(sorted(LEVELS)))
    version = draw(st.integers(2, 12))
    try:
        qr = segno.make_qr(text, error=level, version=version, boost_error=False)
    except segno.DataOverflowError:
        qr = segno.make_qr(text, error=level, boost_error=False)
    matrix = np.array([list(row) for row in qr.matrix], dtype=bool)
    n = matrix.shape[0]
    x, y = draw(st.integers(9, n - 10)), draw(st.integers(9, n - 10))
    w, h = draw(st.integers(1, n // 2)), draw(st.integers(1, n // 2))
    washed = np.zeros_like(matrix)
    washed[y:y + h, x:x + w] = True
    flipped = np.zeros_like(matrix)
    for _ in range(draw(st.integers(0, 12))):
        r, c = draw(st.integers(9, n - 9)), draw(st.integers(9, n - 9))
        flipped[r, c] = True
    return text, qr, matrix, washed, flipped


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(glared())
def test_a_washed_out_symbol_is_read_exactly_or_not_at_all(case):
    """Whatever is washed out or flipped, the text read is the symbol's own or nothing; and with the
    modules intact but for the washed-out ones, it is read whenever every block keeps two EC
    codewords spare (twice what errors-only decoding corrects)."""
    text, qr, matrix, washed, flipped = case
    image, corners = drawn(matrix, washed, flipped)
    got = read(image, corners)
    assert got in (None, [text])
    level = LEVELS[qr.error.lower()]
    nsym = erasure.blocks(qr.version, level)[0][1]
    clean_image, _ = drawn(matrix, washed, np.zeros_like(flipped))
    if all(c <= nsym - erasure.SPARE_SYMBOLS for c in cost_per_block(qr.version, level, matrix, washed)):
        assert read(clean_image, corners) == [text]


def test_erasures_read_what_errors_only_decoding_cannot():
    """A version-12 M symbol (the cards' size) with a disc washed out: zxing-cpp reads the saturated
    modules as light, too many errors for some block, and gives up; with them as erasures it reads."""
    text = F.card_text()
    qr = segno.make_qr(text, error="m", boost_error=False)
    matrix = np.array([list(row) for row in qr.matrix], dtype=bool)
    n = matrix.shape[0]
    washed = np.zeros_like(matrix)
    yy, xx = np.mgrid[0:n, 0:n]
    washed[(yy - n * 0.35) ** 2 + (xx - n * 0.6) ** 2 < (n * 0.2) ** 2] = True
    per_block = cost_per_block(qr.version, LEVELS["m"], matrix, washed)
    nsym = erasure.blocks(qr.version, LEVELS["m"])[0][1]
    assert max(per_block) <= nsym - erasure.SPARE_SYMBOLS, per_block
    image, corners = drawn(matrix, washed, np.zeros_like(washed))
    assert zxing_alone(image) == []
    assert read(image, corners) == [text]
    # the corners a detector gives are rarely exact: half a module off, they are found again from the patterns
    assert read(image, corners + np.array([(-2, 1), (2, -2), (1, 2), (-2, -2)], np.float32)) == [text]


def test_the_appliance_decoder_reads_a_card_under_a_saturating_glare():
    """A card under a lamp's reflection (development clip, seed 11, which no frame of the decoder
    before read): part of its code is washed out; neither zxing-cpp alone nor any other second-pass
    attempt reads this frame, the erasure decode does (the outline from OpenCV's detector, the grid
    from the finder and alignment patterns)."""
    camera = F.Camera(F.card_text())
    clip = F.clip(camera, "glare", np.random.default_rng([11, 1000 + list(F.CATEGORIES).index("glare"), 2]))
    frame = clip[0].frame
    assert zxing_alone(frame) == []
    dec = ApplianceDecoder()
    result = dec.analyse(frame)
    assert [c.text for c in result.codes] == [F.card_text()]
    quad = dec.search(frame)[0]
    names = [a.name for a in dec.attempts(frame, quad)]
    assert names[:2] == ["crop", "erasures"], names
    for attempt in dec.attempts(frame, quad):
        codes, _ = dec.attempt(attempt)
        assert bool(codes) == (attempt.name == "erasures"), attempt.name


def test_a_frame_without_glare_gets_no_erasure_attempt():
    """White paper clips to 255 too, but beside dark modules: only a washed-out area earns the attempt."""
    camera = F.Camera(F.card_text())
    shot = F.frame_set(camera, 2, seed=11, categories=("defocus 1.0",))["defocus 1.0"][0]
    dec = ApplianceDecoder()
    quad = dec.search(shot.frame)[0]
    assert "erasures" not in [a.name for a in dec.attempts(shot.frame, quad)]
