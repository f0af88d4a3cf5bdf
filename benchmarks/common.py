"""Helpers shared by the benchmarks: machine info, JSON results and a one-line ratio summary.

Results go to ``benchmarks/results/<name>.json`` (git-ignored). Benchmarks are run by hand
(``python -m benchmarks.<name>``); tests never assert timings.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPUs, Python, torch and the platform."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def write_results(name: str, payload: Mapping[str, Any], path: str | Path | None = None) -> Path:
    """Write ``payload`` as JSON to ``path`` (default ``benchmarks/results/<name>.json``)."""
    target = Path(path) if path is not None else RESULTS_DIR / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"benchmark": name, **payload}, indent=2) + "\n")
    return target


def print_ratios(name: str, ratios: Mapping[str, float], note: str = "") -> str:
    """Print and return one line: ``[name] ratio=value ... note``."""
    parts = " ".join(f"{key}={value:.4g}" for key, value in ratios.items())
    line = f"[{name}] {parts}" + (f" {note}" if note else "")
    print(line)
    return line


def quiet_lightning() -> None:
    """Silence Lightning's per-fit notes (accelerators, tips, loader hints): noise in the
    output of a benchmark that fits many times."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    for message in (
        "does not have many workers",
        "infer the `batch_size`",
        "LeafSpec",
        "`IterableDataset` has `__len__`",
    ):
        warnings.filterwarnings("ignore", f".*{message}.*")


def publish(
    name: str,
    results: Mapping[str, Any],
    report: Callable[[Mapping[str, Any]], None],
    path: str | Path | None,
) -> Path:
    """Print the report, write the JSON and say where."""
    report(results)
    target = write_results(name, results, path)
    print(f"wrote {target}")
    return target
