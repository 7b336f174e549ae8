"""Where a worker's run state goes: the run folder in local mode, Ray Train's checkpoints under Ray.

The trainer talks to a Session only, so the per-worker function is the same in both modes:
every rank calls `save_epoch` once per epoch (Ray's report is a barrier), rank 0 writes.
A resumed run rewrites metrics.jsonl from the checkpoint it resumes from, so the file holds one
record per epoch of that checkpoint's history and never a duplicate of an epoch trained again.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from dmdl_dist.distributed import comm
from dmdl_dist.engine import checkpoint as ckpt
from dmdl_dist.engine.atomic import write_text

log = logging.getLogger("dmdl_dist")

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
        payload = ckpt.load(last, map_location=map_location)
        if comm.is_main():
            rewrite_records(self.run_dir, payload["state"]["history"])
        return payload, self.run_dir / RANK_FILES

    def save_epoch(self, payload: dict, record: dict, rank_files: RankWriter | None = None) -> None:
        """Rank 0 writes the payload and the record; every rank writes its own files (e.g. ZeRO partitions)."""
        if rank_files is not None:
            rank_files(self.run_dir / RANK_FILES)
        if comm.is_main():
            ckpt.save_atomic(payload, self.run_dir / ckpt.LAST)
            append_record(self.run_dir, record)
        comm.barrier()


class RaySession(LocalSession):
    """Ray Train: each epoch's state is reported as a Ray checkpoint and kept in the run folder too.

    Resume takes the newer of Ray's latest checkpoint and the run folder's last.pt (rank 0 writes
    it before each report): a worker killed right after a report can beat Ray's registration of
    that checkpoint, and a run resumed with `dmdl train --resume` after such a death finds Ray one
    epoch behind. The run folder's copy counts where rank 0 sees it (on several nodes: a shared
    run folder); it has no per-rank files, so a ZeRO optimizer restarts when it is the newer one.
    """

    def __init__(self, run_dir: str | Path):
        super().__init__(run_dir, resume=False)

    def device(self, name: str) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device() if name != "cpu" else torch.device("cpu")

    def load(self, map_location) -> tuple[dict, Path] | tuple[None, None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        payload, files = None, None
        if checkpoint is not None:
            folder = _private_copy(checkpoint)
            payload, files = ckpt.load(folder / ckpt.LAST, map_location=map_location), folder / RANK_FILES
        own = self._own_copy() if comm.is_main() else None
        if comm.broadcast_object(own is not None and epoch_of(own) > epoch_of(payload)):
            # loaded on the CPU: the payload is pickled to every rank, whose device may differ from rank 0's
            payload, files = comm.broadcast_object(own), None
            if comm.is_main():
                log.info("resuming from %s (epoch %d): newer than Ray's latest checkpoint",
                         self.run_dir / ckpt.LAST, epoch_of(payload))
        if payload is not None and comm.is_main():
            rewrite_records(self.run_dir, payload["state"]["history"])
        return payload, files

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
                ckpt.save_atomic(payload, own_copy)
                shutil.copyfile(own_copy, Path(folder) / ckpt.LAST)
            has_files = any(Path(folder).iterdir())
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if has_files else None)
        if comm.is_main():
            append_record(self.run_dir, record)

    def _own_copy(self) -> dict | None:
        last = self.run_dir / ckpt.LAST
        if not last.is_file():
            return None
        try:
            return ckpt.load(last, map_location="cpu")
        except ckpt.CheckpointError as err:  # written atomically, so only a foreign file gets here
            log.warning("ignoring %s: %s", last, err)
            return None


def _private_copy(checkpoint) -> Path:
    """This process's own local copy of a Ray checkpoint, removed when the process exits.

    It outlives the call because DeepSpeed reads its ZeRO partitions later. Ray's default
    `to_directory()` folder is shared by every process of a node and re-downloaded by whichever
    takes its lock last, so a rank could read last.pt while another rank rewrote it.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"dmdl-resume-rank{comm.rank()}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(checkpoint.to_directory(str(folder)))


def epoch_of(payload: dict | None) -> int:
    """Epochs a checkpoint payload has trained (-1 for no payload)."""
    return -1 if payload is None else int(payload["state"]["epoch"])


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


def rewrite_records(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl as the resumed checkpoint's history: drops records of epochs it did not keep (they
    are trained again) and restores any it kept but the file lost (a kill between checkpoint and record)."""
    write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


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
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            out[key] = "; ".join(value)  # words for the driver's console (a degenerate clustering's problems)
    return out
