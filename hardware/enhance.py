"""Image work for codes that are seen but not read: where a blurred code may be, how it is blurred, cleaner crops.

Pure functions on 8-bit grayscale numpy arrays (OpenCV and numpy only). The decoder calls them
only around a symbol that was located but not read, or in a region that looks like a code, so an
empty frame never pays for them. docs/decoding.md says what each is for and what it gains.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scanner.base.lazy import lazy_module

if TYPE_CHECKING:
    import cv2
    import numpy as np
else:
    np = lazy_module("numpy")  # loaded at its first use: ~13 MB a process without a camera may never need
    cv2 = lazy_module("cv2")  # loaded at its first use: a device without a camera never needs OpenCV

Point = tuple[int, int]
Quad = tuple[Point, ...]
"""Four corners going round a symbol, in image pixels."""

THUMB_WIDTH = 320
"""Width of the thumbnail the search for code-like texture looks at."""
TEXTURE_LEVEL = 200.0
"""RMS gradient (3x3 Sobel of 8-bit pixels) over a window above which texture may be a code.

A code's modules give 250-600 in the thumbnail even defocused by a module or seen in low light;
lines of text, card edges and sensor noise on their own stay lower (bench/frames.py frames)."""
ISOTROPY = (0.5, 0.62, 0.75)
"""Texture whose gradients agree in direction more than this (coherence 0..1) is an edge, not a code.

All are tried: a code seen 60° from the side is squeezed to half its width, which favours one
gradient direction (up to about 0.6 there), but the looser levels let a code's region run into
the text beside it on other frames, and the merged shape is then no code's. The loosest finds a
code both slanted and streaked by a shaking hand, whose region is ragged at the others; an empty
lane, sensor noise and a passer-by still give no region at it."""
MIN_REGION_PX = 14
"""Smallest side (thumbnail pixels) of a code-like region: a 25-module code at 1.5 px per module."""
MIN_REGION_WIDTH = 12
"""Smallest short side (thumbnail pixels) of a code-like region's rectangle: a code seen 60° from the side
with a skew is a thin rhombus, whose isotropic texture in the thumbnail is a strip 12-15 pixels wide."""
REGION_FILL = 0.45
"""Least share of its rectangle a code-like region fills: a skewed rhombus fills half its rectangle, and
a streaked one's ragged texture a little less."""
MAX_ASPECT = 3.2
"""Longest to shortest side of a code-like region: a square tilted 60° away is 2:1, plus slack."""
WIENER_NSR = 0.006
"""Noise-to-signal ratio of the Wiener deconvolution (8-bit images, a point-spread function summing to 1)."""
STREAK_NSR = 0.02
"""The same for a motion streak, whose model (an even speed) fits a real hand less well."""
MIN_BLUR_PX, MAX_BLUR_PX, MAX_STREAK_PX = 1.5, 9.0, 14.0
"""Defocus radii and motion streak lengths (pixels) that are estimated and undone."""


@dataclass(frozen=True, slots=True)
class Crop:
    """A part of an image and where it lies: ``image[y, x]`` is the source's ``[y + y0, x + x0]``."""

    image: np.ndarray
    x0: int
    y0: int


def quad_side(quad: Quad) -> float:
    """The longest side of a quadrilateral (pixels)."""
    return max(math.dist(quad[i], quad[(i + 1) % 4]) for i in range(4))


def quad_aspect(quad: Quad) -> float:
    """How much longer than wide a quadrilateral is: its mean opposite sides, longer over shorter."""
    a = (math.dist(quad[0], quad[1]) + math.dist(quad[2], quad[3])) / 2
    b = (math.dist(quad[1], quad[2]) + math.dist(quad[3], quad[0])) / 2
    return max(a, b) / max(min(a, b), 1.0)


def quad_centre(quad: Quad) -> tuple[float, float]:
    return sum(p[0] for p in quad) / 4, sum(p[1] for p in quad) / 4


def crop_around(gray: np.ndarray, quad: Quad, margin: float = 0.2, *, scale: float = 1.0) -> Crop | None:
    """The axis-aligned crop around ``quad`` (given in units ``scale`` times smaller than ``gray``'s pixels),
    widened by ``margin`` of its longest side on every edge; None when too small to hold a code."""
    h, w = gray.shape
    xs = [p[0] * scale for p in quad]
    ys = [p[1] * scale for p in quad]
    m = quad_side(quad) * scale * margin + 4
    x0, y0 = max(0, int(min(xs) - m)), max(0, int(min(ys) - m))
    x1, y1 = min(w, int(math.ceil(max(xs) + m))), min(h, int(math.ceil(max(ys) + m)))
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None
    return Crop(gray[y0:y1, x0:x1], x0, y0)


def thumbnail(gray: np.ndarray, width: int = THUMB_WIDTH) -> tuple[np.ndarray, float]:
    """The image halved (area average, OpenCV's fast path) until at most ``width`` wide, and the factor."""
    thumb = gray
    while thumb.shape[1] > width and thumb.shape[0] >= 32:
        thumb = cv2.resize(thumb, (thumb.shape[1] // 2, thumb.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return thumb, gray.shape[1] / thumb.shape[1]


def texture_regions(gray: np.ndarray, limit: int = 2) -> list[Quad]:
    """Where a QR code may be though no finder pattern was found: strong texture with no main direction.

    A code is the densest texture in a scene even when defocused or tilted, and unlike an edge or
    a line of text its gradients point every way (a low coherence of the structure tensor).
    Regions of such texture, roughly rectangular (a square seen at an angle) and not too thin,
    are returned largest first as the rotated rectangles around them, in ``gray``'s pixels.
    """
    thumb, scale = thumbnail(gray)
    if min(thumb.shape) < MIN_REGION_PX:
        return []
    t = thumb.astype(np.float32)
    gx = cv2.Sobel(t, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(t, cv2.CV_32F, 0, 1)
    win = (7, 7)
    jxx, jyy, jxy = cv2.blur(gx * gx, win), cv2.blur(gy * gy, win), cv2.blur(gx * gy, win)
    energy = jxx + jyy
    coherence = cv2.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy) / (energy + 1e-3)
    strong = energy > TEXTURE_LEVEL ** 2
    outlines = []
    for level in ISOTROPY:
        mask = (strong & (coherence < level)).astype(np.uint8) * 255
        opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        contours, _ = cv2.findContours(opened, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outlines += [c for c in contours if cv2.contourArea(c) >= MIN_REGION_PX * MIN_REGION_PX]
    found: list[tuple[float, tuple[float, float], float, Quad]] = []
    # square-ish solid regions first; only where there are none, thinner and more ragged ones (a skewed
    # code seen at a slant), so that they never displace a region the stricter rule finds
    for width, fill in ((MIN_REGION_PX, 0.5), (MIN_REGION_WIDTH, REGION_FILL)):
        for contour in outlines:
            area = cv2.contourArea(contour)
            (cx, cy), (rw, rh), angle = cv2.minAreaRect(contour)
            if min(rw, rh) < width or max(rw, rh) > MAX_ASPECT * min(rw, rh) or area < fill * rw * rh:
                continue
            if any(math.dist((cx, cy), c) < side / 3 for _, c, side, _ in found):
                continue  # the same region at the other level
            box = cv2.boxPoints(((cx, cy), (rw, rh), angle)) * scale
            found.append((area, (cx, cy), max(rw, rh), tuple((int(round(x)), int(round(y))) for x, y in box)))
        if found:
            break
    found.sort(key=lambda f: -f[0])
    return [q for *_, q in found[:limit]]


# ------------------------------------------------------------------ blur: estimate and undo

SPECTRUM_SIDE = 256
"""Largest square (pixels) whose spectrum the blur is estimated from: the middle of the code."""


@dataclass(frozen=True, slots=True)
class Blur:
    """How a code's crop looks blurred: defocus radii (pixels, likeliest first) and a motion streak
    (length in pixels, direction in degrees) when its spectrum shows one."""

    radii: tuple[float, ...]
    streak: tuple[float, float] | None
    streak_lengths: tuple[float, ...] = ()
    """Further streak lengths (pixels, same direction) worth a try: the spectrum's dips are shallow."""


_RINGS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _rings(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For an n x n spectrum: each frequency's ring index, the pixel count per ring, ring frequencies."""
    if n not in _RINGS:
        f = np.fft.fftfreq(n)
        radius = np.hypot(f[:, None], f[None, :])
        bins = n // 2
        idx = np.minimum((radius * 2 * bins).astype(np.int32), bins).ravel()
        _RINGS[n] = (idx, np.maximum(np.bincount(idx, minlength=bins + 1)[:bins], 1),
                     (np.arange(bins) + 0.5) / (2 * bins))
    return _RINGS[n]


def _spectrum(img: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The power spectrum of the largest fast-transform square in the middle of ``img``, Hann-windowed."""
    n = min(SPECTRUM_SIDE, *img.shape)
    while n >= 32 and cv2.getOptimalDFTSize(n) != n:  # the largest fast transform size that fits
        n -= 1
    if n < 32:
        return None
    y0, x0 = (img.shape[0] - n) // 2, (img.shape[1] - n) // 2
    f = img[y0:y0 + n, x0:x0 + n].astype(np.float32)
    f -= f.mean()
    f *= cv2.createHanningWindow((n, n), cv2.CV_32F)
    mag = cv2.magnitude(*cv2.split(cv2.dft(f, flags=cv2.DFT_COMPLEX_OUTPUT)))
    return mag * mag, n


_POLAR: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _polar(n: int) -> tuple[np.ndarray, np.ndarray]:
    """For an n x n spectrum: each frequency's radius (cycles per pixel) and direction (degrees, 0-180)."""
    if n not in _POLAR:
        f = np.fft.fftfreq(n)
        _POLAR[n] = (np.hypot(f[:, None], f[None, :]), np.degrees(np.arctan2(f[:, None], f[None, :])) % 180)
    return _POLAR[n]


def estimate_blur(img: np.ndarray, limit: int = 2) -> Blur:
    """Defocus and motion blur read from the spectrum of the middle of a code's crop.

    A defocus disc of radius R multiplies the spectrum by 2·J1(2πRf)/(2πRf), zero on a ring at
    f = 0.61/R cycles per pixel; a code's own spectrum is broad and smooth, so the deepest dark
    rings of the radially averaged power spectrum give R. A motion streak takes away the high
    frequencies along its direction only: that direction is the one with the least energy, and
    its length the first dip of the spectrum along it relative to the spectrum across it.
    """
    got = _spectrum(img)
    if got is None:
        return Blur((), None)
    power, n = got
    idx, count, freq = _rings(n)
    profile = np.log(np.bincount(idx, weights=power.ravel(), minlength=len(count) + 1)[:len(count)] / count + 1e-6)
    profile = np.convolve(profile, np.ones(3) / 3, mode="same")
    dips = []
    for k in range(2, len(profile) - 2):
        r = 0.61 / freq[k]
        if MIN_BLUR_PX <= r <= MAX_BLUR_PX and profile[k] < profile[k - 1] and profile[k] <= profile[k + 1]:
            depth = min(profile[max(0, k - 6):k].max(), profile[k + 1:k + 7].max()) - profile[k]
            dips.append((depth, round(float(r), 2)))
    dips.sort(key=lambda d: -d[0])
    radii = tuple(r for _, r in dips[:limit])
    log_power = np.log(power + 1e-6)
    if not _anisotropic(log_power, n):
        return Blur(radii, None)
    angle = streak_direction(img)
    lengths = [streak_length(img, angle) * STREAK_ACF_SHORTEN]
    for guess in _streak_lengths(log_power, n, angle):
        if all(abs(guess - o) > 0.12 * o for o in lengths):
            lengths.append(guess)
    return Blur(radii, (lengths[0], angle), tuple(lengths[1:]))


STREAK_ACF_SHORTEN = 0.9
"""The length the derivative's autocorrelation gives is deconvolved this much shorter (it reads a
few percent long on the frame set, and too long a streak rings worse than too short a one)."""
MAX_ACF_STREAK_PX = 24
"""Longest streak (pixels) the autocorrelation looks for: four modules of 6 pixels."""


def streak_length(img: np.ndarray, angle: float) -> float:
    """The length (pixels) of a motion streak in direction ``angle`` (degrees), from the image itself.

    Along a streak of length L, the derivative of the blurred image is the difference of two copies
    of the sharp one L apart, so the autocorrelation of the derivative along that direction dips
    deepest at a lag of L (Yitzhaky and Kopeika). Unlike the spectrum's zeros, which a hand that
    speeds up fills in, the dip stays: within 5% on the frame set's moving cards, where the
    spectrum's comb was off by half on a third of them.
    """
    h, w = img.shape
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)  # the streak made horizontal
    flat = cv2.warpAffine(img.astype(np.float32), turn, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)[h // 5:h - h // 5, w // 5:w - w // 5]
    if flat.shape[1] < 2 * MAX_ACF_STREAK_PX:
        return float(MAX_ACF_STREAK_PX / 2)
    d = np.diff(flat, axis=1)
    d -= d.mean(axis=1, keepdims=True)
    n = cv2.getOptimalDFTSize(2 * d.shape[1])
    spectrum = np.fft.rfft(d, n=n, axis=1)
    acf = np.fft.irfft((spectrum * spectrum.conj()).real.sum(axis=0), n=n)[:MAX_ACF_STREAK_PX + 2]
    lag = int(np.argmin(acf[2:MAX_ACF_STREAK_PX + 1])) + 2
    if lag < MAX_ACF_STREAK_PX:  # the dip's bottom between samples: a parabola through three
        a, b, c = acf[lag - 1], acf[lag], acf[lag + 1]
        if a - 2 * b + c > 0:
            return float(lag + 0.5 * (a - c) / (a - 2 * b + c))
    return float(lag)


STREAK_SHORTEN = 0.8
"""The comb's length is deconvolved this much shorter: a real streak's ends are faint (a hand
speeding up, the sensor's own blur), and too long a streak rings worse than too short a one."""
STREAK_ANISOTROPY = 1.0
"""Log-energy gap between the weakest and strongest direction below which no streak is reported."""


def _anisotropic(log_power: np.ndarray, n: int) -> bool:
    """Whether one direction of the spectrum's middle band is clearly weaker than the others (a streak)."""
    radius, direction = _polar(n)
    band = (radius > 0.06) & (radius < 0.3)
    energy = np.array([log_power[band & (np.abs((direction - a + 90) % 180 - 90) < 8)].mean()
                       for a in range(0, 180, 6)])
    return bool(energy.max() - energy.min() >= STREAK_ANISOTROPY)


def streak_direction(img: np.ndarray) -> float:
    """The direction (degrees, 0-180) in which the middle of a crop changes least: a motion streak's.

    The structure tensor (mean products of the image's gradients) of a code's square grid is the
    same in every direction, whatever the grid's rotation, so its weakest direction is the
    streak's. (The spectrum's weakest wedge is not: a grid's own spectrum is weak along its
    diagonals.) Within 2-4° on the frame set, where the spectrum was 8-35° off.
    """
    (jxx, jxy), (_, jyy) = structure_tensor(img)
    strongest = 0.5 * math.degrees(math.atan2(2 * jxy, jxx - jyy))
    return (strongest + 90) % 180


def structure_tensor(img: np.ndarray) -> np.ndarray:
    """The mean products of the gradients of the middle of a crop (2x2: xx, xy; xy, yy).

    A code's square grid gives the same gradient energy in every direction, whatever its
    rotation and however defocused; a motion streak weakens it along the streak, a slant
    strengthens it across the squeezed direction.
    """
    h, w = img.shape
    mid = img[h // 6:h - h // 6, w // 6:w - w // 6].astype(np.float32)
    gx = cv2.Sobel(mid, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(mid, cv2.CV_32F, 0, 1)
    jxx, jyy, jxy = float(cv2.mean(gx * gx)[0]), float(cv2.mean(gy * gy)[0]), float(cv2.mean(gx * gy)[0])
    return np.array([[jxx, jxy], [jxy, jyy]])


def squeeze(img: np.ndarray) -> float:
    """How much more gradient energy a crop has in its strongest direction than in its weakest,
    square-rooted: 1 for a code seen square on, about 2 for one seen 60° from the side or
    streaked over two modules."""
    values = np.linalg.eigvalsh(structure_tensor(img))
    return math.sqrt(values[1] / max(values[0], 1e-6))


SLANT_MIN, SLANT_MAX = 1.2, 3.0
"""Squeeze (the gradient energy's strongest to weakest direction, square-rooted) from which a crop
is unslanted, and the most it is stretched: a square seen 60° from the side is squeezed 2x."""


def unslant(img: np.ndarray, factor: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
    """The crop stretched along its squeezed direction until its gradients have no main direction,
    then scaled by ``factor``; and the 2x3 map from the result's pixels back to ``img``'s.

    A code seen at a slant is, near enough, an affine image of a square grid: if ``img(x) =
    grid(A x)`` its structure tensor is ``c·AᵀA``, so warping by the tensor's square root gives the
    grid back up to a rotation (affine shape normalisation), skew included, without finding a
    corner. None when the crop is not squeezed by at least SLANT_MIN.
    """
    values, vectors = np.linalg.eigh(structure_tensor(img))
    squeeze = math.sqrt(values[1] / max(values[0], 1e-6))
    if squeeze < SLANT_MIN:
        return None
    stretch = vectors @ np.diag([1.0, min(squeeze, SLANT_MAX)]) @ vectors.T * factor
    h, w = img.shape
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64) @ stretch.T
    low = corners.min(axis=0)
    size = np.ceil(corners.max(axis=0) - low).astype(int)
    forward = np.hstack([stretch, -low[:, None]])
    out = cv2.warpAffine(img, forward, (int(size[0]), int(size[1])), flags=cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REPLICATE)
    return out, cv2.invertAffineTransform(forward)


def _streak_lengths(log_power: np.ndarray, n: int, angle: float) -> tuple[float, ...]:
    """Likely lengths (pixels, likeliest first) of a streak in direction ``angle`` from the log power spectrum.

    A streak of length L zeroes the spectrum along its direction at 1/L, 2/L, ...: relative to the
    spectrum across it, the comb of zeros that is deepest against the peaks between them gives L,
    and the single deepest dip another guess (a hand that speeds up fills some zeros in).
    """
    radius, direction = _polar(n)
    along = np.abs((direction - angle + 90) % 180 - 90) < 4
    across = np.abs((direction - angle) % 180 - 90) < 4
    bins = np.minimum((radius * 128).astype(np.int32), 64)

    def profile(sel: np.ndarray) -> np.ndarray:
        total = np.bincount(bins[sel], weights=log_power[sel], minlength=65)[:64]
        return total / np.maximum(np.bincount(bins[sel], minlength=65)[:64], 1)

    ratio = profile(along) - profile(across)
    freq = (np.arange(64) + 0.5) / 128
    usable = (freq > 1 / MAX_STREAK_PX) & (freq < 1 / MIN_BLUR_PX)
    dip = float(1 / freq[int(np.argmin(np.where(usable, ratio, np.inf)))])
    combs = []
    for length in np.arange(3.0, MAX_STREAK_PX + 0.01, 0.25):
        zeros = [j / length for j in range(1, 4) if j / length < 0.45]
        peaks = [(j + 0.5) / length for j in range(3) if (j + 0.5) / length < 0.45]
        depth = float(np.mean(np.interp(zeros, freq, ratio)) - np.mean(np.interp(peaks, freq, ratio)))
        combs.append((depth, float(length)))
    comb = min(combs)[1]
    out = [comb * STREAK_SHORTEN]
    for guess in (dip, comb, 2 * dip):
        if guess <= MAX_STREAK_PX and all(abs(guess - o) > 0.12 * o for o in out):
            out.append(guess)
    return tuple(out)


def disc_psf(radius: float) -> np.ndarray:
    """A defocus point-spread function: a uniform disc of ``radius`` pixels, antialiased, summing to 1."""
    n = int(math.ceil(radius)) + 1
    ss = 4
    grid = (np.arange((2 * n + 1) * ss, dtype=np.float32) + 0.5) / ss - (n + 0.5)
    inside = ((grid[None, :] ** 2 + grid[:, None] ** 2) <= radius * radius).astype(np.float32)
    k = cv2.resize(inside, (2 * n + 1, 2 * n + 1), interpolation=cv2.INTER_AREA)
    return k / k.sum()


def streak_psf(length: float, angle_deg: float) -> np.ndarray:
    """A motion point-spread function: a line of ``length`` pixels at ``angle_deg``, antialiased, summing to 1."""
    n = int(math.ceil(length / 2)) + 1
    ss = 4
    size = (2 * n + 1) * ss
    k = np.zeros((size, size), np.float32)
    c = size / 2
    dx = math.cos(math.radians(angle_deg)) * length * ss / 2
    dy = math.sin(math.radians(angle_deg)) * length * ss / 2
    cv2.line(k, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, ss)
    small = cv2.resize(k, (2 * n + 1, 2 * n + 1), interpolation=cv2.INTER_AREA)
    return small / small.sum()


def wiener(img: np.ndarray, psf: np.ndarray, nsr: float = WIENER_NSR) -> np.ndarray:
    """Undo a known blur (Wiener deconvolution); edges mirrored so the crop's border does not ring."""
    pad = psf.shape[0] * 2
    h0, w0 = img.shape
    h, w = cv2.getOptimalDFTSize(h0 + 2 * pad), cv2.getOptimalDFTSize(w0 + 2 * pad)
    f = cv2.copyMakeBorder(img, pad, h - h0 - pad, pad, w - w0 - pad, cv2.BORDER_REFLECT).astype(np.float32)
    kernel = np.zeros((h, w), np.float32)
    n = psf.shape[0]
    kernel[:n, :n] = psf
    kernel = np.roll(kernel, (-(n // 2), -(n // 2)), axis=(0, 1))
    otf = cv2.dft(kernel, flags=cv2.DFT_COMPLEX_OUTPUT)
    re, im = otf[..., 0], otf[..., 1]
    den = re * re + im * im + nsr
    inverse = np.dstack([re / den, -im / den])
    spectrum = cv2.mulSpectrums(cv2.dft(f, flags=cv2.DFT_COMPLEX_OUTPUT), inverse, 0)
    restored = cv2.idft(spectrum, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    return np.clip(restored[pad:pad + h0, pad:pad + w0] + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ geometry, frames

def square_up(gray: np.ndarray, quad: Quad | np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The quadrilateral mapped onto a ``side``-pixel square with a fifth of a side of margin (the quiet
    zone), and the homography that takes the square's pixels back to ``gray``'s."""
    m = side / 5
    dst = np.array([(m, m), (m + side, m), (m + side, m + side), (m, m + side)], np.float32)
    hom = cv2.getPerspectiveTransform(np.array(quad, np.float32), dst)
    size = int(side + 2 * m)
    out = cv2.warpPerspective(gray, hom, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return out, np.linalg.inv(hom)


OUTLINE_WINDOW = 2.0
"""Modules (across the squeezed direction) of the window whose contrast marks a code's modules in `code_outline`."""
OUTLINE_OPEN = 3.0
"""Modules: thinner parts of the high-contrast area (text strokes, a card's edge) are cut off the code's."""


def code_outline(img: np.ndarray, module_px: float) -> np.ndarray | None:
    """The outer corners (4x2, going round clockwise) of the code in a crop, from the area its modules
    cover; ``module_px`` is their size across the squeezed direction. None when no four-sided area is found.

    A code is the one area of a crop where the picture changes from dark to light every module: the
    local contrast (standard deviation over a window of OUTLINE_WINDOW modules) above Otsu's
    threshold, opened to cut off text and edges, is a solid quadrilateral even when the code is
    blurred or slanted too far for its finder patterns to be found. Its four sides are fitted to the
    area's border: the corners are within one to three modules (the window widens the area by half
    its size; the corner without a finder pattern has sparse modules), where a rectangle around the
    area (the texture search's) is ten and more off on a card seen at a slant with a skew.
    """
    win = max(3, int(round(module_px * OUTLINE_WINDOW))) | 1
    f = img.astype(np.float32)
    mean = cv2.blur(f, (win, win))
    spread = cv2.sqrt(np.maximum(cv2.blur(f * f, (win, win)) - mean * mean, 0))
    top = float(spread.max())
    if top < 1.0:
        return None
    _, area = cv2.threshold((spread * (255 / top)).astype(np.uint8), 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    k = max(3, int(round(module_px * OUTLINE_OPEN))) | 1
    area = cv2.morphologyEx(area, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    contours, _ = cv2.findContours(area, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    border = max(contours, key=cv2.contourArea)
    hull = cv2.convexHull(border)
    perimeter = cv2.arcLength(hull, True)
    for share in np.arange(0.01, 0.2, 0.005):  # the hull simplified to four corners
        poly = cv2.approxPolyDP(hull, float(share) * perimeter, True)
        if len(poly) <= 4:
            break
    if len(poly) != 4 or cv2.contourArea(poly) < 0.5 * cv2.contourArea(hull):
        return None
    rough = poly.reshape(4, 2).astype(np.float64)
    x, y = rough[:, 0], rough[:, 1]
    if float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) < 0:
        rough = rough[::-1]
    points = border.reshape(-1, 2).astype(np.float64)
    lines = []
    for i in range(4):  # each side refitted to the border along its middle (the corners are rounded off)
        p0, p1 = rough[i], rough[(i + 1) % 4]
        length = float(np.hypot(*(p1 - p0)))
        if length < 4:
            return None
        along = (p1 - p0) / length
        t = (points - p0) @ along
        off = np.abs((points - p0) @ np.array([-along[1], along[0]]))
        near = points[(t > 0.2 * length) & (t < 0.8 * length) & (off < max(2.0, 1.5 * module_px))]
        if len(near) < 5:
            lines.append((p0, along))
            continue
        vx, vy, x0, y0 = cv2.fitLine(near.astype(np.float32), cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
        lines.append((np.array([x0, y0], np.float64), np.array([vx, vy], np.float64)))
    corners = []
    for i in range(4):  # corner i: where the sides before and after it meet
        (a0, ad), (b0, bd) = lines[i - 1], lines[i]
        pair = np.array([ad, -bd]).T
        if abs(float(np.linalg.det(pair))) < 1e-3:
            return None
        corners.append(a0 + np.linalg.solve(pair, b0 - a0)[0] * ad)
    out = np.array(corners, np.float32)
    h, w = img.shape
    if np.any(out < -w * 0.1) or np.any(out[:, 0] > w * 1.1) or np.any(out[:, 1] > h * 1.1):
        return None  # sides nearly parallel meet far away: not a code's outline
    return out


def unsharp(img: np.ndarray, sigma: float = 1.5, amount: float = 0.8) -> np.ndarray:
    """Unsharp masking: ``img`` plus ``amount`` of its detail finer than ``sigma`` pixels."""
    return cv2.addWeighted(img, 1 + amount, cv2.GaussianBlur(img, (0, 0), sigma), -amount, 0)


def align_average(crops: list[np.ndarray]) -> np.ndarray | None:
    """Crops of the same code from consecutive frames, shifted onto the last one and averaged (less noise).

    The shift of each is found by phase correlation; crops that do not line up (a weak
    correlation peak) are left out. None when fewer than two agree.
    """
    if len(crops) < 2:
        return None
    ref = crops[-1]
    h, w = ref.shape
    window = cv2.createHanningWindow((w, h), cv2.CV_32F)
    ref_f = ref.astype(np.float32)
    acc = ref_f.copy()
    used = 1
    for other in crops[:-1]:
        if other.shape != ref.shape:
            continue
        o = other.astype(np.float32)
        (dx, dy), response = cv2.phaseCorrelate(o, ref_f, window)
        if response < 0.2:
            continue
        shift = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
        acc += cv2.warpAffine(o, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        used += 1
    if used < 2:
        return None
    return np.clip(acc / used + 0.5, 0, 255).astype(np.uint8)
