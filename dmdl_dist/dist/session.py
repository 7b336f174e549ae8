"""Where a worker's run state goes: the run folder in local mode, Ray Train's checkpoints under Ray.

The trainer talks to a Session only, so the per-worker function is the same in both modes:
every rank calls `save_epoch` once per epoch (Ray's report is a barrier), rank 0 writes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from dmdl_dist.dist import comm
from dmdl_dist.engine import checkpoint as ckpt


class LocalSession:
    """World size 1 (or a hand-made process group): checkpoints are files in the run folder."""

    def __init__(self, run_dir: str | Path, *, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.resume = resume

    def device(self, name: str) -> torch.device:
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if name == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
        return torch.device(name)

    def load(self, map_location) -> dict | None:
        last = self.run_dir / ckpt.LAST
        return ckpt.load(last, map_location=map_location) if self.resume and last.is_file() else None

    def save_epoch(self, payload: dict, record: dict) -> None:
        if comm.is_main():
            ckpt.save_atomic(payload, self.run_dir / ckpt.LAST)
            append_record(self.run_dir, record)
        comm.barrier()


class RaySession(LocalSession):
    """Ray Train: each epoch's state is reported as a Ray checkpoint; resume comes from Ray's latest."""

    def device(self, name: str) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device() if name != "cpu" else torch.device("cpu")

    def load(self, map_location) -> dict | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return ckpt.load(Path(folder) / ckpt.LAST, map_location=map_location)

    def save_epoch(self, payload: dict, record: dict) -> None:
        import ray.train

        metrics = flat_metrics(record)
        if comm.is_main():
            append_record(self.run_dir, record)
            with tempfile.TemporaryDirectory() as folder:
                ckpt.save_atomic(payload, Path(folder) / ckpt.LAST)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics, checkpoint=None)


def append_record(run_dir: Path, record: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def flat_metrics(record: dict) -> dict:
    """Scalars only, dotted keys: what Ray and Tune compare and store."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flat_metrics(value).items()})
        elif isinstance(value, (int, float)):
            out[key] = value
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            out.update({f"{key}.{i}": v for i, v in enumerate(value)})
    return out
