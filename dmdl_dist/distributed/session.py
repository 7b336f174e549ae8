"""Where a worker's run state goes: the run folder in local mode, Ray Train's checkpoints under Ray.

The trainer talks to a Session only, so the per-worker function is the same in both modes:
every rank calls `save_epoch` once per epoch (Ray's report is a barrier), rank 0 writes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from dmdl_dist.distributed import comm
from dmdl_dist.engine import checkpoint as ckpt

RANK_FILES = "ranks"  # checkpoint sub-folder of the files every rank writes itself
RankWriter = Callable[[Path], None]


class LocalSession:
    """World size 1 (or a hand-made process group): checkpoints are files in the run folder."""

    def __init__(self, run_dir: str | Path, *, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.resume = resume

    def device(self, name: str) -> torch.device:
        return local_device(name)

    def load(self, map_location) -> tuple[dict, Path] | tuple[None, None]:
        """(saved payload, the folder holding the checkpoint's other files), or (None, None) for a new run."""
        last = self.run_dir / ckpt.LAST
        if not (self.resume and last.is_file()):
            return None, None
        return ckpt.load(last, map_location=map_location), self.run_dir / RANK_FILES

    def save_epoch(self, payload: dict, record: dict, rank_files: RankWriter | None = None) -> None:
        """Rank 0 writes the payload and the record; every rank writes its own files (e.g. ZeRO partitions)."""
        if rank_files is not None:
            rank_files(self.run_dir / RANK_FILES)
        if comm.is_main():
            ckpt.save_atomic(payload, self.run_dir / ckpt.LAST)
            append_record(self.run_dir, record)
        comm.barrier()


class RaySession(LocalSession):
    """Ray Train: each epoch's state is reported as a Ray checkpoint; resume comes from Ray's latest.

    Rank 0 also keeps the latest payload in the run folder, stamped with the launch id: a worker
    killed right after a report can beat Ray's registration of that checkpoint, and the restarted
    group then finds no Ray checkpoint; it resumes from the run folder's copy when that copy
    belongs to this launch (and is visible to rank 0: on several nodes, a shared run folder).
    """

    def __init__(self, run_dir: str | Path, *, launch_id: str = ""):
        super().__init__(run_dir, resume=False)
        self.launch_id = launch_id

    def device(self, name: str) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device() if name != "cpu" else torch.device("cpu")

    def load(self, map_location) -> tuple[dict, Path] | tuple[None, None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            # loaded on the CPU: the payload is pickled to every rank, whose device may differ from rank 0's
            return comm.broadcast_object(self._own_copy() if comm.is_main() else None), None
        folder = Path(checkpoint.to_directory())  # a local copy that outlives this call (DeepSpeed reads it later)
        return ckpt.load(folder / ckpt.LAST, map_location=map_location), folder / RANK_FILES

    def save_epoch(self, payload: dict, record: dict, rank_files: RankWriter | None = None) -> None:
        """Every rank reports once (a barrier); Ray merges the ranks' checkpoint folders into one.

        The checkpoint is reported before the run folder's metrics line is written, so a record
        in metrics.jsonl always has its checkpoint registered.
        """
        import ray.train

        metrics = flat_metrics(record)
        own_copy = self.run_dir / ckpt.LAST
        with tempfile.TemporaryDirectory() as folder:
            if rank_files is not None:
                rank_files(Path(folder) / RANK_FILES)
            if comm.is_main():  # serialised once: the run folder's copy, then copied into Ray's checkpoint
                ckpt.save_atomic({**payload, "launch_id": self.launch_id}, own_copy)
                shutil.copyfile(own_copy, Path(folder) / ckpt.LAST)
            has_files = any(Path(folder).iterdir())
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if has_files else None)
        if comm.is_main():
            append_record(self.run_dir, record)

    def _own_copy(self) -> dict | None:
        last = self.run_dir / ckpt.LAST
        if not (self.launch_id and last.is_file()):
            return None
        payload = ckpt.load(last, map_location="cpu")
        return payload if payload.get("launch_id") == self.launch_id else None


def local_device(name: str) -> torch.device:
    """train.device (auto | cpu | cuda) in a process that Ray did not place."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    return torch.device(name)


def append_record(run_dir: Path, record: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def flat_metrics(record: dict) -> dict:
    """Scalars only, dotted keys: what Ray and Tune compare and store."""
    out = {}
    for key, value in record.items():
        if key == "step_losses":  # per-step values stay in metrics.jsonl
            continue
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flat_metrics(value).items()})
        elif isinstance(value, (int, float)):
            out[key] = value
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            out.update({f"{key}.{i}": v for i, v in enumerate(value)})
    return out
