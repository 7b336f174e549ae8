"""SynthVI: SYSU-MM01 layout, determinism, the modality gap it is built to carry, and its cache."""

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmdl_dist.data.synthvi import (
    BACKGROUND,
    GENERATOR_VERSION,
    INFRARED_CAMS,
    PALETTE,
    SKIN,
    TINY,
    TOP,
    VISIBLE_CAMS,
    SynthVIConfig,
    camera_plan,
    generate,
    identity,
    render,
    split_ids,
)
from dmdl_dist.data.synthvi.cues import (
    SHARED_CUES,
    chance_agreement,
    cue_agreement,
    cue_table,
    cue_values,
    load_identities,
    wrong_matches,
)

# Fewer ids than TINY where a test only needs a handful of files.
SMALL = replace(TINY, n_train=4, n_val=2, n_test=3, images_per_cam=(1, 2))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synthvi") / "tiny", TINY)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _ids(root: Path, name: str) -> list[int]:
    lines = (root / "exp" / f"{name}_id.txt").read_text().splitlines()
    assert len(lines) == 1, f"{name}_id.txt must hold one line"
    return [int(x) for x in lines[0].split(",")]


def test_layout_and_id_files_follow_sysu(tiny):
    ids = {name: _ids(tiny, name) for name in ("train", "val", "test")}
    assert [len(ids[n]) for n in ("train", "val", "test")] == [TINY.n_train, TINY.n_val, TINY.n_test]
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == list(range(1, TINY.n_ids + 1))  # disjoint, complete
    assert ids == split_ids(TINY)
    lo, hi = TINY.images_per_cam
    for pid in range(1, TINY.n_ids + 1):
        folders = {cam: tiny / f"cam{cam}" / f"{pid:04d}" for cam in range(1, 7)}
        seen = {cam: sorted(p.name for p in d.iterdir()) for cam, d in folders.items() if d.is_dir()}
        assert set(seen) & set(VISIBLE_CAMS) and set(seen) & set(INFRARED_CAMS), f"id {pid} lacks a modality"
        assert {cam: len(names) for cam, names in seen.items()} == camera_plan(TINY, pid)
        for names in seen.values():
            assert lo <= len(names) <= hi
            assert names == [f"{i:04d}.jpg" for i in range(1, len(names) + 1)]
    with Image.open(next((tiny / "cam1").rglob("*.jpg"))) as im:
        assert im.size == (TINY.width, TINY.height) and im.mode == "RGB"
    meta = json.loads((tiny / "synthvi.json").read_text())
    assert SynthVIConfig.from_dict(meta["config"]) == TINY
    assert meta["images"]["visible"] + meta["images"]["infrared"] == len(list(tiny.rglob("*.jpg")))
    # Not every identity is seen by every camera, as in SYSU-MM01.
    assert any(len(camera_plan(TINY, pid)) < 6 for pid in range(1, TINY.n_ids + 1))


def test_same_seed_same_bytes_and_other_seed_other_bytes(tmp_path):
    first, second = generate(tmp_path / "a", SMALL), generate(tmp_path / "b", SMALL)
    assert _digests(first) == _digests(second)
    other = _digests(generate(tmp_path / "c", replace(SMALL, seed=1)))
    assert other.keys() != _digests(first).keys() or other != _digests(first)


def test_worker_processes_do_not_change_the_files(tmp_path):
    one = generate(tmp_path / "one", SMALL, workers=1)
    two = generate(tmp_path / "two", SMALL, workers=2)
    assert _digests(one) == _digests(two)


def test_visible_is_coloured_and_infrared_is_grey(tiny):
    for cam in VISIBLE_CAMS + INFRARED_CAMS:
        img = np.asarray(Image.open(sorted((tiny / f"cam{cam}").rglob("*.jpg"))[0]), dtype=np.int16)
        spread = np.abs(img - img.mean(axis=2, keepdims=True)).mean()
        if cam in INFRARED_CAMS:
            assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all(), f"cam{cam} not grey"
        else:
            assert spread > 5, f"cam{cam} looks grey (mean channel spread {spread:.1f})"


def test_identity_attributes_are_recorded(tiny):
    recorded = json.loads((tiny / "synthvi_identities.json").read_text())
    assert len(recorded) == TINY.n_ids
    for pid in (1, TINY.n_ids):
        assert recorded[str(pid)] == json.loads(json.dumps(asdict(identity(TINY, pid))))
    # Attributes vary across identities (not one person repeated).
    assert len({(r["top"]["colour"], r["top"]["pattern"], r["long_sleeves"]) for r in recorded.values()}) > 8


def _silhouette(parts: np.ndarray) -> np.ndarray:
    """The part-label map cropped to the person and resampled to 32 x 16 (nearest)."""
    ys, xs = np.nonzero(parts != BACKGROUND)
    crop = parts[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    rows = np.linspace(0, crop.shape[0] - 1, 32).round().astype(int)
    cols = np.linspace(0, crop.shape[1] - 1, 16).round().astype(int)
    return crop[rows][:, cols]


def test_shape_cues_are_shared_across_modalities():
    # Visible -> infrared retrieval by part layout alone finds the same identity well above chance.
    pids = split_ids(TINY)["test"]
    vis = [(pid, _silhouette(render(TINY, pid, cam, 1).parts)) for pid in pids for cam in VISIBLE_CAMS[:2]]
    ir = [(pid, _silhouette(render(TINY, pid, cam, 1).parts)) for pid in pids for cam in INFRARED_CAMS]
    agreement = np.array([[(v == r).mean() for _, r in ir] for _, v in vis])  # visible x infrared
    vis_pids, ir_pids = np.array([p for p, _ in vis]), np.array([p for p, _ in ir])
    rank1 = (ir_pids[agreement.argmax(axis=1)] == vis_pids).mean()
    assert rank1 > 3 / len(pids), rank1


def test_infrared_heat_is_not_visible_luminance():
    people = [identity(TINY, pid) for pid in range(1, 301)]
    luminance = [np.dot(PALETTE[p.top.colour], (0.299, 0.587, 0.114)) for p in people]
    heat = [p.top.heat for p in people]
    assert abs(np.corrcoef(luminance, heat)[0, 1]) < 0.6
    # Skin is warmer than clothes: brighter in infrared.
    render_ir = render(TINY, 1, INFRARED_CAMS[0], 1)
    grey = render_ir.image[..., 0].astype(float)
    assert grey[render_ir.parts == SKIN].mean() > grey[render_ir.parts == TOP].mean()


def _colour_rank1(config: SynthVIConfig, query_cams: tuple[int, ...], gallery_cams: tuple[int, ...]) -> float:
    """Rank-1 of a 4x4x4 RGB histogram of the person's pixels, gallery cameras != query camera."""
    feats, pids, cams = [], [], []
    for pid in split_ids(config)["test"]:
        for cam, n in camera_plan(config, pid).items():
            for i in range(1, n + 1):
                r = render(config, pid, cam, i)
                q = r.image[r.parts != BACKGROUND].astype(int) // 64  # pixels x 3, 4 levels each
                h = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64)
                feats.append(np.sqrt(h / h.sum()))
                pids.append(pid)
                cams.append(cam)
    f, pids, cams = np.stack(feats), np.array(pids), np.array(cams)
    q, g = np.isin(cams, query_cams), np.isin(cams, gallery_cams)
    sim = f[q] @ f[g].T
    sim[cams[q][:, None] == cams[g][None, :]] = -np.inf
    return float((pids[g][sim.argmax(axis=1)] == pids[q]).mean())


def test_colour_is_a_visible_only_shortcut():
    within = _colour_rank1(TINY, VISIBLE_CAMS, VISIBLE_CAMS)
    across = _colour_rank1(TINY, VISIBLE_CAMS, INFRARED_CAMS)
    chance = 1 / TINY.n_test
    assert within > 3 * chance and within > 2 * across, (within, across, chance)


def test_existing_output_is_reused_or_refused(tiny, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*.jpg")}
    assert generate(tiny, TINY) == tiny
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*.jpg")} == before
    with pytest.raises(ValueError, match="seed"):
        generate(tiny, replace(TINY, seed=7))
    (tmp_path / "stranger").mkdir()
    with pytest.raises(FileExistsError, match="synthvi.json"):
        generate(tmp_path / "stranger", SMALL)
    (tmp_path / "stranger" / "synthvi.json").write_text("{")
    with pytest.raises(ValueError, match="unreadable"):
        generate(tmp_path / "stranger", SMALL)


def test_interrupted_generation_leaves_nothing_behind(tmp_path):
    def stop(done: int, total: int) -> None:
        assert 0 < done <= total
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "out", SMALL, progress=stop)
    assert list(tmp_path.iterdir()) == []


def test_config_is_validated():
    with pytest.raises(ValueError, match="images_per_cam"):
        SynthVIConfig(images_per_cam=(3, 2))
    with pytest.raises(ValueError, match="no field"):
        SynthVIConfig.from_dict({"seed": 0, "colour": 1})


def test_stats_measure_the_colour_shortcut_and_the_shared_shape(tiny):
    from dmdl_dist.data.synthvi.stats import DIRECTIONS, format_stats, retrieval_stats

    stats = retrieval_stats(tiny)
    colour, shape = stats["colour"], stats["shape"]
    assert set(colour) == set(shape) == {f"{q}->{g}" for q, g in DIRECTIONS}
    # Colour retrieves within a modality far better than across: the shortcut DMDL removes.
    assert colour["visible->visible"]["rank1"] > 2 * colour["visible->infrared"]["rank1"], colour
    assert colour["infrared->infrared"]["rank1"] > 2 * colour["infrared->visible"]["rank1"], colour
    # Shape (gradients of the grey image) carries across modalities better than colour does.
    assert shape["infrared->visible"]["mAP"] > colour["infrared->visible"]["mAP"], (shape, colour)
    table = format_stats(stats).splitlines()
    assert [line.split()[0] for line in table] == ["descriptor", "colour", "shape"]
    assert "V->I" in table[0] and f"{colour['visible->infrared']['rank1']:.1f}" in table[1]


def test_cue_agreement_reads_the_cues_a_feature_carries(tiny):
    """A wrong match of a feature that encodes one cue always agrees on that cue; chance is exact."""
    from dmdl_dist.data.synthvi.stats import cue_use, test_features
    from dmdl_dist.errors import MissingPathError

    with pytest.raises(MissingPathError, match="synthvi_identities.json is missing"):
        load_identities(tiny.parent)
    assert chance_agreement(["a", "a", "b"]) == pytest.approx(1 / 3)  # 2 of the 6 ordered pairs agree
    assert chance_agreement([True, False]) == 0 and np.isnan(chance_agreement([1]))
    identities = load_identities(tiny)
    f = test_features(tiny)
    # A feature that is the top's pattern and nothing else: every wrong match wears the same kind of top.
    kinds = sorted(set(cue_values(identities, f.pids)["top pattern"]))
    tops = cue_values(identities, f.pids)["top pattern"]
    feats = np.eye(len(kinds))[[kinds.index(t) for t in tops]]
    query, match = wrong_matches(feats, f.pids, f.modality)
    assert len(query) > 0 and (query != match).all()
    agree = cue_agreement(identities, query, match)
    assert agree["top pattern"] == 1.0 and set(agree) == set(SHARED_CUES)
    assert min(agree.values()) < 1  # the other cues are not carried along with it
    table = cue_table(identities, f.pids, {"tops": (query, match)})
    test_ids = sorted(set(f.pids.tolist()))
    assert table["chance"]["coat"] == chance_agreement([identities[p]["coat"] for p in test_ids])
    assert table["tops"] == agree
    # The descriptors' rows: every infrared query whose nearest visible image shows another identity.
    measured, errors = cue_use(tiny, f)
    assert list(measured) == ["chance", "colour", "shape"]
    assert errors["colour"] == len(wrong_matches(f.feats["colour"], f.pids, f.modality)[0]) > 0
    assert cue_agreement(identities, *wrong_matches(f.feats["shape"], f.pids, f.modality)) == measured["shape"]


def test_the_bias_dial_reaches_the_generated_data(tmp_path, monkeypatch):
    from dmdl_dist.config import ConfigError, load_config
    from dmdl_dist.engine.data import dataset_root

    monkeypatch.setenv("DMDL_CACHE", str(tmp_path))
    root = dataset_root(load_config("tiny", overrides=["data.synthvi_bias=0"]))
    assert root == tmp_path / f"synthvi-tiny-bias0-v{GENERATOR_VERSION}"  # a newer generator never meets a stale cache
    config = SynthVIConfig.from_dict(json.loads((root / "synthvi.json").read_text())["config"])
    assert config == replace(TINY, ir_luminance_weight=1.0) and config.bias == 0
    # At bias 0 infrared heat follows the visible colour's luminance exactly (within the garment's heat range).
    people = [identity(config, pid) for pid in range(1, 101)]
    luminance = [np.dot(PALETTE[p.top.colour], (0.299, 0.587, 0.114)) for p in people]
    assert np.corrcoef(luminance, [p.top.heat for p in people])[0, 1] > 0.99
    assert load_config("tiny").data.synthvi_bias is None and TINY.bias == pytest.approx(0.8)
    # The dial weakens the colour cue too: visible tops keep 0.3 + 0.7 * bias of their saturation.
    def top_spread(config: SynthVIConfig) -> float:
        shot = render(config, 1, VISIBLE_CAMS[0], 1)
        top = shot.image[shot.parts == TOP].astype(float)
        return float((top.max(axis=1) - top.min(axis=1)).mean())

    assert top_spread(config) < 0.6 * top_spread(replace(TINY, ir_luminance_weight=0.0))
    with pytest.raises(ConfigError, match=r"synthvi_bias.*\[0, 1\]"):
        load_config("tiny", overrides=["data.synthvi_bias=1.5"])


def test_synth_command_writes_and_measures(tmp_path, capsys):
    from dmdl_dist import cli

    assert cli.main(["synth", "--out", str(tmp_path / "b"), "--size", "tiny", "--bias", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmdl synth: error: --bias 1.5 is outside [0, 1]") and "Traceback" not in err
    assert not (tmp_path / "b").exists()
    assert cli.main(["synth", "--out", str(tmp_path / "s"), "--size", "tiny", "--bias", "1", "--stats"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"SynthVI (tiny, seed 0, bias 1) at {tmp_path / 's'}"
    assert out[1].startswith("descriptor") and out[2].startswith("colour") and out[3].startswith("shape")
    assert out[5].startswith("wrong infrared->visible top-1 matches") and out[6].split() == ["cue", "chance", "colour",
                                                                                          "shape"]
    assert [line[:15].strip() for line in out[7:]] == [*SHARED_CUES, "wrong matches"]


def test_stats_measure_a_checkpoint_like_the_descriptors(tiny, tmp_path, capsys):
    """`--stats --checkpoint`: a trained model's features read within and across modalities like the descriptors."""
    import torch

    from dmdl_dist import cli
    from dmdl_dist.config import load_config, to_dict
    from dmdl_dist.data.datasets import load_manifest
    from dmdl_dist.data.manifest import MODALITY_NAMES, columns, select
    from dmdl_dist.data.synthvi.stats import DIRECTIONS, retrieval_stats
    from dmdl_dist.engine.checkpoint import save_atomic
    from dmdl_dist.models.backbone import build_model
    from dmdl_dist.serve.inference import checkpoint_feature_fn

    torch.manual_seed(0)
    path = tmp_path / "best.pt"
    save_atomic({"model": build_model("small").state_dict(), "config": to_dict(load_config("tiny")), "epoch": 1}, path)
    stats = retrieval_stats(tiny, [path])
    assert list(stats) == ["colour", "shape", "model"] and set(stats["model"]) == {f"{q}->{g}" for q, g in DIRECTIONS}
    # The same figure by hand: each visible image's nearest other visible image (cosine) has its identity.
    manifest = select(load_manifest("synthvi", tiny), split="test")
    feats = checkpoint_feature_fn(path, tiny, progress=False)(manifest)
    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    test = columns(manifest)
    visible = np.flatnonzero(np.array([MODALITY_NAMES[m] for m in test["modality"]]) == "visible")
    sim = feats[visible] @ feats[visible].T
    np.fill_diagonal(sim, -np.inf)
    hits = test["pid"][visible][sim.argmax(axis=1)] == test["pid"][visible]
    assert stats["model"]["visible->visible"]["rank1"] == pytest.approx(100 * hits.mean())
    assert len(retrieval_stats(tiny, [path, path])) == 4  # model1, model2

    command = ["synth", "--out", str(tiny), "--size", "tiny", "--stats", "--checkpoint"]
    assert cli.main([*command, str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[4].startswith("model ") and out[5] == f"model: {path}" and out[8].split()[-1] == "model"
    assert cli.main([*command, str(tmp_path / "x.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
