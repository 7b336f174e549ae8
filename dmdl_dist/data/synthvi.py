"""SynthVI: a procedural visible-infrared person re-identification data set.

The real benchmarks cannot be downloaded here, yet the pipeline, its tests and its demo need data
that carries the problem DMDL solves. SynthVI is drawn deterministically from a seed and written
in SYSU-MM01's layout, so the SYSU-MM01 reader and protocol run on it unchanged:

    OUT/cam1..cam6/<pid:04d>/<n:04d>.jpg   cams 1, 2, 4, 5 visible; 3, 6 infrared (grey, 3 channels)
    OUT/exp/{train,val,test}_id.txt        one line of comma-separated ids each
    OUT/synthvi.json                       generator version, config, camera parameters, counts
    OUT/synthvi_identities.json            every identity's drawn attributes

Generative model
----------------
Identity (one random stream per pid). Cues both modalities render:
  * body: stature, head radius, shoulder and hip width, leg and arm length (body-height units);
  * clothing shape: long or short sleeves, trousers or shorts, long or short hair;
  * texture: a top and a bottom garment, each plain, striped (0/45/90/135 degrees) or checked,
    with its own period and contrast; the pattern darkens colour and heat alike;
  * accessories: hat, shoulder bag (left or right), backpack, each present with some probability.
Cues of one modality only:
  * visible colour: top, hat, bag and backpack from a 12-colour palette, bottoms from 6 of those,
    skin tone and hair colour from small sets. Identities share colours, so colour is a strong but
    imperfect cue.
  * infrared heat, per garment and accessory: w * luminance(colour) + (1 - w) * u, u drawn on its
    own (w = ir_luminance_weight, 0.2 by default). The infrared value cannot be read off the visible
    colour, so a colour-based feature does not transfer across modalities: colour is the modality
    shortcut. Skin is hottest, clothes cooler, accessories and shoes coolest.
Camera (one stream per camera): background (vertical gradient, floor, wall panels, low-frequency
texture; coloured in visible cameras, grey in infrared ones), illumination (gain, gamma and, for
visible cameras, a colour cast), viewpoint (shear), distance (scale), blur and noise (the infrared
cameras blurrier and noisier).
Image (one stream per (pid, camera, index)): arm and leg angles, a small rotation, a horizontal
flip, scale and position jitter, background phase and brightness, sensor noise.

Rendering: body parts are polygons in body coordinates (x right, y down, head top 0, soles 1),
mapped to pixels by one affine transform and filled into a part-label map at twice the output
resolution; colours or heats are looked up per part, patterns are evaluated in body coordinates
(so they move with the person), the person is composed over the background, averaged down 2x,
lit, blurred, noised and stored as JPEG of fixed quality.

Every draw comes from a numpy Generator seeded by (seed, purpose, pid, camera, index), so a file's
bytes depend neither on the order of generation nor on the number of worker processes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = 1  # bump when a change alters the bytes written, so stale caches are refused
VISIBLE_CAMS = (1, 2, 4, 5)
INFRARED_CAMS = (3, 6)

PALETTE = {
    "red": (200, 32, 36), "orange": (236, 122, 30), "yellow": (232, 202, 44), "green": (42, 140, 62),
    "blue": (36, 72, 192), "navy": (26, 32, 82), "purple": (122, 52, 152), "pink": (232, 124, 172),
    "white": (236, 236, 230), "grey": (128, 130, 132), "black": (26, 26, 30), "khaki": (190, 170, 120),
}  # fmt: skip
BOTTOM_COLOURS = ("navy", "black", "grey", "blue", "khaki", "white")
SKIN_TONES = ((234, 194, 162), (206, 156, 120), (160, 110, 76), (104, 70, 46))
HAIR_COLOURS = ((26, 20, 18), (86, 56, 30), (202, 166, 100), (150, 150, 150))
PATTERNS = ("plain", "stripes", "checks")

# Part labels of the rendered label map.
BACKGROUND, SKIN, HAIR, TOP, BOTTOM, SHOES, HAT, BAG, BACKPACK = range(9)
SHOE_RGB, SHOE_HEAT = (40, 36, 34), 0.22

# Purposes mixed into every seed, so two kinds of draws never share a stream.
_SPLIT, _IDENTITY, _PRESENCE, _CAMERA, _IMAGE = range(5)


@dataclass(frozen=True)
class SynthVIConfig:
    """What to generate. Every field changes the files written; the cache compares all of them."""

    seed: int = 0
    n_train: int = 160
    n_val: int = 40  # held-out training ids; SYSU-MM01's training set is train + val
    n_test: int = 100
    height: int = 128
    width: int = 64
    images_per_cam: tuple[int, int] = (4, 6)  # inclusive range, per (identity, camera that sees it)
    camera_presence: float = 0.6  # chance a camera sees an identity; at least one camera per modality does
    ir_luminance_weight: float = 0.2  # 0: heat independent of visible colour; 1: heat = luminance
    jpeg_quality: int = 92

    def __post_init__(self) -> None:
        lo, hi = self.images_per_cam
        problems = [
            (self.seed < 0, f"seed={self.seed} must be >= 0"),
            (min(self.n_train, self.n_val, self.n_test) < 1, "n_train, n_val and n_test must be >= 1"),
            (self.n_ids > 9999, f"{self.n_ids} ids do not fit SYSU-MM01's 4-digit folders"),
            (self.height < 32 or self.width < 16, f"image {self.height}x{self.width} is below 32x16"),
            (not 1 <= lo <= hi <= 9999, f"images_per_cam={self.images_per_cam} must be 1 <= lo <= hi"),
            (not 0 < self.camera_presence <= 1, f"camera_presence={self.camera_presence} not in (0, 1]"),
            (not 0 <= self.ir_luminance_weight <= 1, "ir_luminance_weight must lie in [0, 1]"),
            (not 1 <= self.jpeg_quality <= 95, f"jpeg_quality={self.jpeg_quality} not in 1..95"),
        ]
        bad = [message for failed, message in problems if failed]
        if bad:
            raise ValueError("SynthVIConfig: " + "; ".join(bad))

    @property
    def n_ids(self) -> int:
        return self.n_train + self.n_val + self.n_test

    @classmethod
    def from_dict(cls, values: dict) -> SynthVIConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"SynthVIConfig has no field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


DEFAULT = SynthVIConfig()
TINY = SynthVIConfig(n_train=24, n_val=8, n_test=16, height=64, width=32, images_per_cam=(2, 3))


@dataclass(frozen=True)
class Garment:
    colour: str  # a PALETTE name
    heat: float  # infrared intensity in [0, 1]
    pattern: str  # one of PATTERNS
    period: float  # pattern period, body-height units
    angle: float  # stripe direction, degrees
    contrast: float  # how much the pattern darkens


@dataclass(frozen=True)
class Accessory:
    colour: str
    heat: float
    side: int  # -1 left, +1 right of the body, before any flip


@dataclass(frozen=True)
class Identity:
    pid: int
    stature: float  # body height as a share of the image height, before camera and image jitter
    head_radius: float
    shoulder_width: float
    hip_width: float
    leg_length: float
    arm_length: float
    long_sleeves: bool
    shorts: bool
    long_hair: bool
    skin_tone: int  # index into SKIN_TONES
    hair_colour: int  # index into HAIR_COLOURS
    skin_heat: float
    hair_heat: float
    top: Garment
    bottom: Garment
    hat: Accessory | None
    bag: Accessory | None
    backpack: Accessory | None


@dataclass(frozen=True)
class Camera:
    cam: int
    infrared: bool
    sky: tuple[float, ...]  # background colour at the top (1 value for infrared, 3 for visible)
    ground: tuple[float, ...]  # background colour at the bottom
    floor: tuple[float, ...]  # colour below the horizon
    horizon: float  # share of the image height
    panel_period: float  # wall panels, share of the width; 0 means none
    texture: float  # amplitude of the low-frequency background texture
    gain: float
    gamma: float
    cast: tuple[float, ...]  # per-channel gain (all 1 for infrared)
    shear: float
    scale: float  # distance: multiplies the stature
    blur: float  # Gaussian sigma in pixels at 128 pixels of height
    noise: float  # sensor noise sigma, intensities in [0, 1]


class Rendering(NamedTuple):
    image: np.ndarray  # H x W x 3 uint8 (infrared: R == G == B)
    parts: np.ndarray  # H x W uint8 part labels, the same geometry in either modality


def _rng(config: SynthVIConfig, purpose: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, purpose, *keys])


def split_ids(config: SynthVIConfig) -> dict[str, list[int]]:
    """Ids 1..n_ids dealt at random to train, val and test (sorted within each)."""
    order = _rng(config, _SPLIT).permutation(np.arange(1, config.n_ids + 1))
    cuts = np.cumsum([config.n_train, config.n_val])
    parts = np.split(order, cuts)
    return {name: sorted(int(p) for p in part) for name, part in zip(("train", "val", "test"), parts, strict=True)}


def camera_plan(config: SynthVIConfig, pid: int) -> dict[int, int]:
    """Cameras that see this identity -> number of images, at least one camera per modality."""
    rng = _rng(config, _PRESENCE, pid)
    counts = rng.integers(config.images_per_cam[0], config.images_per_cam[1] + 1, size=6)
    plan = {}
    for cams in (VISIBLE_CAMS, INFRARED_CAMS):
        seen = rng.random(len(cams)) < config.camera_presence
        seen[rng.integers(len(cams))] |= not seen.any()
        plan.update({cam: int(counts[cam - 1]) for cam, s in zip(cams, seen, strict=True) if s})
    return dict(sorted(plan.items()))


def _heat(rng: np.random.Generator, rgb: tuple[int, int, int], weight: float, lo: float, hi: float) -> float:
    luminance = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255
    return float(weight * luminance + (1 - weight) * rng.uniform(lo, hi))


def _garment(rng: np.random.Generator, colours: tuple[str, ...], weight: float, p_pattern: list[float]) -> Garment:
    colour = colours[rng.integers(len(colours))]
    return Garment(
        colour=colour,
        heat=_heat(rng, PALETTE[colour], weight, 0.15, 0.75),
        pattern=PATTERNS[rng.choice(len(PATTERNS), p=p_pattern)],
        period=float(rng.uniform(0.04, 0.09)),
        angle=float(rng.choice([0.0, 45.0, 90.0, 135.0])),
        contrast=float(rng.uniform(0.3, 0.55)),
    )


def _accessory(rng: np.random.Generator, p: float, weight: float) -> Accessory | None:
    colour = tuple(PALETTE)[rng.integers(len(PALETTE))]  # drawn whether present or not: fixed stream
    heat = _heat(rng, PALETTE[colour], weight, 0.05, 0.45)
    side = int(rng.choice([-1, 1]))
    return Accessory(colour, heat, side) if rng.random() < p else None


def identity(config: SynthVIConfig, pid: int) -> Identity:
    """The attributes of one identity; a pure function of (seed, pid)."""
    rng = _rng(config, _IDENTITY, pid)
    w = config.ir_luminance_weight
    return Identity(
        pid=pid,
        stature=float(rng.uniform(0.8, 0.95)),
        head_radius=float(rng.uniform(0.058, 0.072)),
        shoulder_width=float(rng.uniform(0.21, 0.31)),
        hip_width=float(rng.uniform(0.16, 0.24)),
        leg_length=float(rng.uniform(0.43, 0.53)),
        arm_length=float(rng.uniform(0.34, 0.42)),
        long_sleeves=bool(rng.random() < 0.5),
        shorts=bool(rng.random() < 0.3),
        long_hair=bool(rng.random() < 0.35),
        skin_tone=int(rng.integers(len(SKIN_TONES))),
        hair_colour=int(rng.integers(len(HAIR_COLOURS))),
        skin_heat=float(rng.uniform(0.8, 0.95)),
        hair_heat=float(rng.uniform(0.35, 0.5)),
        top=_garment(rng, tuple(PALETTE), w, [0.4, 0.35, 0.25]),
        bottom=_garment(rng, BOTTOM_COLOURS, w, [0.7, 0.2, 0.1]),
        hat=_accessory(rng, 0.25, w),
        bag=_accessory(rng, 0.3, w),
        backpack=_accessory(rng, 0.25, w),
    )


def camera(config: SynthVIConfig, cam: int) -> Camera:
    """The nuisance parameters of one camera; a pure function of (seed, cam)."""
    rng = _rng(config, _CAMERA, cam)
    infrared = cam in INFRARED_CAMS
    lo, hi = (0.05, 0.4) if infrared else (0.2, 0.8)

    def colour() -> tuple[float, ...]:  # visible scenes are mostly muted: a grey level plus a little tint
        tint = np.zeros(1) if infrared else rng.uniform(-0.12, 0.12, 3)
        return tuple(float(c) for c in np.clip(rng.uniform(lo, hi) + tint, 0, 1))

    cast = np.ones(1) if infrared else rng.uniform(0.88, 1.12, 3)
    return Camera(
        cam=cam, infrared=infrared, sky=colour(), ground=colour(), floor=colour(),
        horizon=float(rng.uniform(0.6, 0.88)),
        panel_period=float(rng.choice([0.0, rng.uniform(0.2, 0.5)])),
        texture=float(rng.uniform(0.1, 0.4)),
        gain=float(rng.uniform(0.8, 1.2) if infrared else rng.uniform(0.7, 1.25)),
        gamma=float(rng.uniform(0.8, 1.25) if infrared else rng.uniform(0.75, 1.35)),
        cast=tuple(float(c) for c in cast / cast.mean()),
        shear=float(rng.uniform(-0.12, 0.12)),
        scale=float(rng.uniform(0.88, 1.02)),
        blur=float(rng.uniform(0.5, 1.1) if infrared else rng.uniform(0.0, 0.6)),
        noise=float(rng.uniform(0.02, 0.045) if infrared else rng.uniform(0.008, 0.03)),
    )  # fmt: skip


def _ellipse(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * math.pi) -> np.ndarray:
    a = np.linspace(a0, a1, 18)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def _limb(p0: np.ndarray, p1: np.ndarray, w0: float, w1: float) -> np.ndarray:
    d = (p1 - p0) / max(float(np.linalg.norm(p1 - p0)), 1e-9)
    n = np.array([-d[1], d[0]]) / 2
    return np.stack([p0 + n * w0, p1 + n * w1, p1 - n * w1, p0 - n * w0])


def _parts(ident: Identity, arm_angles: np.ndarray, leg_angles: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(label, polygon in body coordinates) in painting order, back to front."""
    hr, sw, hw = ident.head_radius, ident.shoulder_width, ident.hip_width
    sy, hy = 2 * hr + 0.015, 1.0 - ident.leg_length  # shoulder and hip lines
    aw, lw = 0.2 * sw, 0.5 * hw  # arm and leg widths
    parts = []
    if ident.backpack:
        parts.append((BACKPACK, _rect(-sw / 2 - 0.03, sy + 0.01, sw / 2 + 0.03, hy - 0.04)))
    for side, angle in zip((-1, 1), leg_angles, strict=True):
        hip = np.array([side * hw / 4, hy])
        foot = hip + (ident.leg_length - 0.012) * np.array([side * math.sin(angle), math.cos(angle)])
        knee = hip + 0.45 * (foot - hip)
        if ident.shorts:
            parts += [(BOTTOM, _limb(hip, knee, lw, 0.9 * lw)), (SKIN, _limb(knee, foot, 0.7 * lw, 0.5 * lw))]
        else:
            parts.append((BOTTOM, _limb(hip, foot, lw, 0.7 * lw)))
        parts.append((SHOES, _ellipse(foot[0] + side * 0.01, foot[1], 0.034, 0.016)))
    parts.append((BOTTOM, _rect(-hw / 2, hy - 0.04, hw / 2, hy + 0.05)))
    parts.append((SKIN, _rect(-0.35 * hr, 1.6 * hr, 0.35 * hr, sy + 0.01)))  # neck
    parts.append((TOP, np.array([[-sw / 2, sy], [sw / 2, sy], [hw / 2, hy], [-hw / 2, hy]])))
    if ident.backpack:
        parts += [(BACKPACK, _rect(s * sw / 4 - 0.012, sy, s * sw / 4 + 0.012, sy + 0.16)) for s in (-1, 1)]
    if ident.long_hair:
        parts.append((HAIR, _rect(-0.95 * hr, hr, 0.95 * hr, sy + 0.07)))
    for side, angle in zip((-1, 1), arm_angles, strict=True):
        shoulder = np.array([side * (sw / 2 - aw / 2), sy + 0.01])
        hand = shoulder + ident.arm_length * np.array([side * math.sin(angle), math.cos(angle)])
        elbow = shoulder + (1.0 if ident.long_sleeves else 0.35) * (hand - shoulder)
        parts.append((TOP, _limb(shoulder, elbow, aw, 0.85 * aw)))
        if not ident.long_sleeves:
            parts.append((SKIN, _limb(elbow, hand, 0.75 * aw, 0.65 * aw)))
        parts.append((SKIN, _ellipse(hand[0], hand[1], 0.5 * aw, 0.6 * aw)))
    if ident.bag:
        s = ident.bag.side
        bag_top = np.array([s * (hw / 2 + 0.035), hy - 0.04])
        parts.append((BAG, _limb(np.array([-s * sw / 3, sy]), bag_top, 0.014, 0.014)))
        parts.append((BAG, _rect(bag_top[0] - 0.045, hy - 0.04, bag_top[0] + 0.045, hy + 0.045)))
    parts.append((SKIN, _ellipse(0.0, hr, 0.82 * hr, hr)))  # face
    if ident.hat:
        parts += [
            (HAT, _rect(-0.8 * hr, -0.03, 0.8 * hr, 0.6 * hr)),
            (HAT, _rect(-1.25 * hr, 0.5 * hr, 1.25 * hr, 0.66 * hr)),
        ]
    else:
        parts.append((HAIR, _ellipse(0.0, 0.95 * hr, 0.9 * hr, 1.02 * hr, math.pi, 2 * math.pi)))
    return parts


def _part_values(ident: Identity, infrared: bool) -> np.ndarray:
    """Per-label intensity table: 9 x 1 heats for infrared, 9 x 3 colours in [0, 1] for visible."""
    table = np.zeros((9, 1 if infrared else 3))
    wear = {TOP: ident.top, BOTTOM: ident.bottom, HAT: ident.hat, BAG: ident.bag, BACKPACK: ident.backpack}
    if infrared:
        table[[SKIN, HAIR, SHOES], 0] = ident.skin_heat, ident.hair_heat, SHOE_HEAT
        for label, item in wear.items():
            table[label] = item.heat if item else 0.0
    else:
        table[[SKIN, HAIR, SHOES]] = (
            np.array([SKIN_TONES[ident.skin_tone], HAIR_COLOURS[ident.hair_colour], SHOE_RGB]) / 255
        )
        for label, item in wear.items():
            table[label] = np.array(PALETTE[item.colour]) / 255 if item else 0.0
    return table


def _pattern(g: Garment, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """1 where the garment's pattern is dark, 0 elsewhere (body coordinates in, same shape out)."""
    if g.pattern == "stripes":
        a = math.radians(g.angle)
        return ((u * math.cos(a) + v * math.sin(a)) / g.period % 1 < 0.5).astype(float)
    if g.pattern == "checks":
        return ((u / g.period % 1 < 0.5) ^ (v / g.period % 1 < 0.5)).astype(float)
    return np.zeros_like(u)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int] = (5, 3)) -> np.ndarray:
    """h x w bilinear upsampling of a coarse random grid: background texture in [0, 1]."""
    grid = rng.random((cells[0] + 1, cells[1] + 1))
    ys, xs = np.linspace(0, cells[0], h), np.linspace(0, cells[1], w)
    y0, x0 = np.minimum(ys.astype(int), cells[0] - 1), np.minimum(xs.astype(int), cells[1] - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _background(cam: Camera, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y = ((np.arange(h) + 0.5) / h)[:, None, None]  # h x 1 x 1
    x = ((np.arange(w) + 0.5) / w)[None, :, None]  # 1 x w x 1
    sky, ground, floor = (np.array(c) for c in (cam.sky, cam.ground, cam.floor))
    below = y > cam.horizon + rng.uniform(-0.03, 0.03)
    bg = np.where(below, floor, sky * (1 - y) + ground * y) * np.ones((1, w, 1))  # h x w x C
    if cam.panel_period > 0:
        seams = ((x / cam.panel_period + rng.random()) % 1) < 0.15
        bg = bg * np.where(seams & ~below, 0.75, 1.0)
    texture = 1 + cam.texture * (_smooth_noise(rng, h, w) - 0.5)
    return bg * texture[:, :, None] * rng.uniform(0.92, 1.08)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an H x W x C array, edges replicated."""
    if sigma < 0.25:
        return img
    r = math.ceil(2 * sigma)
    k = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    k /= k.sum()
    h, w = img.shape[:2]
    pad = np.pad(img, ((r, r), (0, 0), (0, 0)), mode="edge")
    img = sum(k[i] * pad[i : i + h] for i in range(2 * r + 1))
    pad = np.pad(img, ((0, 0), (r, r), (0, 0)), mode="edge")
    return sum(k[i] * pad[:, i : i + w] for i in range(2 * r + 1))


def render(config: SynthVIConfig, pid: int, cam: int, index: int) -> Rendering:
    """One image of identity pid seen by camera cam (index counts from 1); no file is touched."""
    ident, cm, rng = identity(config, pid), camera(config, cam), _rng(config, _IMAGE, pid, cam, index)
    H, W = config.height, config.width
    h, w = 2 * H, 2 * W  # rendered at twice the size, averaged down for smooth edges

    # Pose and placement. pixel = A @ (x, y - 1) + t: rotation and shear pivot on the feet.
    arms = np.radians(rng.uniform(4, 28, 2))
    legs = np.radians(rng.uniform(-3, 12, 2))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    rot, shear = math.radians(rng.normal(0, 2.5)), cm.shear + rng.normal(0, 0.03)
    size = min(ident.stature * cm.scale * rng.uniform(0.94, 1.06), 0.97)
    room = 1 - size
    foot = 1 - room * rng.uniform(0.15, 0.85)
    centre = 0.5 + rng.uniform(-0.08, 0.08)
    c, s = math.cos(rot), math.sin(rot)
    A = size * h * np.array([[c, -s], [s, c]]) @ np.array([[1, shear], [0, 1]]) @ np.diag([flip, 1.0])
    t = np.array([centre * w, foot * h])

    canvas = Image.new("L", (w, h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for label, poly in _parts(ident, arms, legs):
        draw.polygon([tuple(p) for p in ((poly - [0, 1]) @ A.T + t).tolist()], fill=label)
    labels = np.asarray(canvas)  # h x w

    # Body coordinates of every pixel, for patterns and shading that move with the person.
    px = np.stack(np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5), axis=-1) - t  # h x w x 2
    uv = px @ np.linalg.inv(A).T
    u, v = uv[..., 0], uv[..., 1] + 1
    person = _part_values(ident, cm.infrared)[labels]  # h x w x C
    for label, garment in ((TOP, ident.top), (BOTTOM, ident.bottom)):
        on = labels == label
        person[on] *= (1 - garment.contrast * _pattern(garment, u[on], v[on]))[:, None]
    person *= (1 - 0.2 * np.minimum((u / (0.6 * ident.shoulder_width)) ** 2, 1))[:, :, None]

    bg = _background(cm, rng, h, w)
    img = np.where(labels[:, :, None] > 0, person, bg)
    img = img.reshape(H, 2, W, 2, -1).mean(axis=(1, 3))  # H x W x C
    light = cm.gain * rng.uniform(0.95, 1.05) * np.array(cm.cast)
    img = np.clip(img * light, 0, 1) ** cm.gamma
    img = _blur(img, cm.blur * H / 128)
    img = img + rng.normal(0, cm.noise, img.shape)
    img = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    if cm.infrared:
        img = np.repeat(img, 3, axis=2)
    return Rendering(image=img, parts=labels[::2, ::2].copy())


def _write_identity(root: Path, config: SynthVIConfig, pid: int) -> int:
    """Renders and saves every image of one identity; returns how many."""
    written = 0
    for cam, count in camera_plan(config, pid).items():
        folder = root / f"cam{cam}" / f"{pid:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(1, count + 1):
            image = Image.fromarray(render(config, pid, cam, index).image)
            image.save(folder / f"{index:04d}.jpg", quality=config.jpeg_quality, subsampling=2, optimize=False)
            written += 1
    return written


def _metadata(config: SynthVIConfig) -> dict:
    return {
        "generator": "synthvi",
        "version": GENERATOR_VERSION,
        "config": asdict(config),
        "cameras": {str(cam): asdict(camera(config, cam)) for cam in sorted(VISIBLE_CAMS + INFRARED_CAMS)},
    }


def _write_dataset(
    root: Path, config: SynthVIConfig, progress: Callable[[int, int], None] | None, workers: int
) -> None:
    root.mkdir(parents=True)
    (root / "exp").mkdir()
    splits = split_ids(config)
    for name, ids in splits.items():
        (root / "exp" / f"{name}_id.txt").write_text(",".join(map(str, ids)) + "\n")
    for cam in VISIBLE_CAMS + INFRARED_CAMS:
        (root / f"cam{cam}").mkdir()
    pids = list(range(1, config.n_ids + 1))
    plans = {pid: camera_plan(config, pid) for pid in pids}
    total = sum(sum(plan.values()) for plan in plans.values())
    job = partial(_write_identity, root, config)
    done = 0
    if workers <= 1:
        counts = map(job, pids)
        for n in counts:
            done += n
            if progress is not None:
                progress(done, total)
    else:
        with get_context("spawn").Pool(workers) as pool:
            for n in pool.imap_unordered(job, pids, chunksize=4):
                done += n
                if progress is not None:
                    progress(done, total)
    identities = {str(pid): asdict(identity(config, pid)) for pid in pids}
    (root / "synthvi_identities.json").write_text(json.dumps(identities, indent=1))
    images = {
        kind: sum(n for plan in plans.values() for cam, n in plan.items() if cam in cams)
        for kind, cams in (("visible", VISIBLE_CAMS), ("infrared", INFRARED_CAMS))
    }
    meta = _metadata(config) | {"ids": {k: len(v) for k, v in splits.items()}, "images": images}
    (root / "synthvi.json").write_text(json.dumps(meta, indent=1))  # last: its presence marks a complete set


def _existing(out: Path, config: SynthVIConfig) -> Path:
    """Returns out if it holds SynthVI made with this config; raises, naming the fix, otherwise."""
    meta_path = out / "synthvi.json"
    if not meta_path.is_file():
        raise FileExistsError(
            f"{out} exists but has no synthvi.json, so it is not a SynthVI data set; "
            "remove it or generate into another folder"
        )
    try:
        meta = json.loads(meta_path.read_text())
        theirs = SynthVIConfig.from_dict(meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{meta_path} is unreadable ({err}); remove {out} to regenerate it") from err
    if theirs == config and meta.get("version") == GENERATOR_VERSION:
        return out
    diff = {
        f.name: (getattr(theirs, f.name), getattr(config, f.name))
        for f in fields(SynthVIConfig)
        if getattr(theirs, f.name) != getattr(config, f.name)
    }
    if meta.get("version") != GENERATOR_VERSION:
        diff["generator version"] = (meta.get("version"), GENERATOR_VERSION)
    raise ValueError(
        f"{out} holds SynthVI generated differently (field: (on disk, requested)) {diff}; "
        "remove the folder to regenerate, or generate into another folder"
    )


def generate(
    out: str | Path,
    config: SynthVIConfig = DEFAULT,
    *,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> Path:
    """Writes SynthVI to out and returns out; a folder already holding the same SynthVI is reused.

    The set is written to a sibling out.tmp-<pid> and renamed into place at the end, so an
    interrupted run never leaves a partial data set at out (a killed one may leave the sibling,
    which is safe to delete). The files are identical for any number of `workers`.

    Args:
        out: the dataset root to create.
        config: what to generate.
        progress: called as progress(images_done, images_total) after each identity.
        workers: processes rendering in parallel ("spawn" start method, so a calling script needs
            the `if __name__ == "__main__":` guard).

    Raises:
        ValueError: out holds SynthVI made with another config or generator version.
        FileExistsError: out exists but is not a SynthVI data set.
    """
    out = Path(out)
    if out.exists():
        return _existing(out, config)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left over by a killed run of a process with our pid
    try:
        _write_dataset(tmp, config, progress, workers)
        try:
            tmp.rename(out)
        except OSError:
            if not out.exists():
                raise
            shutil.rmtree(tmp)  # another process finished the same folder first
            return _existing(out, config)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
