"""Read a QR code part of which is washed out by glare: Reed-Solomon decoding with erasures.

A saturated spot hides its modules completely: a decoder that binarises them reads them all as
light, and errors-only decoding (zxing-cpp, zbar) corrects only half as many wrong codewords as
the symbol has error-correction codewords. Told *where* the unknown codewords are, Reed-Solomon
corrects twice as many of them (2 x errors + erasures <= EC codewords). `read_clean` samples the
module grid from the symbol's corners, marks the saturated modules as erasures, corrects each
block with `reedsolo`, and draws the corrected symbol cleanly for zxing-cpp to read (which checks
every block again and parses the segments). The layout of a symbol (function patterns, codeword
placement, masks, blocks) is segno's, the same code that draws the cards.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import reedsolo
from segno import consts as qr_consts
from segno import encoder as qr_encoder

from scanner.base.lazy import lazy_module

if TYPE_CHECKING:
    import cv2
    import numpy as np
else:
    np = lazy_module("numpy")  # loaded at its first use: ~13 MB a process without a camera may never need
    cv2 = lazy_module("cv2")  # loaded at its first use: a device without a camera never needs OpenCV

SATURATED = 254.5
"""A module whose centre is this bright (8-bit, averaged over its middle) is washed out: its value is
unknown (an erasure)."""
MIN_MODULE_PX = 1.5
"""Smaller modules are not looked for (the grid could not be placed on them)."""
WASHED_SHARE = 0.005
"""A symbol with at least this share of its area washed out (`washed_share`) is worth an erasure decode."""
SPARE_SYMBOLS = 2
"""Each block must keep this many EC codewords unused (2 x errors + erasures <= EC - SPARE_SYMBOLS),
so that a block too damaged to correct is detected rather than miscorrected."""
FUNCTION_MATCH = 0.85
"""Share of readable function-pattern modules (finders, timing, alignment, version) that must match
for a grid to be taken as the symbol's."""
VERSION_CANDIDATES = 3
"""Versions (those whose patterns fit the unrefined corners best) whose grid is refined and compared."""
FORMAT_DISTANCE = 6
"""Format information (two copies of 15 bits) is accepted at most this many bits from a valid one
(BCH(15,5) corrects 3 in each copy)..."""
FORMAT_MARGIN = 5
"""...and only this many bits nearer to it than to any other."""
QUIET = 4
"""Quiet-zone modules around the clean symbol drawn for zxing-cpp."""
CLEAN_MODULE_PX = 4
"""Pixels per module of the clean symbol."""
REFINE_ROUNDS = 3
"""Rounds of looking for the patterns and refitting the grid in `refine`."""
REFINE_PX = 4
"""Pixels per module of the squared-up symbol `refine` looks for patterns in."""
SEARCH_MODULES = 2.0
"""How far (modules) from where the corners put it a pattern is looked for."""
FLAT = 8.0
"""A search window whose pixels vary less than this (standard deviation, 8-bit) holds no pattern."""
PATTERN_MATCH = 0.5
"""Normalised correlation a pattern must reach to be used (a washed-out one is left out)."""
WASHED_MODULES = 3
"""A saturated module is washed out (an erasure) when the whole square of this many modules around it is."""
LOCAL_WINDOW = 9
"""Modules across the window whose mean separates dark from light (glare veils the code unevenly)."""

_ECC = cast("dict[int, dict[int, tuple[Any, ...]]]", qr_consts.ECC)
"""segno's table of blocks: version -> error level -> (blocks, codewords, data codewords) groups."""
_ERROR_LEVELS = (qr_consts.ERROR_LEVEL_L, qr_consts.ERROR_LEVEL_M, qr_consts.ERROR_LEVEL_Q, qr_consts.ERROR_LEVEL_H)


@dataclass(frozen=True, slots=True)
class Layout:
    """What segno says about a version: its function modules and each data bit's module."""

    version: int
    size: int
    fixed: np.ndarray  # (size, size) int8: the known value of finder/timing/alignment/version modules, -1 elsewhere
    rows: np.ndarray  # row of the module holding bit i of the placed bit stream
    cols: np.ndarray  # its column


@dataclass(frozen=True, slots=True)
class Clean:
    """A symbol redrawn from corrected codewords; ``to_image`` maps its pixels to the source image's."""

    image: np.ndarray
    to_image: np.ndarray  # 3x3 homography: clean-symbol pixel -> source image pixel
    erasures: int
    errors: int


def _matrix(size: int) -> tuple:
    """segno's empty matrix (2 = not yet placed) with finder, separator, timing and alignment patterns."""
    matrix = qr_encoder.make_matrix(size, size)
    qr_encoder.add_finder_patterns(matrix, size, size)
    qr_encoder.add_alignment_patterns(matrix, size, size)
    return matrix


@functools.lru_cache(maxsize=40)
def layout(version: int) -> Layout:
    """The layout of a QR code of ``version`` (1-40)."""
    size = qr_encoder.calc_matrix_size(version)
    base = _matrix(size)
    function = np.array([list(row) for row in base]) != 2
    with_version = [bytearray(row) for row in base]
    qr_encoder.add_version_info(with_version, version)
    fixed = np.array([list(row) for row in with_version], dtype=np.int8)
    format_cells = np.zeros((size, size), bool)
    format_cells[8, :9] = format_cells[:9, 8] = True
    format_cells[8, size - 8:] = format_cells[size - 8:, 8] = True
    fixed[format_cells] = -1
    fixed[size - 8, 8] = 1  # the dark module
    fixed[~function] = -1
    # the placement order, learnt from segno itself: each data module receives its bit's index
    numbered = [[-1 if v != 2 else 2 for v in row] for row in base]
    bits = sum(b.num_blocks * b.num_total for b in _ECC[version][qr_consts.ERROR_LEVEL_M]) * 8
    free = sum(v == 2 for row in numbered for v in row)
    qr_encoder.add_codewords(numbered, [10 + i for i in range(free)], version)
    index = np.array(numbered)
    rows, cols = np.nonzero(index >= 10)
    order = np.argsort(index[rows, cols])
    rows, cols = rows[order][:bits], cols[order][:bits]
    return Layout(version, size, fixed, rows, cols)


@functools.lru_cache(maxsize=64)
def _format_bits(version: int, level: int, mask: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The format information's cells and their values for (error level, mask), as segno places them."""
    matrix = [bytearray([2] * size) for _ in range(size)]
    qr_encoder.add_format_info(matrix, version, level, mask)
    arr = np.array([list(row) for row in matrix])
    arr[size - 8, 8] = 2  # the dark module is a fixed one
    cells = arr != 2
    return cells, arr[cells].astype(np.int8)


@functools.lru_cache(maxsize=16)
def _mask(pattern: int, size: int) -> np.ndarray:
    fn = qr_encoder.get_data_mask_functions(False)[pattern]
    return np.array([[fn(i, j) for j in range(size)] for i in range(size)], dtype=np.uint8)


@functools.lru_cache(maxsize=64)
def _codec(nsym: int) -> reedsolo.RSCodec:
    """QR's Reed-Solomon code: GF(256) with x^8+x^4+x^3+x^2+1, generator roots from alpha^0."""
    return reedsolo.RSCodec(nsym, nsize=255, fcr=0, prim=0x11D, generator=2, c_exp=8)


def sample(gray: np.ndarray, corners: np.ndarray, size: int,
           cells: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The image at each module centre of a ``size`` x ``size`` grid whose outer corners are ``corners``
    (top-left, top-right, bottom-right, bottom-left of the symbol), averaged over the module's middle;
    with ``cells`` (rows, columns) at those modules only, as a flat array."""
    square = np.array([(0, 0), (size, 0), (size, size), (0, size)], np.float32)
    to_image = cv2.getPerspectiveTransform(square, np.asarray(corners, np.float32))
    if cells is None:
        centres = (np.mgrid[0:size, 0:size][::-1].reshape(2, -1).T + 0.5).astype(np.float32)
    else:
        centres = np.stack([cells[1], cells[0]], axis=1).astype(np.float32) + 0.5
    pts = cv2.perspectiveTransform(centres[None], to_image)[0]
    module = float(np.linalg.norm(np.asarray(corners[1], np.float32) - np.asarray(corners[0], np.float32))) / size
    k = max(1, int(module / 2)) | 1
    smooth = cv2.blur(gray, (k, k)) if k > 1 else gray
    values = cv2.remap(smooth, pts[:, 0].reshape(1, -1), pts[:, 1].reshape(1, -1), cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return values.reshape(-1) if cells is not None else values.reshape(size, size)


def modules(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dark, erased): each module's reading against the mean of its neighbourhood, and the washed-out
    ones: saturated with every neighbour saturated too (white paper clips to 255 as well, but beside
    a dark module, which glare washes out)."""
    saturated = values >= SATURATED
    erased = cv2.erode(saturated.astype(np.uint8), np.ones((WASHED_MODULES, WASHED_MODULES), np.uint8),
                       borderType=cv2.BORDER_REPLICATE).astype(bool)
    vals = values.astype(np.float32)
    weight = (~erased).astype(np.float32)
    win = (LOCAL_WINDOW, LOCAL_WINDOW)
    mean = cv2.blur(vals * weight, win, borderType=cv2.BORDER_REFLECT) / np.maximum(
        cv2.blur(weight, win, borderType=cv2.BORDER_REFLECT), 1e-3)
    return vals < mean, erased


def _function_score(dark: np.ndarray, values: np.ndarray, lay: Layout) -> float:
    """Share of the function-pattern modules read as they are (saturated ones left out: a light one
    clipped is right, a dark one washed out tells nothing); 0 when fewer than half can be judged."""
    fixed = lay.fixed >= 0
    known = fixed & (values < SATURATED)
    n = int(known.sum())
    if n < int(fixed.sum()) // 2 and n < int((fixed & (lay.fixed == 1)).sum()) * 3 // 4:
        return 0.0
    return float((dark[known] == (lay.fixed[known] == 1)).sum()) / n


def blocks(version: int, level: int) -> list[tuple[int, int]]:
    """(data codewords, EC codewords) of each block, in order."""
    return [(b.num_data, b.num_total - b.num_data) for b in _ECC[version][level]
            for _ in range(b.num_blocks)]


def block_places(version: int, level: int) -> list[list[int]]:
    """Where each block's codewords sit in the symbol's interleaved codeword sequence: the data
    codewords column by column over the blocks (the shorter blocks first), then the EC codewords."""
    shape = blocks(version, level)
    places: list[list[int]] = [[] for _ in shape]
    i = 0
    for col in range(max(d for d, _ in shape)):
        for b, (d, _) in enumerate(shape):
            if col < d:
                places[b].append(i)
                i += 1
    for _ in range(shape[0][1]):
        for b in range(len(shape)):
            places[b].append(i)
            i += 1
    return places


def correct(codewords: np.ndarray, erased: np.ndarray, version: int, level: int) -> tuple[list[int], int, int] | None:
    """The interleaved codewords of a symbol, corrected block by block (``erased`` marks the unknown
    ones), with the numbers of erasures and errors corrected. None when a block has more than it can
    correct with SPARE_SYMBOLS EC codewords left over."""
    fixed = [int(c) for c in codewords]
    total_erased = total_errors = 0
    for idx, (_, nsym) in zip(block_places(version, level), blocks(version, level), strict=True):
        word = bytearray(int(codewords[j]) for j in idx)
        erase = [k for k, j in enumerate(idx) if erased[j]]
        if len(erase) > nsym - SPARE_SYMBOLS:
            return None
        try:
            _, full, errata = _codec(nsym).decode(word, erase_pos=erase or None)
        except reedsolo.ReedSolomonError:
            return None
        errors = len(set(errata) - set(erase))
        if 2 * errors + len(erase) > nsym - SPARE_SYMBOLS or _codec(nsym).check(full) != [True]:
            return None
        for k, j in enumerate(idx):
            fixed[j] = full[k]
        total_erased += len(erase)
        total_errors += errors
    return fixed, total_erased, total_errors


@functools.lru_cache(maxsize=40)
def _fixed_cells(version: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """The modules of known colour of a version (finder, timing, alignment, version information) and
    whether each is light."""
    fixed = layout(version).fixed
    rows, cols = np.nonzero(fixed >= 0)
    return (rows, cols), fixed[rows, cols] == 0


def _fit(gray: np.ndarray, corners: np.ndarray, lay: Layout) -> float:
    """How well the function patterns of ``lay`` sampled at ``corners`` look like themselves: the
    difference between the modules known light and known dark, in standard deviations (saturated
    modules left out)."""
    cells, light = _fixed_cells(lay.version)
    values = sample(gray, corners, lay.size, cells).astype(np.float32)
    seen = values < SATURATED
    lit, dark = values[light & seen], values[~light & seen]
    if lit.size < 4 or dark.size < 4:
        return -1.0
    return float((lit.mean() - dark.mean()) / (values[seen].std() + 1.0))


def _centres(version: int) -> list[tuple[float, float, int]]:
    """Centres (x, y in modules) of a version's finder (7) and alignment (5) patterns, with their size."""
    size = 17 + 4 * version
    out = [(3.5, 3.5, 7), (size - 3.5, 3.5, 7), (3.5, size - 3.5, 7)]
    if version >= 2:
        pos = qr_consts.ALIGNMENT_POS[version - 2]
        corners = {(pos[0], pos[0]), (pos[0], pos[-1]), (pos[-1], pos[0])}
        out += [(x + 0.5, y + 0.5, 5) for x in pos for y in pos if (x, y) not in corners]
    return out


@functools.lru_cache(maxsize=4)
def _template(n: int) -> np.ndarray:
    """A finder pattern (n=7) with its light separator, or an alignment pattern (n=5), REFINE_PX pixels a module."""
    half = n // 2 + (1 if n == 7 else 0)
    ring = np.maximum(*np.abs(np.mgrid[-half:half + 1, -half:half + 1]))
    light = (ring == 2) | (ring == 4) if n == 7 else ring == 1
    return np.kron(np.where(light, 255, 0).astype(np.uint8), np.ones((REFINE_PX, REFINE_PX), np.uint8))


def refine(gray: np.ndarray, corners: np.ndarray, lay: Layout) -> np.ndarray:
    """``corners`` corrected from where the finder and alignment patterns really are: each is looked
    for (template matching) within SEARCH_MODULES of where ``corners`` put it in the squared-up
    symbol, and the grid refitted to those found (a detector's corners are often a module off, which
    misreads a third of a small symbol's modules)."""
    size = lay.size
    square = np.array([(0, 0), (size, 0), (size, size), (0, size)], np.float32)
    to_image = cv2.getPerspectiveTransform(square, np.asarray(corners, np.float32))
    px = REFINE_PX
    for _ in range(REFINE_ROUNDS):
        scale = np.array([[1 / px, 0, 0], [0, 1 / px, 0], [0, 0, 1]])
        warped = cv2.warpPerspective(gray, to_image @ scale, (size * px, size * px),
                                     flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        src, dst = [], []
        for cx, cy, n in _centres(lay.version):
            tpl = _template(n)
            half = tpl.shape[0] / 2 / px + SEARCH_MODULES
            x0, y0 = int(round((cx - half) * px)), int(round((cy - half) * px))
            x1, y1 = int(round((cx + half) * px)), int(round((cy + half) * px))
            window = warped[max(0, y0):y1, max(0, x0):x1]
            if window.shape[0] < tpl.shape[0] or window.shape[1] < tpl.shape[1] or window.std() < FLAT:
                continue  # outside the picture, or washed out: nothing to match
            match = cv2.matchTemplate(window, tpl, cv2.TM_CCOEFF_NORMED)
            _, score, _, (mx, my) = cv2.minMaxLoc(match)
            if score < PATTERN_MATCH:
                continue
            fx = (max(0, x0) + mx + tpl.shape[1] / 2) / px
            fy = (max(0, y0) + my + tpl.shape[0] / 2) / px
            src.append((cx, cy))
            dst.append((fx, fy))
        if len(src) < 4:
            break
        found = cv2.perspectiveTransform(np.asarray(dst, np.float32)[None], to_image)[0]
        fitted, _ = cv2.findHomography(np.asarray(src, np.float32), found, 0)
        if fitted is None:
            break
        moved = cv2.perspectiveTransform(square[None], fitted)[0] - cv2.perspectiveTransform(square[None], to_image)[0]
        module = float(np.linalg.norm(np.asarray(corners[1], np.float32) - np.asarray(corners[0], np.float32))) / size
        if float(np.abs(moved).max()) > (SEARCH_MODULES + 1) * module:
            break  # a pattern matched in the wrong place: the fit is not to be trusted
        to_image = fitted
    return cv2.perspectiveTransform(square[None], to_image)[0]


def _orders(corners: np.ndarray) -> list[np.ndarray]:
    """The corners' four rotations, going round clockwise on the image as a symbol seen from the front
    does (which corner is the top-left is not known; a mirrored symbol would fit its patterns too)."""
    x, y = corners[:, 0], corners[:, 1]
    area = float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
    seq = corners if area > 0 else corners[::-1]
    return [np.roll(seq, -k, axis=0) for k in range(4)]


@dataclass(frozen=True, slots=True)
class Grid:
    """A symbol's modules as one picture shows them: its version, the value at each module centre
    (rows and columns of the symbol, top-left finder first) and where the grid's corners are."""

    version: int
    values: np.ndarray  # (size, size) float32
    corners: np.ndarray  # (4, 2) float32: the symbol's top-left, top-right, bottom-right, bottom-left


def locate(gray: np.ndarray, corners: np.ndarray, version: int | None = None, *,
           min_module_px: float = MIN_MODULE_PX) -> Grid | None:
    """The module grid of the symbol whose outer corners are about ``corners`` (any order going round):
    the version (unless given), which corner is the top-left and the corners' exact places are the
    ones where the finder, timing and alignment patterns fit; None when they do not fit well."""
    corners = np.asarray(corners, np.float32).reshape(4, 2)
    side = float(np.mean([np.linalg.norm(corners[i] - corners[(i + 1) % 4]) for i in range(4)]))
    versions = [version] if version is not None else [v for v in range(1, 41) if side / (17 + 4 * v) >= min_module_px]
    ranked = sorted(versions, key=lambda v: -max(_fit(gray, order, layout(v)) for order in _orders(corners)))
    # the version and which corner is the top-left are judged after refining: with the corners a
    # module off, a neighbouring version or a wrong corner can fit the patterns better
    best: tuple[float, Layout, np.ndarray, np.ndarray] | None = None
    for v in ranked[:VERSION_CANDIDATES]:
        lay = layout(v)
        for order in _orders(corners):
            refined = refine(gray, order, lay)
            values = sample(gray, refined, lay.size).astype(np.float32)
            score = _function_score(modules(values)[0], values, lay)
            if best is None or score > best[0]:
                best = (score, lay, refined, values)
    if best is None or best[0] < FUNCTION_MATCH:
        return None
    _, lay, order, values = best
    return Grid(lay.version, values, order)


def read_grid(grid: Grid) -> Clean | None:
    """The symbol of ``grid`` corrected (saturated modules as erasures) and redrawn; None unless its
    format information and every block check out."""
    lay = layout(grid.version)
    size, version = lay.size, grid.version
    dark, erased = modules(grid.values)
    distances = []
    for level in _ERROR_LEVELS:
        for mask in range(8):
            cells, want = _format_bits(version, level, mask, size)
            seen = ~erased[cells]
            distances.append((int((dark[cells][seen] != (want[seen] == 1)).sum()), level, mask))
    distances.sort()
    (distance, level, mask), runner_up = distances[0], distances[1][0]
    if distance > FORMAT_DISTANCE or runner_up - distance < FORMAT_MARGIN:
        return None
    n_codewords = sum(d + e for d, e in blocks(version, level))
    rows, cols = lay.rows[:n_codewords * 8], lay.cols[:n_codewords * 8]
    bits = (dark[rows, cols] ^ _mask(mask, size)[rows, cols].astype(bool)).astype(np.uint8)
    cw_erased = erased[rows, cols].reshape(-1, 8).any(axis=1)
    got = correct(np.packbits(bits), cw_erased, version, level)
    if got is None:
        return None
    fixed, n_erased, n_errors = got
    stream = np.unpackbits(np.array(fixed, dtype=np.uint8)).tolist()
    matrix = _matrix(size)
    free = sum(v == 2 for row in matrix for v in row)
    qr_encoder.add_codewords(matrix, stream + [0] * (free - len(stream)), version)
    _, matrix = qr_encoder.find_and_apply_best_mask(matrix, size, size, mask)
    qr_encoder.add_format_info(matrix, version, level, mask)
    qr_encoder.add_version_info(matrix, version)
    symbol = np.array([list(row) for row in matrix], dtype=np.uint8)
    image = np.pad(255 - 255 * symbol, QUIET, constant_values=255)
    image = np.kron(image, np.ones((CLEAN_MODULE_PX, CLEAN_MODULE_PX), np.uint8))
    square = np.array([(0, 0), (size, 0), (size, size), (0, size)], np.float32)
    to_image = cv2.getPerspectiveTransform(square, np.asarray(grid.corners, np.float32))
    from_clean = np.array([[1 / CLEAN_MODULE_PX, 0, -QUIET], [0, 1 / CLEAN_MODULE_PX, -QUIET], [0, 0, 1]])
    return Clean(np.ascontiguousarray(image), to_image @ from_clean, n_erased, n_errors)


def read_clean(gray: np.ndarray, corners: np.ndarray) -> Clean | None:
    """`locate` then `read_grid`: one picture's symbol corrected and redrawn, or None."""
    grid = locate(gray, corners)
    return None if grid is None else read_grid(grid)


def washed_share(gray: np.ndarray, quad: np.ndarray, module_px: float) -> float:
    """Share of the inside of ``quad`` (a symbol's outline in ``gray``) that is washed out: saturated
    with no darker pixel within WASHED_MODULES modules (white paper may clip too, but not in a code)."""
    k = max(3, int(round(WASHED_MODULES * module_px)))
    washed = cv2.erode(cv2.inRange(gray, 255, 255), np.ones((k, k), np.uint8))
    inside = np.zeros(gray.shape, np.uint8)
    cv2.fillPoly(inside, [np.round(quad).astype(np.int32).reshape(-1, 1, 2)], 255)
    return cv2.countNonZero(cv2.bitwise_and(washed, inside)) / max(1, cv2.countNonZero(inside))


def outline(gray: np.ndarray) -> np.ndarray | None:
    """The corners of a QR symbol in a crop, from OpenCV's finder-pattern detector (it finds a symbol
    whose third finder pattern is washed out, which zxing-cpp does not locate)."""
    ok, pts = cv2.QRCodeDetectorAruco().detect(gray)
    if not ok or pts is None:
        ok, pts = cv2.QRCodeDetector().detect(gray)
    if not ok or pts is None:
        return None
    return np.asarray(pts, np.float32).reshape(-1, 2)[:4]
