import pytest
import torch
import torch.nn.functional as F

from dmdl_dist.engine.losses import cross_entropy_of_probs
from dmdl_dist.memory import ClusterMemory, centroids
from dmdl_dist.memory.cluster_memory import occurrence_rank, scores
from dmdl_dist.models.cai import adaptive_momentum, adjusted_probs, modality_prior


def test_centroids_ignore_outliers_and_normalise():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    c = centroids(f, torch.tensor([0, 0, 1, -1]), 2)
    assert torch.allclose(c[0], F.normalize(torch.tensor([1.0, 1.0]), dim=0))
    assert torch.allclose(c[1], F.normalize(torch.tensor([1.0, 1.0]), dim=0))
    assert torch.allclose(c.norm(dim=1), torch.ones(2))


def test_occurrence_rank_counts_earlier_equal_values():
    assert occurrence_rank(torch.tensor([3, 1, 3, 3, 0, 1, -1])).tolist() == [0, 0, 1, 2, 0, 1, 0]


def test_update_is_the_sample_by_sample_loop():
    """The release's rule, m[y] <- normalise(a m[y] + (1 - a) f) row after row, with repeated labels."""
    torch.manual_seed(0)
    init = F.normalize(torch.randn(4, 5), dim=1)
    mem = ClusterMemory(init, momentum=0.2)
    f = F.normalize(torch.randn(9, 5), dim=1)
    labels = torch.tensor([2, 0, 2, 3, 2, 1, 0, -1, 7])  # -1 and 7 have no row
    momentum = torch.rand(9)
    mem.update(f, labels, momentum)
    want = init.clone()
    for x, y, a in zip(f, labels.tolist(), momentum, strict=True):
        if 0 <= y < 4:
            want[y] = F.normalize(a * want[y] + (1 - a) * x, dim=0)
    assert torch.allclose(mem.centroids, want, atol=1e-6)
    assert not torch.allclose(mem.centroids[2], F.normalize(0.2 * init[2] + 0.8 * f[[0, 2, 4]].mean(0), dim=0))


def test_rows_carry_labels():
    mem = ClusterMemory(torch.eye(3), labels=torch.tensor([0, 2, 5]))
    assert mem.rows_of(torch.tensor([5, 0, 1, -1, 9])).tolist() == [2, 0, -1, -1, -1]
    mem.update(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([2]), 0.0)  # label 2 is row 1
    assert torch.allclose(mem.centroids[1], torch.tensor([0.0, 0.0, 1.0]))


def test_adaptive_momentum_freezes_rows_whose_target_left_the_label():
    mom = adaptive_momentum(torch.tensor([0.1, 0.2, 0.5, 1.0]), 0.2)
    assert torch.allclose(mom, torch.tensor([1.0, 1.0, 0.4, 0.2]))


def test_memory_logits_and_state_round_trip():
    mem = ClusterMemory(torch.eye(3), labels=torch.tensor([1, 4, 6]), temperature=0.05)
    logits = mem.logits(torch.eye(3)[:2])
    assert logits.shape == (2, 3) and torch.allclose(logits.diagonal(), torch.full((2,), 20.0))
    again = ClusterMemory.from_state_dict(mem.state_dict())
    assert torch.equal(again.centroids, mem.centroids) and again.temperature == 0.05
    assert again.labels.tolist() == [1, 4, 6]


def test_cai_on_a_hand_worked_two_modality_three_label_case():
    """P(y | do(x)) = 0.75 softmax over visible rows (labels 0, 1, 2) + 0.25 softmax over infrared rows (2, 0)."""
    f = torch.tensor([[1.0, 0.0]])
    m_vis, m_ir = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    prior = modality_prior([30, 10])
    assert torch.allclose(prior, torch.tensor([0.75, 0.25]))
    probs = adjusted_probs([f @ m_vis.t() / 1.0, f @ m_ir.t() / 1.0], [torch.tensor([0, 1, 2]), torch.tensor([2, 0])],
                           prior, num_shared=3)
    e = torch.exp(torch.tensor(1.0))
    p_vis = torch.tensor([e, 1.0, 1 / e]) / (e + 1 + 1 / e)  # cos 1, 0, -1
    p_ir = torch.tensor([e, 1.0]) / (e + 1)  # rows: label 2 (cos 0 -> 1), label 0 (cos 1 -> e)
    want = 0.75 * p_vis + 0.25 * torch.tensor([p_ir[0], 0.0, p_ir[1]])
    assert torch.allclose(probs[0], want, atol=1e-6) and probs.sum().item() == pytest.approx(1.0, abs=1e-6)
    target = torch.tensor([[0.5, 0.0, 0.5]])
    assert cross_entropy_of_probs(probs, target).item() == pytest.approx(
        -(0.5 * torch.log(want[0]) + 0.5 * torch.log(want[2])).item(), abs=1e-6)


def test_scores_take_the_gradient_against_the_backward_memory():
    f = torch.tensor([[0.6, 0.8]], requires_grad=True)
    now, later = torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    z = scores(f, now, 0.5, later)
    assert torch.allclose(z, f.detach() @ now.t() / 0.5)
    z.sum().backward()
    assert torch.allclose(f.grad, later.sum(0, keepdim=True) / 0.5)


def test_uniform_prior():
    assert torch.allclose(modality_prior([5, 95], "uniform"), torch.tensor([0.5, 0.5]))
