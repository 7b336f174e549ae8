"""The memories in a checkpoint: each rank writes the shards it holds, any number of ranks reads them back.

DMDL rebuilds every memory from fresh features at the next epoch's refresh, so resuming a run
does not need them; they are kept with each epoch's checkpoint for inspection and for tools
that score features against the learnt centroids.
"""

from __future__ import annotations

from pathlib import Path

from dmdl_dist.distributed import comm
from dmdl_dist.engine.checkpoint import load, save_atomic
from dmdl_dist.memory.cluster_memory import ClusterMemory
from dmdl_dist.memory.sharded import ShardedClusterMemory, reshard

NAMES = ("visible", "infrared", "unified")


def _shard_state(mem: ClusterMemory | ShardedClusterMemory) -> dict:
    if isinstance(mem, ShardedClusterMemory):
        return mem.state_dict()
    return {"shard": mem.centroids.cpu(), "start": 0, "num_clusters": mem.num_clusters, "labels": mem.labels.cpu(),
            "temperature": mem.temperature, "momentum": mem.momentum}


def save_memory_shards(memories, folder: Path) -> None:
    """Writes folder/memory_rank<r>.pt: this rank's shard of every memory (rank 0 only when unsharded)."""
    mems = dict(zip(NAMES, [*memories.own, memories.unified], strict=True))
    sharded = any(isinstance(m, ShardedClusterMemory) for m in mems.values())
    if not sharded and not comm.is_main():
        return
    states = {name: _shard_state(m) for name, m in mems.items() if m is not None}
    save_atomic(states, Path(folder) / f"memory_rank{comm.rank()}.pt")


def load_memory_shards(folder: Path, rank: int, world: int) -> dict[str, ShardedClusterMemory]:
    """Rank `rank` of `world`'s shard of each memory saved in folder, whatever the world size that saved it."""
    files = sorted(Path(folder).glob("memory_rank*.pt"))
    if not files:
        raise FileNotFoundError(f"no memory_rank*.pt in {folder}")
    saved = [load(f, map_location="cpu") for f in files]  # tensors and plain values only (weights_only)
    names = [n for n in NAMES if n in saved[0]]
    return {n: reshard([s[n] for s in saved], rank, world) for n in names}
