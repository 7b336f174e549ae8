"""What a training run reads: the manifest split into per-modality training lists, val and test."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from dmdl_dist.config import Config
from dmdl_dist.data.datasets import load_manifest
from dmdl_dist.data.images import verify_images
from dmdl_dist.data.manifest import INFRARED, VISIBLE, columns, select

log = logging.getLogger("dmdl_dist")


def cache_dir() -> Path:
    """Where generated data (SynthVI) lives: $DMDL_CACHE, else ~/.cache/dmdl_dist."""
    return Path(os.environ.get("DMDL_CACHE", Path.home() / ".cache" / "dmdl_dist"))


def dataset_root(cfg: Config) -> Path:
    """The configured root; for SynthVI without one, the generated copy (made on first use)."""
    if cfg.data.root is not None:
        return Path(cfg.data.root).expanduser()
    if cfg.data.dataset != "synthvi":
        raise ValueError(f"data.dataset={cfg.data.dataset} needs data.root")
    from dmdl_dist.data.synthvi import DEFAULT, TINY, generate

    size = {"default": DEFAULT, "tiny": TINY}[cfg.data.synthvi_size]
    out = cache_dir() / f"synthvi-{cfg.data.synthvi_size}"
    if out.exists():
        return generate(out, size)
    with tqdm(desc=f"generating SynthVI ({cfg.data.synthvi_size}) in {out}", unit="img", leave=False) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return generate(out, size, progress=progress, workers=min(4, os.cpu_count() or 1))


@dataclass
class RunData:
    root: Path
    manifest: pa.Table
    train_paths: list[list[str]]  # per modality
    train_pids: list[np.ndarray]  # per modality (the true ids: only the supervised ceiling reads them)
    train_camids: list[np.ndarray]  # per modality (camera-aware sampling)
    val: pa.Table | None  # held-out training ids, relabelled as a test split for the protocols
    test: pa.Table


def load_run_data(cfg: Config) -> RunData:
    root = dataset_root(cfg)
    manifest = load_manifest(cfg.data.dataset, root, trial=cfg.data.trial, holdout_val=cfg.data.holdout_val)
    manifest = verify_images(root, manifest, skip_bad=cfg.data.skip_bad_images)
    train = select(manifest, split="train")
    paths, pids, camids = [], [], []
    for m in (VISIBLE, INFRARED):
        cols = columns(select(train, modality=m))
        if len(cols["path"]) == 0:
            raise ValueError(f"{root} has no training images of modality {m}; check the data set layout")
        paths.append(list(cols["path"]))
        pids.append(cols["pid"])
        camids.append(cols["camid"])
    val = select(manifest, split="val")
    if val.num_rows:
        val = val.set_column(val.schema.get_field_index("split"), "split", pa.array(["test"] * val.num_rows))
    else:
        val = None
    return RunData(root, manifest, paths, pids, camids, val, select(manifest, split="test"))
