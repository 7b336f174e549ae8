import torch
import torch.nn.functional as F

from dmdl_dist.memory import ClusterMemory, centroids
from dmdl_dist.models.cai import adaptive_momentum, adjusted_log_probs, modality_prior


def test_centroids_ignore_outliers_and_normalise():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    c = centroids(f, torch.tensor([0, 0, 1, -1]), 2)
    assert torch.allclose(c[0], F.normalize(torch.tensor([1.0, 1.0]), dim=0))
    assert torch.allclose(c[1], F.normalize(torch.tensor([1.0, 1.0]), dim=0))
    assert torch.allclose(c.norm(dim=1), torch.ones(2))


def test_memory_update_matches_the_formula():
    torch.manual_seed(0)
    init = F.normalize(torch.randn(3, 4), dim=1)
    mem = ClusterMemory(init, momentum=0.2)
    f = F.normalize(torch.randn(5, 4), dim=1)
    labels = torch.tensor([0, 0, 2, -1, 2])
    mem.update(f, labels)
    for c, rows in ((0, [0, 1]), (2, [2, 4])):
        want = F.normalize(0.2 * init[c] + 0.8 * f[rows].mean(0), dim=0)
        assert torch.allclose(mem.centroids[c], want, atol=1e-6)
    assert torch.equal(mem.centroids[1], init[1])  # untouched cluster stays


def test_adaptive_momentum_freezes_on_low_confidence():
    torch.manual_seed(1)
    init = F.normalize(torch.randn(2, 4), dim=1)
    mem = ClusterMemory(init, momentum=0.2)
    conf = torch.tensor([0.1, 1.0])
    mom = adaptive_momentum(conf, 0.2)
    assert torch.allclose(mom, torch.tensor([1.0, 0.2]))
    f = F.normalize(torch.randn(2, 4), dim=1)
    mem.update(f, torch.tensor([0, 1]), mom)
    assert torch.allclose(mem.centroids[0], init[0])  # confidence below momentum: no move
    assert not torch.allclose(mem.centroids[1], init[1])


def test_memory_logits_and_state_round_trip():
    mem = ClusterMemory(torch.eye(3), temperature=0.05)
    logits = mem.logits(torch.eye(3)[:2])
    assert logits.shape == (2, 3) and torch.allclose(logits.diagonal(), torch.full((2,), 20.0))
    again = ClusterMemory.from_state_dict(mem.state_dict())
    assert torch.equal(again.centroids, mem.centroids) and again.temperature == 0.05


def test_backdoor_adjustment_sums_modalities_by_prior():
    torch.manual_seed(2)
    feats = F.normalize(torch.randn(4, 8), dim=1)
    mems = [F.normalize(torch.randn(3, 8), dim=1), F.normalize(torch.randn(2, 8), dim=1)]
    maps = [torch.tensor([0, 1, 2]), torch.tensor([2, 0])]
    prior = modality_prior([30, 10])
    assert torch.allclose(prior, torch.tensor([0.75, 0.25]))
    logp = adjusted_log_probs(feats, mems, maps, prior, num_unified=3, temperature=0.1)
    p_v = torch.softmax(feats @ mems[0].t() / 0.1, 1)
    p_i = torch.softmax(feats @ mems[1].t() / 0.1, 1)
    want = 0.75 * p_v + 0.25 * torch.stack([p_i[:, 1], torch.zeros(4), p_i[:, 0]], 1)
    assert torch.allclose(logp.exp(), want, atol=1e-6)
    assert torch.allclose(logp.exp().sum(1), torch.ones(4), atol=1e-6)


def test_uniform_prior():
    assert torch.allclose(modality_prior([5, 95], "uniform"), torch.tensor([0.5, 0.5]))
