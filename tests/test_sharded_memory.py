"""The sharded (PartialFC) memory: the same losses, gradients and updates as the whole memory."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from dmdl_dist.engine.step import Batch, Memories, StepSettings, train_step, update_memories
from dmdl_dist.memory import ClusterMemory, ShardedClusterMemory, reshard

U, D, B = 7, 16, 12  # shared labels, feature size, images per modality in the global batch
PIDS = (torch.tensor([0, 1, 2, 4, 5, 6]), torch.arange(U))  # rows of the visible / infrared memories


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Toy(nn.Module):
    """A linear 'network' on tiny images: enough for gradients to reach parameters."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 4 * 4, D)

    def forward(self, x):
        f = self.lin(x.flatten(1))
        return f, f


def _problem(stage: int, seed: int = 0):
    """Full memories and the global batch of both modalities, all from one seed (infrared is the anchor)."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda n: F.normalize(torch.randn(n, D, generator=g), dim=1)  # noqa: E731
    mems = {"vis": unit(len(PIDS[0])), "ir": unit(U), "uni": unit(U)}
    data = []
    for pids in PIDS:
        data.append({"views": [torch.randn(B, 3, 4, 4, generator=g) for _ in range(2)],
                     "labels": pids[torch.randint(0, len(pids), (B,), generator=g)],
                     "confidence": torch.rand(B, generator=g)})
    if stage == 1:
        for d, n in zip(data, (len(PIDS[0]), U), strict=True):
            d["labels"] = torch.randint(0, n, (B,), generator=g)
    return mems, data


def _memories(mems, stage: int, sharded: bool, rank: int, world: int) -> Memories:
    def make(t, labels=None):
        if sharded:
            return ShardedClusterMemory.from_full(t, labels=labels, rank=rank, world=world)
        return ClusterMemory(t, labels=labels)

    if stage == 1:
        return Memories(own=[make(mems["vis"]), make(mems["ir"])])
    return Memories(own=[make(mems["vis"], PIDS[0]), make(mems["ir"], PIDS[1])], unified=make(mems["uni"]),
                    prior=torch.tensor([0.6, 0.4]), anchor=1)


def _step(rank: int, world: int, sharded: bool, stage: int, soft: bool):
    mems, data = _problem(stage)
    torch.manual_seed(1)
    model = Toy()
    rows = slice(rank * B // world, (rank + 1) * B // world)  # this rank's share of the global batch
    batches = [Batch(views=[v[rows] for v in d["views"]], labels=d["labels"][rows], confidence=d["confidence"][rows])
               for d in data]
    memories = _memories(mems, stage, sharded, rank, world)
    settings = StepSettings(stage=stage, triplet_weight=1.0, joint=stage == 2, soft_targets=soft, topk=3,
                            cai_weight=0.5 if stage == 2 else 0.0)
    losses, feats = train_step(model, batches, memories, settings)
    sum(losses.values()).backward()
    update_memories(memories, batches, feats, stage=stage)
    out = {f"loss_{k}": v.detach().numpy() for k, v in losses.items()}
    out.update({f"grad_{n}": p.grad.numpy() for n, p in model.named_parameters()})
    names = ("vis", "ir") + (("uni",) if stage == 2 else ())
    for name, mem in zip(names, [*memories.own, memories.unified], strict=False):
        out[f"mem_{name}"] = (mem.full() if sharded else mem.centroids).numpy()
    if sharded:
        out["shard_rows"] = np.array(memories.own[1].shard.shape[0])
    return out


def _worker(rank: int, world: int, port: int, out: str, stage: int, soft: bool) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for sharded in (False, True):
            np.savez(os.path.join(out, f"r{rank}_{sharded}.npz"), **_step(rank, world, sharded, stage, soft))
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.parametrize("stage, soft", [(1, True), (2, True), (2, False)])
def test_sharded_memory_matches_whole_memory_and_two_ranks_match_one(tmp_path, stage, soft):
    """Two ranks, each half of the global batch: sharded = whole memory, and both = one process on the whole batch.

    Per rank, the sharded memory gives the same losses, gradients and updated memories as the whole
    one; averaged over the ranks (what DDP does), the gradients and the per-row losses equal those of
    one process holding the whole global batch, and the batch-wide losses (triplet, MMD) are equal.
    """
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), stage, soft), nprocs=2, join=True)
    ranks = [np.load(tmp_path / f"r{rank}_False.npz") for rank in (0, 1)]
    for rank in (0, 1):
        shard = np.load(tmp_path / f"r{rank}_True.npz")
        assert {"loss_memory", "loss_triplet", "loss_mmd", "grad_lin.weight"} <= set(ranks[rank].files)
        assert stage == 1 or "loss_cai" in ranks[rank].files
        for key in ranks[rank].files:
            assert np.allclose(ranks[rank][key], shard[key], atol=1e-5, rtol=1e-5), (rank, key)
        assert int(shard["shard_rows"]) == (4 if rank == 0 else 3)  # 7 rows: C / N per rank
    one = _step(0, 1, False, stage, soft)
    for key in one:
        mean = (ranks[0][key] + ranks[1][key]) / 2
        assert np.allclose(mean, one[key], atol=1e-5, rtol=1e-4), key
    assert not np.allclose(ranks[0]["loss_memory"], ranks[1]["loss_memory"])  # each rank's own rows


def test_sharded_memory_on_one_process_equals_whole_memory():
    for stage in (1, 2):
        whole = _step(0, 1, False, stage, True)
        shard = _step(0, 1, True, stage, True)
        for key in whole:
            assert np.allclose(whole[key], shard[key], atol=1e-6), (stage, key)


def test_shards_reload_onto_a_different_number_of_workers():
    full = torch.nn.functional.normalize(torch.randn(10, D), dim=1)
    saved = [ShardedClusterMemory.from_full(full, rank=r, world=3).state_dict() for r in range(3)]
    assert [s["shard"].shape[0] for s in saved] == [4, 3, 3]
    for world in (1, 2, 4):
        parts = [reshard(saved, r, world) for r in range(world)]
        assert torch.allclose(torch.cat([p.shard for p in parts]), full, atol=1e-6)
        assert [p.start for p in parts] == [sum(q.shard.shape[0] for q in parts[:r]) for r in range(world)]
    with pytest.raises(ValueError, match="missing"):
        reshard(saved[:2], 0, 1)


def test_sharded_update_only_touches_its_own_range():
    full = torch.nn.functional.normalize(torch.randn(6, D), dim=1)
    feats = torch.nn.functional.normalize(torch.randn(8, D), dim=1)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, -1, 5])
    whole = ClusterMemory(full)
    whole.update(feats, labels)
    parts = [ShardedClusterMemory.from_full(full, rank=r, world=2) for r in range(2)]
    for p in parts:
        p.update(feats, labels)
    assert torch.allclose(torch.cat([p.shard for p in parts]), whole.centroids, atol=1e-6)
    assert not torch.allclose(whole.centroids, full)
