"""The report of a noise sweep: tables with confidence intervals, paired effects, the paper's
claims with a verdict each, label-free metrics against accuracy, two figures and a web page.

Usage (``scripts/sweep.py`` writes the report after every sweep; this rebuilds it from the run
folders alone, e.g. after copying them from a cluster)::

    python scripts/report.py runs/sweep_medium                  # report into that folder
    python scripts/report.py runs/sweep_medium --out reports/m  # elsewhere

Input: the status records ``scripts/sweep.py`` writes into each run folder (``result.json``
when a run succeeded, ``failed.json`` when it failed or was skipped). Rows and the averaging
rule: ``scripts/results.py``; statistics: ``scripts/evidence.py``; claims: ``scripts/claims.py``.
A table cell is the mean over seeds of the per-seed ID or OOD average, ``±`` the half-width of
its 95 % Student-t confidence interval; it stays empty when any run it needs did not succeed.

Files: ``summary.md`` / ``summary.csv`` (tables; every run, seed and set), ``effects.csv``
(NMTune minus LP and MLP, paired by seed and ratio), ``claims.md`` / ``claims.csv``,
``correlations.csv`` (which label-free metric of a backbone predicts its transfer),
``accuracy.png`` and ``spectrum.png`` (means with 95 % confidence intervals) and
``index.html`` (all of it in one page).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from scripts.claims import (
    CORRELATION_COLUMNS,
    correlations,
    format_number,
    interval_text,
    paired_effects,
    write_claims,
)
from scripts.evidence import Estimate
from scripts.html_report import write_index
from scripts.results import COLUMNS, PERCENT, PerSeed, averages, build_rows, cell, write_csv

__all__ = ["COLUMNS", "averages", "build_rows", "noise_kind", "write_report"]

MIN_SPAN = {"acc": 5.0, "f1": 5.0}  # y-axis span floor of a panel, in the plotted unit
KIND_TITLES = {"id": "In-domain (ID)", "ood": "Out-of-domain (OOD)"}
TABLES = [
    ("id", "acc", "ID accuracy (%)"),
    ("ood", "acc", "OOD accuracy (%)"),
    ("id", "f1", "ID macro F1 (%)"),
    ("ood", "f1", "OOD macro F1 (%)"),
    ("id", "sve", "ID singular value entropy (SVE)"),
    ("ood", "lsvr", "OOD largest singular value ratio (LSVR)"),
]


def percent_label(ratio: float) -> str:
    return f"{ratio * 100:g} %"


def shown(estimate: Estimate | None, scale: float, digits: int) -> str:
    """``mean ± half-width`` in the table's unit; the mean alone when there is no interval."""
    if estimate is None:
        return "–"
    text = f"{estimate.mean * scale:.{digits}f}"
    if estimate.half_width is not None:
        text += f" ± {estimate.half_width * scale:.{digits}f}"
    return text


def markdown_table(table: PerSeed, ratios: list[float], scale: float, digits: int) -> list[str]:
    """Rows: method; columns: noise ratio (the paper's layout)."""
    lines = [
        "| method | " + " | ".join(percent_label(r) for r in ratios) + " |",
        "| --- |" + " ---: |" * len(ratios),
    ]
    for method, values in table.items():
        cells = [shown(cell(values.get(r)), scale, digits) for r in ratios]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def noise_kind(pretrain: list[dict[str, Any]]) -> str:
    """``caption`` when the pre-trainings swapped captions (CLIP), else ``label``."""
    types = {(record.get("noise") or {}).get("type") for record in pretrain}
    return "caption" if "caption_swap" in types else "label"


def seed_sentence(seeds: list[int]) -> str:
    if len(seeds) < 2:
        return (
            f"**One seed ({', '.join(map(str, seeds))}): the cells are single runs and have no "
            "confidence interval; no difference in this report can be told from run-to-run "
            "noise.** Set `seeds: [0, 1, 2]` in the sweep config for intervals."
        )
    return (
        f"Each cell: mean over n = {len(seeds)} seeds ({', '.join(map(str, seeds))}) ± the "
        "half-width of its 95 % Student-t confidence interval."
    )


def markdown(
    title: str,
    rows: list[dict[str, Any]],
    pretrain: list[dict[str, Any]],
    adapt: list[dict[str, Any]],
    ratios: list[float],
    seeds: list[int],
    effects: list[dict[str, Any]],
    found: list[dict[str, Any]],
) -> str:
    protocols = sorted({r["spectrum_protocol"] for r in rows if r["spectrum_protocol"]})
    lines = [
        f"# Noise sweep: {title}",
        "",
        f"Rows: adaptation method; columns: {noise_kind(pretrain)}-noise ratio of the "
        "pre-training data. "
        "ID: mean over the in-domain tasks of the mean over each task's test sets; OOD: the "
        "same over the out-of-domain tasks' shifted test sets. Sets listed in a run's "
        "`exclude_sets` (default `val`, `clean`: validation and in-distribution sets) are left "
        "out; `summary.csv` has every set and seed. `–`: a run it needs did not succeed.",
        "",
        seed_sentence(seeds),
    ]
    if protocols:
        lines += ["", f"Spectrum protocol: {', '.join(protocols)}."]
    for kind, metric, heading in TABLES:
        table = averages(rows, kind, metric)
        if table:
            scale, digits = (100.0, 1) if metric in PERCENT else (1.0, 3)
            lines += ["", f"## {heading}", "", *markdown_table(table, ratios, scale, digits)]
    lines += effects_section(effects)
    lines += correlation_section(found)
    lines += [
        "",
        "## Pre-training",
        "",
        "| seed | noise ratio | status | realised noise rate | log |",
        "| ---: | ---: | --- | ---: | --- |",
    ]
    for record in pretrain:
        rate = record.get("metrics", {}).get("noise/realised_rate")
        rate_text = "–" if rate is None else f"{rate:.4f}"
        lines.append(
            f"| {record.get('seed', 0)} | {percent_label(record['noise_ratio'])} | "
            f"{record['status']} | {rate_text} | `{record['log']}` |"
        )
    lines += failures(pretrain + adapt)
    return "\n".join(lines) + "\n"


EFFECT_COLUMNS = ["effect", "kind", "metric", "noise_ratio", "mean", "ci_low", "ci_high", "n"]


def section(heading: str, intro: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown section: heading, one paragraph, a table (right-aligned after column 3)."""
    if not rows:
        return []
    align = ["---" if i < 3 and header[i] != "ratio" else "---:" for i in range(len(header))]
    return [
        "",
        f"## {heading}",
        "",
        intro,
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def effects_section(effects: list[dict[str, Any]]) -> list[str]:
    """The paired effects on accuracy, in percentage points."""
    rows = [
        [
            e["effect"],
            e["kind"],
            "all" if e["noise_ratio"] == "all" else percent_label(e["noise_ratio"]),
            format_number(e["mean"], 2, 100.0),
            interval_text(e["ci_low"], e["ci_high"], 2, 100.0),
            str(e["n"]),
        ]
        for e in effects
        if e["metric"] == "acc"
    ]
    return section(
        "Paired effects (accuracy, percentage points)",
        "Differences between two methods on the same backbone (same seed and ratio), averaged "
        "like the tables; `all`: the mean over ratios within each seed. 95 % CI over seeds.",
        ["effect", "kind", "ratio", "mean", "95 % CI", "n"],
        rows,
    )


def correlation_section(found: list[dict[str, Any]]) -> list[str]:
    """Spearman's rho of each label-free backbone metric with each method's accuracy."""
    rows = [
        [
            c["kind"],
            c["metric"],
            c["accuracy_of"],
            format_number(c["rho"], 2),
            interval_text(c["ci_low"], c["ci_high"], 2),
            str(c["n"]),
        ]
        for c in found
    ]
    return section(
        "Which label-free metric of a backbone predicts its transfer",
        "Spearman's rho between a metric of the frozen backbone's features (LP runs) and a "
        "method's accuracy, across the sweep's backbones (one per seed and ratio), with a 95 % "
        "bootstrap interval. Metrics: `scripts/claims.py`, `callbacks/spectrum.py`.",
        ["kind", "metric", "accuracy of", "rho", "95 % CI", "n"],
        rows,
    )


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


def y_limits(low: float, high: float, minimum_span: float) -> tuple[float, float]:
    """Limits around ``[low, high]`` (the plotted intervals) with 10 % margins, widened about
    their centre to at least ``minimum_span``, so a difference far smaller than the quantity
    itself does not fill the panel."""
    span = max(high - low, minimum_span) * 1.1
    centre = (low + high) / 2
    return centre - span / 2, centre + span / 2


def plot_panels(
    path: Path,
    panels: list[tuple[str, str, str, str]],
    rows: list[dict[str, Any]],
    ratios: list[float],
    title: str,
    noise: str,
) -> Path:
    """One panel per ``(kind, metric, y label, panel title)``: a line per method, x in %, the
    mean over seeds with its 95 % confidence interval as error bars."""
    figure = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    axes = figure.subplots(1, len(panels))
    for axis, (kind, metric, ylabel, panel_title) in zip(axes, panels, strict=True):
        scale = 100.0 if metric in PERCENT else 1.0
        extent: list[float] = []
        table = averages(rows, kind, metric)
        for index, (method, values) in enumerate(table.items()):
            points = [(r, est) for r in ratios if (est := cell(values.get(r))) is not None]
            if not points:
                continue
            dodge = (index - (len(table) - 1) / 2) * 0.3  # keep the error bars apart
            xs = [r * 100 + dodge for r, _ in points]
            ys = [est.mean * scale for _, est in points]
            errors = [(est.half_width or 0.0) * scale for _, est in points]
            axis.errorbar(xs, ys, yerr=errors, marker="o", linewidth=1.8, capsize=4, label=method)
            extent += [y - e for y, e in zip(ys, errors, strict=True)]
            extent += [y + e for y, e in zip(ys, errors, strict=True)]
        axis.set_xticks([r * 100 for r in ratios])
        axis.set_xlabel(f"pre-training {noise} noise (%)")
        axis.set_ylabel(ylabel)
        counted = {
            (r["task"], r["test_set"]) for r in rows if r["kind"] == kind and r["in_average"]
        }
        seeds = len({r["seed"] for r in rows if r["kind"] == kind})
        axis.set_title(
            f"{panel_title}\nmean over {len(counted)} test set{'s' * (len(counted) != 1)}, "
            f"{seeds} seed{'s' * (seeds != 1)}" + (" (95 % CI)" if seeds > 1 else ""),
            fontsize=10,
        )
        axis.grid(alpha=0.3)
        if extent:
            floor = MIN_SPAN.get(metric, 0.1 * max(abs(v) for v in extent))
            axis.set_ylim(*y_limits(min(extent), max(extent), floor))
            axis.legend(title="method")
        else:
            axis.text(0.5, 0.5, "no completed runs", ha="center", transform=axis.transAxes)
    figure.suptitle(title)
    figure.savefig(path)
    return path


def write_report(
    out: Path, title: str, pretrain: list[dict[str, Any]], adapt: list[dict[str, Any]]
) -> list[Path]:
    """Write every file of the report into ``out``; return their paths."""
    rows = build_rows(pretrain, adapt)
    ratios = sorted({record["noise_ratio"] for record in pretrain + adapt})
    seeds = sorted({record.get("seed", 0) for record in pretrain + adapt})
    noise = noise_kind(pretrain)
    effects = paired_effects(rows)
    found = correlations(rows)
    (out / "summary.md").write_text(
        markdown(title, rows, pretrain, adapt, ratios, seeds, effects, found)
    )
    accuracy = [
        (kind, "acc", "mean accuracy (%)", KIND_TITLES[kind] + " accuracy")
        for kind in ("id", "ood")
    ]
    spectrum = [
        ("id", "sve", "SVE", "In-domain (ID): singular value entropy"),
        ("ood", "lsvr", "LSVR", "Out-of-domain (OOD): largest singular value ratio"),
    ]
    figures = [
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
    claims = write_claims(rows, out, len(seeds))
    return [
        write_csv(rows, out / "summary.csv"),
        out / "summary.md",
        write_csv(effects, out / "effects.csv", EFFECT_COLUMNS),
        *claims,
        write_csv(found, out / "correlations.csv", CORRELATION_COLUMNS),
        *figures,
        write_index(out, f"Noise sweep: {title}", figures, [claims[1], out / "summary.md"]),
    ]


def read_records(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pre-training and adaptation records of every run folder under ``folder``."""
    records = [
        json.loads(path.read_text())
        for name in ("result.json", "failed.json")
        for path in sorted(folder.rglob(name))
    ]
    records.sort(key=lambda r: (r.get("seed", 0), r["noise_ratio"], r.get("name", "")))
    return (
        [r for r in records if r["stage"] == "pretrain"],
        [r for r in records if r["stage"] == "adapt"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="a sweep's output folder (its run folders)")
    parser.add_argument("--out", type=Path, help="where to write the report (default: folder)")
    parser.add_argument("--title", help="the report's title (default: the folder's name)")
    args = parser.parse_args(argv)
    pretrain, adapt = read_records(args.folder)
    if not pretrain and not adapt:
        print(f"error: no result.json or failed.json under {args.folder}", file=sys.stderr)
        return 2
    out = args.out or args.folder
    out.mkdir(parents=True, exist_ok=True)
    paths = write_report(out, args.title or args.folder.resolve().name, pretrain, adapt)
    print("report: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
