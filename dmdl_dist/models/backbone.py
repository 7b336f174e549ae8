"""The re-identification network: a ResNet-shaped trunk, GeM pooling and a BN-neck.

Two trunks share one head. "resnet50" is the field's recipe (ImageNet ResNet-50, last stride 1,
optional non-local blocks at [0, 2, 3, 0], 2048-d). "small" is a narrow four-stage ResNet
(widths 32-64-128-256, one basic block per stage, 256-d) that trains from scratch on SynthVI
within minutes on two CPU cores.

Both trunks keep torchvision's module names (conv1, bn1, layer1..layer4), so torchvision's
ResNet-50 state dict loads into the resnet50 trunk as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.resnet import BasicBlock

from dmdl_dist.errors import DmdlError, MissingPathError
from dmdl_dist.models.layers import BNNeck, GeM, NonLocal


class WeightsError(DmdlError, ValueError):
    """A file given as trunk weights (model.pretrained) does not fit the network."""

ARCHS = ("resnet50", "small")
NON_LOCAL_RESNET50 = (0, 2, 3, 0)  # AGW's placement: after the last 2 blocks of layer2, the last 3 of layer3
NON_LOCAL_SMALL = (0, 1, 1, 0)  # the same idea for one block per stage
SMALL_WIDTHS = (32, 64, 128, 256)
RESNET50_WIDTHS = (256, 512, 1024, 2048)


class Trunk(nn.Module):
    """Stem, four stages, and optional non-local blocks after the last blocks of a stage.

    The non-local blocks live in their own ModuleList instead of inside the stages, so the stage
    modules keep torchvision's names and indices and ImageNet weights load without renaming.
    """

    def __init__(
        self,
        conv1: nn.Module,
        bn1: nn.Module,
        maxpool: nn.Module,
        layers: Sequence[nn.Sequential],
        widths: Sequence[int],
        non_local: Sequence[int] = (0, 0, 0, 0),
    ) -> None:
        super().__init__()
        if not len(layers) == len(widths) == len(non_local) == 4:
            raise ValueError("a trunk has exactly four stages, widths and non-local counts")
        for layer, count in zip(layers, non_local, strict=True):
            if count > len(layer):
                raise ValueError(f"{count} non-local blocks asked for a stage of {len(layer)} blocks")
        self.conv1, self.bn1, self.relu, self.maxpool = conv1, bn1, nn.ReLU(inplace=True), maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.non_local = nn.ModuleList(
            nn.ModuleList(NonLocal(w) for _ in range(count)) for w, count in zip(widths, non_local, strict=True)
        )
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # B x C0 x H/4 x W/4
        for layer, blocks in zip((self.layer1, self.layer2, self.layer3, self.layer4), self.non_local, strict=True):
            first = len(layer) - len(blocks)  # non-local blocks follow the stage's last len(blocks) blocks
            for i, block in enumerate(layer):
                x = block(x)
                if i >= first:
                    x = blocks[i - first](x)
        return x  # B x out_channels x h x w


class ReIDNet(nn.Module):
    """Trunk -> GeM -> BN-neck. forward() returns (feat, bn_feat), both B x feat_dim.

    feat (before the neck) feeds the triplet and MMD losses; bn_feat, L2-normalised by the caller,
    feeds the cluster memories. The split is the BN-neck of Luo et al. (CVPRW 2019).
    """

    def __init__(self, trunk: Trunk, gem_p: float = 3.0) -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = GeM(gem_p)
        self.neck = BNNeck(trunk.out_channels)
        self.feat_dim = trunk.out_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.pool(self.trunk(x))  # B x D
        return feat, self.neck(feat)

    def extract(self, x: torch.Tensor, flip: bool = True) -> torch.Tensor:
        """Test-time feature, B x D: normalise(normalise(bn(x)) + normalise(bn(flip(x)))); flip=False: normalise(bn(x)).

        Each view's BN feature is L2-normalised (the field's models normalise in eval mode), the two
        are averaged, and the mean is normalised again, as the field's test code does, so cosine and
        Euclidean rankings agree. The caller chooses eval mode and no_grad. Evaluation, the clustering
        refresh (flip=False) and the exported network all call this one definition.
        """
        bn = F.normalize(self(x)[1], dim=1)
        if not flip:
            return bn
        bn_flip = F.normalize(self(torch.flip(x, dims=[3]))[1], dim=1)
        return F.normalize(bn + bn_flip, dim=1)


def build_model(
    arch: str,
    *,
    pretrained: str | None = None,
    last_stride: int = 1,
    non_local: bool = False,
    gem_p: float = 3.0,
) -> ReIDNet:
    """The network of model.arch. pretrained: None, "imagenet" (torchvision's cache) or a .pth path.

    GeM's p is fixed (a buffer), as in the PGM code DMDL builds on.
    """
    if last_stride not in (1, 2):
        raise ValueError(f"model.last_stride must be 1 or 2, got {last_stride}")
    if arch == "resnet50":
        trunk = _resnet50_trunk(last_stride, non_local)
    elif arch == "small":
        trunk = _small_trunk(last_stride, non_local)
    else:
        raise ValueError(f"unknown model.arch {arch!r}; expected one of {ARCHS}")
    if pretrained is not None:
        load_trunk_weights(trunk, _weights_file(pretrained, arch))
    model = ReIDNet(trunk, gem_p)
    if arch == "small":
        # Narrow convolutions run about 1.5x faster on CPU in NHWC; inputs may stay NCHW.
        model = model.to(memory_format=torch.channels_last)
    return model


def _resnet50_trunk(last_stride: int, non_local: bool) -> Trunk:
    net = resnet50(weights=None)
    # torchvision's ResNet-50 (v1.5) strides in conv2 and the shortcut of layer4's first block.
    net.layer4[0].conv2.stride = (last_stride, last_stride)
    net.layer4[0].downsample[0].stride = (last_stride, last_stride)
    counts = NON_LOCAL_RESNET50 if non_local else (0, 0, 0, 0)
    layers = [net.layer1, net.layer2, net.layer3, net.layer4]
    return Trunk(net.conv1, net.bn1, net.maxpool, layers, RESNET50_WIDTHS, counts)


def _small_trunk(last_stride: int, non_local: bool) -> Trunk:
    stem = SMALL_WIDTHS[0]
    conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=2, padding=1, bias=False)
    bn1 = nn.BatchNorm2d(stem)
    layers, cin = [], stem
    for width, stride in zip(SMALL_WIDTHS, (1, 2, 2, last_stride), strict=True):
        shortcut = None
        if stride != 1 or cin != width:
            shortcut = nn.Sequential(nn.Conv2d(cin, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
        layers.append(nn.Sequential(BasicBlock(cin, width, stride, shortcut)))
        cin = width
    for module in [conv1, bn1, *layers]:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    counts = NON_LOCAL_SMALL if non_local else (0, 0, 0, 0)
    return Trunk(conv1, bn1, nn.MaxPool2d(3, stride=2, padding=1), layers, SMALL_WIDTHS, counts)


def imagenet_cache_candidates() -> list[Path]:
    """Where torchvision caches ResNet-50 ImageNet weights: V1 (the field's) first, then V2."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    weights = (ResNet50_Weights.IMAGENET1K_V1, ResNet50_Weights.IMAGENET1K_V2)
    return [folder / Path(urlparse(w.url).path).name for w in weights]


def _weights_file(pretrained: str, arch: str) -> Path:
    if pretrained != "imagenet":
        path = Path(pretrained)
        if not path.is_file():
            raise MissingPathError(f"model.pretrained={pretrained!r}: no such file; give a .pth state dict")
        return path
    if arch != "resnet50":
        raise WeightsError(f"there are no ImageNet weights for arch {arch!r}; use model.pretrained=null")
    candidates = imagenet_cache_candidates()
    for path in candidates:
        if path.is_file():
            return path
    raise MissingPathError(
        f"model.pretrained='imagenet' but torchvision's cache holds no ResNet-50 weights: expected "
        f"{candidates[0]} (or {candidates[1].name} beside it). dmdl_dist never downloads. On a machine "
        f"with network run: python -c \"import torchvision; torchvision.models.resnet50(weights='IMAGENET1K_V1')\" "
        f"and copy the file there (TORCH_HOME moves the cache), or set model.pretrained=/path/to/resnet50.pth"
    )


def load_trunk_weights(trunk: Trunk, path: Path) -> None:
    """Loads a torchvision-layout state dict into the trunk, checking every key.

    Accepts a plain state dict or one under "state_dict", with or without DataParallel's
    "module." prefix. The classifier (fc.*) is dropped; only non-local blocks may be missing.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never runs code from the file
    except Exception as err:  # a pickle naming Python objects, a truncated or foreign file
        raise WeightsError(f"{path} is not a plain tensor state dict and was refused ({str(err).splitlines()[0]})") \
            from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict (found {type(state).__name__})")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    try:
        missing, unexpected = trunk.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        raise WeightsError(f"{path} does not fit the trunk: {err}") from err
    missing = [k for k in missing if not k.startswith("non_local.")]
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit the trunk: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}; "
            "expected a torchvision ResNet state dict of the same architecture"
        )
