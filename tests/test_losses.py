import pytest
import torch
import torch.nn.functional as F

from dmdl_dist.clustering.refine import refined_targets, topk_softmax
from dmdl_dist.engine.losses import mmd_loss, soft_cross_entropy, triplet_loss


def test_mmd_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    torch.manual_seed(0)
    x = torch.randn(32, 16)
    same = mmd_loss(x, torch.randn(32, 16))
    far = mmd_loss(x, x + 2.0)
    assert abs(float(same)) < 0.05  # the unbiased estimator of a zero MMD scatters around 0
    assert float(far) > 0.1 and float(far) > float(same)


def test_mmd_leaves_the_diagonal_out_of_the_within_view_terms():
    x, y = torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    total = torch.cat([x, y])
    d2 = torch.cdist(total, total).pow(2)
    base = d2.sum() / 12 / 4  # mean over distinct pairs, over 2 ** (5 // 2)
    k = sum(torch.exp(-d2 / (base * 2**i)) for i in range(5))
    want = (k[0, 1] + k[1, 0] + k[2, 3] + k[3, 2]) / 2 - k[:2, 2:].sum() * 2 / 4
    assert mmd_loss(x, y).item() == pytest.approx(want.item(), abs=1e-6)


def test_mmd_gradient_is_finite_and_pulls_samples_together():
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    y = (torch.randn(16, 8) + 1.0).requires_grad_()
    loss = mmd_loss(x, y)
    loss.backward()
    assert torch.isfinite(y.grad).all()
    with torch.no_grad():
        assert mmd_loss(x, y - 0.1 * y.grad / y.grad.norm()) < loss


def test_triplet_is_zero_for_well_separated_classes():
    feats = torch.tensor([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0], [0.05, 0.99]], requires_grad=True)
    loss = triplet_loss(feats, torch.tensor([0, 0, 1, 1]), margin=0.3)
    assert float(loss.detach()) == 0.0
    loss.backward()  # still part of the graph


def test_triplet_matches_hand_computation_on_raw_features_and_ignores_unlabelled():
    feats = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    dist = torch.cdist(feats, feats)  # raw features: no normalisation
    expected = torch.stack([
        F.relu(dist[0, 1] - dist[0, 2] + 0.3),
        F.relu(dist[1, 0] - dist[1, 2] + 0.3),
        F.relu(dist[2, 3] - dist[2, 0] + 0.3),
        F.relu(dist[3, 2] - dist[3, 1] + 0.3),
    ]).mean()
    assert torch.allclose(triplet_loss(feats, labels), expected, atol=1e-5)
    noisy = torch.cat([feats, torch.tensor([[1.0, 0.0]])])
    assert torch.allclose(triplet_loss(noisy, torch.cat([labels, torch.tensor([-1])])), expected, atol=1e-5)
    # a lone sample's hardest positive is itself (distance 1e-6): its hinge is margin - its nearest negative
    lone = triplet_loss(torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0]]), torch.tensor([0, 1, 1]))
    assert lone.item() == pytest.approx(((1e-6 - 0.1 + 0.3) + (0.1 - 0.1 + 0.3) + (0.1 - 0.2 + 0.3)) / 3, abs=1e-5)


def test_soft_cross_entropy_with_one_hot_is_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 7), torch.tensor([0, 3, 6, 2, 2])
    assert torch.allclose(soft_cross_entropy(logits, F.one_hot(labels, 7).float()), F.cross_entropy(logits, labels))


def test_topk_softmax_keeps_exactly_the_k_largest():
    torch.manual_seed(0)
    logits = torch.randn(6, 20)
    probs = topk_softmax(logits, 3)
    assert probs.shape == logits.shape
    assert torch.allclose(probs.sum(1), torch.ones(6))
    assert torch.all((probs > 0).sum(1) == 3)
    assert torch.equal((probs > 0), torch.zeros_like(probs, dtype=torch.bool).scatter_(1, logits.topk(3).indices, True))
    with pytest.raises(ValueError, match="top-k"):
        topk_softmax(logits, 21)


def test_refined_targets_interpolate_between_memory_and_label():
    p_memory = topk_softmax(torch.randn(3, 5), 2)
    labels = torch.tensor([4, 0, 2])
    onehot = F.one_hot(labels, 5).float()
    assert torch.allclose(refined_targets(p_memory, labels, torch.ones(3)), onehot)
    assert torch.allclose(refined_targets(p_memory, labels, torch.zeros(3)), p_memory)
    mixed = refined_targets(p_memory, labels, torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64))
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed[0], 0.75 * p_memory[0] + 0.25 * onehot[0])
    assert torch.allclose(mixed.sum(1), torch.ones(3))
