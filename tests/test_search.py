"""`dmdl search`: a planted copy comes first, the gallery index is cached and rebuilt when the folder changes."""

import argparse
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import dmdl_dist.serve.search as search_mod
from dmdl_dist.commands.serve import COMMANDS, add_parsers
from dmdl_dist.config import load_config, to_dict
from dmdl_dist.engine.checkpoint import save_atomic
from dmdl_dist.errors import DmdlError
from dmdl_dist.models.backbone import build_model
from dmdl_dist.serve.gallery_index import CACHE_DIR, EmptyGalleryError, list_gallery
from dmdl_dist.serve.search import GalleryImagesError, QueryImageError, search
from dmdl_dist.serve.search_figure import CELL, GAP, PAD, THUMB, figure_size

PLANTED = "cam2/0007.png"
SUFFIXES = (".png", ".jpg", ".bmp")


def _blocky_image(rng: np.random.Generator) -> Image.Image:
    """64 x 32 (h x w) RGB of 8 x 4 random colour blocks: different images give clearly different features."""
    blocks = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
    return Image.fromarray(blocks.repeat(8, axis=0).repeat(8, axis=1))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("small")
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_atomic({"model": model.state_dict(), "config": to_dict(load_config("tiny")), "epoch": 1}, path)
    return path


@pytest.fixture
def gallery(tmp_path):
    """20 images in two subfolders (png, jpg, bmp), a text file to ignore, and the query: a copy of PLANTED."""
    rng = np.random.default_rng(0)
    root = tmp_path / "gallery"
    for i in range(20):
        cam = root / f"cam{1 + i % 2}"
        cam.mkdir(parents=True, exist_ok=True)
        suffix = ".png" if i == 7 else SUFFIXES[i % 3]  # the planted image is a PNG: lossless, exact copy
        _blocky_image(rng).save(cam / f"{i:04d}{suffix}")
    (root / "notes.txt").write_text("not an image")
    shutil.copy(root / PLANTED, tmp_path / "query.png")
    return root


@pytest.fixture
def counted(monkeypatch):
    """Sizes of the image lists that search extracts features of, in call order."""
    calls = []
    real = search_mod.extract_features

    def counting(model, root, paths, **kwargs):
        calls.append(len(paths))
        return real(model, root, paths, **kwargs)

    monkeypatch.setattr(search_mod, "extract_features", counting)
    return calls


def _cache_files(gallery):
    return sorted(p.suffix for p in (gallery / CACHE_DIR).iterdir())


def test_planted_copy_first_and_second_search_uses_the_cache(checkpoint, gallery, counted):
    assert len(list_gallery(gallery)) == 20  # notes.txt is not an image
    first = search(checkpoint, gallery, gallery.parent / "query.png", top=5)
    assert counted == [20, 1]  # the gallery, then the query
    assert not first.cached and first.gallery_size == 20
    assert [h.rank for h in first.hits] == [1, 2, 3, 4, 5]
    assert first.hits[0].path == PLANTED and first.hits[0].score == pytest.approx(1.0, abs=1e-4)
    scores = [h.score for h in first.hits]
    assert scores == sorted(scores, reverse=True) and scores[1] < 0.999  # the copy wins clearly
    assert _cache_files(gallery) == [".faiss", ".json"]

    second = search(checkpoint, gallery, gallery.parent / "query.png", top=5)
    assert counted == [20, 1, 1]  # only the query: the gallery index came from the cache
    assert second.cached and second.hits == first.hits

    everything = search(checkpoint, gallery, gallery.parent / "query.png", top=50)
    assert len(everything.hits) == 20 and everything.cached  # top is clipped to the gallery


def test_a_changed_gallery_rebuilds_the_cache(checkpoint, gallery, counted):
    query = gallery.parent / "query.png"
    search(checkpoint, gallery, query, top=3)
    _blocky_image(np.random.default_rng(1)).save(gallery / "cam1" / "new.png")  # an added image
    added = search(checkpoint, gallery, query, top=3)
    assert counted == [20, 1, 21, 1] and not added.cached and added.gallery_size == 21
    assert _cache_files(gallery) == [".faiss", ".json"]  # the entry of the old gallery is gone

    stat = (gallery / "cam1" / "0000.png").stat()
    os.utime(gallery / "cam1" / "0000.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a rewritten image
    touched = search(checkpoint, gallery, query, top=3)
    assert counted[-2:] == [21, 1] and not touched.cached and touched.hits[0].path == PLANTED


def test_a_read_only_gallery_is_searched_without_a_cache(checkpoint, gallery, counted, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(search_mod, "save_cached", refuse)
    result = search(checkpoint, gallery, gallery.parent / "query.png", top=3)
    assert result.hits[0].path == PLANTED and not result.cached and counted == [20, 1]
    assert "cannot cache the gallery index" in caplog.text


def test_cli_prints_the_table_and_draws_the_picture(checkpoint, gallery, capsys):
    out = gallery.parent / "ranked.png"
    parser = argparse.ArgumentParser(prog="dmdl")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["search", "--checkpoint", str(checkpoint), "--gallery", str(gallery), "--query",
                              str(gallery.parent / "query.png"), "--top", "4", "--out", str(out), "--no-progress"])
    assert COMMANDS[args.command](args) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["rank", "score", "path"]
    rank, score, path = lines[2].split()
    assert (rank, path) == ("1", PLANTED) and float(score) == pytest.approx(1.0, abs=1e-3)
    assert len([line for line in lines if line.split()[:1] in (["2"], ["3"], ["4"])]) == 3

    assert out.stat().st_size > 0
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size == figure_size(4)
        pixels = np.asarray(picture.convert("RGB"))
    box = np.s_[PAD:PAD + THUMB[1], PAD:PAD + THUMB[0]]  # the query's thumbnail; hit 1 sits a cell and a gap right
    hit1 = np.s_[PAD:PAD + THUMB[1], CELL[0] + GAP + PAD:CELL[0] + GAP + PAD + THUMB[0]]
    assert np.array_equal(pixels[box], pixels[hit1])  # the planted copy is drawn as hit 1
    assert pixels[box].std() > 10  # and it is an image, not background


def test_bad_input_is_a_clear_error(checkpoint, gallery, tmp_path):
    query = tmp_path / "query.png"
    with pytest.raises(FileNotFoundError, match="gallery folder .*missing.* does not exist"):
        search(checkpoint, tmp_path / "missing", query)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(EmptyGalleryError, match="holds no images"):
        search(checkpoint, tmp_path / "empty", query)
    with pytest.raises(FileNotFoundError, match="query image .*nope.png does not exist"):
        search(checkpoint, gallery, tmp_path / "nope.png")
    (tmp_path / "broken.png").write_bytes(b"this is not a PNG")
    with pytest.raises(QueryImageError, match="broken.png cannot be used: not an image"):
        search(checkpoint, gallery, tmp_path / "broken.png")
    (gallery / "cam1" / "cut.jpg").write_bytes((gallery / "cam1" / "0004.jpg").read_bytes()[:200])
    with pytest.raises(GalleryImagesError, match=r"1 of 21 images .* \(cam1/cut.jpg: truncated"):
        search(checkpoint, gallery, query)
    # every one is a DmdlError, which the CLI prints as one line (exit code 2)
    assert all(issubclass(e, DmdlError) for e in (EmptyGalleryError, QueryImageError, GalleryImagesError))

    parser = argparse.ArgumentParser(prog="dmdl")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit):  # argparse rejects it before anything is read
        parser.parse_args(["search", "--checkpoint", "c.pt", "--gallery", ".", "--query", "q.png", "--top", "0"])
