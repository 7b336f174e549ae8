"""SynthVI's renderer: one identity seen by one camera, drawn as polygons in body coordinates."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from dmdl_dist.data.synthvi.model import (
    BACKGROUND,
    BACKPACK,
    BAG,
    BOTTOM,
    HAIR,
    HAIR_COLOURS,
    HAT,
    IMAGE_STREAM,
    PALETTE,
    SHOE_HEAT,
    SHOE_RGB,
    SHOES,
    SKIN,
    SKIN_TONES,
    TOP,
    Camera,
    Garment,
    Identity,
    SynthVIConfig,
    camera,
    draws,
    identity,
    luminance,
)


class Rendering(NamedTuple):
    image: np.ndarray  # H x W x 3 uint8 (infrared: R == G == B)
    parts: np.ndarray  # H x W uint8 part labels, the same geometry in either modality


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
    aw, lw = 0.27 * sw, 0.5 * hw  # arm and leg widths
    parts = []
    if ident.backpack:
        parts.append((BACKPACK, _rect(-sw / 2 - 0.06, sy - 0.03, sw / 2 + 0.06, hy - 0.02)))
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
    if ident.coat:
        hem = hy + 0.17
        parts.append((TOP, np.array([[-hw / 2, hy - 0.01], [hw / 2, hy - 0.01], [0.7 * hw, hem], [-0.7 * hw, hem]])))
    if ident.backpack:
        parts += [(BACKPACK, _rect(s * sw / 4 - 0.012, sy, s * sw / 4 + 0.012, sy + 0.16)) for s in (-1, 1)]
    if ident.long_hair:
        parts.append((HAIR, _rect(-1.15 * hr, hr, 1.15 * hr, sy + 0.14)))
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
        bag_top = np.array([s * (hw / 2 + 0.035), hy - 0.05])
        parts.append((BAG, _limb(np.array([-s * sw / 3, sy]), bag_top, 0.022, 0.022)))
        parts.append((BAG, _rect(bag_top[0] - 0.06, hy - 0.05, bag_top[0] + 0.06, hy + 0.07)))
    parts.append((SKIN, _ellipse(0.0, hr, 0.82 * hr, hr)))  # face
    if ident.hat:
        parts += [
            (HAT, _rect(-0.85 * hr, -0.06, 0.85 * hr, 0.6 * hr)),
            (HAT, _rect(-1.5 * hr, 0.45 * hr, 1.5 * hr, 0.7 * hr)),
        ]
    else:
        parts.append((HAIR, _ellipse(0.0, 0.95 * hr, 0.9 * hr, 1.02 * hr, math.pi, 2 * math.pi)))
    return parts


def _part_values(ident: Identity, infrared: bool, saturation: float) -> np.ndarray:
    """Per-label intensity table: 9 x 1 heats for infrared, 9 x 3 colours in [0, 1] for visible.

    Visible clothing and accessories keep `saturation` of their colour's distance from grey: a
    weaker modality bias makes colour a weaker cue as well as heat a closer follower of it."""
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
            if item:
                rgb = np.array(PALETTE[item.colour]) / 255
                grey = luminance(PALETTE[item.colour])
                table[label] = grey + saturation * (rgb - grey)
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
    ident, cm, rng = identity(config, pid), camera(config, cam), draws(config, IMAGE_STREAM, pid, cam, index)
    H, W = config.height, config.width
    h, w = 2 * H, 2 * W  # rendered at twice the size, averaged down for smooth edges

    # Pose and placement. pixel = A @ (x, y - 1) + t: rotation and shear pivot on the feet.
    arms = np.radians(rng.uniform(4, 28, 2))
    legs = np.radians(rng.uniform(-3, 12, 2))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    rot, shear = math.radians(rng.normal(0, 2.5)), cm.shear + rng.normal(0, 0.03)
    size = min(ident.stature * cm.scale * rng.uniform(0.97, 1.03), 0.97)
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
    person = _part_values(ident, cm.infrared, 0.3 + 0.7 * config.bias)[labels]  # h x w x C
    for label, garment in ((TOP, ident.top), (BOTTOM, ident.bottom)):
        on = labels == label
        if on.any():  # the pattern pulls a light garment towards black and a dark one towards white
            base = person[on]
            towards = 0.0 if base.mean() > 0.45 else 1.0
            person[on] = base + (garment.contrast * _pattern(garment, u[on], v[on]))[:, None] * (towards - base)
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
