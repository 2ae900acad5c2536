"""Reading what a fixed-focus camera sees: defocused, tilted, moving cards, one frame and a stream of them.

Frames come from bench/frames.py: a card issued by the issuer tools, photographed by a simulated
Pi camera (pinhole pose, lens-like defocus, motion streak, sensor noise), made with OpenCV here.
zxing-cpp alone (the first pass's options) is the peer every result is compared with.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.inputs import Collector
from support.waiting import WAIT

from bench import frames as F
from hardware import enhance
from hardware.camera import ArraySource, CameraConfig, CameraInput
from hardware.decode import ApplianceDecoder
from hardware.stream_decode import ChangeGate, Hint, StreamDecoder

zxingcpp = pytest.importorskip("zxingcpp")
QR = [zxingcpp.BarcodeFormat.QRCodeModel1, zxingcpp.BarcodeFormat.QRCodeModel2]


@pytest.fixture(scope="module")
def camera():
    return F.Camera(F.card_text())


@pytest.fixture(scope="module")
def text():
    return F.card_text()


def zxing_alone(frame: np.ndarray) -> list[str]:
    return [r.text for r in zxingcpp.read_barcodes(frame, formats=QR, try_invert=True, try_downscale=False,
                                                   text_mode=zxingcpp.TextMode.Plain)]


def lane(camera, n: int = 6) -> list[np.ndarray]:
    """An empty lane (the card far out of sight), fresh sensor noise in each frame."""
    return [camera.shoot(F.Pose(1e6), F.Look(), np.random.default_rng(100 + i)).frame for i in range(n)]


def first_read(camera, clip, text: str) -> int | None:
    """The index of the clip's first frame a stream decoder reads ``text`` on, after watching an
    empty lane (None: never)."""
    stream = StreamDecoder()
    for frame in lane(camera):
        stream.feed(frame)
    return next((i for i, shot in enumerate(clip) if [c.text for c in stream.feed(shot.frame).codes] == [text]), None)


def test_frame_set_is_made_at_run_time_and_the_same_for_a_seed(camera):
    a = F.frame_set(camera, 1, seed=5)
    b = F.frame_set(camera, 1, seed=5)
    assert list(a) == list(F.CATEGORIES)
    for cat in a:
        assert a[cat][0].frame.shape == (720, 1280) and a[cat][0].frame.dtype == np.uint8
        assert np.array_equal(a[cat][0].frame, b[cat][0].frame)
    assert F.card_text() == F.card_text() and F.card_text().startswith("CK1:")
    clip = F.clip(camera, "sharp", np.random.default_rng(1), frames=3)
    assert len(clip) == 3 and not np.array_equal(clip[0].frame, clip[1].frame)  # the hand moves


def test_defocused_cards_zxing_misses_are_read(camera, text):
    """A disc of a module's radius (a fixed-focus camera at 15-25 cm): no finder pattern is found,
    the search finds the code's texture, its spectrum gives the radius, the deconvolved crop reads."""
    shots = F.frame_set(camera, 4, seed=11, categories=("defocus 1.0",))["defocus 1.0"]
    assert all(zxing_alone(s.frame) == [] for s in shots)
    dec = ApplianceDecoder()
    for shot in shots:
        result = dec.analyse(shot.frame)
        assert [c.text for c in result.codes] == [text]
        assert result.stage == "search"


def test_tilted_and_moving_cards_read_more_than_zxing(camera, text):
    shots = F.frame_set(camera, 8, seed=11, categories=("tilt 60", "motion"))
    dec = ApplianceDecoder()
    zx = app = 0
    for group in shots.values():
        for shot in group:
            z = zxing_alone(shot.frame) == [text]
            a = [c.text for c in dec.decode(shot.frame)] == [text]
            assert a or not z, "the appliance lost a frame zxing-cpp reads"
            zx += z
            app += a
    assert app > zx


def test_blur_is_estimated_from_the_spectrum(camera):
    """The defocus radius the crop's spectrum gives is within 10% of the lens's."""
    shot = F.frame_set(camera, 1, seed=3, categories=("defocus 1.0",))["defocus 1.0"][0]
    quads = enhance.texture_regions(shot.frame)
    assert quads
    crop = enhance.crop_around(shot.frame, quads[0], 0.0)
    radius = shot.look.defocus * shot.module_px
    assert any(abs(r - radius) / radius < 0.1 for r in enhance.estimate_blur(np.ascontiguousarray(crop.image)).radii)


def test_a_streak_direction_is_found_within_a_few_degrees(camera):
    """The structure tensor gives the hand's direction whatever the code's rotation (the spectrum's
    weakest wedge was 8-35° off on a quarter of these: a grid's own spectrum is weak on its diagonals)."""
    shots = F.frame_set(camera, 12, seed=11, categories=("motion",))["motion"]
    for shot in shots:
        quads = enhance.texture_regions(shot.frame)
        assert quads
        crop = np.ascontiguousarray(enhance.crop_around(shot.frame, quads[0], 1 / 6).image)
        blur = enhance.estimate_blur(crop)
        assert blur.streak is not None
        off = abs((blur.streak[1] - shot.look.motion_angle_deg + 90) % 180 - 90)
        assert off < 6, (shot.look, blur)


def test_a_streak_length_is_found_from_the_derivative_autocorrelation(camera):
    """Streaks of 1-2.5 modules (4-14 pixels): the length is within 25% of the hand's (it reads a
    little long: the lens and sensor soften the ends), where the spectrum's comb was off by half."""
    for shot in F.frame_set(camera, 16, seed=11, categories=("motion",))["motion"]:
        crop = enhance.crop_around(shot.frame, enhance.texture_regions(shot.frame)[0], 1 / 6)
        img = np.ascontiguousarray(crop.image)
        length = enhance.streak_length(img, enhance.streak_direction(img))
        true = shot.look.motion * shot.module_px
        assert 0.95 < length / true < 1.25, (length, true)


def test_moving_cards_zxing_misses_are_mostly_read(camera, text):
    """Streaks of 1-2.5 modules: of the frames zxing-cpp misses, the appliance reads at least 70%
    (its deconvolution tries the comb of the spectrum's zeros, the deepest dip and twice it)."""
    shots = F.frame_set(camera, 24, seed=11, categories=("motion",))["motion"]
    dec = ApplianceDecoder()
    missed = [s for s in shots if zxing_alone(s.frame) != [text]]
    assert len(missed) >= 10
    read = sum([c.text for c in dec.decode(s.frame)] == [text] for s in missed)
    assert read >= 0.7 * len(missed), f"{read} of {len(missed)}"


def test_texture_search_outlines_codes_tilted_60_degrees(camera):
    """A code seen 60° from the side is squeezed to half: its texture still counts as a code's (a
    region centred on it), and the card's text beside it does not swallow it."""
    for shot in F.frame_set(camera, 16, seed=11, categories=("tilt 60",))["tilt 60"]:
        centre = (camera.size[0] / 2 + shot.pose.offset_mm[0] * camera.focal / shot.pose.distance_mm,
                  camera.size[1] / 2 + shot.pose.offset_mm[1] * camera.focal / shot.pose.distance_mm)
        regions = enhance.texture_regions(shot.frame)
        side = shot.module_px * 65
        assert any(math.dist(enhance.quad_centre(r), centre) < side / 4 for r in regions), shot.pose


def test_unslant_squares_up_codes_seen_60_degrees_from_the_side(camera, text):
    """The crop of a code's texture, stretched until its gradients have no main direction, reads
    (without a corner found), and what is read maps back onto the code in the frame."""
    shots = F.frame_set(camera, 12, seed=11, categories=("tilt 60",))["tilt 60"]
    read = 0
    for shot in shots:
        crop = enhance.crop_around(shot.frame, enhance.texture_regions(shot.frame)[0], 1 / 6)
        img = np.ascontiguousarray(crop.image)
        assert enhance.squeeze(img) > enhance.SLANT_MIN
        unslanted, back = enhance.unslant(img, 1.5)
        found = zxingcpp.read_barcodes(unslanted, formats=QR, text_mode=zxingcpp.TextMode.Plain)
        if [r.text for r in found] != [text]:
            continue
        read += 1
        p = found[0].position
        corners = [back @ (pt.x, pt.y, 1.0) + (crop.x0, crop.y0)
                   for pt in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)]
        centre = (camera.size[0] / 2 + shot.pose.offset_mm[0] * camera.focal / shot.pose.distance_mm,
                  camera.size[1] / 2 + shot.pose.offset_mm[1] * camera.focal / shot.pose.distance_mm)
        assert math.dist(np.mean(corners, axis=0), centre) < 4 * shot.module_px
    assert read >= 10
    square_on = F.frame_set(camera, 1, seed=11, categories=("sharp",))["sharp"][0]
    crop = enhance.crop_around(square_on.frame, enhance.texture_regions(square_on.frame)[0], 1 / 6)
    assert enhance.unslant(np.ascontiguousarray(crop.image)) is None


def test_texture_search_outlines_a_code_both_slanted_and_streaked(camera):
    """A card at 60° moved by the hand over 1.2-1.6 modules: its texture region is ragged at the
    stricter coherence levels, the loosest still outlines it."""
    clip = F.clip(camera, "tilt 60", np.random.default_rng([12, 1000 + list(F.CATEGORIES).index("tilt 60"), 3]))
    for shot in clip[2:6]:
        assert shot.look.motion > 1.2
        centre = (camera.size[0] / 2 + shot.pose.offset_mm[0] * camera.focal / shot.pose.distance_mm,
                  camera.size[1] / 2 + shot.pose.offset_mm[1] * camera.focal / shot.pose.distance_mm)
        regions = enhance.texture_regions(shot.frame)
        assert any(math.dist(enhance.quad_centre(r), centre) < 6 * shot.module_px for r in regions), shot.pose


def test_texture_search_finds_nothing_in_an_empty_lane():
    assert enhance.texture_regions(F.scene(1280, 720)) == []
    assert enhance.texture_regions(F.scene(640, 480)) == []


def test_stream_reads_a_defocused_card_within_a_few_frames(camera, text):
    clip = F.clip(camera, "defocus 1.0", np.random.default_rng(7))
    read_at = first_read(camera, clip, text)
    assert read_at is not None and read_at <= 3
    assert all(zxing_alone(shot.frame) == [] for shot in clip[:read_at + 1])


def test_stream_reads_a_card_held_60_degrees_from_the_side_at_once(camera, text):
    """A card held at 60° in a shaking hand, which no frame of zxing-cpp alone reads: the texture
    region is elongated, so the second attempt of the first frame unslants its crop and reads it."""
    clip = F.clip(camera, "tilt 60", np.random.default_rng([11, 1000 + list(F.CATEGORIES).index("tilt 60"), 4]))
    assert all(zxing_alone(shot.frame) == [] for shot in clip[:3])
    read_at = first_read(camera, clip, text)
    assert read_at is not None and read_at <= 2


def test_a_slanted_code_is_squared_up_on_its_outline_and_unslanted_in_the_first_two_attempts(camera, text):
    """The stream tries the first two attempts on every frame: for an outline seen at a slant they are
    squaring up on the outline of the code's modules and unslanting (squaring up on the outline given
    comes third; the plain crop, once first, fourth)."""
    dec = ApplianceDecoder()
    shot = F.frame_set(camera, 30, seed=11, categories=("tilt 60",))["tilt 60"][10]
    region = dec.search(shot.frame)[0]
    assert enhance.quad_aspect(region) >= 1.3
    attempts = dec.attempts(shot.frame, region)
    assert [a.name for a in attempts[:4]] == ["outline", "unslant", "square", "crop"]
    assert all([c.text for c in dec.attempt(a)[0]] == [text] for a in attempts[:3])


def _corner_error(found, true) -> float:
    """The largest distance (pixels) between an outline's corners and the true ones, whichever corner it starts at."""
    found = np.asarray(found, np.float32).reshape(4, 2)
    return min(float(np.hypot(*(np.roll(found, k, axis=0) - true).T).max()) for k in range(4))


def test_the_outline_of_a_slanted_codes_modules_is_found_within_a_few_modules(camera):
    """A card seen 60° from the side with a skew: the texture search's rectangle around it is over ten
    modules off its corners, and squaring up on it leaves the code sheared; the outline fitted to the
    area its modules cover is within three modules of every corner (1-2 on most: the contrast window
    widens the area a little, and the corner without a finder pattern has sparse modules)."""
    clip = F.clip(camera, "tilt 60", np.random.default_rng([12, 1000 + list(F.CATEGORIES).index("tilt 60"), 6]))
    for shot in clip[:4]:
        region = ApplianceDecoder.search(shot.frame)[0]
        crop = enhance.crop_around(shot.frame, region, 1 / 6)
        true = camera.code_corners(shot.pose, shot.look) - (crop.x0, crop.y0)
        assert _corner_error(np.array(region) - (crop.x0, crop.y0), true) > 10 * shot.module_px
        squeezed = enhance.quad_side(region) / enhance.quad_aspect(region) / 60
        found = enhance.code_outline(np.ascontiguousarray(crop.image), squeezed)
        assert found is not None
        assert _corner_error(found, true) < 3 * shot.module_px


def test_a_60_degree_card_streaked_by_the_hand_is_read_on_its_first_frame(camera, text):
    """Development seed 12's 60° clip 6: a hand's streak of about a module on top of the slant. Squared
    up on the outline of its modules, the code's own grid has no main direction, so the streak is
    measured there and undone: the first frame reads, where the old attempts (unslanting, squaring
    up on the search's rectangle, the crop, deblurring the crop by a streak its slant misleads) read
    nothing and the stream read the card on its fourth frame (zxing-cpp alone reads none of the first three)."""
    clip = F.clip(camera, "tilt 60", np.random.default_rng([12, 1000 + list(F.CATEGORIES).index("tilt 60"), 6]))
    assert all(zxing_alone(shot.frame) == [] for shot in clip[:3])
    dec = ApplianceDecoder()
    frame = clip[0].frame
    attempts = dec.attempts(frame, dec.search(frame)[0])
    read = {a.name for a in attempts if [c.text for c in dec.attempt(a)[0]] == [text]}
    assert read == {"outline"}
    assert first_read(camera, clip, text) == 0


def test_a_skewed_60_degree_card_whose_finder_patterns_are_not_found_is_located_and_read(camera, text):
    """Development seed 12's 60° clip 3, frame 1: seen 58° from the side with a skew and streaked by the
    hand, the code is a thin rhombus; no finder pattern is found, and its isotropic texture in the search's
    thumbnail is a ragged strip 13-15 pixels wide filling under half its rectangle. The search now takes
    such a strip, and its crop is widened until the outline of the code's modules finds the far corner."""
    shot = F.clip(camera, "tilt 60", np.random.default_rng([12, 1000 + list(F.CATEGORIES).index("tilt 60"), 3]))[1]
    dec = ApplianceDecoder()
    assert dec.first_pass(shot.frame) == ((), []) and dec.probe(shot.frame) == ((), [])
    centre = camera.code_corners(shot.pose, shot.look).mean(axis=0)
    regions = dec.search(shot.frame)
    assert any(math.dist(enhance.quad_centre(r), centre) < 10 * shot.module_px for r in regions)
    result = dec.analyse(shot.frame)
    assert [c.text for c in result.codes] == [text] and result.stage == "search"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tilt=st.floats(40, 64), axis=st.floats(0, 360), roll=st.floats(-25, 25), distance=st.floats(150, 250),
       motion=st.floats(0, 1.2), angle=st.floats(0, 180), other=st.booleans(), seed=st.integers(0, 2**16))
def test_squaring_up_on_the_outline_reads_the_right_text_or_nothing(camera, text, tilt, axis, roll, distance,
                                                                      motion, angle, other, seed):
    """Generated cards seen at a slant (40-64°), some streaked: the outline attempt never reads a text
    other than the card's (another card's camera for half of them)."""
    cam, want = (other_camera(), F.card_text(1)) if other else (camera, text)
    shot = cam.shoot(F.Pose(distance, tilt, axis, roll), F.Look(motion=motion, motion_angle_deg=angle),
                     np.random.default_rng(seed))
    dec = ApplianceDecoder()
    _, seen = dec.first_pass(shot.frame)
    for quad in (seen or dec.search(shot.frame))[:2]:
        for attempt in dec.attempts(shot.frame, quad):
            if attempt.name == "outline":
                assert [c.text for c in dec.attempt(attempt)[0]] in ([], [want])


_OTHER: list = []


def other_camera():
    """A camera photographing another card (made once: rendering a card's code takes a while)."""
    if not _OTHER:
        _OTHER.append(F.Camera(F.card_text(1)))
    return _OTHER[0]


def test_a_long_streak_is_undone_among_the_first_two_attempts(camera):
    """The stream tries the first two attempts on every frame: for a streak of 1.5 modules and more
    (crop squeezed 1.5x or more: 1.6 modules here) one of them deconvolves the streak, not the defocus disc its
    spectrum also suggests."""
    dec = ApplianceDecoder()
    shots = [s for s in F.frame_set(camera, 16, seed=11, categories=("motion",))["motion"] if s.look.motion >= 1.6]
    assert len(shots) >= 4
    for shot in shots:
        names = [a.name for a in dec.attempts(shot.frame, enhance.texture_regions(shot.frame)[0])]
        assert "motion" in names[:2], (shot.look.motion, names)


def test_stream_widens_an_outline_that_holds_only_part_of_the_code(camera, text):
    """zxing-cpp locates part of a card streaked over two modules (a finder pattern's corner of it):
    the code-like region around that part is looked at too, and its crop reads on the first frames."""
    clip = F.clip(camera, "motion", np.random.default_rng([13, 1000 + list(F.CATEGORIES).index("motion"), 0]))
    dec = ApplianceDecoder()
    _, seen = dec.first_pass(clip[0].frame)
    assert seen and enhance.quad_side(seen[0]) < 0.75 * clip[0].module_px * 65  # a part, not the code
    read_at = first_read(camera, clip, text)
    assert read_at is not None and read_at <= 2


class _WithoutOutline(ApplianceDecoder):
    """The appliance's decoder without squaring up on the outline of a code's modules."""

    def attempts(self, gray, quad, detail=None):
        return [a for a in super().attempts(gray, quad, detail) if a.name != "outline"]


def test_an_attempts_tiny_look_alike_does_not_replace_the_tracked_outline(camera):
    """A card held still at 60°, found by the texture search only: on the first frame zxing-cpp
    reports the unslanted crop's symbol as located at one point (all four corners on it). That
    look-alike must not become the tracked outline: every following frame still tries attempts on
    the code's own outline. (Before, the point was tracked, its crop too small for any attempt.)
    Squaring up on the outline of the code's modules, looked for in a widened crop, reads this card on
    its first frame: the stream here leaves that attempt out, so that the card stays unread."""
    shot = F.frame_set(camera, 13, seed=18, categories=("tilt 60",))["tilt 60"][12]
    dec = ApplianceDecoder()
    assert dec.first_pass(shot.frame) == ((), [])
    region = dec.search(shot.frame)[0]
    attempts = dec.attempts(shot.frame, region)
    assert [c.text for c in dec.attempt(attempts[0])[0]] == [F.card_text()] and attempts[0].name == "outline"
    unslant = next(a for a in attempts if a.name == "unslant")
    codes, located = dec.attempt(unslant)
    assert not codes and located and enhance.quad_side(located[0]) < 0.5 * enhance.quad_side(region)
    stream = StreamDecoder(_WithoutOutline())
    for frame in lane(camera):
        stream.feed(frame)
    stream.feed(shot.frame)
    still = [camera.shoot(shot.pose, shot.look, np.random.default_rng(i)).frame for i in range(4)]
    for frame in still:
        result = stream.feed(frame)
        assert result.attempts >= 3, result
        assert [enhance.quad_side(q) for q in result.located] == [pytest.approx(enhance.quad_side(region), rel=0.3)]


def test_an_empty_still_lane_costs_only_the_first_pass(camera):
    """Once the picture is still, a frame without a located symbol gets no probe, search or second pass."""
    frames = lane(camera)
    stream = StreamDecoder(active_frames=5)
    for frame in frames * 2:
        stream.feed(frame)
    searched = []
    stream.decoder.search = lambda gray: searched.append(1) or []
    stream.decoder.probe = lambda gray: searched.append(1) or ((), [])
    for frame in frames:
        result = stream.feed(frame)
        assert result.stage == "none" and result.attempts == 0
    assert searched == []


def test_change_gate_ignores_sensor_noise_and_sees_a_card(camera):
    gate = ChangeGate(active_frames=3)
    frames = lane(camera)
    for frame in frames:
        gate.update(frame)
    assert not any(gate.update(f) for f in frames)  # noise alone: quiet
    card = F.frame_set(camera, 1, seed=1, categories=("sharp",))["sharp"][0].frame
    assert gate.update(card)


def test_the_change_gate_has_seen_every_frame_in_order_when_the_next_looks_are_decided(camera):
    """Before the first pass or after it, and after a frame read at once in `settle` or the next `feed`,
    the stream's gate says what a gate fed every frame in order says."""
    card = F.frame_set(camera, 1, seed=1, categories=("sharp",))["sharp"][0].frame
    frames = lane(camera) * 2 + [card] * 3 + lane(camera) * 3 + [card] * 2
    stream, alone = StreamDecoder(active_frames=5), ChangeGate(active_frames=5)
    read = []
    for i, frame in enumerate(frames):
        read.append(bool(stream.feed(frame).codes))
        alone.update(frame)
        if i % 2:  # on the others the next feed shows the gate a frame read at once
            assert (stream.gate.active, stream.gate.stays_active) == (alone.active, alone.stays_active)
            assert np.array_equal(stream.gate._background, alone._background)
    assert read == [False] * 12 + [True] * 3 + [False] * 18 + [True] * 2


def test_a_camera_hands_a_code_read_at_once_on_before_the_change_gate_looks_at_its_frame(camera, text):
    """While the picture changes, the first pass takes every look whatever the gate says: a frame it
    reads is handed on first, and the gate looks at it afterwards, so the verdict does not wait for it."""
    card = F.frame_set(camera, 1, seed=1, categories=("sharp",))["sharp"][0].frame
    stream = StreamDecoder()
    events: list[str] = []
    gate = stream.gate
    update = gate.update
    gate.update = lambda frame: events.append("gate") or update(frame)  # type: ignore[method-assign]
    got = Collector()
    inp = CameraInput(CameraConfig("sim", backend="opencv", live=False),
                      lambda: ArraySource([card] * 2, live=False), decoder=stream)
    inp.start(lambda scan: events.append("scan") or got.submit(scan), got.report)
    assert inp.join(WAIT)
    assert got.texts() == [text, text]
    assert events == ["scan", "gate", "scan", "gate"]


def test_hint_for_a_code_running_out_of_the_frame(camera):
    """A defocused code half out of the frame is seen, not read: the person is asked to step back."""
    stream = StreamDecoder()
    cut = camera.shoot(F.Pose(180.0, offset_mm=(105.0, 0.0)), F.Look(defocus=1.0), np.random.default_rng(2)).frame
    results = [stream.feed(cut) for _ in range(4)]
    assert all(r.codes == () and r.located for r in results)
    assert stream.hint is not None and stream.hint.action == "further"
    assert stream.hint.reason == "out_of_frame"
    clear = F.frame_set(camera, 1, seed=1, categories=("sharp",))["sharp"][0].frame
    assert stream.feed(clear).codes and stream.hint is None  # read: the hint goes away


def test_a_camera_hands_the_hint_on_and_withdraws_it(camera):
    """CameraInput tells its ``on_hint`` hook (the daemon's kiosk "aim" event) when the hint changes:
    "further" while a blurred code runs out of the frame (again every 2 s while it stays: a slow
    machine may take that long), then None once a card is read."""
    cut = camera.shoot(F.Pose(180.0, offset_mm=(105.0, 0.0)), F.Look(defocus=1.0), np.random.default_rng(2)).frame
    clear = F.frame_set(camera, 1, seed=1, categories=("sharp",))["sharp"][0].frame
    hints = []
    inp = CameraInput(CameraConfig("sim", backend="opencv", live=False),
                      lambda: ArraySource([cut] * 6 + [clear] * 2, live=False), on_hint=hints.append)
    got = Collector()
    inp.start(got.submit, got.report)
    assert inp.join(WAIT)
    assert set(got.texts()) == {F.card_text()}
    further = Hint("further", "out_of_frame")
    assert hints[0] == further and hints[-1] is None and all(h == further for h in hints[1:-1])


def test_on_a_still_picture_light_on_dark_codes_are_looked_for_every_other_frame(camera, text):
    """An empty still lane skips zxing-cpp's inverted look (a third to a half of an empty frame's
    CPU) on every other frame; a dark-mode phone held still is then read on every other frame,
    and one that appears (the picture changes) on its first."""
    stream = StreamDecoder()
    frames = lane(camera)
    for frame in frames * 8:  # a camera that has been watching the still lane
        stream.feed(frame)
    looks = []
    first_pass = stream.decoder.first_pass
    stream.decoder.first_pass = lambda gray, **kw: looks.append(kw.get("invert", True)) or first_pass(gray, **kw)
    for frame in frames:
        assert stream.feed(frame).codes == ()
    assert looks.count(True) == len(frames) // 2
    pose, look = F.sample("dark mode", np.random.default_rng(4), camera)
    phone = [camera.shoot(pose, look, np.random.default_rng(50 + i)).frame for i in range(2)]
    assert zxing_alone(phone[0]) == [text]
    assert [c.text for c in stream.feed(phone[0]).codes] == [text]  # it just appeared: read at once
    for i in range(120):  # held still until the picture counts as still again (the gate forgets in ~70)
        stream.feed(phone[i % 2])
    assert not stream.gate.active
    read = [bool(stream.feed(phone[i % 2]).codes) for i in range(6)]
    assert sum(read) == 3 and read[0] != read[1]
