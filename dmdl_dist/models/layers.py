"""Building blocks of the ReID head and trunk: GeM pooling, the BN-neck and the non-local block."""

from __future__ import annotations

import torch
from torch import nn


class GeM(nn.Module):
    """Generalised-mean pooling (Radenovic et al., TPAMI 2019): (mean over positions of x^p)^(1/p).

    p = 1 is average pooling and p -> inf max pooling; p = 3 stresses the strongest responses,
    which is what the ReID recipe (AGW, cluster-contrast, PGM, DMDL) uses. With learnable=False
    p is a buffer, so it is saved with the model but never touched by the optimizer.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = False) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM needs p > 0, got {p}")
        value = torch.tensor(float(p))
        if learnable:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: B x C x H x W -> B x C; the clamp keeps pow() differentiable and the root real.
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={float(self.p):.2f}, eps={self.eps}, learnable={isinstance(self.p, nn.Parameter)}"


class BNNeck(nn.BatchNorm1d):
    """The BN-neck of Luo et al. ("Bag of Tricks", CVPRW 2019): BatchNorm1d with its bias frozen at 0.

    The pooled feature feeds the metric losses (triplet, MMD) and the normalised feature after this
    layer feeds the memory; a zero, frozen shift keeps the normalised feature centred on the origin,
    so cosine similarity against the memory is not dominated by a learnt offset.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        self.bias.requires_grad_(False)


class NonLocal(nn.Module):
    """Non-local block (Wang et al., CVPR 2018) in the dot-product form AGW (Ye et al., TPAMI 2021) uses.

    z_i = x_i + W( (1/N) sum_j theta(x_i) . phi(x_j) g(x_j) ), N = H*W. The output projection W
    ends in a BatchNorm whose scale and shift start at zero, so a freshly inserted block is the
    identity and ImageNet weights around it keep their meaning at the start of training.
    """

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        inner = max(channels // reduction, 1)
        self.g = nn.Conv2d(channels, inner, kernel_size=1)
        self.theta = nn.Conv2d(channels, inner, kernel_size=1)
        self.phi = nn.Conv2d(channels, inner, kernel_size=1)
        self.out = nn.Sequential(nn.Conv2d(inner, channels, kernel_size=1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape  # x: B x C x H x W
        g = self.g(x).flatten(2)  # B x C' x N
        theta = self.theta(x).flatten(2)  # B x C' x N
        phi = self.phi(x).flatten(2)  # B x C' x N
        affinity = theta.transpose(1, 2) @ phi / (h * w)  # B x N(i) x N(j)
        y = g @ affinity.transpose(1, 2)  # B x C' x N(i): y_i = sum_j affinity[i, j] g_j
        return x + self.out(y.reshape(b, -1, h, w))

