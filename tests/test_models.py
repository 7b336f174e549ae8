import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet50

from dmdl_dist.models.backbone import (
    NON_LOCAL_RESNET50,
    build_model,
    imagenet_cache_candidates,
)
from dmdl_dist.models.layers import GeM, NonLocal


def test_small_outputs_shapes_and_dtypes():
    model = build_model("small")
    feat, bn = model(torch.randn(4, 3, 64, 32))
    assert model.feat_dim == 256
    assert feat.shape == bn.shape == (4, 256)
    assert feat.dtype == bn.dtype == torch.float32


@pytest.mark.parametrize("arch", ["small", "resnet50"])
def test_bn_neck_bias_is_frozen_at_zero(arch):
    model = build_model(arch)
    assert not model.neck.bias.requires_grad
    assert torch.all(model.neck.bias == 0) and torch.all(model.neck.weight == 1)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert id(model.neck.bias) not in trainable


@pytest.mark.parametrize(
    ("arch", "last_stride", "expected"),
    [
        ("resnet50", 1, (2048, 4, 2)),
        ("resnet50", 2, (2048, 2, 1)),
        ("small", 1, (256, 8, 4)),
        ("small", 2, (256, 4, 2)),
    ],
)
def test_last_stride_sets_the_feature_map_size(arch, last_stride, expected):
    model = build_model(arch, last_stride=last_stride).eval()
    height = 64 if arch == "resnet50" else 128
    with torch.no_grad():
        fmap = model.trunk(torch.randn(1, 3, height, height // 2))
    assert tuple(fmap.shape[1:]) == expected


def test_resnet50_non_local_placement_and_identity_start():
    model = build_model("resnet50", non_local=True).eval()
    assert tuple(len(blocks) for blocks in model.trunk.non_local) == NON_LOCAL_RESNET50
    plain = build_model("resnet50").eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        # Fresh non-local blocks are the identity, so the same weights give the same features.
        assert torch.allclose(model(x)[0], plain(x)[0], atol=1e-5)


def test_non_local_block_learns_away_from_identity():
    block = NonLocal(8)
    x = torch.randn(2, 8, 4, 3)
    assert torch.equal(block(x), x)
    torch.nn.init.ones_(block.out[1].weight)
    assert not torch.allclose(block(x), x)


def test_gem_between_mean_and_max():
    x = torch.rand(2, 5, 4, 4)
    pooled = GeM(3.0)(x)
    assert torch.all(pooled >= x.mean(dim=(2, 3)) - 1e-6) and torch.all(pooled <= x.amax(dim=(2, 3)) + 1e-6)


def test_extract_is_normalised_mean_of_normalised_views():
    model = build_model("small").eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        got = model.extract(x)
        expected = F.normalize(
            F.normalize(model(x)[1], dim=1) + F.normalize(model(torch.flip(x, dims=[3]))[1], dim=1), dim=1
        )
        mirrored = model.extract(torch.flip(x, dims=[3]))
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(got.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(got, mirrored, atol=1e-5)


def test_imagenet_without_cached_file_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        build_model("resnet50", pretrained="imagenet")
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "IMAGENET1K_V1" in message and "model.pretrained" in message


def test_imagenet_loads_torchvision_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = resnet50(weights=None)
    torch.nn.init.normal_(reference.layer4[2].bn3.running_mean)
    path = imagenet_cache_candidates()[0]
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)  # includes fc.*, which must be ignored
    model = build_model("resnet50", pretrained="imagenet", non_local=True)
    assert torch.equal(model.trunk.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.trunk.layer4[2].bn3.running_mean, reference.layer4[2].bn3.running_mean)


def test_local_state_dict_loads_with_strict_key_check(tmp_path):
    source = build_model("small")
    torch.nn.init.normal_(source.trunk.layer3[0].conv1.weight)
    state = source.trunk.state_dict()
    good = tmp_path / "small.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, good)
    loaded = build_model("small", pretrained=str(good))
    assert torch.equal(loaded.trunk.layer3[0].conv1.weight, source.trunk.layer3[0].conv1.weight)

    extra = tmp_path / "extra.pth"
    torch.save({**state, "head.weight": torch.zeros(1)}, extra)
    with pytest.raises(ValueError, match="head.weight"):
        build_model("small", pretrained=str(extra))
    short = tmp_path / "short.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.")}, short)
    with pytest.raises(ValueError, match="missing"):
        build_model("small", pretrained=str(short))
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_model("small", pretrained=str(tmp_path / "absent.pth"))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown model.arch"):
        build_model("vit")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_model("small", pretrained="imagenet")
    with pytest.raises(ValueError, match="last_stride"):
        build_model("small", last_stride=3)


def test_small_trains_one_step():
    model = build_model("small", non_local=True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    feat, bn = model(torch.randn(8, 3, 64, 32))
    (feat.pow(2).mean() + bn.pow(2).mean()).backward()
    before = model.trunk.conv1.weight.detach().clone()
    optimizer.step()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert not torch.equal(before, model.trunk.conv1.weight)
