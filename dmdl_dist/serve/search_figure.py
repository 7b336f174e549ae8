"""The ranked-list picture of `dmdl search --out`: the query, a gap, then the hits left to right with scores.

Drawn with PIL (already a dependency) on a fixed pixel grid, so the PNG's size is known in advance:
figure_size(k). Every image is scaled to fit a THUMB box, keeping its aspect ratio, and centred in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from dmdl_dist.engine.atomic import atomic_path

THUMB = (64, 128)  # width, height of the box an image is fitted into: re-id crops are about 1:2
PAD = 6  # pixels around a thumbnail
TEXT_H = 16  # pixels of the caption line under a thumbnail
GAP = 20  # pixels between the query and the first hit
CELL = (THUMB[0] + 2 * PAD, PAD + THUMB[1] + TEXT_H)  # width, height of one image with its caption
BACKGROUND, INK, QUERY_FRAME = (255, 255, 255), (0, 0, 0), (0, 90, 200)


def figure_size(k: int) -> tuple[int, int]:
    """(width, height) in pixels of the picture of a query and k hits."""
    return (k + 1) * CELL[0] + GAP, CELL[1]


def ranked_picture(query: str | Path, hits: Sequence[str | Path], scores: Sequence[float], out: str | Path) -> Path:
    """Writes the PNG atomically: query (framed) first, then hits[i] captioned "rank: score"."""
    if len(hits) != len(scores):
        raise ValueError(f"{len(hits)} hit images but {len(scores)} scores")
    canvas = Image.new("RGB", figure_size(len(hits)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    _cell(canvas, draw, font, 0, query, "query")
    x0, y0 = PAD - 2, PAD - 2  # the query's frame, 2 pixels outside its thumbnail box
    draw.rectangle((x0, y0, x0 + THUMB[0] + 3, y0 + THUMB[1] + 3), outline=QUERY_FRAME, width=2)
    for rank, (path, score) in enumerate(zip(hits, scores, strict=True), start=1):
        _cell(canvas, draw, font, rank * CELL[0] + GAP, path, f"{rank}: {score:.3f}")
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")  # the temporary name has no .png suffix for PIL to read
    return Path(out)


def _cell(canvas: Image.Image, draw: ImageDraw.ImageDraw, font, left: int, path: str | Path, caption: str) -> None:
    with Image.open(path) as image:
        thumb = ImageOps.contain(image.convert("RGB"), THUMB)
    x = left + PAD + (THUMB[0] - thumb.width) // 2
    y = PAD + (THUMB[1] - thumb.height) // 2
    canvas.paste(thumb, (x, y))
    draw.text((left + PAD, PAD + THUMB[1] + 2), caption, fill=INK, font=font)
