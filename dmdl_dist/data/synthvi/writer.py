"""SynthVI's writer: every image of every identity into SYSU-MM01's layout, atomically, reusing a complete set."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, fields
from functools import partial
from multiprocessing import get_context
from pathlib import Path

from PIL import Image

from dmdl_dist.data.synthvi.model import (
    DEFAULT,
    GENERATOR_VERSION,
    INFRARED_CAMS,
    VISIBLE_CAMS,
    SynthVIConfig,
    camera,
    camera_plan,
    identity,
    split_ids,
)
from dmdl_dist.data.synthvi.render import render


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
