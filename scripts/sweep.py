"""Noise sweep, one command: pre-train at every noise ratio, adapt each backbone, report.

Usage::

    python scripts/sweep.py configs/quickstart/sweep.yaml                 # run (or resume), report
    python scripts/sweep.py configs/sweep.yaml --out runs/paper --jobs 4  # 4 adaptations at once
    python scripts/sweep.py configs/quickstart/sweep.yaml --only-report   # rebuild the report
    python scripts/sweep.py configs/sweep.yaml --ratio 0.1                # one ratio's runs only
    python scripts/sweep.py configs/sweep.yaml --ratio 0.1 --print-commands  # its train.py lines

Every run is a real ``python train.py fit --config ...`` subprocess (``validate`` for a
zero-shot config, which trains nothing), so each one is reproducible
on its own: its folder holds the ``config.yaml`` LightningCLI saved (``python train.py fit
--config <run>/config.yaml`` runs it again), its output in ``log.txt`` (first line: the command),
its TensorBoard events and its ``export/card.json``.

Sweep config (YAML; a ``config`` is a path, or a name under ``configs/`` as train.py takes)::

    out: runs/sweep_quickstart            # output folder (default: runs/<yaml stem>); --out wins
    jobs: 2                               # adaptation runs at once (default 1); --jobs wins
    pretrain:
      config: quickstart/pretrain_fs.yaml # any pre-training config (FS or CLIP)
      name: pretrain_fs                   # folder and `pretrain` column (default: config stem)
      noise_option: data.init_args.noise_ratio  # the option set to each ratio (default);
                                          # CLIP: data.init_args.caption_noise_ratio
      ratios: [0.0, 0.05, 0.1, 0.2, 0.3]  # fractions; one pre-training run each
      overrides: [--trainer.max_epochs=1] # extra train.py arguments (optional)
    adapt:
      overrides: []                       # extra arguments for every adaptation (optional)
      runs:                               # one adaptation per entry and ratio
        - config: quickstart/lp_id.yaml
          name: lp_id                     # folder, unique (default: config stem)
          method: lp                      # report label (default: model.init_args.method)
          kind: id                        # id | ood (default: the config stem's _id / _ood)
          task: fmnist_heldout            # (default: data.init_args.builtin, else train_shards)
          exclude_sets: [val, clean]      # sets left out of the averages (this default)
          overrides: []                   # extra arguments for this run (optional)
        - config: quickstart/zeroshot_ood.yaml  # CLIP backbones: a zero-shot row; it runs
                                          # `train.py validate` (nothing trains)
        - config: quickstart/nmtune_embeddings.yaml  # the black-box case: adapt on embeddings
          embed: quickstart/nmtune_id.yaml  # that `train.py predict` wrote with this image
          kind: id                        # config and the ratio's backbone (one embedding run
          task: fmnist_heldout            # per backbone and embed config, shared by entries)

The runner adds, after the config and before the overrides: ``--trainer.enable_progress_bar=
false`` and, for adaptations, ``--model.init_args.cache_dir=<out>/cache/features`` (the
LP/MLP/NMTune runs of one backbone and task extract the frozen features once); and after the
overrides: the noise ratio, or ``--model.init_args.backbone.card=<that ratio's card>``,
``--seed_everything=S`` and ``--data.init_args.seed=S`` (the replicate's seed: model init, data
order and, in pre-training, which samples are noisy and their wrong labels), the logger's
``save_dir``/``name``/``version`` (the config needs a logger with those, e.g. TensorBoardLogger),
``--export.dirpath`` and ``--export.overwrite=true`` (a run's folder is its own: a rerun
replaces its export). An entry with ``embed`` is the black-box path: after the pre-trainings,
``train.py predict --config <embed>`` runs once per backbone (with the common overrides, the
card, the seed and ``--embed.dirpath``), then the entry's config (an ``EmbeddingDataModule``
one) runs with its own overrides only and ``--data.init_args.directory=<those files>``.
Output folder::

    <out>/seed_0/<pretrain name>/ratio_0.10/   a pre-training run (its card: export/card.json)
    <out>/seed_0/adapt/ratio_0.10/<name>/      an adaptation run of that backbone
    <out>/seed_0/embed/ratio_0.10/<embed stem>/  the embedding files of that backbone
    <out>/summary.md, summary.csv, effects.csv, claims.md, claims.csv, correlations.csv,
    accuracy.png, spectrum.png                 the report (see scripts/report.py)

A run that succeeds gets ``result.json`` (its card's metrics); one that fails gets
``failed.json`` (exit code, the log's error message, log path), and the adaptations of a failed
pre-training are recorded as skipped; the other runs go on, and the sweep exits with status 1.
Running the sweep again skips every run that has a ``result.json``: it resumes after an
interruption, and deleting one ``result.json`` reruns that run only. Pre-trainings run one after
the other; ``--jobs N`` then runs N adaptations at once (the runs sharing a backbone and task run
in order in one slot, so their feature cache is written once), each with ``OMP_NUM_THREADS`` =
cores / N unless it is set, so that N runs do not oversubscribe the cores.

On a cluster, the runs of one noise ratio and seed depend only on each other: ``--ratio R`` and
``--seed S`` (each repeatable) run those alone, e.g. one array job per ratio and seed into a
shared ``out`` folder, then
``--only-report`` once they are done. ``--print-commands`` prints the ``train.py`` command of
each selected run instead of running it, to launch it under ``srun`` or ``torchrun`` (add
``--trainer.num_nodes``/``devices`` to the overrides). A run launched that way counts as done
once its export card exists (the sweep adopts it: ``result.json`` from the card); a run the sweep
launched itself has a ``log.txt`` and needs its ``result.json``, so deleting that still reruns
it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datamodules.errors import ConfigError
from scripts import config_files
from scripts.report import write_report

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = config_files.CONFIG_DIR
RESULT, FAILED, LOG = "result.json", "failed.json", "log.txt"
KINDS = ("id", "ood")
DEFAULT_EXCLUDE = ("val", "clean")


class SweepError(ValueError):
    """A mistake in the sweep config, reported before any run starts."""


@dataclass(frozen=True)
class Run:
    """One train.py run of the sweep, with the labels the report groups it by."""

    stage: str  # "pretrain" or "adapt"
    pretrain: str
    ratio: float
    seed: int
    directory: Path
    args: tuple[str, ...]
    name: str = ""
    method: str = ""
    task: str = ""
    kind: str = ""
    exclude_sets: tuple[str, ...] = ()
    needs: Path | None = None  # the run that must succeed first
    needs_stage: str = "pre-training"  # what that run is, for the record of a skipped run

    @property
    def label(self) -> str:
        """The folder relative to the sweep's output folder (``seed_0/adapt/ratio_0.10/lp``)."""
        return "/".join(self.directory.parts[-3 if self.stage == "pretrain" else -4 :])

    @property
    def output(self) -> Path:
        """The file a successful run leaves: its export card, or an embedding run's train.pt."""
        return self.directory / ("train.pt" if self.stage == "embed" else "export/card.json")

    def record(self, status: str) -> dict[str, Any]:
        """What the report needs to know about the run; the log of a skipped adaptation is its
        pre-training's, which says why."""
        log_dir = self.needs if status == "skipped" and self.needs else self.directory
        return {
            "status": status,
            "stage": self.stage,
            "pretrain": self.pretrain,
            "noise_ratio": self.ratio,
            "seed": self.seed,
            "name": self.name,
            "method": self.method,
            "task": self.task,
            "kind": self.kind,
            "exclude_sets": list(self.exclude_sets),
            "run_dir": str(self.directory),
            "log": str(log_dir / LOG),
        }

    def launched_outside(self) -> bool:
        """Finished by a hand-launched command (``--print-commands``): an export card, and no
        ``log.txt`` of a run the sweep launched itself."""
        return self.output.is_file() and not (self.directory / LOG).is_file()

    def status(self) -> dict[str, Any]:
        """The run's record as its folder says: result.json, failed.json, else missing. Labels
        and paths come from the current plan (the sweep config may have been relabelled, the
        folder moved)."""
        for name in (RESULT, FAILED):
            if (self.directory / name).is_file():
                stored = json.loads((self.directory / name).read_text())
                return {**stored, **self.record(stored["status"])}
        return {**self.record("missing"), "reason": "not run yet"}


@dataclass
class Progress:
    """Prints one line per finished run; safe from several threads."""

    total: int
    done: int = 0
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self, run: Run, record: dict[str, Any]) -> None:
        with self.lock:
            self.done += 1
            self.failed += record["status"] != "ok"
            line = f"[{self.done}/{self.total}] {record['status']:<7} {run.label}"
            if record["status"] == "ok":
                line += f"  ({record['seconds']:.0f} s)"
            else:
                line += f"  {record['reason']}  log: {record['log']}"
            print(line, flush=True)


# --- the sweep config -----------------------------------------------------------------------
def find_config(value: str, where: str) -> Path:
    """A train.py config as train.py finds it: an existing path, else a name under configs/."""
    path = Path(config_files.find_config(value))
    if not path.is_file():
        raise SweepError(f"{where}: {value!r} is neither a file nor a config under {CONFIG_DIR}")
    return path.resolve()


def string_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SweepError(f"{where} must be a list of strings, got {value!r}")
    return tuple(value)


def init_arg(config: dict[str, Any], section: str, name: str) -> Any:
    """``<section>.init_args.<name>`` of a train.py config, or None."""
    return ((config.get(section) or {}).get("init_args") or {}).get(name)


def adaptation(entry: dict[str, Any], index: int) -> dict[str, Any]:
    """One ``adapt.runs`` entry with its method, task and kind filled in from the config."""
    where = f"adapt.runs[{index}]"
    if not isinstance(entry, dict) or "config" not in entry:
        raise SweepError(f"{where} must be a mapping with a `config`, got {entry!r}")
    path = find_config(entry["config"], f"{where}.config")
    try:
        config = config_files.composed_config(str(path))
    except ConfigError as err:
        raise SweepError(f"{where}.config: {err}") from None
    name = entry.get("name", path.stem)
    suffix = path.stem.rpartition("_")[2]
    kind = entry.get("kind", suffix if suffix in KINDS else None)
    if kind not in KINDS:
        raise SweepError(f"{where}.kind must be id or ood (not derivable from {path.name})")
    return {
        "config": path,
        "name": name,
        "method": entry.get("method") or init_arg(config, "model", "method") or name,
        "task": entry.get("task")
        or init_arg(config, "data", "builtin")
        or init_arg(config, "data", "train_shards")
        or name,
        "kind": kind,
        "exclude_sets": string_list(
            entry.get("exclude_sets", list(DEFAULT_EXCLUDE)), f"{where}.exclude_sets"
        ),
        "overrides": string_list(entry.get("overrides"), f"{where}.overrides"),
        # a zero-shot head trains nothing: validate scores it and exports its card
        "subcommand": "validate" if init_arg(config, "model", "method") == "zeroshot" else "fit",
        "embed": find_config(entry["embed"], f"{where}.embed") if "embed" in entry else None,
    }


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ratio_folder(ratio: float) -> str:
    return f"ratio_{ratio:.2f}"


def seed_list(value: Any) -> list[int]:
    """The sweep's ``seeds``: distinct non-negative integers (default ``[0]``)."""
    seeds = [0] if value is None else value
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise SweepError(f"seeds must be a list of distinct non-negative integers, got {value!r}")
    return seeds


def plan(sweep: dict[str, Any], out: Path) -> list[Run]:
    """Every run of the sweep: per seed, the pre-trainings in ratio order; then every
    pre-training's adaptations."""
    pretrainings = [
        run
        for seed in seed_list(sweep.get("seeds"))
        for run in pretrain_runs(sweep.get("pretrain") or {}, out, seed)
    ]
    adapt = sweep.get("adapt") or {}
    entries = [adaptation(entry, i) for i, entry in enumerate(adapt.get("runs") or [])]
    if len({e["name"] for e in entries}) != len(entries):
        raise SweepError("adapt.runs: two runs have the same name; give them distinct `name`s")
    common = string_list(adapt.get("overrides"), "adapt.overrides")
    embeddings: dict[tuple[Path, Path], Run] = {}  # (pre-training, embed config) -> its run
    adaptations = []
    for pretraining in pretrainings:
        for entry in entries:
            needs = None
            if entry["embed"] is not None:
                key = (pretraining.directory, entry["embed"])
                if key not in embeddings:
                    embeddings[key] = embed_run(pretraining, entry, common, out)
                needs = embeddings[key]
            adaptations.append(adapt_run(pretraining, entry, common, out, needs))
    return pretrainings + list(embeddings.values()) + adaptations


def pretrain_runs(pre: dict[str, Any], out: Path, seed: int) -> list[Run]:
    """One pre-training per noise ratio, the ratio set through ``noise_option``; the seed sets
    the model init (``seed_everything``) and the data seed (which samples are noisy, the order)."""
    config = find_config(str(pre.get("config", "")), "pretrain.config")
    name = pre.get("name", config.stem)
    ratios = pre.get("ratios")
    if not isinstance(ratios, list) or not ratios or not all(is_number(r) for r in ratios):
        raise SweepError(f"pretrain.ratios must be a non-empty list of numbers, got {ratios!r}")
    if len({ratio_folder(r) for r in ratios}) != len(ratios):
        raise SweepError(f"pretrain.ratios must differ in their first two decimals: {ratios}")
    option = pre.get("noise_option", "data.init_args.noise_ratio")
    overrides = string_list(pre.get("overrides"), "pretrain.overrides")
    runs = []
    for ratio in map(float, ratios):
        folder = out / seed_folder(seed) / name / ratio_folder(ratio)
        args = (
            *base_args(config),
            *overrides,
            f"--{option}={ratio}",
            *seed_args(seed),
            *output_args(folder),
        )
        runs.append(Run("pretrain", name, ratio, seed, folder, args))
    return runs


def adapt_run(
    pretraining: Run,
    entry: dict[str, Any],
    common: tuple[str, ...],
    out: Path,
    embedding: Run | None = None,
) -> Run:
    """One adaptation of ``pretraining``'s exported backbone, or of the embeddings that
    ``embedding`` wrote with it (then only the entry's own overrides apply)."""
    folder = out / seed_folder(pretraining.seed) / "adapt" / ratio_folder(pretraining.ratio)
    folder = folder / entry["name"]
    if embedding is None:
        source = (
            f"--model.init_args.cache_dir={out / 'cache' / 'features'}",
            *common,
            *entry["overrides"],
            f"--model.init_args.backbone.card={pretraining.directory / 'export' / 'card.json'}",
        )
    else:
        source = (*entry["overrides"], f"--data.init_args.directory={embedding.directory}")
    args = (
        *base_args(entry["config"], entry["subcommand"]),
        *source,
        *seed_args(pretraining.seed),
        *output_args(folder),
    )
    labels = {k: entry[k] for k in ("name", "method", "task", "kind", "exclude_sets")}
    return Run(
        "adapt",
        pretraining.pretrain,
        pretraining.ratio,
        pretraining.seed,
        folder,
        args,
        needs=(embedding or pretraining).directory,
        needs_stage="pre-training" if embedding is None else "embedding run",
        **labels,
    )


def embed_run(pretraining: Run, entry: dict[str, Any], common: tuple[str, ...], out: Path) -> Run:
    """``train.py predict`` with the entry's ``embed`` image config and ``pretraining``'s
    backbone: the embedding files its adaptations read (``data.directory``)."""
    config = entry["embed"]
    folder = out / seed_folder(pretraining.seed) / "embed" / ratio_folder(pretraining.ratio)
    folder = folder / config.stem
    args = (
        *base_args(config, "predict"),
        f"--model.init_args.cache_dir={out / 'cache' / 'features'}",
        *common,
        f"--model.init_args.backbone.card={pretraining.directory / 'export' / 'card.json'}",
        *seed_args(pretraining.seed),
        *output_args(folder)[:3],  # the logger's folder; predict exports nothing
        f"--embed.dirpath={folder}",
    )
    return Run(
        "embed",
        pretraining.pretrain,
        pretraining.ratio,
        pretraining.seed,
        folder,
        args,
        name=config.stem,
        task=entry["task"],
        needs=pretraining.directory,
    )


def base_args(config: Path, subcommand: str = "fit") -> tuple[str, ...]:
    return (subcommand, "--config", str(config), "--trainer.enable_progress_bar=false")


def seed_folder(seed: int) -> str:
    return f"seed_{seed}"


def seed_args(seed: int) -> tuple[str, ...]:
    """The replicate's seed: the model's (``seed_everything``) and the data's."""
    return (f"--seed_everything={seed}", f"--data.init_args.seed={seed}")


def output_args(folder: Path) -> tuple[str, ...]:
    """Logger and export into ``folder`` itself (``version`` empty: no version_N subfolder).
    The folder is the run's own, so a rerun replaces its export (also after the sweep's folder
    was moved or copied, when the export would otherwise look like another run's)."""
    return (
        f"--trainer.logger.init_args.save_dir={folder.parent}",
        f"--trainer.logger.init_args.name={folder.name}",
        "--trainer.logger.init_args.version=",
        f"--export.dirpath={folder / 'export'}",
        "--export.overwrite=true",
    )


# --- running ----------------------------------------------------------------------------------
def failure_reason(log: Path) -> str:
    """The error at the end of a log, on one line: from its last ``error:`` line on (train.py's
    and jsonargparse's messages), else its last line (a traceback's exception)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    return " ".join(lines[errors[-1] if errors else -1 :])[:300]


def execute(run: Run, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run train.py, its output into log.txt; write result.json or failed.json."""
    print(f"  running: {run.label}  (log: {run.directory / LOG})", flush=True)
    run.directory.mkdir(parents=True, exist_ok=True)
    (run.directory / FAILED).unlink(missing_ok=True)
    command = [sys.executable, str(REPO / "train.py"), *run.args]
    log = run.directory / LOG
    start = time.monotonic()
    with log.open("w") as handle:
        handle.write(f"$ {shlex.join(command)}\n\n")
        handle.flush()
        code = subprocess.run(
            command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False
        ).returncode
    seconds = round(time.monotonic() - start, 1)
    if code == 0 and run.output.is_file():
        record = {**run.record("ok"), **output_summary(run)}
    else:
        missing = f"exit 0 but no {run.output.relative_to(run.directory)}"
        reason = f"exit {code}: {failure_reason(log)}" if code else missing
        record = {**run.record("failed"), "reason": reason}
    record |= {"command": command, "returncode": code, "seconds": seconds}
    (run.directory / (RESULT if record["status"] == "ok" else FAILED)).write_text(
        json.dumps(record, indent=2)
    )
    return record


def output_summary(run: Run) -> dict[str, Any]:
    """What a finished run left: its card's summary, or an embedding run's files."""
    if run.stage == "embed":
        return {"files": sorted(path.name for path in run.directory.glob("*.pt"))}
    return {"card": str(run.output), **card_summary(run.output)}


def card_summary(card: Path) -> dict[str, Any]:
    """The card's final metrics, and for a pre-training its nominal noise."""
    data = json.loads(card.read_text())
    summary = {"metrics": data.get("metrics", {})}
    if (data.get("data") or {}).get("noise") is not None:
        summary["noise"] = data["data"]["noise"]
    if data.get("spectrum") is not None:
        summary["spectrum"] = data["spectrum"]
    return summary


def adopt(run: Run) -> None:
    """Write ``result.json`` for a run launched outside the sweep, from its export card."""
    record = {**run.record("ok"), **output_summary(run)}
    record |= {"command": "launched outside the sweep", "returncode": 0, "seconds": None}
    (run.directory / RESULT).write_text(json.dumps(record, indent=2))


def skip(run: Run) -> dict[str, Any]:
    """Record an adaptation whose backbone is missing as skipped, pointing at the reason."""
    run.directory.mkdir(parents=True, exist_ok=True)
    record = {**run.record("skipped"), "reason": f"its {run.needs_stage} did not succeed"}
    (run.directory / FAILED).write_text(json.dumps(record, indent=2))
    return record


def chains(runs: list[Run]) -> list[list[Run]]:
    """Adaptations grouped by backbone and task, in plan order: each group runs in order in
    one slot, so its runs extract the shared frozen features once and never race on them."""
    groups: dict[tuple[int, float, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.seed, run.ratio, run.task), []).append(run)
    return list(groups.values())


def in_parallel(groups: list[list[Run]], jobs: int, step: Callable[[Run], None]) -> None:
    """Run the groups, ``jobs`` at a time. The first group of each task runs before the others:
    a task's built-in data are written on first use, and two writers would collide."""
    leaders, rest, seen = [], [], set()
    for group in groups:
        (rest if group[0].task in seen else leaders).append(group)
        seen.add(group[0].task)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for batch in (leaders, rest):
            list(pool.map(lambda group: [step(run) for run in group], batch))


def parallel_env(jobs: int) -> dict[str, str] | None:
    """The environment of parallel runs: each gets its share of the cores for torch's threads."""
    if jobs == 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}


def run_sweep(runs: list[Run], jobs: int) -> int:
    """Run what has no result yet; return the number of runs that failed or were skipped."""
    for run in runs:
        if not (run.directory / RESULT).is_file() and run.launched_outside():
            adopt(run)
            print(f"  adopted (launched outside the sweep): {run.label}", flush=True)
    todo = [run for run in runs if not (run.directory / RESULT).is_file()]
    print(f"plan: {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to run", flush=True)
    for run in todo:
        print(f"  to run: {run.label}", flush=True)
    progress = Progress(len(todo))
    for run in todo:
        if run.stage == "pretrain":
            progress.report(run, execute(run))

    env = parallel_env(jobs)

    def step(run: Run) -> None:
        ready = run.needs is None or (run.needs / RESULT).is_file()
        progress.report(run, execute(run, env) if ready else skip(run))

    for run in todo:  # embeddings, one after the other, before the runs that read them
        if run.stage == "embed":
            step(run)

    adaptations = [run for run in todo if run.stage == "adapt"]
    in_parallel(chains(adaptations), jobs, step)
    return progress.failed


def report(runs: list[Run], out: Path, title: str) -> list[Path]:
    statuses = [run.status() for run in runs]
    pretrain = [s for s in statuses if s["stage"] == "pretrain"]
    adapt = [s for s in statuses if s["stage"] == "adapt"]
    return write_report(out, title, pretrain, adapt)


def print_commands(runs: list[Run]) -> None:
    """Each run's label as a comment, then its train.py command line; quiet when the reader
    stops early (``| head``)."""
    try:
        for run in runs:
            print(f"# {run.label}")
            print(shlex.join([sys.executable, str(REPO / "train.py"), *run.args]), flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def select(runs: list[Run], ratios: list[float] | None, seeds: list[int] | None) -> list[Run]:
    """The runs of the given noise ratios and seeds (all of them for an empty selection)."""
    if ratios:
        planned = sorted({run.ratio for run in runs})
        unknown = [r for r in ratios if ratio_folder(r) not in map(ratio_folder, planned)]
        if unknown:
            raise SweepError(f"--ratio {unknown[0]} is not in pretrain.ratios {planned}")
        wanted = {ratio_folder(r) for r in ratios}
        runs = [run for run in runs if ratio_folder(run.ratio) in wanted]
    if seeds:
        planned_seeds = sorted({run.seed for run in runs})
        unknown_seeds = [s for s in seeds if s not in planned_seeds]
        if unknown_seeds:
            raise SweepError(f"--seed {unknown_seeds[0]} is not in seeds {planned_seeds}")
        runs = [run for run in runs if run.seed in seeds]
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="the sweep YAML")
    parser.add_argument("--out", type=Path, help="output folder (default: the YAML's `out`)")
    parser.add_argument("--jobs", type=int, help="adaptation runs at once (default: 1)")
    parser.add_argument("--only-report", action="store_true", help="run nothing, rebuild report")
    parser.add_argument(
        "--ratio",
        type=float,
        action="append",
        help="run only this noise ratio's pre-training and adaptations (repeatable)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        action="append",
        help="run only this seed's pre-trainings and adaptations (repeatable)",
    )
    parser.add_argument(
        "--print-commands",
        action="store_true",
        help="print the train.py command of each selected run instead of running it",
    )
    args = parser.parse_args(argv)
    try:
        sweep = yaml.safe_load(args.config.read_text()) or {}
        out = (args.out or Path(sweep.get("out", f"runs/{args.config.stem}"))).resolve()
        jobs = sweep.get("jobs", 1) if args.jobs is None else args.jobs
        if not isinstance(jobs, int) or jobs < 1:
            raise SweepError(f"jobs must be a positive integer, got {jobs!r}")
        runs = plan(sweep, out)
        selected = select(runs, args.ratio, args.seed)
    except (OSError, yaml.YAMLError, SweepError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_commands:
        print_commands(selected)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    failed = 0 if args.only_report else run_sweep(selected, jobs)
    paths = report(runs, out, runs[0].pretrain)
    if not args.only_report:
        print(f"sweep finished in {time.monotonic() - start:.0f} s, {failed} not succeeded")
    print("report: " + ", ".join(str(p) for p in paths))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
