"""Our losses, gradients and memory updates against the numbers the authors' release computes (shared/fidelity)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmdl_dist.engine.losses import mmd_loss, triplet_loss
from dmdl_dist.engine.step import INFRARED, VISIBLE, Batch, Memories, StepSettings, train_step, update_memories
from dmdl_dist.memory import ClusterMemory

# The release's own outputs on tiny fixed inputs (numbers only; the cases' conventions are in each test),
# kept in the repository so that these tests run on every checkout.
REFERENCE = Path(__file__).resolve().parent / "data" / "fidelity_reference.json"


@pytest.fixture(scope="module")
def ref():
    return json.loads(REFERENCE.read_text())


def _t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def _identity(images):
    """The 'network' of these cases: the inputs are the raw BN-neck features themselves."""
    return images, images


def _batch(f: torch.Tensor, labels, lam) -> Batch:
    b = f.shape[0] // 2
    return Batch(views=[f[:b], f[b:]], labels=_t(labels[:b], torch.long), confidence=_t(lam[:b]))


def test_stage1_memory_loss_gradient_and_update(ref):
    case = ref["stage1_memory"]
    assert case["labels"][:4] == case["labels"][4:] and case["lam"][:4] == case["lam"][4:]
    f = _t(case["f"]).requires_grad_()
    memories = Memories(own=[ClusterMemory(_t(case["memory_before"]), temperature=0.05, momentum=0.2)])
    batch = _batch(f, case["labels"], case["lam"])
    settings = StepSettings(stage=1, triplet_weight=0.0, topk=case["topk"], mmd_weight=0.0)
    losses, feats = train_step(_identity, [batch], memories, settings)
    assert set(losses) == {"memory"}
    losses["memory"].backward()
    assert losses["memory"].item() == pytest.approx(case["loss"], abs=1e-5)
    np.testing.assert_allclose(f.grad.numpy(), case["grad_f"], atol=1e-5)
    update_memories(memories, [batch], feats, stage=1)
    np.testing.assert_allclose(memories.own[0].centroids.numpy(), case["memory_after"], atol=1e-5)


@pytest.mark.parametrize("name", ["stage2_even_epoch", "stage2_odd_epoch"])
def test_stage2_losses_gradients_and_updates(ref, name):
    case = ref[name]
    before = case["memories_before"]
    memories = Memories(
        own=[ClusterMemory(_t(before["features_rgb"]), labels=_t(case["pids_rgb"], torch.long)),
             ClusterMemory(_t(before["features_ir"]), labels=_t(case["pids_ir"], torch.long))],
        unified=ClusterMemory(_t(before["features_all"])),
        prior=_t(case["prior"]),
        anchor=VISIBLE if case["i2r"] else INFRARED,
    )
    f_rgb, f_ir = _t(case["f_rgb"]).requires_grad_(), _t(case["f_ir"]).requires_grad_()
    batches = [_batch(f_rgb, case["labels_rgb"], case["lam_rgb"]), _batch(f_ir, case["labels_ir"], case["lam_ir"])]
    settings = StepSettings(stage=2, triplet_weight=0.0, topk=case["topk"], cai_weight=0.5, mmd_weight=0.0)
    losses, feats = train_step(_identity, batches, memories, settings)
    assert losses["memory"].item() == pytest.approx(case["own_rgb"] + case["own_ir"], abs=1e-4)
    assert losses["cai"].item() == pytest.approx(0.5 * (case["cai_rgb"] + case["cai_ir"]), abs=1e-4)
    total = sum(losses.values())
    assert total.item() == pytest.approx(case["total"], abs=1e-4)
    total.backward()
    np.testing.assert_allclose(f_rgb.grad.numpy(), case["grad_f_rgb"], atol=1e-5)
    np.testing.assert_allclose(f_ir.grad.numpy(), case["grad_f_ir"], atol=1e-5)
    update_memories(memories, batches, feats, stage=2)
    after = case["memories_after"]
    np.testing.assert_allclose(memories.own[VISIBLE].centroids.numpy(), after["features_rgb"], atol=1e-5)
    np.testing.assert_allclose(memories.own[INFRARED].centroids.numpy(), after["features_ir"], atol=1e-5)
    np.testing.assert_allclose(memories.unified.centroids.numpy(), after["features_all"], atol=1e-5)


def test_mmd_is_the_release_estimator(ref):
    case = ref["mmd"]
    assert mmd_loss(_t(case["view1"]), _t(case["view2"])).item() == pytest.approx(case["value"], abs=1e-5)


def test_triplet_is_the_release_loss(ref):
    case = ref["triplet"]
    value = triplet_loss(_t(case["features"]), _t(case["labels"], torch.long), margin=0.3)
    assert value.item() == pytest.approx(case["value"], abs=1e-5)
