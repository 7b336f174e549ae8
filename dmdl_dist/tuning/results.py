"""A finished sweep as files: trials.parquet (one row per trial), summary.md, best_config.yaml.

The table is built from plain `TrialRecord`s, so everything but `records_from_grid` is pure. The
best trial is the one with the best value of the sweep metric over its epochs (the epoch the run
itself keeps as best.pt), measured on held-out training identities, never the test set.
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
from dmdl_dist.tuning.sweep import METRICS, trial_config

TABLE = "trials.parquet"
SUMMARY = "summary.md"
BEST_CONFIG = "best_config.yaml"


class SweepError(DmdlError, RuntimeError):
    """The sweep produced nothing to select from."""


@dataclass
class TrialRecord:
    trial_id: str
    params: dict
    history: list[dict] = field(default_factory=list)  # per reported epoch: epoch, val_mAP, val_rank1
    error: str | None = None


def records_from_grid(grid) -> list[TrialRecord]:
    """Tune's ResultGrid -> records; a restored trial's repeated epochs keep their latest report."""
    records = []
    for result in grid:
        by_epoch: dict[int, dict] = {}
        df = result.metrics_dataframe
        if df is not None and "epoch" in df:
            for row in df.to_dict("records"):
                if _finite(row.get("epoch")):
                    by_epoch[int(row["epoch"])] = {"epoch": int(row["epoch"]),
                                                   **{m: _number(row.get(m)) for m in METRICS}}
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.removeprefix("trial_")
        error = None if result.error is None else _error_text(result.error)
        records.append(TrialRecord(trial_id, dict(result.config or {}), [by_epoch[e] for e in sorted(by_epoch)],
                                   error))
    return records


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


def trial_rows(records: list[TrialRecord], base: dict, *, metric: str, mode: str) -> list[dict]:
    """One row per trial, best first; trials without the metric last."""
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
        row.update(rec.params)
        row["error"] = rec.error
        rows.append(row)
    sign = -1 if mode == "max" else 1
    rows.sort(key=lambda r: (r[f"best_{metric}"] is None, sign * (r[f"best_{metric}"] or 0.0), r["trial_id"]))
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


def summary_markdown(rows: list[dict], params: list[str], *, name: str, metric: str, mode: str,
                     space_file: str, best_config: Path) -> str:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped early", "error", "not run")}
    best = rows[0]
    lines = [
        f"# Sweep {name}",
        "",
        f"Space `{space_file}`, {len(rows)} trials ({', '.join(f'{v} {k}' for k, v in counts.items() if v)}); "
        f"ranked by the best {metric} over each trial's epochs ({mode}), measured on held-out training identities.",
        "",
        f"Best: trial `{best['trial_id']}`, {metric} {best[f'best_{metric}']:.2f} at epoch {best['best_epoch']}; "
        f"its full config is `{best_config.name}` (`dmdl train --config {best_config}`).",
        "",
    ]
    other = next(m for m in METRICS if m != metric)
    head = ["rank", "trial", "status", "epochs", f"best {metric} (epoch)", f"final {metric}", f"best {other}", *params]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, 1):
        score = "-" if r[f"best_{metric}"] is None else f"{r[f'best_{metric}']:.2f} ({r['best_epoch']})"
        cells = [str(i), f"`{r['trial_id']}`", r["status"], f"{r['epochs']}/{r['planned_epochs']}", score,
                 _metric(r[f"final_{metric}"]), _metric(r[f"best_{other}"]), *(_fmt(r.get(p)) for p in params)]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [r for r in rows if r["error"]]
    if errors:
        lines += ["", "Errors:", ""] + [f"- `{r['trial_id']}`: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"


def write_results(folder: str | Path, records: list[TrialRecord], base: dict, *, metric: str, mode: str,
                  name: str, space_file: str) -> dict:
    """Writes the three files (atomically); returns the best row. Raises SweepError when no trial scored."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(records, base, metric=metric, mode=mode)
    if not rows or rows[0][f"best_{metric}"] is None:
        seen = "; ".join(f"{r['trial_id']}: {r['status']}" + (f" ({r['error']})" if r["error"] else "")
                         for r in rows) or "no trials"
        raise SweepError(f"no trial reported {metric} ({seen}); a trial reports it each epoch only when "
                         "data.holdout_val=true on sysu/synthvi")
    write_table(rows, folder / TABLE)
    best = rows[0]
    best_rec = next(r for r in records if r.trial_id == best["trial_id"])
    save_config(trial_config(base, best_rec.params), folder / BEST_CONFIG)
    params = list(dict.fromkeys(k for rec in records for k in rec.params))
    text = summary_markdown(rows, params, name=name, metric=metric, mode=mode, space_file=space_file,
                            best_config=folder / BEST_CONFIG)
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
