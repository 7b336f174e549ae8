"""CBT step 2, label refinement: soften noisy pseudo-labels with the memory's view of the other augmentation.

target = (1 - lam) * p_memory + lam * onehot(pseudo_label), where p_memory is the top-k softmax of
the other view's memory logits and lam is a per-sample confidence. The confidence comes from the
small-loss criterion: a sample whose own cluster explains it poorly is likely mislabelled, and the
scores of a cluster are bimodal (clean low, noisy high), so a 2-component Gaussian mixture on them
gives each sample the posterior of the low-score component (the release's dmdl_sysu.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits


def topk_softmax(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Softmax over each row's k largest logits, zero elsewhere. logits: B x C -> B x C.

    Masking to the top k keeps the soft target from spreading mass over hundreds of clusters that
    the sample certainly does not belong to.
    """
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"top-k needs 1 <= k <= {logits.shape[1]} (the number of clusters), got k={k}")
    values, index = logits.topk(k, dim=1)  # B x k
    return torch.zeros_like(logits).scatter_(1, index, values.softmax(dim=1))


def refined_targets(p_memory: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """(1 - lam) * p_memory + lam * onehot(labels). p_memory: B x C, labels: B (>= 0), lam: B -> B x C."""
    onehot = F.one_hot(labels.long(), p_memory.shape[1]).to(p_memory.dtype)  # B x C
    lam = lam.to(p_memory.dtype).unsqueeze(1)  # B x 1
    return (1.0 - lam) * p_memory + lam * onehot


def label_confidence(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    centroids: np.ndarray | torch.Tensor,
    temperature: float = 0.05,
    scope: str = "cluster",
) -> np.ndarray:
    """The release's label confidence lam per sample. features: N x D, labels: N (-1 outlier), centroids: C x D.

    score s_i = -softmax(f_i . M^T / temperature)[label_i] with f_i normalised (as the release does),
    min-max normalised over all N samples, then gmm_confidence per cluster (scope "cluster", the
    release) or over all labelled samples at once (scope "global"). Returns N float32; outliers get 0
    (they are never trained on).

    Quirk of the release, reproduced: outliers are scored too, against column -1 (the last cluster),
    and their scores take part in the min-max. All scores equal (the release divides 0 by 0) is read
    as all scores 0.
    """
    if scope not in ("cluster", "global"):
        raise ValueError(f"confidence scope must be 'cluster' or 'global', got {scope!r}")
    f = F.normalize(torch.as_tensor(features).float(), dim=1)  # N x D
    m = torch.as_tensor(centroids, device=f.device).float()  # C x D
    lab = torch.as_tensor(labels, device=f.device).long().reshape(-1)  # N
    if lab.shape[0] != f.shape[0] or (lab >= m.shape[0]).any():
        raise ValueError(f"{lab.shape[0]} labels for {f.shape[0]} features, or a label >= {m.shape[0]} clusters")
    with torch.no_grad():
        prob = torch.softmax(f @ m.t() / temperature, dim=1)  # N x C
        score = (-prob[torch.arange(lab.shape[0], device=f.device), lab]).cpu().numpy()  # N; label -1: last column
    low, span = (score.min(), score.max() - score.min()) if score.size else (0.0, 0.0)
    score = (score - low) / span if span > 0 else np.zeros_like(score)  # float32, as the release
    lab = lab.cpu().numpy()
    keep = lab >= 0
    conf = np.zeros(lab.shape[0], dtype=np.float32)
    if keep.any():
        conf[keep] = gmm_confidence(score[keep], lab[keep] if scope == "cluster" else None)
    return conf


def gmm_confidence(scores: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Posterior of the lower-mean component of a 2-Gaussian mixture, fitted per group. scores: N -> N float32.

    Each group (the whole set when groups is None) is fitted with scikit-learn's
    GaussianMixture(n_components=2, random_state=0), its defaults otherwise, on the scores as given
    (N x 1; the caller normalises); groups of at most one sample get 1. Constant groups take what
    scikit-learn gives (about 1), its warning silenced.

    2-4 ms a fit (500 clusters of 5-60: 1.6-2.1 s on 2 busy cores, bench/confidence.py) with the
    OpenMP pool held to one thread for the loop: scikit-learn's k-means initialisation otherwise
    spins the pool up on every call, 15-30 ms a fit.
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if groups is None:
        gid = np.zeros(scores.shape[0], dtype=np.int64)
    else:
        groups = np.asarray(groups).reshape(-1)
        if groups.shape != scores.shape:
            raise ValueError(f"groups {groups.shape} and scores {scores.shape} differ in shape")
        gid = np.unique(groups, return_inverse=True)[1].reshape(-1)
    conf = np.ones(scores.shape[0], dtype=np.float32)
    order = np.argsort(gid, kind="stable")
    bounds = np.flatnonzero(np.diff(gid[order])) + 1
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for members in np.split(order, bounds) if order.size else []:
            if members.size <= 1:
                continue
            x = scores[members, None]  # n x 1
            gmm = GaussianMixture(n_components=2, random_state=0).fit(x)
            conf[members] = gmm.predict_proba(x)[:, np.argmin(gmm.means_[:, 0])]
    return conf
