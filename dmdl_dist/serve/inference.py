"""A trained checkpoint as a feature extractor: `dmdl eval` and `dmdl extract`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from dmdl_dist.config import ConfigError, from_dict
from dmdl_dist.data.datasets import DatasetLayoutError, load_manifest
from dmdl_dist.data.manifest import columns, select
from dmdl_dist.distributed.session import local_device
from dmdl_dist.engine import checkpoint as ckpt
from dmdl_dist.engine.extract import extract_features
from dmdl_dist.eval.run import FeatureFn, write_features_parquet
from dmdl_dist.models.backbone import build_model


def load_model(path: str | Path, device: torch.device | None = None):
    """(model in eval mode, its run config) from a dmdl_dist checkpoint (last.pt or best.pt)."""
    saved = ckpt.load(path)
    if "model" not in saved or not isinstance(saved.get("config"), dict):
        raise ckpt.CheckpointError(f"{path} is not a dmdl_dist checkpoint (no 'model'/'config' entries)")
    try:
        cfg = from_dict(saved["config"])
    except ConfigError as err:
        raise ckpt.CheckpointError(f"checkpoint {path} holds a config this version cannot use: {err}") from None
    device = device or local_device(cfg.train.device)
    # The weights come from the checkpoint: never look for ImageNet weights here.
    model = build_model(cfg.model.arch, pretrained=None, last_stride=cfg.model.last_stride,
                        non_local=cfg.model.non_local, gem_p=cfg.model.gem_p)
    expected = f"the one its config builds (model.arch={cfg.model.arch}, model.non_local={cfg.model.non_local})"
    ckpt.load_weights(model, saved, Path(path), expected)
    return model.to(device).eval(), cfg


def checkpoint_feature_fn(path: str | Path, root: str | Path, *, progress: bool = True) -> FeatureFn:
    model, cfg = load_model(path)
    device = next(model.parameters()).device

    def features(manifest: pa.Table) -> np.ndarray:
        return extract_features(
            model, root, list(columns(manifest)["path"]), height=cfg.data.height, width=cfg.data.width,
            device=device, batch_size=cfg.train.eval_batch_size, workers=cfg.data.loader_workers, flip=True,
            desc="extract" if progress else None,
        )

    return features


def extract_to_parquet(path: str | Path, dataset: str, root: str | Path, split: str, out: str | Path) -> int:
    manifest = load_manifest(dataset, root)
    if split != "all":
        manifest = select(manifest, split=split)
    if manifest.num_rows == 0:
        raise DatasetLayoutError(f"{root} holds no images of split {split!r} of {dataset}; nothing to extract", root)
    feats = checkpoint_feature_fn(path, root)(manifest)
    write_features_parquet(out, list(columns(manifest)["path"]), feats)
    return manifest.num_rows
