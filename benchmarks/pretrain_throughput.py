"""Pre-training throughput: training steps/s from the shards against the same steps from memory.

Measured side by side in one run, with the quickstart FS model
(``SupervisedPretraining("resnet18", 10, model_kwargs={"layers": [1, 1, 1, 1]})``, the
quickstart's AdamW schedule) and the quickstart's data settings (built-in Fashion-MNIST, 20 %
symmetric label noise, batch 128, 2 workers, image_size 32, scale (0.6, 1.0), crop_pct 1.0, no
colour jitter):

* ``shards`` (a): ``ClassificationDataModule`` streaming the training shards (read, noise,
  shuffle, decode, augment, collate in the worker processes), as ``train.py fit`` runs it;
* ``memory`` (b): the same model fed ``--memory-batches`` batches pulled once from that same
  pipeline and kept in memory (identical shapes and keys), cycled by a plain iterable.

Both run through a real ``lightning.Trainer(max_steps=warmup + steps, logger=False,
enable_checkpointing=False, limit_val_batches=0)`` so the loop overhead is the same. A small
callback stamps ``on_train_batch_start``/``on_train_batch_end``; a variant's rate is ``steps`` over
the time from the end of the last warm-up step to the end of the last step (so the loader's waits
are inside; on GPU the device is synchronised at those two stamps). Every fit starts from the same
seeded model. The variants run interleaved ``--repeats`` times, the order alternating (a, b, b, a,
a, b, ...) so that neither always runs first; reported are the median steps/s (and img/s) of each,
the spread of its repeats ((max - min) / median), the median per-step compute (start to end hook)
and wait (end to the next start: the loader plus the loop), and ``ratio = steps/s(a) / steps/s(b)``
of the medians. Target: ratio >= 0.9 (the data pipeline costs at most 10 % of the training speed).
It counts as resolved only when both variants' spreads are below 10 %. On a small CPU machine the
loader workers and the training step share the same cores, so (a) also pays for the workers' CPU
time; the load average before and after is recorded, as other jobs skew both.

Run from the repository root::

    python -m benchmarks.pretrain_throughput                       # CPU, 60 steps, 3 repeats
    python -m benchmarks.pretrain_throughput --steps 30 --repeats 5
    python -m benchmarks.pretrain_throughput --threads 0           # torch's default threads
    # ResNet-50 img/s on a GPU, to set beside timm's train.py (the memory variant is the model
    # alone; raise --num-workers to feed it from the shards):
    python -m benchmarks.pretrain_throughput --accelerator gpu --model resnet50 \\
        --image-size 224 --precision bf16-mixed --channels-last --batch-size 256 --num-workers 8

Main-process torch threads: ``--threads 1`` by default (0: torch's default, one per CPU). On this
suite's 2-CPU machine, shared with other jobs, 2 threads made every step 5 to 8 times slower
(threads waiting on descheduled siblings: 0.74 against 4.3 steps/s at a load average of 5) and a
run take 11 minutes; with 1 thread it took 2. The built-in images are 28 x 28, upscaled to
``--image-size``: fine for throughput. Results are printed and written to
``benchmarks/results/pretrain_throughput.json``. Timings depend on the machine and its load: tests
never assert them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch

from benchmarks.common import machine_info, print_ratios, publish, quiet_lightning
from datamodules.classification import ClassificationDataModule
from datamodules.transforms import TransformConfig
from lightning_modules.base import OptimizerConfig
from lightning_modules.pretrain_fs import SupervisedPretraining

NAME = "pretrain_throughput"
RATIO_TARGET = 0.9
VARIANTS = {  # name -> (letter, description), in run order
    "shards": ("a", "shards -> DataModule (noise on)"),
    "memory": ("b", "in-memory batches, cycled"),
}
# The quickstart's optimiser (configs/quickstart/pretrain_fs.yaml)
QUICKSTART_OPTIMIZER = OptimizerConfig(
    name="adamw", lr=0.002, weight_decay=0.05, warmup_epochs=0.1, schedule="cosine"
)
MODEL_KWARGS = {"resnet18": {"layers": [1, 1, 1, 1]}, "resnet50": {}}


class StepTimer(L.Callback):
    """Stamps every training step's start and end; synchronises the GPU at the two stamps the
    rate is measured between (end of the last warm-up step, end of the last step)."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup = warmup
        self.total = total
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = len(self.ends)
        if step in (self.warmup - 1, self.total - 1) and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.ends.append(time.perf_counter())

    def summary(self) -> dict[str, Any]:
        """Rate over the measured steps; median compute and wait per measured step."""
        first, last = self.warmup - 1, self.total - 1
        if len(self.ends) != self.total:
            raise RuntimeError(f"ran {len(self.ends)} steps, expected {self.total}")
        seconds = self.ends[last] - self.ends[first]
        measured = range(self.warmup, self.total)
        return {
            "seconds": seconds,
            "steps_per_s": (last - first) / seconds,
            "compute_s": statistics.median(self.ends[i] - self.starts[i] for i in measured),
            "wait_s": statistics.median(self.starts[i] - self.ends[i - 1] for i in measured),
        }


class CycledBatches:
    """``length`` batches from a list held in memory, cycled: a loader with no work to do."""

    def __init__(self, batches: list[dict[str, Any]], length: int) -> None:
        self.batches = batches
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(self.length):
            yield self.batches[index % len(self.batches)]


class InMemoryDataModule(ClassificationDataModule):
    """The quickstart DataModule (same setup, same epoch length) serving in-memory batches."""

    def __init__(self, batches: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.memory_batches = batches

    def train_dataloader(self) -> CycledBatches:  # type: ignore[override]
        return CycledBatches(self.memory_batches, self.batches_per_rank())


def data_options(args: argparse.Namespace) -> dict[str, Any]:
    """``configs/quickstart/pretrain_fs.yaml``'s data, at the requested size and batch."""
    return {
        "builtin": "fashion_mnist",
        "builtin_root": args.root,
        "num_classes": 10,
        "label_noise": "symmetric",
        "noise_ratio": args.noise_ratio,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "transform": TransformConfig(
            image_size=args.image_size, scale=(0.6, 1.0), crop_pct=1.0, color_jitter=0.0
        ),
    }


def memory_batches(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Pull ``--memory-batches`` full batches out of the shard pipeline once."""
    data = ClassificationDataModule(**data_options(args))
    data.prepare_data()
    data.setup("fit")
    batches = []
    for batch in data.train_dataloader():
        if len(batch["key"]) == args.batch_size:
            batches.append(batch)
        if len(batches) == args.memory_batches:
            break
    return batches


def build_model(args: argparse.Namespace) -> SupervisedPretraining:
    torch.manual_seed(0)
    return SupervisedPretraining(
        args.model,
        10,
        model_kwargs=MODEL_KWARGS.get(args.model, {}),
        channels_last=args.channels_last,
        optimizer=QUICKSTART_OPTIMIZER,
    )


def fit_once(args: argparse.Namespace, data: ClassificationDataModule) -> dict[str, Any]:
    """One ``trainer.fit`` of ``warmup + steps`` steps; the timer's summary and the fit's wall."""
    total = args.warmup + args.steps
    timer = StepTimer(args.warmup, total)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        precision=args.precision,
        max_steps=total,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    model = build_model(args)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    wall = time.perf_counter() - start
    return {**timer.summary(), "fit_wall_s": wall}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, run the interleaved repeats, and return the results as a JSON-able dict."""
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    if args.warmup < 1:
        raise SystemExit("--warmup must be at least 1 (the first step starts the workers)")
    batches = memory_batches(args)
    images_per_step = args.batch_size * (args.devices if isinstance(args.devices, int) else 1)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        order = list(VARIANTS) if repeat % 2 == 0 else list(VARIANTS)[::-1]  # a b, b a, ...
        for name in order:
            options = data_options(args)
            data = (
                ClassificationDataModule(**options)
                if name == "shards"
                else InMemoryDataModule(batches, **options)
            )
            result = fit_once(args, data)
            runs[name].append(result)
            print(
                f"repeat {repeat + 1}/{args.repeats} {name:7s} {result['steps_per_s']:7.3f} steps/s"
                f" {result['steps_per_s'] * images_per_step:8.1f} img/s"
                f"  (compute {result['compute_s'] * 1e3:.0f} ms, wait {result['wait_s'] * 1e3:.1f}"
                f" ms per step; fit {result['fit_wall_s']:.1f} s)"
            )
    load_end = [round(x, 2) for x in os.getloadavg()]

    variants = {}
    for name, (letter, description) in VARIANTS.items():
        rates = [r["steps_per_s"] for r in runs[name]]
        median = statistics.median(rates)
        variants[name] = {
            "letter": letter,
            "description": description,
            "steps_per_s": rates,
            "median_steps_per_s": median,
            "median_img_per_s": median * images_per_step,
            "spread": (max(rates) - min(rates)) / median,
            "median_compute_s": statistics.median(r["compute_s"] for r in runs[name]),
            "median_wait_s": statistics.median(r["wait_s"] for r in runs[name]),
            "fit_wall_s": [r["fit_wall_s"] for r in runs[name]],
        }
    a, b = variants["shards"], variants["memory"]
    ratio = a["median_steps_per_s"] / b["median_steps_per_s"]
    per_repeat = [
        x["steps_per_s"] / y["steps_per_s"]
        for x, y in zip(runs["shards"], runs["memory"], strict=True)
    ]
    spread = max(a["spread"], b["spread"])
    return {
        "config": {
            **vars(args),
            "model_kwargs": MODEL_KWARGS.get(args.model, {}),
            "images_per_step": images_per_step,
        },
        "machine": {
            **machine_info(),
            "torch_threads": torch.get_num_threads(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_1_5_15_start": load_start,
            "load_avg_1_5_15_end": load_end,
        },
        "variants": variants,
        "ratios": {
            "shards_over_memory": ratio,
            "shards_over_memory_best": max(a["steps_per_s"]) / max(b["steps_per_s"]),
            "per_repeat": per_repeat,
        },
        "target": {
            "ratio_at_least": RATIO_TARGET,
            "met": ratio >= RATIO_TARGET,
            "resolved": args.repeats > 1 and spread < 1 - RATIO_TARGET,
            "spread": spread,
        },
    }


def report(results: dict[str, Any]) -> None:
    """Print the table of medians and the one-line ratio summary."""
    print(
        f"\n{'variant':36s} {'steps/s':>8s} {'img/s':>8s} {'spread':>7s} {'compute':>8s}"
        f" {'wait':>7s}  per repeat"
    )
    for entry in results["variants"].values():
        each = " ".join(f"{value:.3f}" for value in entry["steps_per_s"])
        print(
            f"{entry['letter']}  {entry['description']:33s} {entry['median_steps_per_s']:8.3f}"
            f" {entry['median_img_per_s']:8.1f} {entry['spread']:7.1%}"
            f" {entry['median_compute_s'] * 1e3:6.0f}ms {entry['median_wait_s'] * 1e3:5.1f}ms"
            f"  {each}"
        )
    machine = results["machine"]
    print(
        f"\nload average (1/5/15 min) at start {machine['load_avg_1_5_15_start']}, "
        f"at end {machine['load_avg_1_5_15_end']} on {machine['usable_cpus']} usable CPUs"
        + (f"; GPU {machine['cuda_device']}" if machine["cuda_device"] else "")
    )
    config = results["config"]
    print(
        f"{config['model']} {config['image_size']}px batch {config['images_per_step']}"
        f" precision {config['precision']}{' channels-last' if config['channels_last'] else ''}:"
        f" {results['variants']['memory']['median_img_per_s']:.1f} img/s from memory,"
        f" {results['variants']['shards']['median_img_per_s']:.1f} img/s from the shards"
    )
    ratios, target = results["ratios"], results["target"]
    verdict = "met" if target["met"] else "NOT met"
    if not target["resolved"]:
        verdict += f"; not resolved: spread {target['spread']:.0%}"
    print()
    print_ratios(
        NAME,
        {
            "ratio": ratios["shards_over_memory"],
            "ratio_best": ratios["shards_over_memory_best"],
            "shards_steps/s": results["variants"]["shards"]["median_steps_per_s"],
            "memory_steps/s": results["variants"]["memory"]["median_steps_per_s"],
        },
        f"(ratio target >= {target['ratio_at_least']}: {verdict})",
    )


def devices_arg(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data", help="folder of the built-in shards")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--devices", type=devices_arg, default=1)
    parser.add_argument(
        "--precision",
        default=None,
        help="Trainer precision (default: 32 on cpu, bf16-mixed on gpu)",
    )
    parser.add_argument("--model", default="resnet18", choices=sorted(MODEL_KWARGS))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--noise-ratio", type=float, default=0.2)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per fit")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--memory-batches", type=int, default=8, help="distinct batches the memory variant cycles"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)"
    )
    parser.add_argument("--out", default=f"benchmarks/results/{NAME}.json")
    args = parser.parse_args(argv)
    if args.precision is None:
        args.precision = "bf16-mixed" if args.accelerator == "gpu" else "32"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_lightning()
    publish(NAME, run(args), report, args.out)


if __name__ == "__main__":
    main()
