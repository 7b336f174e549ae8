"""`dmdl ablate`: the paper's component study, each variant a normal training run.

Variants are config overrides on one base config, so an ablation row is reproduced with
`dmdl train --set ...` from the table alone.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from dmdl_dist.config import (
    Config,
    ConfigError,
    apply_overrides,
    describe_differences,
    differing_keys,
    load_run_config,
    to_dict,
)
from dmdl_dist.data.manifest import write_parquet
from dmdl_dist.engine.atomic import write_text
from dmdl_dist.engine.trainer import train

_NO_CBT = {"cbt.augment": False, "cbt.refine": False, "cbt.mmd": False}
VARIANTS: dict[str, dict] = {
    "floor (untrained)": {"train.stage1_epochs": 0, "train.stage2_epochs": 0, "data.holdout_val": False},
    "baseline": {"cai.enabled": False, **_NO_CBT},
    "+CAI": {"cai.enabled": True, **_NO_CBT},
    "+CBT": {"cai.enabled": False},
    "full DMDL": {},
    "ceiling (supervised)": {"train.supervised": True},
}
METRICS = ("rank1", "mAP", "mINP")


def variant_config(base: Config, overrides: dict, seed: int) -> Config:
    cfg = apply_overrides(copy.deepcopy(base), {**overrides, "train.seed": seed})
    return cfg


def _same_config(run_dir: Path, cfg: Config) -> None:
    """Refuses to read back or resume a run folder that another config trained (another --set, preset or bias)."""
    if not (run_dir / "config.yaml").is_file():
        return
    differ = differing_keys(to_dict(load_run_config(run_dir)), to_dict(cfg))
    if differ:
        raise ConfigError(f"{run_dir} was trained with another config ({describe_differences(differ)}; there -> "
                          "now): its row would not be this ablation's. Give this ablation another --out, or "
                          "remove that folder to train it again")


def run_ablation(base: Config, out: str | Path, *, seeds: int = 1, variants: list[str] | None = None,
                 echo=print, after_run: Callable[[Path, Config], None] | None = None) -> pa.Table:
    """Trains every variant for each seed; writes ablation.md and ablation.parquet under `out`.

    `after_run(run_dir, cfg)` is called after each run this call trains (the command writes its report there).
    """
    out = Path(out)
    names = variants or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown ablation variant(s) {unknown}; choose from {list(VARIANTS)}")
    rows = []
    for name in names:
        for seed in range(seeds):
            cfg = variant_config(base, VARIANTS[name], seed)
            run_dir = out / f"{_slug(name)}-seed{seed}"
            results_file = run_dir / "results.json"
            _same_config(run_dir, cfg)
            if results_file.is_file():  # resumable: finished variants are read back, not retrained
                results = json.loads(results_file.read_text())
            else:
                echo(f"== {name}, seed {seed}")
                results = train(cfg, run_dir, resume=(run_dir / "last.pt").is_file(), echo=echo)
                if after_run is not None:
                    after_run(run_dir, cfg)
            for protocol, res in results["test"].items():
                rows.append({"variant": name, "seed": seed, "protocol": protocol,
                             **{k: float(res["mean"][k]) for k in METRICS}})
    table = pa.Table.from_pylist(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(table, out / "ablation.parquet")
    md = markdown_table(rows, names)
    write_text(out / "ablation.md", md)
    echo(md)
    return table


def markdown_table(rows: list[dict], names: list[str]) -> str:
    """Mean ± std over seeds per variant and protocol."""
    protocols = sorted({r["protocol"] for r in rows})
    head = "| variant | protocol | seeds | " + " | ".join(METRICS) + " |"
    lines = [head, "|" + "---|" * (3 + len(METRICS))]
    for name in names:
        for proto in protocols:
            sel = [r for r in rows if r["variant"] == name and r["protocol"] == proto]
            if not sel:
                continue
            cells = []
            for k in METRICS:
                vals = np.array([r[k] for r in sel])
                cells.append(f"{vals.mean():.1f} ± {vals.std():.1f}" if len(vals) > 1 else f"{vals.mean():.1f}")
            lines.append(f"| {name} | {proto} | {len(sel)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")
