"""Library versions and devices, so a reader can tell what produced (or re-drew) a run's numbers."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

# Distribution names as pip knows them; faiss ships as faiss-cpu or faiss-gpu.
PACKAGES = ("torch", "torchvision", "ray", "deepspeed", "faiss-cpu", "faiss-gpu", "numpy", "scikit-learn", "pyarrow")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions read from package metadata (nothing is imported); absent packages are left out."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(names)} x CUDA ({', '.join(sorted(set(names)))}), CUDA {torch.version.cuda}"
    return f"CPU only ({os.cpu_count()} cores)"


def environment(history: list[dict] | None = None) -> dict[str, str]:
    """Name -> description: python, platform, dmdl_dist, packages, device, and the run's workers per epoch."""
    import dmdl_dist

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "dmdl_dist": dmdl_dist.__version__}
    env.update(package_versions())
    env["device (this machine)"] = device_description()
    workers = sorted({int(r["workers"]) for r in history or [] if "workers" in r})
    if workers:
        env["training workers"] = ", ".join(map(str, workers))
    return env


def environment_markdown(env: dict[str, str]) -> str:
    return "\n".join(f"- **{name}**: {value}" for name, value in env.items()) + "\n"
