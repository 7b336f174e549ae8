import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from dmdl_dist.clustering.refine import gmm_confidence, label_confidence

REFERENCE = Path(__file__).resolve().parent / "data" / "fidelity_reference.json"  # the release's numbers


def _centroids(features, labels):
    """Normalised cluster means of the non-outlier samples: C x D."""
    means = np.stack([features[labels == k].mean(0) for k in range(labels.max() + 1)])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def _release_scores(features, labels, centroids):
    """The release's normalised scores (dmdl_sysu.py): N x 1 float32, outliers scored against column -1."""
    f = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    prob = torch.softmax(f @ torch.as_tensor(centroids, dtype=torch.float32).t() / 0.05, dim=1)
    s = -prob[torch.arange(len(labels)), torch.as_tensor(labels)].numpy()[:, None]  # label -1: last column
    return (s - s.min()) / (s.max() - s.min())


def _fit(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gmm = GaussianMixture(n_components=2, random_state=0).fit(x)
    return gmm.predict_proba(x)[:, np.argmin(gmm.means_)]


def _release_loop(features, labels, centroids):
    """The release's recipe written out step by step, one scikit-learn fit per cluster."""
    s = _release_scores(features, labels, centroids)
    conf = np.zeros(len(labels))
    for k in range(centroids.shape[0]):
        mask = labels == k
        conf[mask] = 1.0 if mask.sum() <= 1 else _fit(s[mask])
    return conf


def _random_clusters(seed, n_clusters=40, dim=16):
    """Unit features in clusters of 1..60 (some tight, some bimodal, some duplicated rows), plus outliers."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    feats, labels = [], []
    for k in range(n_clusters):
        n = int(rng.choice([1, 2, 3, 5, 12, 30, 60]))
        spread = [0.0, 0.05, 0.4][k % 3]  # spread 0: every member the same row (a constant score)
        x = centres[k] + spread * rng.standard_normal((n, dim))
        if k % 5 == 4 and n > 3:  # bimodal: a third of the members belong elsewhere
            x[: n // 3] = centres[(k + 1) % n_clusters] + 0.3 * rng.standard_normal((n // 3, dim))
        feats.append(x)
        labels += [k] * n
    feats.append(rng.standard_normal((25, dim)))
    labels += [-1] * 25
    feats = np.concatenate(feats).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    labels = np.array(labels)
    return feats, labels, _centroids(feats, labels)


def test_release_reference_case():
    case = json.loads(REFERENCE.read_text())["confidence"]
    feats, labels = np.array(case["features"], dtype=np.float32), np.array(case["labels"])
    conf = label_confidence(feats, labels, _centroids(feats, labels))
    assert conf.dtype == np.float32 and conf.shape == labels.shape
    assert np.allclose(conf, np.array(case["confidence"]), atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_release_loop_on_random_clusters(seed):
    feats, labels, cents = _random_clusters(seed)
    conf = label_confidence(feats, labels, cents)
    assert np.allclose(conf, _release_loop(feats, labels, cents), atol=1e-6)
    assert (conf[labels < 0] == 0).all()  # outliers are scored for the min-max, never trained on


def test_single_member_clusters_get_one_and_torch_inputs_match_numpy():
    feats, labels, cents = _random_clusters(3)
    conf = label_confidence(feats, labels, cents)
    sizes = np.bincount(labels[labels >= 0])
    singles = np.isin(labels, np.flatnonzero(sizes == 1))
    assert singles.any() and (conf[singles] == 1.0).all()
    from_torch = label_confidence(torch.from_numpy(feats), torch.from_numpy(labels), torch.from_numpy(cents))
    assert np.array_equal(conf, from_torch)


def test_global_scope_fits_one_mixture_over_labelled_samples():
    feats, labels, cents = _random_clusters(4)
    conf = label_confidence(feats, labels, cents, scope="global")
    keep = labels >= 0
    assert np.allclose(conf[keep], _fit(_release_scores(feats, labels, cents)[keep]), atol=1e-6)
    assert (conf[~keep] == 0).all()


def test_gmm_confidence_trusts_low_scores_per_group():
    rng = np.random.default_rng(0)
    low, high = rng.normal(0.2, 0.05, 20), rng.normal(0.9, 0.05, 8)
    scores = np.concatenate([low, high, low * 10, high * 10, [0.5]])
    groups = np.repeat([3, 7, 9], [28, 28, 1])
    conf = gmm_confidence(scores, groups)
    assert conf.dtype == np.float32
    for start in (0, 28):
        assert conf[start : start + 20].min() > 0.9 and conf[start + 20 : start + 28].max() < 0.1
    assert conf[-1] == 1.0
