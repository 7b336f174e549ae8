"""Small data set trees and checkpoints for the trust tests (tests/test_trust*.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dmdl_dist.config import load_config, to_dict
from dmdl_dist.engine.checkpoint import save_atomic
from dmdl_dist.models.backbone import build_model


def write_image(path: Path, seed: int) -> None:
    """A 16 x 8 image of random colour blocks: different seeds give clearly different images."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = np.random.default_rng(seed).integers(0, 256, size=(4, 2, 3), dtype=np.uint8)
    Image.fromarray(blocks.repeat(4, axis=0).repeat(4, axis=1)).save(path)


def make_sysu(root: Path, *, training: bool = True) -> Path:
    """SYSU-MM01 layout: ids 1, 2 train, 3 val (training part), 4, 5 test; 2 images per id and camera."""
    (root / "exp").mkdir(parents=True)
    (root / "exp" / "test_id.txt").write_text("4,5\n")
    pids = (4, 5)
    if training:
        (root / "exp" / "train_id.txt").write_text("1,2\n")
        (root / "exp" / "val_id.txt").write_text("3\n")
        pids = (1, 2, 3, 4, 5)
    seed = 0
    for cam in range(1, 7):
        for pid in pids:
            for k in (1, 2):
                seed += 1
                write_image(root / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.jpg", seed)
    return root


def make_llcm_test_only(root: Path) -> Path:
    """LLCM layout without its training part: test ids 5 and 6 in two visible and two infrared cameras."""
    seed = 100
    for folder, cams in (("test_vis", (1, 2)), ("test_nir", (4, 5))):
        for cam in cams:
            for pid in (5, 6):
                for k in (1, 2):
                    seed += 1
                    write_image(root / folder / f"cam{cam}" / f"{pid:04d}" / f"{k}.jpg", seed)
    (root / "idx").mkdir(parents=True)
    (root / "idx" / "test_id.txt").write_text("5,6")
    return root


def save_checkpoint(path: Path, *, non_local: bool = False, config_overrides: list[str] | None = None) -> Path:
    """A trainer-shaped checkpoint of the small network (random weights) with the tiny preset's config."""
    torch.manual_seed(0)
    model = build_model("small", non_local=non_local)
    cfg = load_config("tiny", overrides=config_overrides or [])
    save_atomic({"model": model.state_dict(), "config": to_dict(cfg), "epoch": 1}, path)
    return path


class CodeOnLoad:
    """Pickles as a call of os.system: loading a file that holds it with weights_only=False runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def save_malicious(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped .pt whose config would create `marker` when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "config": CodeOnLoad(f"touch {marker}"), "state": {}}, path)
    return path
