"""CBT's two training views: data/transforms.py's array View against torchvision's own transforms.

    python bench/augment.py [--pairs 2000] [--sizes 64x32 288x144]

Times train_views and reference_views (the same pipeline and draws built from torchvision's
transforms, data/reference_views.py) on one thread, per modality and image size, on images
already at the size (what the image cache hands the loader), and prints microseconds per pair
of views and the ratio. Both give the same views to 1e-4 (tests/test_transforms.py). Run
nothing else beside it: two cores shared distort both figures.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from dmdl_dist.data.manifest import INFRARED, MODALITY_NAMES, VISIBLE
from dmdl_dist.data.reference_views import reference_views
from dmdl_dist.data.transforms import train_views


def per_pair(views, images: list, pairs: int) -> float:
    """Microseconds per call of views, over `pairs` calls cycling through the images."""
    for image in images[:20]:
        views(image)  # warm-up
    start = time.perf_counter()
    for i in range(pairs):
        views(images[i % len(images)])
    return 1e6 * (time.perf_counter() - start) / pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--sizes", nargs="+", default=["64x32", "288x144"], metavar="HxW")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a loader process's share
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    print(f"{'modality':9s} {'size':8s} {'torchvision us':>15s} {'ours us':>8s} {'ratio':>6s}")
    for size in args.sizes:
        height, width = (int(v) for v in size.split("x"))
        for modality in (VISIBLE, INFRARED):
            planes = rng.integers(0, 256, (16, height, width, 1 if modality == INFRARED else 3), dtype=np.uint8)
            images = [Image.fromarray(np.broadcast_to(p, (height, width, 3)).copy()) for p in planes]
            kwargs = dict(pad=2 if height == 64 else 10)
            slow = per_pair(reference_views(modality, height, width, **kwargs), images, args.pairs)
            fast = per_pair(train_views(modality, height, width, **kwargs), images, args.pairs)
            print(f"{MODALITY_NAMES[modality]:9s} {size:8s} {slow:15.0f} {fast:8.0f} {slow / fast:6.2f}")


if __name__ == "__main__":
    main()
