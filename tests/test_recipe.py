"""The recipe around the losses, as the release runs it: stage-2 memories, schedules, presets, precision."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmdl_dist.clustering.pseudo_labels import PseudoLabels
from dmdl_dist.config import load_config
from dmdl_dist.distributed.backend import resolve_precision
from dmdl_dist.engine import recluster
from dmdl_dist.engine.schedule import joint_sampling, milestone, step_settings, triplet_weight


def _real(name: str, *overrides: str):
    return load_config(name, overrides=["data.root=/data/x", *overrides])


def test_stage2_memories_merge_the_source_clusters_that_share_a_label():
    """Visible clusters 0 and 2 both map onto infrared cluster 1: the visible memory's row of label 1 is the
    mean of all their features, and the unified memory's row of label 1 pools both modalities."""
    cfg = load_config("tiny")
    vis = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, -1.0]]), dim=1)
    ir = F.normalize(torch.tensor([[0.0, -1.0], [1.0, 0.2], [2.0, 1.0]]), dim=1)
    labels = PseudoLabels(labels=[np.array([0, 1, 2, -1]), np.array([0, 1, 1])], num_clusters=[3, 2],
                          shared=[np.array([1, 0, 1, -1]), np.array([0, 1, 1])], num_shared=2, anchor=1)
    mem = recluster.build_memories([vis, ir], labels, cfg)
    assert mem.own[0].labels.tolist() == [0, 1] and mem.own[1].labels.tolist() == [0, 1]
    assert torch.allclose(mem.own[0].centroids[1], F.normalize(vis[0] + vis[2], dim=0), atol=1e-6)
    assert torch.allclose(mem.own[0].centroids[0], vis[1])
    assert torch.allclose(mem.unified.centroids[1], F.normalize(vis[0] + vis[2] + ir[1] + ir[2], dim=0), atol=1e-6)
    assert mem.anchor == 1 and torch.allclose(mem.prior, torch.tensor([3 / 6, 3 / 6]))


def test_stage2_memory_of_a_modality_lacking_a_label_has_no_row_for_it():
    cfg = load_config("tiny")
    f = F.normalize(torch.randn(4, 3), dim=1)
    labels = PseudoLabels(labels=[np.array([0, 0, 1, 1]), np.array([0, 1, 2, 2])], num_clusters=[2, 3],
                          shared=[np.array([2, 2, 0, 0]), np.array([0, 1, 2, 2])], num_shared=3, anchor=1)
    mem = recluster.build_memories([f, f], labels, cfg)
    assert mem.own[0].labels.tolist() == [0, 2] and mem.own[0].rows_of(torch.tensor([1])).item() == -1


def test_milestones_are_the_releases_epochs_on_50_epoch_stages_and_scale_with_the_stage():
    cfg = _real("sysu")
    s1 = [triplet_weight(cfg, 1, e) for e in range(50)]
    assert s1[15] == 0 and s1[16] == 0.25 and s1[25] == 0.25 and s1[26] == 0.5 and s1[35] == 0.5 and s1[36] == 1
    s2 = [triplet_weight(cfg, 2, e) for e in range(50)]
    assert s2[10] == 0 and s2[11] == 0.5 and s2[20] == 0.5 and s2[21] == 1
    assert milestone(cfg.cbt.confidence_from_stage1, 50) == 30 and milestone(cfg.cbt.confidence_from_stage2, 50) == 5
    assert not joint_sampling(cfg, 2, 39) and joint_sampling(cfg, 2, 40) and not joint_sampling(cfg, 1, 45)
    assert step_settings(cfg, 2, 40).joint and not step_settings(cfg, 2, 39).joint
    regdb = _real("regdb")
    r1 = [triplet_weight(regdb, 1, e) for e in range(30)]
    assert r1[15] == 0 and r1[16] == 0.25 and r1[26] == 0.5 and max(r1) == 0.5  # epoch 36 never comes
    assert not joint_sampling(regdb, 2, 24) and joint_sampling(regdb, 2, 25)
    assert milestone(regdb.cbt.confidence_from_stage2, 30) == 5
    short = load_config("synthvi")  # 8-epoch stages keep the shape
    assert [triplet_weight(short, 1, e) for e in range(8)] == [0, 0, 0, 0.25, 0.5, 0.5, 1, 1]


def test_label_confidence_is_one_during_the_warm_up_and_regdb_has_none_in_stage_1():
    f = [F.normalize(torch.randn(12, 4), dim=1) for _ in range(2)]
    labels = PseudoLabels(labels=[np.repeat([0, 1, 2], 4), np.repeat([0, 1, 2], 4)], num_clusters=[3, 3])
    cfg = _real("sysu")
    mem = recluster.build_memories(f, labels, cfg)
    warm = recluster.confidences(f, labels, mem, cfg, stage=1, epoch_in_stage=29)
    assert all(np.all(c == 1) for c in warm)
    late = recluster.confidences(f, labels, mem, cfg, stage=1, epoch_in_stage=30)
    assert any(np.any(c < 1) for c in late)
    regdb = _real("regdb")
    assert all(np.all(c == 1) for c in recluster.confidences(f, labels, mem, regdb, stage=1, epoch_in_stage=29))


def test_clustering_features_are_flip_averaged(monkeypatch, tiny_root):
    cfg = load_config("tiny")
    flips = []

    def fake_extract(model, root, paths, **kw):
        flips.append(kw["flip"])
        rng = np.random.default_rng(len(paths))
        x = rng.normal(size=(len(paths), 8)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    monkeypatch.setattr(recluster, "extract_features", fake_extract)
    from dmdl_dist.engine.data import load_run_data

    data = load_run_data(cfg)
    recluster.refresh(torch.nn.Linear(1, 1), str(data.root), data.train_paths, data.train_pids, cfg, stage=1,
                      epoch_in_stage=0, device=torch.device("cpu"), progress=False)
    assert flips == [True, True]


@pytest.mark.parametrize("name", ["sysu", "llcm"])
def test_real_presets_train_on_every_training_identity_and_report_the_last_epoch(name):
    cfg = _real(name)
    assert cfg.data.holdout_val is False
    assert (cfg.cluster.k1, cfg.cluster.k1_source) == ((30, 15) if name == "sysu" else (25, 15))
    assert cfg.dist.precision == "auto"


def test_regdb_preset_is_the_releases():
    cfg = _real("regdb")
    assert (cfg.cluster.k1, cfg.cluster.k1_source, cfg.cluster.eps) == (30, 30, 0.3)
    assert cfg.cluster.sample_matching == "regdb" and cfg.cbt.erase_max_area_stage2 == 0.6
    assert cfg.cbt.confidence_from_stage1 >= 1.0


def test_precision_auto_is_bf16_or_fp16_on_gpus_and_fp32_on_cpu(monkeypatch):
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
