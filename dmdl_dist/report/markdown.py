"""Markdown tables for report.md: test metrics per protocol, time per phase, one row per epoch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = (("rank1", "R1"), ("rank5", "R5"), ("rank10", "R10"), ("rank20", "R20"), ("mAP", "mAP"), ("mINP", "mINP"))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; '|' inside a cell is escaped."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *(line(r) for r in rows)]) + "\n"


def dict_rows_table(rows: Sequence[dict]) -> str:
    """Rows as dicts (e.g. an ablation or tune result table); columns in first-seen key order."""
    headers = list(dict.fromkeys(k for r in rows for k in r))
    return table(headers, [[_cell(r.get(h, "")) for h in headers] for r in rows])


def metrics_table(test: dict[str, dict]) -> str:
    """One row per protocol: mean over gallery trials, ± the standard deviation when there are several."""
    rows = []
    for name, result in test.items():
        mean, trials = result.get("mean", result), result.get("trials", [])
        cells = []
        for key, _ in METRICS:
            if key not in mean:
                cells.append("-")
            elif len(trials) > 1:
                cells.append(f"{mean[key]:.2f} ± {np.std([t[key] for t in trials]):.2f}")
            else:
                cells.append(f"{mean[key]:.2f}")
        rows.append([name, len(trials) or 1, *cells])
    return table(["protocol", "trials", *(head for _, head in METRICS)], rows)


def phase_times(history: Sequence[dict], results: dict | None = None) -> dict[str, float]:
    """Seconds per phase summed over epochs (refresh, its sub-steps as refresh_*, train, val),
    plus results.json's "time" entries as "final <phase>" when the trainer recorded them."""
    totals: dict[str, float] = {}
    for rec in history:
        for phase, seconds in rec.get("time", {}).items():
            totals[phase] = totals.get(phase, 0.0) + float(seconds)
    for phase, seconds in ((results or {}).get("time") or {}).items():
        totals[f"final {phase}"] = float(seconds)
    return totals


def phase_table(totals: dict[str, float]) -> str:
    """Top-level phases with their share of the total; refresh sub-steps indented under refresh."""
    top = {k: v for k, v in totals.items() if not k.startswith("refresh_")}
    whole = sum(top.values()) or 1.0
    rows = []
    for phase, seconds in top.items():
        rows.append([phase, duration(seconds), f"{100 * seconds / whole:.0f}%"])
        if phase == "refresh":
            rows += [[f"&nbsp;&nbsp;refresh: {k[8:]}", duration(v), ""]
                     for k, v in totals.items() if k.startswith("refresh_")]
    rows.append(["**total**", duration(sum(top.values())), "100%"])
    return table(["phase", "time", "share"], rows)


def epoch_table(history: Sequence[dict]) -> str:
    losses = list(dict.fromkeys(k for r in history for k in r.get("losses", {})))
    has_val = any("val_mAP" in r for r in history)
    headers = ["epoch", "stage", *losses, "clusters V/I", "outliers V/I", "anchor", "shared ids", "assoc.",
               "conf. V/I", "refresh", "train", "img/s"] + (["val R1", "val mAP"] if has_val else [])
    rows = []
    for r in history:
        clusters, outliers, t = r.get("clusters", ["-", "-"]), r.get("outliers", [0, 0]), r.get("time", {})
        row = [r["epoch"], r.get("stage", "-"), *(_cell(r.get("losses", {}).get(k, "")) for k in losses),
               f"{clusters[0]} / {clusters[1]}", f"{outliers[0]:.0%} / {outliers[1]:.0%}",
               "VI"[r["anchor"]] if r.get("stage") == 2 and "anchor" in r else "-",
               r.get("num_shared", "-") if r.get("stage") == 2 else "-",
               f"{r['association_rate']:.0%}" if r.get("stage") == 2 and "association_rate" in r else "-",
               "{:.2f} / {:.2f}".format(*r["confidence"]) if "confidence" in r else "-",
               duration(t.get("refresh", 0.0)), duration(t.get("train", 0.0)), f"{r.get('images_per_s', 0):.0f}"]
        if has_val:
            row += [_cell(r.get("val_rank1", "")), _cell(r.get("val_mAP", ""))]
        rows.append(row)
    return table(headers, rows)


def duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {seconds % 60:.0f} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)
