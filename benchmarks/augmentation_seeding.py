"""What seeding each training sample's augmentation by (seed, epoch, key) costs.

The training stream seeds the generators for every sample before timm's transform (for
bit-exact resumes, ``seed_for_sample``); the main process (``num_workers: 0``) also puts their
states aside once per batch and gives them back at its collation (``SavedGenerators``).
Interleaved, per sample: the quickstart's training transform of a 28x28 image alone
(``transform``), after ``seed_for_sample`` (``worker``), and with the states put aside and given
back once every ``--batch-size`` samples as well (``main_process``). Target:
``worker_overhead = worker / transform - 1`` below 5 %.

    python -m benchmarks.augmentation_seeding
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from benchmarks import common
from datamodules.keyed_random import SavedGenerators, seed_for_sample
from datamodules.transforms import TransformConfig

NAME = "augmentation_seeding"
WORKER_OVERHEAD_TARGET = 0.05


def run(args: argparse.Namespace) -> dict[str, Any]:
    transform = TransformConfig(image_size=32, crop_pct=1.0).build(True)
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    image = Image.fromarray(pixels).convert("RGB")
    keys = [f"fmnist-train-{index:05d}" for index in range(args.samples)]

    def worker(key: str) -> object:
        seed_for_sample(0, key, "augment/0")
        return transform(image)

    generators = SavedGenerators()
    batch_position = {key: index % args.batch_size for index, key in enumerate(keys)}

    def main_process(key: str) -> object:
        generators.put_aside()
        result = worker(key)
        if batch_position[key] == args.batch_size - 1:  # the batch is collated
            generators.give_back()
        return result

    variants: dict[str, Callable[[str], object]] = {
        "transform": lambda key: transform(image),
        "worker": worker,
        "main_process": main_process,
    }
    times = common.interleaved(
        {name: common.per_call(step, keys) for name, step in variants.items()},
        args.repeats,
        unit="s/sample",
    )
    worker, main = (
        common.ratio(times[name], times["transform"]).map(lambda r: r - 1)
        for name in ("worker", "main_process")
    )
    generators.give_back()
    return {
        "samples": args.samples,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "us_per_sample": {name: [1e6 * t for t in times[name].values] for name in times},
        "median_us": {name: 1e6 * t.median for name, t in times.items()},
        "spread": {name: t.spread for name, t in times.items()},
        "candidates": times,
        "ratios": {"worker_overhead": worker, "main_process_overhead": main},
        "target": {
            "worker_overhead_below": WORKER_OVERHEAD_TARGET,
            "met": worker.value < WORKER_OVERHEAD_TARGET,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = common.arguments(__doc__, batch_size=128)
    parser.add_argument("--samples", type=int, default=2048, help="samples per repeat")
    common.publish(NAME, parser.parse_args(argv), run)


if __name__ == "__main__":
    main()
