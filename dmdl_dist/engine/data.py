"""What a training run reads: the manifest split into per-modality training lists, val and test."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from dmdl_dist.config import Config, ConfigError
from dmdl_dist.data.datasets import DatasetLayoutError, load_manifest, require_training_part
from dmdl_dist.data.image_cache import BYTES_PER_MB, ResizedImages, cache_bytes
from dmdl_dist.data.images import check_images
from dmdl_dist.data.manifest import INFRARED, MODALITY_NAMES, VISIBLE, columns, select
from dmdl_dist.distributed import comm
from dmdl_dist.engine.atomic import write_text

log = logging.getLogger("dmdl_dist")
BAD_IMAGES = "bad_images.txt"  # in the run folder: the images data.skip_bad_images left out
_SHOWN = 5  # left-out images the warning names


def cache_dir() -> Path:
    """Where generated data (SynthVI) lives: $DMDL_CACHE, else ~/.cache/dmdl_dist."""
    return Path(os.environ.get("DMDL_CACHE", Path.home() / ".cache" / "dmdl_dist"))


def synthvi_folder(cfg: Config) -> str:
    """The cache folder's name of the SynthVI a config asks for: size, the bias when not the default, and the
    generator's version, so that a newer generator writes a new folder instead of meeting a stale one."""
    from dmdl_dist.data.synthvi import GENERATOR_VERSION

    bias = "" if cfg.data.synthvi_bias is None else f"-bias{cfg.data.synthvi_bias:g}"
    return f"synthvi-{cfg.data.synthvi_size}{bias}-v{GENERATOR_VERSION}"


def dataset_root(cfg: Config) -> Path:
    """The configured root; for SynthVI without one, the generated copy (made on first use)."""
    if cfg.data.root is not None:
        return Path(cfg.data.root).expanduser()
    if cfg.data.dataset != "synthvi":
        raise ConfigError(f"data.dataset={cfg.data.dataset} needs data.root=/path/to/{cfg.data.dataset}")
    from dmdl_dist.data.synthvi import generate, sized

    out = cache_dir() / synthvi_folder(cfg)
    size = sized(cfg.data.synthvi_size, bias=cfg.data.synthvi_bias)
    if out.exists():
        return generate(out, size)
    with tqdm(desc=f"generating SynthVI ({out.name}) in {out.parent}", unit="img", leave=False) as bar:

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
    train_images: list[ResizedImages | None] | None = None  # per modality, when data.cache_mb allows (cache_images)

    def train_cache(self, m: int) -> ResizedImages | None:
        return None if self.train_images is None else self.train_images[m]


def cache_images(cfg: Config, data: RunData, *, progress: bool = False) -> bool:
    """Decodes and resizes the training images into memory when they fit data.cache_mb; True when it did."""
    count = sum(len(p) for p in data.train_paths)
    need = cache_bytes(count, cfg.data.height, cfg.data.width)
    if need > cfg.data.cache_mb * BYTES_PER_MB:
        if cfg.data.cache_mb > 0:
            log.info(f"training images read from disk: {count} images take {need / BYTES_PER_MB:.0f} MiB at "
                     f"{cfg.data.height} x {cfg.data.width}, over data.cache_mb={cfg.data.cache_mb}")
        return False
    with tqdm(total=count, desc="cache images", unit="img", disable=not progress, leave=False) as bar:
        data.train_images = [ResizedImages.load(data.root, p, cfg.data.height, cfg.data.width, progress=bar.update)
                             for p in data.train_paths]
    return True


def load_run_data(cfg: Config, run_dir: str | Path | None = None) -> RunData:
    """The run's data, every image opened once first; with data.skip_bad_images the unreadable ones are
    left out, named in a warning and listed in RUN_DIR/bad_images.txt (when run_dir is given)."""
    root = dataset_root(cfg)
    manifest = load_manifest(cfg.data.dataset, root, trial=cfg.data.trial, holdout_val=cfg.data.holdout_val)
    require_training_part(cfg.data.dataset, root, manifest)
    manifest, bad = check_images(root, manifest, skip_bad=cfg.data.skip_bad_images)
    if bad and comm.is_main():
        report_skipped(bad, manifest.num_rows + len(bad), root, run_dir)
    train = select(manifest, split="train")
    paths, pids, camids = [], [], []
    for m in (VISIBLE, INFRARED):
        cols = columns(select(train, modality=m))
        if len(cols["path"]) == 0:
            raise DatasetLayoutError(f"{root} has no readable training images of the {MODALITY_NAMES[m]} modality; "
                                     "check the data set layout", root)
        paths.append(list(cols["path"]))
        pids.append(cols["pid"])
        camids.append(cols["camid"])
    val = select(manifest, split="val")
    if val.num_rows:
        val = val.set_column(val.schema.get_field_index("split"), "split", pa.array(["test"] * val.num_rows))
    else:
        val = None
    return RunData(root, manifest, paths, pids, camids, val, select(manifest, split="test"))


def report_skipped(bad: list[tuple[str, str]], total: int, root: Path, run_dir: str | Path | None) -> Path | None:
    """Warns how many images were left out and which (the first few), and lists them all in the run folder."""
    listed = None
    if run_dir is not None:
        listed = write_text(Path(run_dir) / BAD_IMAGES, "".join(f"{path}\t{reason}\n" for path, reason in bad))
    shown = ", ".join(path for path, _ in bad[:_SHOWN]) + (", ..." if len(bad) > _SHOWN else "")
    where = f"; all {len(bad)} with the reason in {listed}" if listed else ""
    log.warning(f"data.skip_bad_images=true: left out {len(bad)} of {total} images under {root} that cannot be "
                f"read ({shown}){where}")
    return listed
