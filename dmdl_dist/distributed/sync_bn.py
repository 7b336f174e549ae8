"""BatchNorm over the global batch: statistics from every worker's share, on any device.

torch.nn.SyncBatchNorm does this for CUDA tensors only; on CPU workers (gloo) we use the same
computation written with the autograd-aware collectives of comm.py: the batch mean and the
centred second moment are all-reduced (two passes, so the variance loses no precision), each
worker normalises its rows with the global statistics, and the backward pass sums every worker's
gradient with respect to those statistics. With DDP's gradient average this is exactly the
gradient of the loss over the global batch, and the running statistics stay identical everywhere.
"""

from __future__ import annotations

import torch
from torch import nn

from dmdl_dist.distributed import comm


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm layer (1-D or 2-D input) whose training statistics span all ranks."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"GlobalBatchNorm expects N x C or N x C x H x W input, got {x.dim()} dimensions")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return super().forward(x)
        # the same arithmetic on one rank as on many (torch's fused kernel rounds differently; on
        # ill-conditioned gradient entries that is enough to flip Adam's first steps)
        dims = [0] + list(range(2, x.dim()))  # all but channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = comm.replicated_sum(torch.tensor([float(xf.numel() // xf.shape[1])], device=x.device))
        mean = comm.replicated_sum(xf.sum(dims)) / count  # C
        var = comm.replicated_sum((xf - mean.view(shape)).pow(2).sum(dims)) / count  # C, biased
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased.detach())
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer of `module` computes its statistics over all ranks (in place, returns module).

    CUDA: torch.nn.SyncBatchNorm (its fused kernels; one rank keeps plain BatchNorm). Other devices:
    GlobalBatchNorm, on one rank too, so that 1 and N workers compute alike. Parameters (and whether
    they train, e.g. the BN-neck's frozen bias), buffers and subclass-specific defaults carry over.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module) if comm.world_size() > 1 else module
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                new.weight = module.weight
                new.bias = module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module

