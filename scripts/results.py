"""The rows and per-seed averages of a noise sweep, shared by the report and the claims.

An adaptation's final metrics are read per evaluation set ``<set>`` from the keys
``test/<set>/acc`` (``val/<set>/acc`` for a validation set, and for every set in runs older than
that split), ``.../f1`` and ``spectrum/<set>/<metric>`` of its ``result.json`` (the adaptation
configs set ``data.test_in_validation: true``, so every test set is among them); the tag layout
is ``lightning_modules/metric_keys.py``.

A fine-tuning run with the WiSE-FT callback adds the rows of method ``<method>+wise_ft`` from
its ``wise_ft/<test or val>/<set>/...`` keys (the interpolation at the alpha chosen on validation).

Averaging rule (the paper's tables): a set counts in the averages unless its run lists it in
``exclude_sets`` (default ``val`` and ``clean``: the validation set, and the OOD task's
in-distribution copy of its test images). For each kind (``id`` / ``ood``), method, noise ratio
and seed, the value is the mean over that kind's tasks of the mean over each task's counted
sets; it is ``None`` when any run it needs did not succeed, so an average never silently covers
fewer tasks.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from lightning_modules.metric_keys import evaluation_sets, set_metric, spectrum_tag
from scripts.evidence import Estimate, t_interval

COLUMNS = [
    "pretrain",
    "noise_ratio",
    "seed",
    "method",
    "task",
    "kind",
    "test_set",
    "in_average",
    "acc",
    "f1",
    "sve",
    "lsvr",
    "erank",
    "stable_rank",
    "alpha_req",
    "spectrum_protocol",
    "realised_noise_rate",
    "status",
    "run_dir",
    "log",
]
SPECTRAL = ("sve", "lsvr", "erank", "stable_rank", "alpha_req")
SCORES = ("acc", "f1")
PERCENT = ("acc", "f1")
WISE_FT = "wise_ft/"  # callbacks/wise_ft.py: wise_ft/<kind>/<set>/acc at the selected alpha
PerSeed = dict[str, dict[float, dict[int, float | None]]]  # method -> ratio -> seed -> value


def finite(value: float | None) -> float | None:
    """A metric, or None when it is missing or NaN (a NaN would poison every average)."""
    return None if value is None or math.isnan(value) else value


def set_values(metrics: dict[str, float], name: str) -> dict[str, float | None]:
    """The report's columns of one evaluation set."""
    values = {column: set_metric(metrics, name, column) for column in SCORES}
    values |= {column: metrics.get(spectrum_tag(name, column)) for column in SPECTRAL}
    return {column: finite(value) for column, value in values.items()}


def build_rows(pretrain: list[dict[str, Any]], adapt: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per adaptation run and evaluation set; one row with an empty set per run that did
    not succeed (its metrics are unknown)."""
    realised = {
        (record.get("seed", 0), record["noise_ratio"]): record.get("metrics", {}).get(
            "noise/realised_rate"
        )
        for record in pretrain
    }
    rows = []
    for record in adapt:
        seed = record.get("seed", 0)
        base = {name: record.get(name) for name in ("pretrain", "noise_ratio", "method", "task")}
        base |= {
            "seed": seed,
            "kind": record["kind"],
            "spectrum_protocol": (record.get("spectrum") or {}).get("protocol", ""),
            "realised_noise_rate": realised.get((seed, record["noise_ratio"])),
            "status": record["status"],
            "run_dir": record["run_dir"],
            "log": record["log"],
        }
        metrics = record.get("metrics", {}) if record["status"] == "ok" else {}
        excluded = record.get("exclude_sets", [])
        rows += set_rows(base, metrics, excluded)
        wise_ft = {k.removeprefix(WISE_FT): v for k, v in metrics.items() if k.startswith(WISE_FT)}
        if wise_ft:  # the WiSE-FT callback's best alpha: a method row of its own, no spectrum
            rows += set_rows({**base, "method": f"{base['method']}+wise_ft"}, wise_ft, excluded)
    return rows


def set_rows(
    base: dict[str, Any], metrics: dict[str, float], excluded: list[str]
) -> list[dict[str, Any]]:
    """One row per evaluation set in ``metrics``; one with an empty set when there is none."""
    rows = []
    for name in evaluation_sets(metrics) or [""]:
        counted = bool(name) and name not in excluded
        rows.append({**base, "test_set": name, "in_average": counted, **set_values(metrics, name)})
    return rows


def averages(rows: list[dict[str, Any]], kind: str, metric: str) -> PerSeed:
    """Mean over ``kind``'s tasks of the mean over each task's counted sets, per method, ratio
    and seed; ``None`` where a run failed or a task has no counted set with the metric."""
    per_task: dict[tuple[str, float, int, str], list[float]] = {}
    broken: set[tuple[str, float, int]] = set()
    for row in rows:
        if row["kind"] != kind:
            continue
        cell = (row["method"], row["noise_ratio"], row["seed"])
        values = per_task.setdefault((*cell, row["task"]), [])
        if row["status"] != "ok":
            broken.add(cell)
        elif row["in_average"] and row[metric] is not None:
            values.append(row[metric])
    tasks: dict[tuple[str, float, int], list[float | None]] = defaultdict(list)
    for (method, ratio, seed, _), values in per_task.items():
        tasks[(method, ratio, seed)].append(sum(values) / len(values) if values else None)
    table: PerSeed = defaultdict(lambda: defaultdict(dict))
    for (method, ratio, seed), means in sorted(tasks.items(), key=lambda item: item[0][2]):
        complete = (method, ratio, seed) not in broken and None not in means
        table[method][ratio][seed] = sum(means) / len(means) if complete else None
    return {method: dict(by_ratio) for method, by_ratio in table.items()}


def cell(values: dict[int, float | None] | None) -> Estimate | None:
    """The estimate over seeds of one table cell; None when a seed's value is missing."""
    if not values or None in values.values():
        return None
    return t_interval(list(values.values()))


def write_csv(rows: list[dict[str, Any]], path: Path, columns: list[str] = COLUMNS) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return path
