"""A camera's frames → codes, using the stream: what one frame does not read, the next ones try differently.

A card held up for a second gives 10-30 frames. `StreamDecoder` runs the appliance decoder's first
pass on every frame, as `ApplianceDecoder` does, except that on a still picture with nothing in
view it looks for light-on-dark codes on every other frame only. Everything else is spread over
frames:

* a symbol located but not read is *tracked*; each following frame tries the two likeliest second-
  pass attempts on its fresh crop (new noise, a slightly different pose) plus one more from the
  rotation of the others, and an average of the last crops aligned on each other (less noise);
* a frame where nothing was located costs only the first pass and a glance at a 1/16-size
  thumbnail, unless the picture changed in the last seconds: then the half-resolution probe and
  the search for code-like texture (a code too blurred for its finder patterns to be found) run.

It also says what would help the camera (`Hint`): the kiosk shows it as "move closer / further /
hold still". docs/decoding.md gives the measurements.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hardware import enhance
from hardware.decode import (
    SECOND_PASS_SYMBOLS,
    ApplianceDecoder,
    Attempt,
    Corners,
    DecodedCode,
    FrameDecode,
    _as_gray,
    _distinct,
)
from scanner.base.lazy import lazy_module

if TYPE_CHECKING:
    import cv2
    import numpy as np
else:
    np = lazy_module("numpy")  # loaded at its first use: ~13 MB a process without a camera may never need
    cv2 = lazy_module("cv2")  # loaded at its first use: a device without a camera never needs OpenCV

HEAD_ATTEMPTS = 2
"""Second-pass attempts every tracked frame starts with (the likeliest, on the fresh crop)."""
ROTATING_ATTEMPTS = 1
"""Further attempts per tracked frame, taken in turn from the rest of the list."""
TRACK_FRAMES = 8
"""A symbol no longer located is still looked for where it was for this many frames."""
FUSE_FRAMES = 4
"""Crops of a tracked symbol averaged together (aligned) against noise."""
ACTIVE_FRAMES = 45
"""After the picture changes, frames with nothing located are searched for this many frames (3 s at 15 fps)."""
GATE_CELLS = 80
"""The change gate's thumbnail is about this many samples wide."""
HINT_FRAMES = 3
"""A symbol located but unread for this many frames in a row earns the person a hint."""


@dataclass(frozen=True, slots=True)
class Hint:
    """What would help the camera read a code it sees but cannot read.

    ``action`` is "closer" (modules too small), "further" (too blurred: a fixed-focus camera is
    sharp only further away; or the code runs out of the frame) or "hold_still" (motion streak).
    ``reason`` says which: "small", "blurred", "out_of_frame" or "moving".
    """

    action: str
    reason: str


SMALL_MODULE_PX = 2.0
"""Modules smaller than this (frame pixels) are too small to read: move closer."""
BLURRED_RADIUS = 0.6
"""A defocus radius above this many modules is beyond what sharpening restores every time: move further."""


class ChangeGate:
    """Whether the picture changed lately: a strided thumbnail against a slowly updated background.

    A change is a group of thumbnail samples (more than half a percent) differing from the
    background by more than four times the typical frame-to-frame difference (and at least 24
    levels), so sensor noise, even at high gain, does not count. A camera that just started counts
    as changed. A few OpenCV calls on some 5,000 samples: about 10 µs a frame in a tight loop, 50-85 µs
    in the pipeline, where each call starts cold after the decoder's work. `StreamDecoder` asks it
    after the first pass when the looks do not depend on it, and after handing on what that pass read.
    """

    def __init__(self, active_frames: int = ACTIVE_FRAMES) -> None:
        self.active_frames = active_frames
        self._background: np.ndarray | None = None
        self._previous: np.ndarray | None = None
        self._noise = 4.0
        self._left = active_frames

    @property
    def active(self) -> bool:
        return self._left > 0

    @property
    def stays_active(self) -> bool:
        """Whether the next `update` says "changed" whatever its frame shows (its count cannot run out)."""
        return self._left >= 2

    def update(self, gray: np.ndarray) -> bool:
        step = max(1, gray.shape[1] // GATE_CELLS)
        thumb = np.ascontiguousarray(gray[step // 2::step, step // 2::step])
        previous = self._previous
        if self._background is None or previous is None or self._background.shape != thumb.shape:
            self._background, self._previous = thumb, thumb
            self._left = self.active_frames
            return True
        jitter = cv2.mean(cv2.absdiff(thumb, previous))[0]
        self._noise = 0.9 * self._noise + 0.1 * max(jitter, 1.0)
        _, moved = cv2.threshold(cv2.absdiff(thumb, self._background), max(24.0, 4 * self._noise), 255,
                                 cv2.THRESH_BINARY)
        self._background = cv2.addWeighted(self._background, 0.9, thumb, 0.1, 0)
        self._previous = thumb
        if cv2.countNonZero(moved) > max(4, thumb.size // 200):
            self._left = self.active_frames
        elif self._left > 0:
            self._left -= 1
        return self._left > 0


class _Track:
    """A symbol seen but not read: where it is, its recent crops, whose turn it is in the rotation."""

    def __init__(self, quad: Corners) -> None:
        self.quad = quad
        self.age = 0
        self.unread = 0
        self.turn = 0
        self.crops: deque[np.ndarray] = deque(maxlen=FUSE_FRAMES)

    def near(self, quad: Corners) -> bool:
        """Whether ``quad`` is this symbol again: about the same size, moved by less than a quarter of it."""
        (ax, ay), (bx, by) = enhance.quad_centre(self.quad), enhance.quad_centre(quad)
        side, other = enhance.quad_side(self.quad), enhance.quad_side(quad)
        return math.hypot(ax - bx, ay - by) < side / 4 and 0.7 < other / max(side, 1.0) < 1.4


OWN_OUTLINE = 0.5
"""An outline an attempt locates is the symbol's own only if at least this share of the size of the one tried."""

WIDEN = 1.3
"""A code-like region this much larger than a located outline it holds is looked at too (`_widened`)."""


def _widened(quads: list[Corners], regions: list[Corners]) -> list[Corners]:
    """The outlines, each preceded by a code-like region at least WIDEN times its size that holds its
    centre: zxing-cpp sometimes locates only part of a blurred code (a finder pattern and its
    neighbours), and the crop around that part cannot read the rest."""
    out: list[Corners] = []
    for quad in quads:
        centre, side = enhance.quad_centre(quad), enhance.quad_side(quad)
        out += [r for r in regions if enhance.quad_side(r) >= WIDEN * side
                and cv2.pointPolygonTest(np.array(r, np.float32), centre, False) >= 0][:1]
        out.append(quad)
    return out[:SECOND_PASS_SYMBOLS]


class StreamDecoder:
    """One camera's decoder: `ApplianceDecoder` steps spread over the frames of a stream (module docstring).

    Not thread-safe: one instance per camera, fed by that camera's decode thread.
    """

    name = "zxing-cpp+stream"

    def __init__(self, decoder: ApplianceDecoder | None = None, *, head: int = HEAD_ATTEMPTS,
                 rotating: int = ROTATING_ATTEMPTS, active_frames: int = ACTIVE_FRAMES) -> None:
        self.decoder = decoder if decoder is not None else ApplianceDecoder()
        self.head = head
        self.rotating = rotating
        self._gate = ChangeGate(active_frames)
        self._unseen: np.ndarray | None = None  # a frame read at once, which the gate sees in `settle`
        self._frames = 0
        self._track: _Track | None = None
        self.hint: Hint | None = None
        """The latest hint (None while nothing is seen, or once the code is read)."""

    def decode(self, gray: np.ndarray) -> list[DecodedCode]:
        return list(self.feed(gray).codes)

    @property
    def gate(self) -> ChangeGate:
        """The change gate, having seen every frame fed so far."""
        self.settle()
        return self._gate

    def settle(self) -> None:
        """Show the change gate the last frame, if `feed` read its codes at once and left the gate's
        look for after they were handed on (a camera calls this once it has; the next `feed` does too)."""
        frame, self._unseen = self._unseen, None
        if frame is not None:
            self._gate.update(frame)

    def reset(self) -> None:
        """Forget the stream (the camera was reopened): no track, the picture counts as changed."""
        self._track = None
        self.hint = None
        self._unseen = None
        self._gate = ChangeGate(self._gate.active_frames)

    def feed(self, gray: np.ndarray, detail: np.ndarray | None = None) -> FrameDecode:
        """Decode the next frame of the stream; ``detail`` as in `ApplianceDecoder.analyse`."""
        self.settle()
        gray = _as_gray(gray, row_strided_ok=True)
        if gray.size == 0:
            return FrameDecode((), 0, "none")
        dec = self.decoder
        gate = self._gate
        track = self._track
        self._frames += 1
        # on a still picture with nothing tracked, light-on-dark codes (dark-mode phones) are looked
        # for on every other frame: a still phone is read a frame later, an empty lane costs less
        if track is None and self._frames % 2 and not gate.stays_active:
            active = gate.update(gray)  # the gate decides the look: it runs first
            codes, seen = dec.first_pass(gray, invert=active)
        else:  # every look is taken whatever the gate says: it looks after the first pass
            codes, seen = dec.first_pass(gray, invert=True)
            if codes:  # nothing here depends on the gate: it sees the frame once the codes are on their way
                self._unseen = gray
                self._read()
                return FrameDecode(codes, 0, "pass1")
            active = gate.update(gray)
        if codes:
            self._read()
            return FrameDecode(codes, 0, "pass1")
        stage = "pass2"
        quads = _distinct(seen)[:SECOND_PASS_SYMBOLS]
        if quads and not active and (track is None or not any(track.near(q) for q in quads)):
            # on a still picture a symbol must be located twice in a row before it costs a second pass:
            # sensor noise makes finder-pattern look-alikes in a different place every frame
            self._track = _Track(quads[0])
            self._track.age = 1
            return FrameDecode((), len(seen), "none", tuple(quads))
        tracked = False
        if not quads and track is not None and track.age < TRACK_FRAMES:
            quads, tracked = [track.quad], True
        if not quads and active:
            codes, probed = dec.probe(gray)
            if codes:
                self._read()
                return FrameDecode(codes, len(seen), "probe")
            quads = _distinct(probed)[:SECOND_PASS_SYMBOLS]
            if not quads:
                quads, stage = dec.search(gray), "search"
        elif active:
            quads, tracked = _widened(quads, dec.search(gray)), False
        if not quads:
            self._lost()
            return FrameDecode((), 0, "none")
        return self._second(gray, detail, quads, len(seen), stage, tracked)

    def _second(self, gray: np.ndarray, detail: np.ndarray | None, quads: list[Corners], seen: int,
                stage: str, tracked: bool) -> FrameDecode:
        dec = self.decoder
        track = self._track
        if tracked and track is not None:
            track.age += 1  # looked for where it was; it counts as seen again only if an attempt locates it
        elif track is None or not any(track.near(q) for q in quads):
            track = self._track = _Track(quads[0])
        else:
            track.quad = next(q for q in quads if track.near(q))
            track.age = 0
        track.unread += 1
        tried = 0
        refined: Corners | None = None
        for quad in quads:
            attempts = dec.attempts(gray, quad, detail)
            if not attempts:
                continue
            chosen = attempts[:self.head]
            rest = attempts[self.head:]
            if rest:
                chosen += [rest[(track.turn + i) % len(rest)] for i in range(self.rotating)]
            if quad is track.quad:
                fused = self._fused(gray, quad, detail)
                if fused is not None:
                    chosen.append(fused)
            for attempt in chosen:
                tried += 1
                codes, located = dec.attempt(attempt)
                if codes:
                    self._read()
                    return FrameDecode(codes, seen, stage, attempts=tried)
                if refined is None:
                    # an outline far smaller than the one tried is a look-alike in the reworked crop
                    # (a module cluster, or all four corners on one point), not the symbol's own
                    least = OWN_OUTLINE * enhance.quad_side(quad)
                    refined = next((q for q in located if enhance.quad_side(q) >= least), None)
        track.turn += self.rotating
        if refined is not None:
            track.age = 0
            if stage == "search" or tracked:
                track.quad = refined  # the symbol's own outline, found by an attempt
        self.hint = self._hint(gray, track, detail)
        return FrameDecode((), seen, "none", tuple(quads), tried)

    def _fused(self, gray: np.ndarray, quad: Corners, detail: np.ndarray | None):
        """An attempt on the tracked symbol's crops of the last frames, aligned and averaged, then deblurred."""
        track = self._track
        if track is None:
            return None
        src, scale = (gray, 1.0) if detail is None else (detail, detail.shape[1] / gray.shape[1])
        crop = enhance.crop_around(src, quad, 1 / 6, scale=scale)
        if crop is None:
            return None
        image = np.ascontiguousarray(crop.image)
        if track.crops and track.crops[-1].shape != image.shape:
            image = cv2.resize(image, track.crops[-1].shape[::-1], interpolation=cv2.INTER_LINEAR)
            track.crops.append(image)
            return None  # a different size: the outline moved; average from the next frame on
        track.crops.append(image)
        averaged = enhance.align_average(list(track.crops))
        if averaged is None:
            return None
        attempts = self.decoder.attempts_on(averaged, quad, crop, scale)
        deblur = [a for a in attempts if a.name in ("defocus", "motion")]
        return Attempt("fused", (deblur or attempts)[0].make)

    def _hint(self, gray: np.ndarray, track: _Track, detail: np.ndarray | None) -> Hint | None:
        if track.unread < HINT_FRAMES:
            return self.hint
        h, w = gray.shape
        quad = track.quad
        margin = max(2, w // 100)  # a search rectangle is clipped to the frame: near the edge is out of it
        if any(x <= margin or y <= margin or x >= w - 1 - margin or y >= h - 1 - margin for x, y in quad):
            return Hint("further", "out_of_frame")
        module = enhance.quad_side(quad) / 60
        if module < SMALL_MODULE_PX:
            return Hint("closer", "small")
        crop = enhance.crop_around(gray, quad, 0.0)
        if crop is None:
            return None
        blur = enhance.estimate_blur(np.ascontiguousarray(crop.image))
        if blur.streak is not None and blur.streak[0] > module * 0.8:
            return Hint("hold_still", "moving")
        if blur.radii and blur.radii[0] > module * BLURRED_RADIUS:
            return Hint("further", "blurred")
        return Hint("hold_still", "blurred")

    def _read(self) -> None:
        self._track = None
        self.hint = None

    def _lost(self) -> None:
        track = self._track
        if track is not None:
            track.age += 1
            if track.age >= TRACK_FRAMES:
                self._track = None
                self.hint = None
