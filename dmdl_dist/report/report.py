"""report.md for a run folder (write_report) and for a results table such as an ablation (write_table_report).

A run folder's report reads what the run left behind and draws the rest:

    RUN_DIR/report.md        config, environment, test metrics, time per phase, epochs, pictures
    RUN_DIR/figures/*.png    curves (losses, clusters, association, validation), ranked.png, gap.png
    RUN_DIR/tb/              TensorBoard scalar events, rewritten from metrics.jsonl each time
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from dmdl_dist.engine.atomic import write_text
from dmdl_dist.errors import MissingPathError
from dmdl_dist.report.curves import plot_curves
from dmdl_dist.report.environment import environment, environment_markdown
from dmdl_dist.report.gap import between_identity_distance, cross_modality_distance, load_snapshots
from dmdl_dist.report.gap_plot import plot_gap
from dmdl_dist.report.history import read_history
from dmdl_dist.report.markdown import dict_rows_table, epoch_table, metrics_table, phase_table, phase_times, table
from dmdl_dist.report.tb import write_tensorboard

REPORT, FIGURES, TB, GAP = "report.md", "figures", "tb", "gap"
CHECKPOINTS = ("best.pt", "last.pt")  # the first present one draws the ranked lists


def write_report(run_dir: str | Path, *, model_pictures: bool = True, model_inputs: tuple | None = None) -> Path:
    """Writes RUN_DIR/report.md (and its figures and TensorBoard events) from whatever the run has written.

    Ranked lists need a model and the test set: `model_inputs` = (model, root, test manifest, cfg,
    device) when the caller holds them (the trainer, after its final evaluation); otherwise the
    run's checkpoint and the data set on this machine, and without them the report says why the
    picture is missing. Gap pictures come from RUN_DIR/gap/*.npz (the trainer's snapshots).
    """
    run_dir = Path(run_dir)
    config_file, metrics_file, results_file = (run_dir / n for n in ("config.yaml", "metrics.jsonl", "results.json"))
    if not (config_file.is_file() or metrics_file.is_file()):
        raise MissingPathError(f"{run_dir} is not a dmdl_dist run folder: it has neither config.yaml nor "
                                "metrics.jsonl (a run folder is what `dmdl train` writes under runs/NAME)")
    history = read_history(metrics_file)
    results = json.loads(results_file.read_text()) if results_file.is_file() else None
    config_text = config_file.read_text() if config_file.is_file() else None
    figures = run_dir / FIGURES

    pictures: list[tuple[str, Path]] = []
    notes: list[str] = []
    if history:
        pictures += [(p.stem, p) for p in plot_curves(history, figures)]
        write_tensorboard(history, run_dir / TB)
    else:
        notes.append("No epoch has finished yet (metrics.jsonl is empty or missing): no curves.")
    if model_pictures:
        ranked, note = _ranked_picture(run_dir, figures / "ranked.png", model_inputs)
        pictures += [("ranked lists", ranked)] if ranked else []
        notes += [note] if note else []
    gap_md = ""
    snapshots = load_snapshots(run_dir / GAP) if (run_dir / GAP).is_dir() else {}
    if snapshots:
        pictures.append(("modality gap", plot_gap(snapshots, figures / "gap.png")))
        gap_md = _gap_table(snapshots)

    parts = [f"# Run report: {run_dir.resolve().name}\n",
             f"_Written by `dmdl report` on {time.strftime('%Y-%m-%d %H:%M')}._\n",
             "## Test results\n", _results_section(results, history, config_text),
             "## Pictures\n", _pictures_section(pictures, notes, run_dir), gap_md]
    if history:
        parts += ["## Time per phase\n",
                  "Summed over epochs (refresh = feature extraction, clustering and memory rebuild).\n",
                  phase_table(phase_times(history, results)),
                  "## Epochs\n", epoch_table(history), _warnings(history),
                  f"## TensorBoard\n\n`tensorboard --logdir {run_dir / TB}`\n"]
    parts += ["## Configuration\n", f"```yaml\n{config_text.rstrip()}\n```\n" if config_text else "No config.yaml.\n",
              "## Environment\n", "Of the machine that wrote this report; the workers are the run's.\n",
              environment_markdown(environment(history))]
    return write_text(run_dir / REPORT, "\n".join(parts))


def write_table_report(
    title: str,
    table: str | Sequence[dict],
    out_dir: str | Path,
    extra_sections: dict[str, str] | None = None,
    *,
    filename: str = REPORT,
) -> Path:
    """A report.md for a results table (`dmdl ablate`, `dmdl tune`): title, table, extra sections, environment.

    Args:
        table: a Markdown table, or rows as dicts (columns in first-seen key order).
        extra_sections: heading -> Markdown body, in order, after the table.
    """
    body = table if isinstance(table, str) else dict_rows_table(list(table))
    parts = [f"# {title}\n", body]
    for heading, text in (extra_sections or {}).items():
        parts += [f"## {heading}\n", text.rstrip() + "\n"]
    parts += ["## Environment\n", environment_markdown(environment())]
    return write_text(Path(out_dir) / filename, "\n".join(parts))


def _results_section(results: dict | None, history: list[dict], config_text: str | None) -> str:
    if results is None:
        planned = _planned_epochs(config_text)
        of = f" of {planned}" if planned else ""
        return f"The run has not finished: no results.json yet ({len(history)}{of} epochs recorded).\n"
    lines = [f"Model: {results.get('selected', 'unknown')}, after {results.get('epochs', '?')} epochs."]
    if results.get("best_val_mAP") is not None:
        lines.append(f"Best validation mAP: {results['best_val_mAP']:.2f}.")
    return " ".join(lines) + "\n\n" + metrics_table(results.get("test", {}))


def _planned_epochs(config_text: str | None) -> int | None:
    train = (yaml.safe_load(config_text) or {}).get("train", {}) if config_text else {}
    try:
        return int(train["stage1_epochs"]) + int(train["stage2_epochs"])
    except (KeyError, TypeError, ValueError):
        return None


def _pictures_section(pictures: list[tuple[str, Path]], notes: list[str], run_dir: Path) -> str:
    lines = [f"### {title}\n\n![{title}]({path.relative_to(run_dir).as_posix()})\n" for title, path in pictures]
    return "\n".join(lines + [f"_{note}_\n" for note in notes])


def _gap_table(snapshots: dict[str, dict]) -> str:
    rows = []
    for title, s in snapshots.items():
        cross = cross_modality_distance(s["features"], s["modality"], s["pid"])
        between = between_identity_distance(s["features"], s["pid"])
        rows.append([title, len(s["pid"]), f"{cross:.3f}", f"{between:.3f}", f"{cross / max(between, 1e-12):.2f}"])
    return ("Cross-modality distance: mean over identities of the distance between the mean visible and the mean "
            "infrared L2-normalised feature (0 = no gap, at most 2). Between-identity distance: mean distance "
            "between two identities' mean features; a ratio above 1 means an identity's two modalities lie further "
            "apart than two different people do.\n\n"
            + table(["snapshot", "images", "cross-modality distance", "between-identity distance", "ratio"], rows))


def _ranked_picture(run_dir: Path, out_png: Path, model_inputs: tuple | None) -> tuple[Path | None, str | None]:
    """(the ranked-list PNG, None), or (None, why it was not drawn)."""
    from dmdl_dist.report.ranked import ranked_lists_for_run

    if model_inputs is not None:
        return ranked_lists_for_run(*model_inputs, out_png), None
    checkpoint = next((run_dir / n for n in CHECKPOINTS if (run_dir / n).is_file()), None)
    if checkpoint is None:
        return None, "No checkpoint (best.pt or last.pt): no ranked lists."
    from dmdl_dist.data.datasets import load_manifest
    from dmdl_dist.data.manifest import select
    from dmdl_dist.distributed.session import local_device
    from dmdl_dist.serve.inference import load_model

    device = local_device("auto")
    model, cfg = load_model(checkpoint, device)
    root = _dataset_on_disk(cfg)
    if root is None:
        return None, f"The {cfg.data.dataset} data set is not on this machine: no ranked lists."
    manifest = load_manifest(cfg.data.dataset, root, trial=cfg.data.trial, holdout_val=cfg.data.holdout_val)
    png = ranked_lists_for_run(model, root, select(manifest, split="test"), cfg, device, out_png)
    return png, None


def _dataset_on_disk(cfg) -> Path | None:
    """The run's data set root if it exists here; SynthVI is never generated just for a picture."""
    from dmdl_dist.engine.data import cache_dir, dataset_root, synthvi_folder

    if cfg.data.root is None and cfg.data.dataset == "synthvi":
        return dataset_root(cfg) if (cache_dir() / synthvi_folder(cfg)).is_dir() else None
    root = Path(cfg.data.root).expanduser() if cfg.data.root else None
    return root if root is not None and root.is_dir() else None


def _warnings(history: Sequence[dict]) -> str:
    """Epochs the trainer warned about (a degenerate clustering), or nothing."""
    flagged = [r for r in history if r.get("degenerate")]
    if not flagged:
        return ""
    lines = "\n".join(f"- epoch {r['epoch']}: degenerate clustering: {'; '.join(r['degenerate'])}" for r in flagged)
    return ("## Warnings\n\n" + lines + "\n\nA degenerate clustering trains on little: see cluster.eps, cluster.k1 "
            "and cluster.min_samples (`dmdl config --keys`).\n")
