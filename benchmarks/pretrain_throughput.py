"""Pre-training throughput: training steps/s from the shards against the same steps from memory.

The FS quickstart's model, optimiser and data as ``configs/quickstart/pretrain_fs.yaml`` defines
them (a 4.9 M-parameter ResNet-18; built-in Fashion-MNIST, 20 % symmetric label noise, batch 128,
``num_workers: auto``, 32 px), read from that file, fed two ways through the same Trainer:

* ``shards`` (a): the DataModule streaming the shards (read, noise, shuffle, decode, augment,
  collate, in its loader workers if any), as ``train.py fit`` runs it;
* ``memory`` (b): ``--memory-batches`` batches pulled once from that pipeline and finished
  (normalised), cycled from memory;
* ``augment`` (c): as (a) with ``transform.augment_on_device``: the loader only draws and cuts
  the crops, and the batch is resized, flipped and normalised on the training device.

A fit's rate is ``--steps`` over the time from the end of the last of ``--warmup`` steps to the
end of the last step (``LoopTimer``: the loader's waits are inside; a GPU is synchronised at those
two stamps only); every fit starts from the same seeded model. Target: ``ratio = steps/s(a) /
steps/s(b) >= 0.9`` (the data pipeline costs at most 10 % of the training speed), resolved only
when both spreads are under 10 %. Also reported: img/s and the median compute (start to end hook)
and wait (end to the next start) per step. On a small CPU machine the loader workers share the
cores with the step, so (a) also pays for their CPU time. ``--threads 1`` by default: on 2 CPUs
shared with other jobs, 2 threads made every step 5 to 8 times slower (descheduled siblings).

    python -m benchmarks.pretrain_throughput                       # CPU, 60 steps, 5 repeats
    # ResNet-50 img/s on a GPU, beside timm's train.py (raise --num-workers for the shards):
    python -m benchmarks.pretrain_throughput --accelerator gpu --model resnet50 \\
        --image-size 224 --precision bf16-mixed --channels-last --batch-size 256 --num-workers 8
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from benchmarks import common
from datamodules.classification import ClassificationDataModule

NAME = "pretrain_throughput"
CONFIG = "pretrain_fs"
RATIO_TARGET = 0.9
VARIANTS = {  # name -> (letter, description), in run order
    "shards": ("a", "shards -> DataModule (noise on)"),
    "memory": ("b", "in-memory batches, cycled"),
    "augment": ("c", "shards -> DataModule, crop/flip/normalise per batch on the device"),
}


class CycledBatches:
    """``length`` batches from a list held in memory, cycled: a loader with no work to do."""

    def __init__(self, batches: list[dict[str, Any]], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.batches[index % len(self.batches)] for index in range(self.length))


class InMemoryDataModule(ClassificationDataModule):
    """The quickstart DataModule (same setup, same epoch length) serving ``memory_batches``."""

    memory_batches: list[dict[str, Any]]

    def train_dataloader(self) -> CycledBatches:  # type: ignore[override]
        return CycledBatches(self.memory_batches, self.batches_per_rank())


def data(
    args: argparse.Namespace, memory: list[dict[str, Any]] | None = None, augment: bool = False
) -> Any:
    """The quickstart's data at the requested size and batch (one epoch holds every step),
    served from ``memory`` when given; ``augment``: ``augment_on_device``."""
    module = common.quickstart_data(
        CONFIG,
        None if memory is None else InMemoryDataModule,
        builtin_root=args.root,
        noise_ratio=args.noise_ratio,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        transform={"image_size": args.image_size, "augment_on_device": augment},
        epoch_samples=None,
    )
    if memory is not None:
        module.memory_batches = memory
    return module


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Another architecture than the quickstart's goes without its ``model_kwargs`` (None: an
    empty mapping would be merged into the quickstart's)."""
    quick = common.quickstart(CONFIG)["model"]["init_args"]
    kwargs = quick["model_kwargs"] if args.model == quick["model_name"] else None
    return {"model_name": args.model, "model_kwargs": kwargs, "channels_last": args.channels_last}


def memory_batches(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Pull ``--memory-batches`` full batches out of the shard pipeline once, finished as the
    device would finish them (a uint8 batch normalised), so that serving them costs nothing."""
    shards = data(args)
    shards.prepare_data()
    shards.setup("fit")
    batches = []
    for batch in shards.train_dataloader():
        if len(batch["key"]) == args.batch_size:
            batches.append(shards.on_after_batch_transfer(batch, 0))
        if len(batches) == args.memory_batches:
            break
    return batches


def fit_once(args: argparse.Namespace, datamodule: ClassificationDataModule) -> dict[str, Any]:
    """One ``trainer.fit`` of ``warmup + steps`` steps: the rate, median compute and wait per
    measured step, and the fit's wall time."""
    first, last = args.warmup - 1, args.warmup + args.steps - 1
    timer = common.LoopTimer(sync_steps=(first, last))
    trainer = common.timing_trainer(
        timer,
        accelerator=args.accelerator,
        devices=args.devices,
        precision=args.precision,
        max_steps=last + 1,
        limit_val_batches=0,
    )
    torch.manual_seed(0)
    model = common.quickstart_model(CONFIG, **model_overrides(args))
    _, wall = common.timed(lambda: trainer.fit(model, datamodule=datamodule))
    starts, ends = timer.step_starts, timer.step_ends
    if len(ends) != last + 1:
        raise RuntimeError(f"ran {len(ends)} steps, expected {last + 1}")
    measured = range(args.warmup, last + 1)
    return {
        "steps_per_s": (last - first) / (ends[last] - ends[first]),
        "compute_s": statistics.median(ends[i] - starts[i] for i in measured),
        "wait_s": statistics.median(starts[i] - ends[i - 1] for i in measured),
        "fit_wall_s": wall,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.warmup < 1:
        raise SystemExit("--warmup must be at least 1 (the first step starts the workers)")
    batches = memory_batches(args)
    images_per_step = args.batch_size * (args.devices if isinstance(args.devices, int) else 1)
    rates = common.interleaved(
        {
            "shards": lambda: fit_once(args, data(args)),
            "memory": lambda: fit_once(args, data(args, batches)),
            "augment": lambda: fit_once(args, data(args, augment=True)),
        },
        args.repeats,
        warmup=0,
        key="steps_per_s",
        unit="steps/s",
    )
    a, b = rates["shards"], rates["memory"]
    spread, shards_over_memory = max(a.spread, b.spread), common.ratio(a, b)
    augment_over_memory = common.ratio(rates["augment"], b)
    return {
        "config": {
            **vars(args),
            "model_kwargs": model_overrides(args)["model_kwargs"] or {},
            "images_per_step": images_per_step,
        },
        "variants": {
            name: {
                "letter": letter,
                "description": description,
                **rates[name].published("steps_per_s"),
                "median_img_per_s": rates[name].median * images_per_step,
                **{
                    f"median_{key}": statistics.median(run[key] for run in rates[name].runs)
                    for key in ("compute_s", "wait_s")
                },
                "fit_wall_s": [run["fit_wall_s"] for run in rates[name].runs],
            }
            for name, (letter, description) in VARIANTS.items()
        },
        "candidates": rates,
        "ratios": {
            "shards_over_memory": shards_over_memory,
            "shards_over_memory_best": max(a.values) / max(b.values),
            "per_repeat": shards_over_memory.per_repeat,
            "augment_over_memory": augment_over_memory,
            "augment_over_shards": common.ratio(rates["augment"], a),
        },
        "target": {
            "ratio_at_least": RATIO_TARGET,
            "met": shards_over_memory.value >= RATIO_TARGET,
            "met_with_augment_on_device": augment_over_memory.value >= RATIO_TARGET,
            "resolved": spread < 1 - RATIO_TARGET,
            "spread": spread,
        },
    }


def report(results: Mapping[str, Any]) -> None:
    config = results["config"]
    print(
        f"{config['model']} {config['image_size']}px batch {config['images_per_step']}"
        f" precision {config['precision']}{' channels-last' if config['channels_last'] else ''}:"
    )
    for name, entry in results["variants"].items():
        print(
            f"{name:7s} {entry['median_img_per_s']:8.1f} img/s, per step: compute"
            f" {entry['median_compute_s'] * 1e3:.0f} ms, wait {entry['median_wait_s'] * 1e3:.1f} ms"
        )


def main(argv: list[str] | None = None) -> None:
    quick = common.quickstart(CONFIG)
    data = quick["data"]["init_args"]
    parser = common.arguments(
        __doc__,
        threads=True,
        image_size=data["transform"]["image_size"],
        batch_size=data["batch_size"],
        num_workers=data["num_workers"],
        noise_ratio=data["noise_ratio"],
        memory_batches=8,  # distinct batches the memory variant cycles
        steps=60,  # timed steps per fit
        warmup=5,  # untimed steps first
    )
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--devices", type=lambda v: int(v) if v.isdigit() else v, default=1)
    parser.add_argument("--precision", help="Trainer precision (default: 32 cpu, bf16-mixed gpu)")
    parser.add_argument("--model", default=quick["model"]["init_args"]["model_name"], help="timm")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args(argv)
    args.precision = args.precision or ("bf16-mixed" if args.accelerator == "gpu" else "32")
    common.publish(NAME, args, run, report)


if __name__ == "__main__":
    main()
