"""The benchmarks' one harness: interleaved timing, a Lightning loop timer, the quickstart's model
and data, and the published JSON.

Candidates run side by side in one process, in rounds (A B C, C B A, ...: every candidate in
every position alike, so that drift in the machine's load hits all of them the same), at least
``MIN_REPEATS`` times. A candidate is reported by its median with its spread, a ratio by the
ratio of the medians with the range of the per-round ratios; a target is met only when the median
meets it. Tests never assert timings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import pydoc
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from jsonargparse import ArgumentParser

from datamodules.base import usable_cpus
from scripts.config_files import composed_config, deep_merge

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MIN_REPEATS = 5
T = TypeVar("T")


# --- timing --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """One candidate's figure in each round (seconds, or a rate: ``unit``), and what else it
    recorded there (``runs``)."""

    values: list[float]
    unit: str = "s"
    runs: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        """(max - min) / median: a difference smaller than this is within run-to-run noise."""
        return (max(self.values) - min(self.values)) / self.median

    def published(self, name: str, median: str = "") -> dict[str, Any]:
        """The values, median and spread under the keys a benchmark's JSON has them by."""
        return {name: self.values, median or f"median_{name}": self.median, "spread": self.spread}

    def summary(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "values": self.values,
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "spread": self.spread,
        }


@dataclass(frozen=True)
class Ratio:
    """``a / b`` of two candidates' medians; its spread is the range of the per-round ratios
    (a and b ran side by side in every round, so the drift between rounds cancels there)."""

    value: float
    per_repeat: list[float]

    def map(self, fn: Callable[[float], float]) -> Ratio:
        """The same figure transformed (``r - 1``: an overhead), spread included."""
        return Ratio(fn(self.value), [fn(r) for r in self.per_repeat])


def ratio(a: Timing, b: Timing) -> Ratio:
    return Ratio(a.median / b.median, [x / y for x, y in zip(a.values, b.values, strict=True)])


def interleaved(
    candidates: Mapping[str, Callable[[], float | Mapping[str, Any] | None]],
    repeats: int,
    warmup: int = 1,
    key: str = "seconds",
    unit: str = "s",
) -> dict[str, Timing]:
    """Run the candidates in rounds, ``warmup`` untimed ones first, the order reversed every
    other round. A candidate returns what it measured itself (a hook-to-hook time, a rate), a
    mapping of what it recorded with that figure under ``key``, or None to be timed whole by
    ``time.perf_counter``."""
    if repeats < MIN_REPEATS:
        raise ValueError(f"repeats must be at least {MIN_REPEATS}, got {repeats}")
    names = list(candidates)
    timings = {name: Timing([], unit) for name in names}
    for round_ in range(-warmup, repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            measured, seconds = timed(candidates[name])
            if round_ < 0:
                continue  # warm-up
            if isinstance(measured, Mapping):
                timings[name].runs.append(measured)
                measured = measured[key]
            timings[name].values.append(seconds if measured is None else measured)
        if round_ >= 0:
            shown = ", ".join(f"{name} {timings[name].values[-1]:.4g}" for name in names)
            print(f"repeat {round_ + 1}/{repeats} ({unit}): {shown}", flush=True)
    return timings


def per_call(fn: Callable[[Any], object], items: Sequence[Any]) -> Callable[[], float]:
    """A candidate: the mean seconds of ``fn(item)`` over ``items``."""

    def mean() -> float:
        start = time.perf_counter()
        for item in items:
            fn(item)
        return (time.perf_counter() - start) / len(items)

    return mean


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall time in seconds."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


class LoopTimer(L.Callback):
    """``perf_counter`` stamps of Lightning's loops: every training step's start and end, every
    training epoch (without the validation inside it) and validation epoch, and the rows of every
    validation batch. Put it last among the callbacks, so that the others' epoch-end work (a
    spectrum, plots) falls inside. On a GPU it synchronises only at the ends of ``sync_steps``
    (those a rate is measured between), so that the loop runs as it would unobserved."""

    def __init__(self, sync_steps: Collection[int] = ()) -> None:
        self.sync_steps = set(sync_steps)
        self.step_starts: list[float] = []
        self.step_ends: list[float] = []
        self.train_epoch_s: list[float] = []
        self.val_epoch_s: list[float] = []
        self.val_rows: list[int] = []
        self._epoch_start = self._val_start = self._val_in_epoch = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, *_: Any) -> None:
        self.step_starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *_: Any) -> None:
        if len(self.step_ends) in self.sync_steps and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.step_ends.append(time.perf_counter())

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._epoch_start, self._val_in_epoch = time.perf_counter(), 0.0

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:  # after its validation
        self.train_epoch_s.append(time.perf_counter() - self._epoch_start - self._val_in_epoch)

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._val_start = time.perf_counter()

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *indices: int
    ) -> None:
        self.val_rows.append(len(batch["key"]))

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.val_epoch_s.append(time.perf_counter() - self._val_start)
        self._val_in_epoch += self.val_epoch_s[-1]


def timing_trainer(timer: LoopTimer, *, callbacks: Sequence[Any] = (), **options: Any) -> L.Trainer:
    """A Trainer doing only the work timed: no progress bar, model summary, checkpoints, sanity
    check or logger (unless ``options`` say otherwise), ``timer`` last."""
    defaults = {"accelerator": "cpu", "devices": 1, "logger": False, "num_sanity_val_steps": 0}
    return L.Trainer(
        **{**defaults, **options},
        callbacks=[*callbacks, timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


# --- the quickstart's model and data -------------------------------------------------------------
def quickstart(name: str) -> dict[str, Any]:
    """``configs/quickstart/<name>.yaml`` merged with the fragments it composes."""
    return composed_config(f"quickstart/{name}.yaml")


def build(cls: Callable[..., T], init_args: Mapping[str, Any]) -> T:
    """``cls`` from a config's ``init_args``, nested sections (optimizer, transform...) turned
    into their config classes by jsonargparse, as ``train.py`` builds it."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "built")
    return parser.instantiate(parser.parse_object({"built": dict(init_args)})).built


def quickstart_model(name: str, **overrides: Any) -> Any:
    """The model of a quickstart config (``num_classes`` from its data, as ``train.py`` links
    them), ``overrides`` merged into its ``init_args``: benchmarks time the quickstart's model
    and never re-declare it."""
    config = quickstart(name)
    data = config["data"]["init_args"]
    init_args = {"num_classes": data["num_classes"]} if "num_classes" in data else {}  # CLIP: none
    init_args |= deep_merge(config["model"]["init_args"], overrides)
    return build(pydoc.locate(config["model"]["class_path"]), init_args)


def quickstart_data(name: str, cls: Callable[..., T] | None = None, **overrides: Any) -> T:
    """The DataModule of a quickstart config (as ``cls``, a subclass, when given)."""
    data = quickstart(name)["data"]
    return build(cls or pydoc.locate(data["class_path"]), deep_merge(data["init_args"], overrides))


# --- options and output --------------------------------------------------------------------------
def repeat_count(text: str) -> int:
    if int(text) < MIN_REPEATS:
        raise argparse.ArgumentTypeError(f"at least {MIN_REPEATS}, got {text}")
    return int(text)


def arguments(doc: str | None, threads: bool = False, **defaults: Any) -> argparse.ArgumentParser:
    """The options every benchmark has (``--repeats``, ``--out``), ``--threads`` where asked,
    and with ``defaults`` (``batch_size=256``...) ``--root`` and an option for each (``auto``:
    that, or a number, as ``data.num_workers``)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument(
        "--repeats", type=repeat_count, default=MIN_REPEATS, help="interleaved rounds (>= 5)"
    )
    parser.add_argument("--out", help="JSON path (default benchmarks/results/<name>.json)")
    if threads:  # on 2 busy CPUs, 2 threads made steps 5-8x slower (descheduled siblings)
        parser.add_argument(
            "--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)"
        )
    if defaults:
        parser.add_argument("--root", default="data", help="folder of the built-in shards")
    for name, default in defaults.items():
        kind = repeat_count if name.endswith("repeats") else type(default)
        kind = (lambda text: text if text == "auto" else int(text)) if default == "auto" else kind
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default)
    return parser


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPUs, torch threads, Python, torch and the platform."""
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
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


def publish(
    name: str,
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[Mapping[str, Any]], None] = lambda results: None,
) -> Path:
    """Run with ``--threads`` applied and Lightning's per-fit notes silenced; record the machine
    and its load average before and after (other jobs skew every timing); turn the candidates'
    timings and the ratios into figures with their spreads; print them, the benchmark's
    ``report`` and one line of ratios and target; write the JSON to ``--out``."""
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    for note in ("many workers", "infer the `batch_size`", "LeafSpec", "has `__len__`"):
        warnings.filterwarnings("ignore", f".*{note}.*")
    load = [round(x, 2) for x in os.getloadavg()]
    results = {"benchmark": name, **run(args)}
    ratios, target = results["ratios"], results["target"]
    results["ratios"] = {k: r.value if isinstance(r, Ratio) else r for k, r in ratios.items()}
    results["ratio_spread"] = {
        k: {"min": min(r.per_repeat), "max": max(r.per_repeat)}
        for k, r in ratios.items()
        if isinstance(r, Ratio)
    }
    results["candidates"] = {k: t.summary() for k, t in results["candidates"].items()}
    machine = results["machine"] = {**machine_info(), "load_avg_1_5_15_start": load}
    machine["load_avg_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
    print(
        f"\nload average (1/5/15 min) at start {load}, at end {machine['load_avg_1_5_15_end']}"
        f" on {machine['usable_cpus']} usable CPUs, {machine['torch_threads']} torch threads"
        + (f"; GPU {machine['cuda_device']}" if machine["cuda_device"] else "")
    )
    print(f"\n{'candidate':24s} {'median':>9s} {'spread':>7s}  min..max")
    for key, entry in results["candidates"].items():
        print(
            f"{key:24s} {entry['median']:9.4g} {entry['spread']:7.1%}"
            f"  {entry['min']:.4g}..{entry['max']:.4g} {entry['unit']}"
        )
    report(results)
    spreads = results["ratio_spread"]
    shown = (
        f"{key}={value:.4g}"
        + (f"[{spreads[key]['min']:.3g}..{spreads[key]['max']:.3g}]" if key in spreads else "")
        for key, value in results["ratios"].items()
        if isinstance(value, float)
    )
    verdicts = (
        (key if value else f"NOT {key}") if isinstance(value, bool) else f"{key}={value:.3g}"
        for key, value in target.items()
    )
    print(f"[{name}] {' '.join(shown)} (medians; {', '.join(verdicts)})")
    path = write_results(name, results, args.out)
    print(f"wrote {path}")
    return path
