"""Camera-like frames and clips of issued cards, made with OpenCV at run time (never stored).

A card is issued by the issuer tools and its code rendered by `scanner.cards.render.qr_png`, laid
out as the printable ID-1 card lays it out (code on the left), or shown on a phone. A simulated
fixed-focus camera (Raspberry Pi Camera Module v2 geometry: 62.2° horizontal field, 1280x720)
photographs it 15–25 cm away: a pinhole projection of the card's pose, area-sampled; then the
optics (defocus disc, motion streak), the light (shading, glare, low light) and the sensor (shot
and read noise, 8 bits). Each category changes one thing against "sharp". A clip is one second
(15 frames at 15 fps) of a card held in a shaking hand. Everything is deterministic for a seed.
"""
from __future__ import annotations

import hashlib
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.cards.render import CARD_H, CARD_W, qr_png

from . import fixtures

FRAME_SIZE = (1280, 720)
"""Width, height of a frame: a 720p webcam, or the Pi camera's main stream."""
HFOV_DEG = 62.2
"""Horizontal field of view of the Raspberry Pi Camera Module v2 (close to most cheap webcams)."""
FPS = 15.0
"""Camera frame rate of the clips."""
CLIP_FRAMES = 15
"""Frames per clip: the card is held for one second."""
PRINTED_MM = CARD_H - 6
"""Side of the printed code with its quiet zone, as `render.card_svg` lays it out (48 mm)."""
SCREEN_MM = 52.0
"""Side of the code with its quiet zone on a phone screen."""
TEXTURE_SCALE = 8
"""Pixels per module of the rendered code (`qr_png` scale): well above any frame's sampling."""

CATEGORIES: dict[str, str] = {
    "sharp": "in focus, slight tilt: the control, nothing may be lost here",
    "defocus 0.5": "defocus disc of radius 0.5 module",
    "defocus 0.75": "defocus disc of radius 0.75 module",
    "defocus 1.0": "defocus disc of radius 1 module (a fixed-focus camera at 15-25 cm)",
    "motion": "motion streak of 1-2.5 modules in any direction",
    "tilt 30": "card tilted 30° (±3°) away from the camera",
    "tilt 45": "card tilted 45° (±3°)",
    "tilt 60": "card tilted 60° (±3°): foreshortened to half",
    "glare": "a specular highlight saturating part of the code, veiling glare over the rest",
    "low light": "8-15% of the light, gain-amplified shot and read noise",
    "dark mode": "phone in dark mode: light modules on a dark screen, black bezel",
    "creased": "card folded 10-25° along a line through the code, dark crease, shaded half",
    "moire": "code on a screen whose pixel grid aliases against the sensor's",
}
"""The frame set's categories and what each simulates."""

BLUR_AND_PERSPECTIVE = ("defocus 0.5", "defocus 0.75", "defocus 1.0", "motion", "tilt 30", "tilt 45", "tilt 60")
"""The categories the issue's "blur and perspective" goal is judged on."""


CARD_AT = 1_790_000_000
"""The frame set's cards are issued as of this time (2026-09-21), so that every run sees the same codes."""


def card_text(seed: int = 0) -> str:
    """A card issued by the issuer tools with a key and card id derived from ``seed`` (the same in every run)."""
    digest = hashlib.sha256(b"checkpoint-edge frame set %d" % seed).digest()
    key = ed25519.Ed25519PrivateKey.from_private_bytes(digest)
    return fixtures.card_text(key, CARD_AT, card_id=digest[:16])


@dataclass(frozen=True, slots=True)
class Pose:
    """Where the code is: its centre's distance and offset from the optical axis (mm), its angles."""

    distance_mm: float
    tilt_deg: float = 0.0
    tilt_axis_deg: float = 0.0
    roll_deg: float = 0.0
    offset_mm: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Look:
    """Everything about a frame but the pose: surface, optics, light, sensor (sizes in modules)."""

    surface: str = "card"  # card, phone, dark phone, screen
    defocus: float = 0.15
    motion: float = 0.0
    motion_angle_deg: float = 0.0
    light: float = 1.0
    glare: tuple[float, float, float, float] | None = None  # centre x, y (fractions of the code), radius, strength
    fold: tuple[float, float, float] | None = None  # position across the code (fraction), bend °, direction °


@dataclass(frozen=True, slots=True)
class Shot:
    """One generated frame and what made it."""

    frame: np.ndarray
    category: str
    pose: Pose
    look: Look
    module_px: float


@dataclass(frozen=True, slots=True)
class Surface:
    """A texture to photograph: grayscale pixels, pixels per mm, the code's centre (px), module (mm)."""

    texture: np.ndarray
    px_per_mm: float
    code_centre: tuple[float, float]
    module_mm: float
    modules: int
    """Modules across the code, quiet zone included."""


def issued_code(text: str) -> np.ndarray:
    """The card's code as the issuer renders it (`qr_png`, 4-module quiet zone), read back as pixels."""
    with tempfile.TemporaryDirectory(prefix="ck-frames-") as tmp:
        path = Path(tmp) / "code.png"
        qr_png(text, path, scale=TEXTURE_SCALE, border=4)
        code = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if code is None:
        raise RuntimeError("the issuer's PNG could not be read back")
    return code


def card_surface(code: np.ndarray) -> Surface:
    """The printed ID-1 card: the code on the left (as `render.card_svg`), holder details beside it."""
    ppm = code.shape[0] / PRINTED_MM
    w, h = int(round(CARD_W * ppm)), int(round(CARD_H * ppm))
    card = np.full((h, w), 242, np.uint8)
    y0, x0 = int(round(3 * ppm)), int(round(2 * ppm))
    card[y0:y0 + code.shape[0], x0:x0 + code.shape[1]] = code
    x, y = x0 + code.shape[1] + int(1.5 * ppm), int(7 * ppm)
    for line, size in (("THE KIEM SOAT", 3.0), ("CHECKPOINT CARD", 2.4), ("Ho ten / Name", 1.7),
                       ("NGUYEN THI THANH", 3.0), ("HUONG", 3.0), ("Ngay sinh / Date of birth", 1.7),
                       ("1987-03-15", 2.6), ("Het han / Expires", 1.7), ("2027-11-01 UTC", 2.6)):
        cv2.putText(card, line, (x, y), cv2.FONT_HERSHEY_SIMPLEX, size * ppm / 28, 35, max(1, int(size * ppm / 9)))
        y += int(size * 1.9 * ppm)
    cv2.rectangle(card, (0, 0), (w - 1, h - 1), 160, max(1, int(0.3 * ppm)))
    modules = code.shape[0] // TEXTURE_SCALE
    return Surface(card, ppm, (x0 + code.shape[1] / 2, y0 + code.shape[0] / 2), PRINTED_MM / modules, modules)


def phone_surface(code: np.ndarray, *, dark: bool, grid_pitch_mm: float | None = None) -> Surface:
    """A phone screen showing the code (52 mm with quiet zone) inside a black bezel.

    ``dark``: light modules on a dark screen. ``grid_pitch_mm``: the screen's pixel grid (dark gaps
    between pixels) at that pitch, which aliases against the camera's sensor (moiré).
    """
    ppm = code.shape[0] / SCREEN_MM
    w, h = int(68 * ppm), int(140 * ppm)
    screen = np.full((h, w), 28 if dark else 238, np.uint8)
    shown = (28 + (255 - code).astype(np.float32) * (205 / 255)).astype(np.uint8) if dark else code
    y, x = int(30 * ppm), (w - code.shape[1]) // 2
    screen[y:y + code.shape[0], x:x + code.shape[1]] = shown
    if grid_pitch_mm:
        pitch = grid_pitch_mm * ppm
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        gap = ((np.mod(xx, pitch) < pitch * 0.3) | (np.mod(yy, pitch) < pitch * 0.3)).astype(np.float32)
        screen = (screen * (1 - 0.6 * gap)).astype(np.uint8)
    bezel = int(4 * ppm)
    out = np.full((h + 2 * bezel, w + 2 * bezel), 10, np.uint8)
    out[bezel:bezel + h, bezel:bezel + w] = screen
    modules = code.shape[0] // TEXTURE_SCALE
    return Surface(out, ppm, (bezel + x + code.shape[1] / 2, bezel + y + code.shape[0] / 2), SCREEN_MM / modules,
                   modules)


def scene(w: int, h: int, seed: int = 3) -> np.ndarray:
    """A plausible empty lane as the camera sees it: shapes, edges, some text, sensor noise."""
    rng = np.random.default_rng(seed)
    img = np.tile(np.linspace(90, 170, w, dtype=np.float32), (h, 1))
    for _ in range(12):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(20, w // 3)), y + int(rng.integers(20, h // 3))),
                      float(rng.integers(30, 230)), int(rng.choice([-1, 2, 4])))
    img8 = img.astype(np.uint8)
    for i in range(3):
        cv2.putText(img8, "LOI RA / EXIT 0123", (int(w * 0.05), int(h * (0.3 + 0.25 * i))),
                    cv2.FONT_HERSHEY_SIMPLEX, w / 900, 40, 2)
    return (img8 + rng.normal(0, 3, img.shape)).clip(0, 255).astype(np.uint8)


# ------------------------------------------------------------------ the camera

def focal_px(width: int) -> float:
    return width / 2 / math.tan(math.radians(HFOV_DEG) / 2)


def _rotation(tilt_deg: float, tilt_axis_deg: float, roll_deg: float) -> np.ndarray:
    """Surface-to-camera rotation: roll in the surface's plane, then tilt about an in-plane axis."""
    roll = math.radians(roll_deg)
    rz = np.array([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
    a = math.radians(tilt_axis_deg)
    rt, _ = cv2.Rodrigues(np.array([math.cos(a), math.sin(a), 0.0]) * math.radians(tilt_deg))
    return rt @ rz


def _disc(radius: float) -> np.ndarray:
    """Defocus point-spread function of a real lens, not the decoder's model: a disc of ``radius``
    pixels whose rim is brighter (spherical aberration), softened by the sensor (Gaussian, 0.4 px)."""
    n = int(math.ceil(radius)) + 2
    ss = 8
    grid = (np.arange((2 * n + 1) * ss, dtype=np.float32) + 0.5) / ss - (n + 0.5)
    r2 = (grid[None, :] ** 2 + grid[:, None] ** 2) / (radius * radius)
    disc = np.where(r2 <= 1.0, 1.0 + 0.4 * r2, 0.0).astype(np.float32)
    k = cv2.resize(disc, (2 * n + 1, 2 * n + 1), interpolation=cv2.INTER_AREA)
    k = cv2.GaussianBlur(k, (0, 0), 0.4)
    return k / k.sum()


def _streak(length: float, angle_deg: float) -> np.ndarray:
    """Motion point-spread function of a hand that speeds up: a line of ``length`` pixels at
    ``angle_deg`` whose weight grows from 0.6 to 1.4 along it, softened by the sensor (0.4 px)."""
    n = int(math.ceil(length / 2)) + 2
    ss = 8
    size = (2 * n + 1) * ss
    k: np.ndarray = np.zeros((size, size), np.float32)
    c = size / 2
    steps = max(2, int(length * ss))
    for i in range(steps + 1):
        t = i / steps - 0.5
        x = c + t * math.cos(math.radians(angle_deg)) * length * ss
        y = c + t * math.sin(math.radians(angle_deg)) * length * ss
        cv2.circle(k, (int(round(x)), int(round(y))), ss // 2, 1.0 + 0.8 * t, -1)
    k = cv2.resize(k, (2 * n + 1, 2 * n + 1), interpolation=cv2.INTER_AREA)
    k = cv2.GaussianBlur(k, (0, 0), 0.4)
    return k / k.sum()


class Camera:
    """Photographs a card (or a phone) at a pose with a Look: 8-bit grayscale frames."""

    def __init__(self, text: str, size: tuple[int, int] = FRAME_SIZE, seed: int = 0) -> None:
        self.size = size
        self.focal = focal_px(size[0])
        self.background = scene(*size, seed=seed + 3).astype(np.float32)
        code = issued_code(text)
        self.surfaces = {"card": card_surface(code), "phone": phone_surface(code, dark=False),
                         "dark phone": phone_surface(code, dark=True),
                         "screen": phone_surface(code, dark=False, grid_pitch_mm=0.16)}

    def module_px(self, look: Look, pose: Pose) -> float:
        return self.surfaces[look.surface].module_mm * self.focal / pose.distance_mm

    def shoot(self, pose: Pose, look: Look, rng: np.random.Generator, category: str = "") -> Shot:
        surf = self.surfaces[look.surface]
        module_px = self.module_px(look, pose)
        _w, _h = self.size
        rot, centre = self._placement(surf, pose)
        planes = self._planes(surf, rot, centre, look)
        pad = int(math.ceil((look.defocus + look.motion) * module_px)) + 3
        x0, y0, x1, y1 = self._bbox(planes, surf, pad)
        img = self.background.copy()
        if x1 > x0 and y1 > y0:
            layer, cover = self._render(surf, planes, (x0, y0, x1, y1), look)
            if look.glare is not None:
                layer = self._glare(layer, cover, (x0, y0), pose, look.glare, module_px, surf)
            layer, cover = self._optics(layer, look, module_px), self._optics(cover, look, module_px)
            roi = img[y0:y1, x0:x1]
            img[y0:y1, x0:x1] = roi * (1 - cover) + layer
        img *= look.light
        gain = 1.0 / look.light
        electrons_per_level = 30.0  # shot noise: sigma ~2.6 levels at 200 in full light
        noise = rng.standard_normal(img.shape, dtype=np.float32)
        sigma = np.sqrt(np.maximum(img, 0) / electrons_per_level + 1.2 ** 2) * gain
        frame = np.clip(img * gain + noise * sigma + 0.5, 0, 255).astype(np.uint8)
        return Shot(frame, category, pose, look, module_px)

    def code_corners(self, pose: Pose, look: Look) -> np.ndarray:
        """The symbol's outer corners (quiet zone left out) in frame pixels, top-left first and going round
        as the symbol does (4x2; an unfolded surface): what a decoder's outline is judged against."""
        surf = self.surfaces[look.surface]
        rot, centre = self._placement(surf, pose)
        half = (surf.modules - 8) / 2 * TEXTURE_SCALE  # the 4-module quiet zone on each side
        cx, cy = surf.code_centre
        square = np.array([[[cx - half, cy - half]], [[cx + half, cy - half]], [[cx + half, cy + half]],
                           [[cx - half, cy + half]]], np.float32)
        return cv2.perspectiveTransform(square, self._homography(surf, rot, centre, 1.0, (0, 0))).reshape(4, 2)

    @staticmethod
    def _placement(surf: Surface, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
        """The surface's rotation and its centre (mm, camera coordinates): the pose places the code's
        centre, and the surface's own centre is offset from it."""
        rot = _rotation(pose.tilt_deg, pose.tilt_axis_deg, pose.roll_deg)
        th, tw = surf.texture.shape
        shift = np.array([(tw / 2 - surf.code_centre[0]) / surf.px_per_mm,
                          (th / 2 - surf.code_centre[1]) / surf.px_per_mm, 0.0])
        return rot, np.array([*pose.offset_mm, pose.distance_mm]) + rot @ shift

    def _planes(self, surf: Surface, rot, centre, look: Look) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
        """(texture mask, rotation, centre, brightness) of each flat part of the surface."""
        th, tw = surf.texture.shape
        if look.fold is None:
            return [(np.ones((th, tw), np.float32), rot, centre, 1.0)]
        pos, bend, direction = look.fold
        n = np.array([math.cos(math.radians(direction)), math.sin(math.radians(direction))])
        side = surf.module_mm * surf.px_per_mm * surf.modules
        p0 = np.array(surf.code_centre) + n * (pos - 0.5) * side
        yy, xx = np.mgrid[0:th, 0:tw].astype(np.float32)
        s = (xx - p0[0]) * n[0] + (yy - p0[1]) * n[1]
        a = (s < 0).astype(np.float32)
        crease = np.exp(-(s / (0.4 * surf.px_per_mm)) ** 2)
        rb, _ = cv2.Rodrigues(np.array([-n[1], n[0], 0.0]) * math.radians(bend))
        p_mm = np.array([(p0[0] - tw / 2) / surf.px_per_mm, (p0[1] - th / 2) / surf.px_per_mm, 0.0])
        centre_b = centre + rot @ (p_mm - rb @ p_mm)
        return [(a * (1 - 0.5 * crease), rot, centre, 1.0), ((1 - a) * (1 - 0.5 * crease), rot @ rb, centre_b, 0.78)]

    def _homography(self, surf: Surface, rot, centre, ss: float, origin: tuple[int, int]) -> np.ndarray:
        th, tw = surf.texture.shape
        f = self.focal * ss
        k = np.array([[f, 0, (self.size[0] / 2 - origin[0]) * ss], [0, f, (self.size[1] / 2 - origin[1]) * ss],
                      [0, 0, 1]])
        ppm = surf.px_per_mm
        to_mm = np.array([[1 / ppm, 0, -tw / 2 / ppm], [0, 1 / ppm, -th / 2 / ppm], [0, 0, 1]])
        return k @ np.column_stack([rot[:, 0], rot[:, 1], centre]) @ to_mm

    def _bbox(self, planes, surf: Surface, pad: int) -> tuple[int, int, int, int]:
        th, tw = surf.texture.shape
        corners = np.array([[[0, 0]], [[tw, 0]], [[tw, th]], [[0, th]]], np.float32)
        pts = np.concatenate([cv2.perspectiveTransform(corners, self._homography(surf, r, c, 1.0, (0, 0)))
                              for _, r, c, _ in planes]).reshape(-1, 2)
        w, h = self.size
        x0, y0 = np.floor(pts.min(axis=0)).astype(int) - pad
        x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + pad
        return max(0, x0), max(0, y0), min(w, x1), min(h, y1)

    def _render(self, surf: Surface, planes, box, look: Look) -> tuple[np.ndarray, np.ndarray]:
        """The surface in the box (premultiplied by its coverage) and the coverage, float32."""
        x0, y0, x1, y1 = box
        screen = look.surface == "screen"
        ss = 1 if screen else 3  # a screen is point-sampled: no optical low-pass, so its grid aliases
        size = ((x1 - x0) * ss, (y1 - y0) * ss)
        tex = surf.texture.astype(np.float32)
        acc = np.zeros(size[::-1], np.float32)
        cov = np.zeros(size[::-1], np.float32)
        for mask, rot, centre, light in planes:
            hom = self._homography(surf, rot, centre, ss, (x0, y0))
            acc += cv2.warpPerspective(tex * mask * light, hom, size, flags=cv2.INTER_LINEAR)
            cov += cv2.warpPerspective((mask > 0).astype(np.float32), hom, size, flags=cv2.INTER_LINEAR)
        if ss == 1:
            return acc, np.clip(cov, 0, 1)
        out = (x1 - x0, y1 - y0)
        return (cv2.resize(acc, out, interpolation=cv2.INTER_AREA),
                np.clip(cv2.resize(cov, out, interpolation=cv2.INTER_AREA), 0, 1))

    def _glare(self, layer, cover, origin, pose: Pose, glare, module_px: float, surf: Surface) -> np.ndarray:
        """Added specular light: a saturating spot on part of the code and a veil over the surface."""
        gx, gy, radius, strength = glare
        side = module_px * surf.modules
        cx = self.size[0] / 2 + pose.offset_mm[0] * self.focal / pose.distance_mm + (gx - 0.5) * side - origin[0]
        cy = self.size[1] / 2 + pose.offset_mm[1] * self.focal / pose.distance_mm + (gy - 0.5) * side - origin[1]
        yy, xx = np.mgrid[0:layer.shape[0], 0:layer.shape[1]].astype(np.float32)
        spot = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (radius * side) ** 2))
        return layer * (1 - 0.3 * strength) + cover * strength * (400 * spot + 45)

    @staticmethod
    def _optics(img: np.ndarray, look: Look, module_px: float) -> np.ndarray:
        if look.defocus * module_px >= 0.3:
            img = cv2.filter2D(img, -1, _disc(look.defocus * module_px), borderType=cv2.BORDER_CONSTANT)
        if look.motion > 0:
            img = cv2.filter2D(img, -1, _streak(look.motion * module_px, look.motion_angle_deg),
                               borderType=cv2.BORDER_CONSTANT)
        return img


# ------------------------------------------------------------------ categories, frame sets, clips

def _base_pose(rng: np.random.Generator, focal: float, size: tuple[int, int]) -> Pose:
    d = float(rng.uniform(150, 250))
    half_w, half_h = size[0] / 2 * d / focal, size[1] / 2 * d / focal
    return Pose(d, float(rng.uniform(0, 15)), float(rng.uniform(0, 360)), float(rng.uniform(-25, 25)),
                (float(rng.uniform(-0.3, 0.3) * half_w), float(rng.uniform(-0.25, 0.25) * half_h)))


def sample(category: str, rng: np.random.Generator, camera: Camera) -> tuple[Pose, Look]:
    """A random pose and look of one category."""
    pose = _base_pose(rng, camera.focal, camera.size)
    look = Look()
    if category.startswith("defocus "):
        look = replace(look, defocus=float(category.split()[1]))
    elif category == "motion":
        look = replace(look, motion=float(rng.uniform(1.0, 2.5)), motion_angle_deg=float(rng.uniform(0, 180)))
    elif category.startswith("tilt "):
        pose = replace(pose, tilt_deg=float(category.split()[1]) + float(rng.uniform(-3, 3)))
    elif category == "glare":
        look = replace(look, glare=(float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.25, 0.75)),
                                    float(rng.uniform(0.08, 0.16)), float(rng.uniform(0.6, 1.0))))
    elif category == "low light":
        look = replace(look, light=float(rng.uniform(0.08, 0.15)))
    elif category == "dark mode":
        look = replace(look, surface="dark phone")
    elif category == "creased":
        look = replace(look, fold=(float(rng.uniform(0.3, 0.7)),
                                   float(rng.uniform(10, 25)) * float(rng.choice([-1, 1])),
                                   float(rng.uniform(0, 180))))
    elif category == "moire":
        look = replace(look, surface="screen")
    elif category != "sharp":
        raise ValueError(f"unknown category {category!r}")
    return pose, look


def frame_set(camera: Camera, per_category: int, seed: int,
              categories: tuple[str, ...] = tuple(CATEGORIES)) -> dict[str, list[Shot]]:
    """``per_category`` independent frames of each category."""
    out: dict[str, list[Shot]] = {}
    for i, cat in enumerate(categories):
        rng = np.random.default_rng([seed, i])
        shots = []
        for _ in range(per_category):
            pose, look = sample(cat, rng, camera)
            shots.append(camera.shoot(pose, look, rng, cat))
        out[cat] = shots
    return out


def clip(camera: Camera, category: str, rng: np.random.Generator, frames: int = CLIP_FRAMES) -> list[Shot]:
    """One second of a card of ``category`` held in front of the camera by a shaking hand.

    The hand drifts a few millimetres and degrees (a smooth random walk) and shakes, which adds a
    short motion streak in the direction of movement; the light noise differs in every frame.
    """
    pose, look = sample(category, rng, camera)
    shots = []
    pos = np.array([*pose.offset_mm, pose.distance_mm])
    vel = np.zeros(3)
    ang = np.array([pose.tilt_deg, pose.roll_deg])
    for _ in range(frames):
        vel = 0.6 * vel + rng.normal(0, [1.2, 1.2, 1.5])  # mm per frame
        pos = pos + vel
        ang = ang + rng.normal(0, 0.6, 2)
        p = Pose(float(pos[2]), float(ang[0]), pose.tilt_axis_deg, float(ang[1]), (float(pos[0]), float(pos[1])))
        speed_px = float(np.hypot(vel[0], vel[1])) * camera.focal / p.distance_mm / 4  # 1/60 s of a 1/15 s frame
        streak = speed_px / camera.module_px(look, p)
        angle = math.degrees(math.atan2(vel[1], vel[0]))
        lk = look
        if look.motion > 0:
            lk = replace(look, motion=look.motion + streak, motion_angle_deg=look.motion_angle_deg)
        elif streak > 0.1:
            lk = replace(look, motion=streak, motion_angle_deg=angle)
        shots.append(camera.shoot(p, lk, rng, category))
    return shots


def clips(camera: Camera, per_category: int, seed: int,
          categories: tuple[str, ...] = tuple(CATEGORIES)) -> dict[str, list[list[Shot]]]:
    """``per_category`` clips of each category."""
    return {cat: [clip(camera, cat, np.random.default_rng([seed, 1000 + i, j])) for j in range(per_category)]
            for i, cat in enumerate(categories)}
