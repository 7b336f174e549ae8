"""SynthVI's generative model: the seeded draws of splits, camera plans, identities and cameras.

Every draw comes from a numpy Generator seeded by (seed, purpose, pid, camera, index); the
package docstring (dmdl_dist/data/synthvi/__init__.py) states the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

GENERATOR_VERSION = 3  # bump when a change alters the bytes written, so stale caches are refused
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
SPLIT_STREAM, IDENTITY_STREAM, PRESENCE_STREAM, CAMERA_STREAM, IMAGE_STREAM = range(5)


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
    def bias(self) -> float:
        """The modality bias (`data.synthvi_bias`, `dmdl synth --bias`): the share of infrared heat drawn apart
        from the visible colour."""
        return 1 - self.ir_luminance_weight

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
SIZES = {"default": DEFAULT, "tiny": TINY}


def sized(size: str, *, seed: int | None = None, bias: float | None = None) -> SynthVIConfig:
    """The SynthVI of a size ("default" or "tiny"), with another seed or modality bias where given."""
    config = SIZES[size]
    if seed is not None:
        config = replace(config, seed=seed)
    return config if bias is None else replace(config, ir_luminance_weight=1 - bias)


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
    coat: bool  # the top flares past the hips: a silhouette either modality shows


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


def draws(config: SynthVIConfig, purpose: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, purpose, *keys])


def split_ids(config: SynthVIConfig) -> dict[str, list[int]]:
    """Ids 1..n_ids dealt at random to train, val and test (sorted within each)."""
    order = draws(config, SPLIT_STREAM).permutation(np.arange(1, config.n_ids + 1))
    cuts = np.cumsum([config.n_train, config.n_val])
    parts = np.split(order, cuts)
    return {name: sorted(int(p) for p in part) for name, part in zip(("train", "val", "test"), parts, strict=True)}


def camera_plan(config: SynthVIConfig, pid: int) -> dict[int, int]:
    """Cameras that see this identity -> number of images, at least one camera per modality."""
    rng = draws(config, PRESENCE_STREAM, pid)
    counts = rng.integers(config.images_per_cam[0], config.images_per_cam[1] + 1, size=6)
    plan = {}
    for cams in (VISIBLE_CAMS, INFRARED_CAMS):
        seen = rng.random(len(cams)) < config.camera_presence
        seen[rng.integers(len(cams))] |= not seen.any()
        plan.update({cam: int(counts[cam - 1]) for cam, s in zip(cams, seen, strict=True) if s})
    return dict(sorted(plan.items()))


def luminance(rgb: tuple[int, int, int] | np.ndarray) -> float:
    """Rec. 601 luma of an sRGB triple in 0..255, in [0, 1]."""
    return float((0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255)


def _heat(rng: np.random.Generator, rgb: tuple[int, int, int], weight: float, lo: float, hi: float) -> float:
    """Infrared intensity in [lo, hi]: the colour's luminance with weight `weight`, a private draw with the rest."""
    return float(lo + (hi - lo) * (weight * luminance(rgb) + (1 - weight) * rng.random()))


def _garment(rng: np.random.Generator, colours: tuple[str, ...], weight: float, p_pattern: list[float]) -> Garment:
    colour = colours[rng.integers(len(colours))]
    return Garment(
        colour=colour,
        heat=_heat(rng, PALETTE[colour], weight, 0.3, 0.9),
        pattern=PATTERNS[rng.choice(len(PATTERNS), p=p_pattern)],
        period=float(rng.uniform(0.08, 0.16)),  # 5-10 pixels of a 64-pixel-high person at the demo's 64 x 32
        angle=float(rng.choice([0.0, 45.0, 90.0, 135.0])),
        contrast=float(rng.uniform(0.45, 0.7)),
    )


def _accessory(rng: np.random.Generator, p: float, weight: float) -> Accessory | None:
    colour = tuple(PALETTE)[rng.integers(len(PALETTE))]  # drawn whether present or not: fixed stream
    heat = _heat(rng, PALETTE[colour], weight, 0.1, 0.5)
    side = int(rng.choice([-1, 1]))
    return Accessory(colour, heat, side) if rng.random() < p else None


def identity(config: SynthVIConfig, pid: int) -> Identity:
    """The attributes of one identity; a pure function of (seed, pid)."""
    rng = draws(config, IDENTITY_STREAM, pid)
    w = config.ir_luminance_weight
    return Identity(
        pid=pid,
        stature=float(rng.uniform(0.8, 0.95)),
        head_radius=float(rng.uniform(0.058, 0.072)),
        shoulder_width=float(rng.uniform(0.19, 0.33)),
        hip_width=float(rng.uniform(0.15, 0.26)),
        leg_length=float(rng.uniform(0.43, 0.53)),
        arm_length=float(rng.uniform(0.34, 0.42)),
        long_sleeves=bool(rng.random() < 0.5),
        shorts=bool(rng.random() < 0.3),
        long_hair=bool(rng.random() < 0.35),
        skin_tone=int(rng.integers(len(SKIN_TONES))),
        hair_colour=int(rng.integers(len(HAIR_COLOURS))),
        skin_heat=float(rng.uniform(0.8, 0.95)),
        hair_heat=float(rng.uniform(0.35, 0.5)),
        top=_garment(rng, tuple(PALETTE), w, [0.25, 0.45, 0.3]),
        bottom=_garment(rng, BOTTOM_COLOURS, w, [0.5, 0.3, 0.2]),
        hat=_accessory(rng, 0.3, w),
        bag=_accessory(rng, 0.35, w),
        backpack=_accessory(rng, 0.3, w),
        coat=bool(rng.random() < 0.3),  # drawn last: the earlier draws keep their streams
    )


def camera(config: SynthVIConfig, cam: int) -> Camera:
    """The nuisance parameters of one camera; a pure function of (seed, cam)."""
    rng = draws(config, CAMERA_STREAM, cam)
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
        scale=float(rng.uniform(0.93, 1.0)),
        blur=float(rng.uniform(0.3, 0.7) if infrared else rng.uniform(0.0, 0.4)),
        noise=float(rng.uniform(0.015, 0.03) if infrared else rng.uniform(0.008, 0.02)),
    )  # fmt: skip
