"""The sharded (PartialFC) memory: the same losses, gradients and updates as the whole memory."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dmdl_dist.config import load_config
from dmdl_dist.engine.step import Batch, Memories, train_step, update_memories
from dmdl_dist.memory import ClusterMemory, ShardedClusterMemory, reshard

C_VIS, C_IR, U, D = 7, 5, 6, 16


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


def _problem(seed: int = 0):
    """Full memories, a batch of 2 ranks x 6 images per modality, and the model, all from one seed."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=1)  # noqa: E731
    mems = {"vis": unit(C_VIS), "ir": unit(C_IR), "uni": unit(U)}
    to_unified = [torch.randint(0, U, (C_VIS,), generator=g), torch.randint(0, U, (C_IR,), generator=g)]
    data = []
    for c in (C_VIS, C_IR):
        data.append({
            "views": [torch.randn(12, 3, 4, 4, generator=g) for _ in range(2)],
            "labels": torch.randint(0, c, (12,), generator=g),
            "unified": torch.randint(0, U, (12,), generator=g),
            "confidence": torch.rand(12, generator=g),
        })
    return mems, to_unified, data


def _memories(mems, to_unified, sharded: bool, rank: int, world: int) -> Memories:
    if sharded:
        make = lambda t: ShardedClusterMemory.from_full(t, rank=rank, world=world)  # noqa: E731
    else:
        make = ClusterMemory
    return Memories(own=[make(mems["vis"]), make(mems["ir"])], unified=make(mems["uni"]),
                    to_unified=to_unified, prior=torch.tensor([0.6, 0.4]))


def _step(rank: int, world: int, sharded: bool, refine: bool):
    cfg = load_config("tiny", overrides={"cbt.topk_stage2": 5, "cbt.refine": refine})
    mems, to_unified, data = _problem()
    torch.manual_seed(1)
    model = Toy()
    rows = slice(rank * 12 // world, (rank + 1) * 12 // world)
    batches = [Batch(views=[v[rows] for v in d["views"]], labels=d["labels"][rows], unified=d["unified"][rows],
                     confidence=d["confidence"][rows]) for d in data]
    memories = _memories(mems, to_unified, sharded, rank, world)
    losses, feats = train_step(model, batches, memories, cfg, stage=2, triplet_weight=1.0)
    sum(losses.values()).backward()
    update_memories(memories, batches, feats, cfg)
    out = {f"loss_{k}": v.detach().numpy() for k, v in losses.items()}
    out.update({f"grad_{n}": p.grad.numpy() for n, p in model.named_parameters()})
    for name, mem in (("vis", memories.own[0]), ("uni", memories.unified)):
        out[f"mem_{name}"] = (mem.full() if sharded else mem.centroids).numpy()
    if sharded:
        out["shard_rows"] = np.array(memories.own[0].shard.shape[0])
    return out


def _worker(rank: int, world: int, port: int, out: str, refine: bool) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for sharded in (False, True):
            np.savez(os.path.join(out, f"r{rank}_{sharded}.npz"), **_step(rank, world, sharded, refine))
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.parametrize("refine", [True, False])
def test_sharded_memory_matches_whole_memory_on_two_ranks(tmp_path, refine):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), refine), nprocs=2, join=True)
    for rank in (0, 1):
        whole = np.load(tmp_path / f"r{rank}_False.npz")
        shard = np.load(tmp_path / f"r{rank}_True.npz")
        assert {"loss_memory", "loss_cross", "loss_cai", "grad_lin.weight"} <= set(whole.files)
        for key in whole.files:
            assert np.allclose(whole[key], shard[key], atol=1e-5, rtol=1e-5), (rank, key)
        assert int(shard["shard_rows"]) == (4 if rank == 0 else 3)  # 7 clusters: C / N rows per rank
    r0, r1 = np.load(tmp_path / "r0_True.npz"), np.load(tmp_path / "r1_True.npz")
    assert not np.allclose(r0["loss_memory"], r1["loss_memory"])  # each rank's own batch, not one shared value
    assert np.allclose(r0["mem_uni"], r1["mem_uni"])  # the updated memory is one memory


def test_sharded_memory_on_one_process_equals_whole_memory():
    whole = _step(0, 1, False, True)
    shard = _step(0, 1, True, True)
    for key in whole:
        assert np.allclose(whole[key], shard[key], atol=1e-6), key


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
