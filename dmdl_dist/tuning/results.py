"""A finished sweep as files: trials.parquet (one row per trial), summary.md, best_config.yaml.

The table is built from plain `TrialRecord`s, so everything but `records_from_grid` is pure.
Trials are ranked on the sweep metric, measured on held-out training identities, never the test
set: by default its value at each trial's final epoch (`--rank final`: what the trial ends with;
trials ASHA stopped early rank after those that finished), or its best value over the trial's
epochs (`--rank best`: the epoch the run keeps as best.pt, an optimistic pick among noisy epochs).
A trial that shares a stage 1 reports its stage-2 epochs only, so both look at stage 2 only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from dmdl_dist.config import save_config, total_epochs
from dmdl_dist.data.manifest import write_parquet
from dmdl_dist.engine.atomic import write_text
from dmdl_dist.errors import DmdlError
from dmdl_dist.report.history import read_history
from dmdl_dist.report.report import write_table_report
from dmdl_dist.report.tb import write_tensorboard
from dmdl_dist.tuning.stage1 import SharedStage1, epochs_saved
from dmdl_dist.tuning.sweep import METRICS, trial_config

TABLE = "trials.parquet"
SUMMARY = "summary.md"
BEST_CONFIG = "best_config.yaml"
RANKS = ("final", "best")


class SweepError(DmdlError, RuntimeError):
    """The sweep produced nothing to select from."""


@dataclass
class TrialRecord:
    trial_id: str
    params: dict
    history: list[dict] = field(default_factory=list)  # per reported epoch: epoch, val_mAP, val_rank1
    error: str | None = None


def records_from_grid(grid, runs_dir: str | Path | None = None) -> list[TrialRecord]:
    """Tune's ResultGrid -> records; a restored trial's repeated epochs keep their latest report.

    Tune's reports can miss the last epoch a trial trained: Ray Train hands a worker's report to
    Tune only when the controller next polls that worker (every 2 s), so a worker that dies
    before that poll takes the report with it. The trial's own metrics.jsonl (written by its
    rank 0 once the report call returned) is the record of what it trained, so its epochs are
    added when the driver can read runs_dir/<trial id> (a local or shared run folder).
    """
    records = []
    for result in grid:
        by_epoch: dict[int, dict] = {}
        df = result.metrics_dataframe
        if df is not None and "epoch" in df:
            for row in df.to_dict("records"):
                if _finite(row.get("epoch")):
                    by_epoch[int(row["epoch"])] = _epoch(row)
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.removeprefix("trial_")
        if runs_dir is not None:
            by_epoch.update({rec["epoch"]: _epoch(rec) for rec in _run_history(Path(runs_dir) / trial_id)})
        error = None if result.error is None else _error_text(result.error)
        records.append(TrialRecord(trial_id, dict(result.config or {}), [by_epoch[e] for e in sorted(by_epoch)],
                                   error))
    return records


def _epoch(row: dict) -> dict:
    return {"epoch": int(row["epoch"]), **{m: _number(row.get(m)) for m in METRICS}}


def _run_history(run_dir: Path) -> list[dict]:
    """The epochs the run trained itself (not those inherited from train.init_from); [] when unreadable
    (another node's disk, a line cut by a kill)."""
    try:
        return [r for r in read_history(run_dir / "metrics.jsonl") if not r.get("inherited")]
    except (OSError, ValueError):
        return []


def _error_text(err: BaseException) -> str:
    """One line: the underlying error (a Tune trial's error wraps the Train run's) and its first words."""
    cause = getattr(err, "cause", None) or err
    words = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())
    return f"{type(cause).__name__}: {words}"[:300]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _number(x) -> float | None:
    return float(x) if _finite(x) else None


def _best(history: list[dict], metric: str, mode: str) -> dict | None:
    scored = [h for h in history if h.get(metric) is not None]
    if not scored:
        return None
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda h: (sign * h[metric], -h["epoch"]))  # ties: the earlier epoch, as best.pt


def trial_value(history: list[dict], metric: str, mode: str, rank: str) -> float | None:
    """The number a trial is ranked on: the metric at its final epoch, or its best over the epochs."""
    if rank == "final":
        return history[-1].get(metric) if history else None
    return (_best(history, metric, mode) or {}).get(metric)


def trial_rows(records: list[TrialRecord], base: dict, *, metric: str, mode: str, rank: str = "final") -> list[dict]:
    """One row per trial, best first; with rank=final, finished trials before those stopped early; trials
    without the metric last."""
    if rank not in RANKS:
        raise ValueError(f"rank must be one of {RANKS}, got {rank!r}")
    rows = []
    for rec in records:
        best = _best(rec.history, metric, mode)
        last = rec.history[-1] if rec.history else {}
        epochs = last.get("epoch", 0)
        cfg = trial_config(base, rec.params)
        planned = total_epochs(cfg)
        if rec.error is not None:
            status = "error"
        elif not rec.history:
            status = "not run"
        else:
            status = "completed" if epochs >= planned else "stopped early"
        row = {"trial_id": rec.trial_id, "status": status, "epochs": epochs, "planned_epochs": planned}
        for m in METRICS:  # both are higher-is-better; the sweep's metric is ranked by the sweep's mode
            row[f"best_{m}"] = (_best(rec.history, m, mode if m == metric else "max") or {}).get(m)
            row[f"final_{m}"] = last.get(m)
        row["best_epoch"] = best["epoch"] if best else None
        row["first_epoch"] = rec.history[0]["epoch"] if rec.history else None
        row["score"] = trial_value(rec.history, metric, mode, rank)
        row.update(rec.params)
        row["error"] = rec.error
        rows.append(row)
    sign = -1 if mode == "max" else 1
    # A trial stopped at an early rung ends on an early epoch: its final value is not comparable with
    # those of trials that trained to the end.
    rows.sort(key=lambda r: (r["score"] is None, rank == "final" and r["status"] != "completed",
                             sign * (r["score"] or 0.0), r["trial_id"]))
    return rows


def _column(values: list) -> list:
    """Parquet needs one type per column: mixed ints and floats become floats, any other mix strings."""
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int, float} and float in kinds:
        return [None if v is None else float(v) for v in values]
    if len(kinds) > 1:
        return [None if v is None else str(v) for v in values]
    return values


def write_table(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    write_parquet(pa.table({k: _column([row.get(k) for row in rows]) for k in keys}), path)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metric(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def stage1_savings(records: list[TrialRecord], stage1: SharedStage1) -> tuple[int, int]:
    """(epochs the sweep trained, epochs whole trials would have trained): what the shared stage 1 saved."""
    started = [r for r in records if r.history or r.error]
    trained = sum(len(r.history) for r in records) + (stage1.epochs if stage1.trained_here else 0)
    return trained, trained + epochs_saved(stage1, len(started))


def epochs_line(records: list[TrialRecord], stage1: SharedStage1) -> str:
    trained, whole = stage1_savings(records, stage1)
    origin = "trained once for this sweep" if stage1.trained_here else "given with --stage1"
    return (f"Shared stage 1: every searched key acts in stage 2, so the trials started their stage 2 from one "
            f"stage-1 run (`{stage1.path}`, {stage1.epochs} epoch(s), {origin}); the sweep trained {trained} epochs "
            f"where whole trials would have trained {whole}: {whole - trained} epoch(s) saved "
            f"({(whole - trained) / max(whole, 1):.0%}). Trials report, and ASHA and the ranking look at, their "
            "stage-2 epochs only.")


def summary_markdown(rows: list[dict], params: list[str], *, name: str, metric: str, mode: str, rank: str,
                     space_file: str, best_config: Path, shared: str | None = None, stage1_path: str | None = None,
                     confirmation: str | None = None) -> str:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped early", "error", "not run")}
    best = rows[0]
    how = ("its final epoch, trials stopped early after those that finished" if rank == "final"
           else "its best epoch")
    lines = [
        f"# Sweep {name}",
        "",
        f"Space `{space_file}`, {len(rows)} trials ({', '.join(f'{v} {k}' for k, v in counts.items() if v)}); "
        f"each trial ranked by its {metric} ({mode}) at {how}, measured on held-out training identities.",
        "",
    ]
    if shared:
        lines += [shared, ""]
    at = best["epochs"] if rank == "final" else best["best_epoch"]
    start = (f"; `--set train.init_from={stage1_path}` starts it from the shared stage 1 as the trial did"
             if stage1_path else "")
    lines += [
        f"Best: trial `{best['trial_id']}`, {rank} {metric} {best['score']:.2f} (epoch {at}); its full config is "
        f"`{best_config.name}` (`dmdl train --config {best_config}` trains it from scratch{start}).",
        "",
    ]
    if confirmation:
        lines += [f"Seeds: {confirmation}", ""]
    other = next(m for m in METRICS if m != metric)
    scores = [f"final {metric}", f"best {metric} (epoch)"]
    head = ["rank", "trial", "status", "epochs", *(scores if rank == "final" else scores[::-1]), f"best {other}",
            *params]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, 1):
        best_cell = "-" if r[f"best_{metric}"] is None else f"{r[f'best_{metric}']:.2f} ({r['best_epoch']})"
        cells = [_metric(r[f"final_{metric}"]), best_cell]
        cells = [str(i), f"`{r['trial_id']}`", r["status"], f"{r['epochs']}/{r['planned_epochs']}",
                 *(cells if rank == "final" else cells[::-1]), _metric(r[f"best_{other}"]),
                 *(_fmt(r.get(p)) for p in params)]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [r for r in rows if r["error"]]
    if errors:
        lines += ["", "Errors:", ""] + [f"- `{r['trial_id']}`: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"


def write_results(folder: str | Path, records: list[TrialRecord], base: dict, *, metric: str, mode: str,
                  name: str, space_file: str, rank: str = "final", stage1: SharedStage1 | None = None,
                  confirmation: str | None = None) -> dict:
    """Writes the three files (atomically); returns the best row. Raises SweepError when no trial scored.

    stage1: the shared stage 1 the trials started from (the summary says what it saved);
    confirmation: the --confirm-seeds sentence (tuning/confirm.py), written beside the best trial.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(records, base, metric=metric, mode=mode, rank=rank)
    if not rows or rows[0]["score"] is None:
        seen = "; ".join(f"{r['trial_id']}: {r['status']}" + (f" ({r['error']})" if r["error"] else "")
                         for r in rows) or "no trials"
        raise SweepError(f"no trial reported {metric} ({seen}); a trial reports it each epoch only when "
                         "data.holdout_val=true on sysu/synthvi")
    write_table(rows, folder / TABLE)
    best = rows[0]
    best_rec = next(r for r in records if r.trial_id == best["trial_id"])
    save_config(trial_config(base, best_rec.params), folder / BEST_CONFIG)
    params = list(dict.fromkeys(k for rec in records for k in rec.params))
    text = summary_markdown(rows, params, name=name, metric=metric, mode=mode, rank=rank, space_file=space_file,
                            best_config=folder / BEST_CONFIG, shared=stage1 and epochs_line(records, stage1),
                            stage1_path=stage1 and stage1.path, confirmation=confirmation)
    write_text(folder / SUMMARY, text)
    write_table_report(f"Sweep {name}", text.split("\n", 2)[2], folder)
    write_trial_tensorboard(folder, [r.trial_id for r in records])
    return best


def write_trial_tensorboard(folder: Path, trial_ids: list[str]) -> None:
    """One TensorBoard run per trial under <sweep>/tb/<trial id>, from the trial's metrics.jsonl, so
    `tensorboard --logdir <sweep>/tb` compares the trials (stopped ones included)."""
    for trial_id in trial_ids:
        metrics = folder / "runs" / trial_id / "metrics.jsonl"
        if metrics.is_file():
            write_tensorboard(read_history(metrics), folder / "tb" / trial_id)
