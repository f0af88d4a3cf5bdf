"""The report of a noise sweep: ``summary.csv``, ``summary.md`` and two figures.

Input: the status records that ``scripts/sweep.py`` writes into each run folder (``result.json``
when a run succeeded, ``failed.json`` when it failed or was skipped; a run that never ran is
``missing``). An adaptation's final metrics are read per evaluation set ``<set>`` from the keys
``val/<set>/acc``, ``val/<set>/f1``, ``spectrum/<set>/sve`` and ``spectrum/<set>/lsvr`` (the
adaptation configs set ``data.test_in_validation: true``, so every test set is among them).

Averaging rule (the paper's tables): a set counts in the averages unless its run lists it in
``exclude_sets`` (default ``val`` and ``clean``: the validation set, and the OOD task's
in-distribution copy of its test images). For each kind (``id`` / ``ood``), method and noise
ratio, the value is the mean over that kind's tasks of the mean over each task's counted sets.
A cell stays empty when any run it needs did not succeed, so an average never silently covers
fewer tasks. ``summary.csv`` keeps every set, with ``in_average`` saying which ones counted;
``acc`` and ``f1`` are fractions there and percentages in the tables and plots.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

COLUMNS = [
    "pretrain",
    "noise_ratio",
    "method",
    "task",
    "kind",
    "test_set",
    "in_average",
    "acc",
    "f1",
    "sve",
    "lsvr",
    "realised_noise_rate",
    "status",
    "run_dir",
    "log",
]
METRICS = {
    "acc": "val/{}/acc",
    "f1": "val/{}/f1",
    "sve": "spectrum/{}/sve",
    "lsvr": "spectrum/{}/lsvr",
}
PERCENT = ("acc", "f1")
KIND_TITLES = {"id": "In-domain (ID)", "ood": "Out-of-domain (OOD)"}
TABLES = [
    ("id", "acc", "ID accuracy (%)"),
    ("ood", "acc", "OOD accuracy (%)"),
    ("id", "f1", "ID macro F1 (%)"),
    ("ood", "f1", "OOD macro F1 (%)"),
    ("id", "sve", "ID singular value entropy (SVE)"),
    ("ood", "lsvr", "OOD largest singular value ratio (LSVR)"),
]

Averages = dict[str, dict[float, float | None]]  # method -> noise ratio -> value


def finite(value: float | None) -> float | None:
    """A metric, or None when it is missing or NaN (a NaN would poison every average)."""
    return None if value is None or math.isnan(value) else value


def evaluation_sets(metrics: dict[str, float]) -> list[str]:
    """The evaluation sets an adaptation logged, in logging order."""
    return [key.split("/")[1] for key in metrics if key.startswith("val/") and key.endswith("/acc")]


def build_rows(pretrain: list[dict[str, Any]], adapt: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per adaptation run and evaluation set; one row with an empty set per run that did
    not succeed (its metrics are unknown)."""
    realised = {
        record["noise_ratio"]: record.get("metrics", {}).get("noise/realised_rate")
        for record in pretrain
    }
    rows = []
    for record in adapt:
        base = {name: record.get(name) for name in ("pretrain", "noise_ratio", "method", "task")}
        base |= {
            "kind": record["kind"],
            "realised_noise_rate": realised.get(record["noise_ratio"]),
            "status": record["status"],
            "run_dir": record["run_dir"],
            "log": record["log"],
        }
        metrics = record.get("metrics", {}) if record["status"] == "ok" else {}
        sets = evaluation_sets(metrics)
        for name in sets or [""]:
            values = {
                column: finite(metrics.get(key.format(name))) for column, key in METRICS.items()
            }
            counted = bool(name) and name not in record.get("exclude_sets", [])
            rows.append({**base, "test_set": name, "in_average": counted, **values})
    return rows


def averages(rows: list[dict[str, Any]], kind: str, metric: str) -> Averages:
    """Mean over ``kind``'s tasks of the mean over each task's counted sets, per method and
    ratio; ``None`` where a run failed or a task has no counted set with the metric."""
    per_task: dict[tuple[str, float, str], list[float]] = {}
    broken: set[tuple[str, float]] = set()
    for row in rows:
        if row["kind"] != kind:
            continue
        cell = (row["method"], row["noise_ratio"])
        values = per_task.setdefault((*cell, row["task"]), [])
        if row["status"] != "ok":
            broken.add(cell)
        elif row["in_average"] and row[metric] is not None:
            values.append(row[metric])
    tasks: dict[tuple[str, float], list[float | None]] = defaultdict(list)
    for (method, ratio, _), values in per_task.items():
        tasks[(method, ratio)].append(sum(values) / len(values) if values else None)
    table: Averages = defaultdict(dict)
    for (method, ratio), means in tasks.items():
        complete = (method, ratio) not in broken and None not in means
        table[method][ratio] = sum(means) / len(means) if complete else None
    return dict(table)


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return path


def percent_label(ratio: float) -> str:
    return f"{ratio * 100:g} %"


def markdown_table(table: Averages, ratios: list[float], scale: float, digits: int) -> list[str]:
    """Rows: method; columns: noise ratio (the paper's layout)."""
    lines = [
        "| method | " + " | ".join(percent_label(r) for r in ratios) + " |",
        "| --- |" + " ---: |" * len(ratios),
    ]
    for method, values in table.items():
        cells = [
            "–" if values.get(r) is None else f"{values[r] * scale:.{digits}f}" for r in ratios
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def noise_kind(pretrain: list[dict[str, Any]]) -> str:
    """``caption`` when the pre-trainings swapped captions (CLIP), else ``label``."""
    types = {(record.get("noise") or {}).get("type") for record in pretrain}
    return "caption" if "caption_swap" in types else "label"


def markdown(
    title: str,
    rows: list[dict[str, Any]],
    pretrain: list[dict[str, Any]],
    adapt: list[dict[str, Any]],
    ratios: list[float],
) -> str:
    lines = [
        f"# Noise sweep: {title}",
        "",
        f"Rows: adaptation method; columns: {noise_kind(pretrain)}-noise ratio of the "
        "pre-training data. "
        "ID: mean over the in-domain tasks of the mean over each task's test sets; OOD: the "
        "same over the out-of-domain tasks' shifted test sets. Sets listed in a run's "
        "`exclude_sets` (default `val`, `clean`: validation and in-distribution sets) are left "
        "out; `summary.csv` has every set. `–`: a run it needs did not succeed.",
    ]
    for kind, metric, heading in TABLES:
        table = averages(rows, kind, metric)
        if table:
            scale, digits = (100.0, 1) if metric in PERCENT else (1.0, 3)
            lines += ["", f"## {heading}", "", *markdown_table(table, ratios, scale, digits)]
    lines += ["", "## Pre-training", "", "| noise ratio | status | realised noise rate | log |"]
    lines.append("| ---: | --- | ---: | --- |")
    for record in pretrain:
        rate = record.get("metrics", {}).get("noise/realised_rate")
        shown = "–" if rate is None else f"{rate:.4f}"
        lines.append(
            f"| {percent_label(record['noise_ratio'])} | {record['status']} | {shown} | "
            f"`{record['log']}` |"
        )
    lines += failures(pretrain + adapt)
    return "\n".join(lines) + "\n"


def failures(records: list[dict[str, Any]]) -> list[str]:
    """A table of the runs that did not succeed, with their reason and log, if any."""
    bad = [r for r in records if r["status"] != "ok"]
    if not bad:
        return []
    lines = ["", "## Runs that did not succeed", "", "| run | status | reason | log |"]
    lines.append("| --- | --- | --- | --- |")
    for record in bad:
        reason = str(record.get("reason", "")).replace("|", "\\|")
        lines.append(
            f"| `{record['run_dir']}` | {record['status']} | {reason} | `{record['log']}` |"
        )
    return lines


def plot_panels(
    path: Path,
    panels: list[tuple[str, str, str, str]],
    rows: list[dict[str, Any]],
    ratios: list[float],
    title: str,
    noise: str,
) -> Path:
    """One panel per ``(kind, metric, y label, panel title)``: a line per method, x in %."""
    figure = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    axes = figure.subplots(1, len(panels))
    for axis, (kind, metric, ylabel, panel_title) in zip(axes, panels, strict=True):
        scale = 100.0 if metric in PERCENT else 1.0
        for method, values in averages(rows, kind, metric).items():
            points = [(r * 100, values[r] * scale) for r in ratios if values.get(r) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", linewidth=1.8, label=method)
        axis.set_xticks([r * 100 for r in ratios])
        axis.set_xlabel(f"pre-training {noise} noise (%)")
        axis.set_ylabel(ylabel)
        counted = {
            (r["task"], r["test_set"]) for r in rows if r["kind"] == kind and r["in_average"]
        }
        axis.set_title(
            f"{panel_title}\nmean over {len(counted)} test set{'s' * (len(counted) != 1)}",
            fontsize=11,
        )
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(title="method")
        else:
            axis.text(0.5, 0.5, "no completed runs", ha="center", transform=axis.transAxes)
    figure.suptitle(title)
    figure.savefig(path)
    return path


def write_report(
    out: Path, title: str, pretrain: list[dict[str, Any]], adapt: list[dict[str, Any]]
) -> list[Path]:
    """Write the CSV, the markdown tables and the two figures into ``out``; return their paths."""
    rows = build_rows(pretrain, adapt)
    ratios = sorted({record["noise_ratio"] for record in pretrain + adapt})
    noise = noise_kind(pretrain)
    (out / "summary.md").write_text(markdown(title, rows, pretrain, adapt, ratios))
    accuracy = [
        (kind, "acc", "mean accuracy (%)", KIND_TITLES[kind] + " accuracy")
        for kind in ("id", "ood")
    ]
    spectrum = [
        ("id", "sve", "SVE", "In-domain (ID): singular value entropy"),
        ("ood", "lsvr", "LSVR", "Out-of-domain (OOD): largest singular value ratio"),
    ]
    return [
        write_csv(rows, out / "summary.csv"),
        out / "summary.md",
        plot_panels(
            out / "accuracy.png",
            accuracy,
            rows,
            ratios,
            f"Downstream accuracy vs pre-training noise ({title})",
            noise,
        ),
        plot_panels(
            out / "spectrum.png",
            spectrum,
            rows,
            ratios,
            f"Feature spectrum vs pre-training noise ({title})",
            noise,
        ),
    ]
