"""What seeding each training sample's augmentation by (seed, epoch, key) costs.

The training stream runs timm's transform of every sample inside
``datamodules.keyed_random.keyed_randomness`` (for bit-exact resumes). In a loader worker the
generators are only seeded (``restore=False``); in the main process (``num_workers: 0``) their
states are also saved and given back. Measured side by side in one process, interleaved:

a. the quickstart's training transform of a decoded 28x28 image (timm, 32 px), alone;
b. the same inside ``keyed_randomness(restore=False)``: a loader worker;
c. the same inside ``keyed_randomness(restore=True)``: the main process.

Ratios ``worker_overhead = b / a - 1`` and ``main_process_overhead = c / a - 1``, medians over
``--repeats`` interleaved repeats (each the mean over ``--samples`` samples), with the spread
(max - min) / median. Target: worker overhead below 5 %.

    python -m benchmarks.augmentation_seeding            # writes results/augmentation_seeding.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import machine_info, print_ratios, publish
from datamodules.keyed_random import keyed_randomness
from datamodules.transforms import TransformConfig

NAME = "augmentation_seeding"
WORKER_OVERHEAD_TARGET = 0.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000, help="samples per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/<name>.json)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    transform = TransformConfig(image_size=32, crop_pct=1.0).build(True)
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    image = Image.fromarray(pixels).convert("RGB")
    keys = [f"fmnist-train-{index:05d}" for index in range(args.samples)]

    def seeded(restore: bool) -> Callable[[str], object]:
        def step(key: str) -> object:
            with keyed_randomness(0, key, "augment/0", restore=restore):
                return transform(image)

        return step

    variants: dict[str, Callable[[str], object]] = {
        "transform": lambda key: transform(image),
        "worker": seeded(False),
        "main_process": seeded(True),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, step in variants.items():  # interleaved: drift hits every variant alike
            start = time.perf_counter()
            for key in keys:
                step(key)
            seconds[name].append((time.perf_counter() - start) / len(keys))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    spreads = {
        name: (max(values) - min(values)) / medians[name] for name, values in seconds.items()
    }
    worker = medians["worker"] / medians["transform"] - 1
    per_sample = {name: [1e6 * value for value in values] for name, values in seconds.items()}
    return {
        "machine": machine_info(),
        "samples": args.samples,
        "repeats": args.repeats,
        "us_per_sample": per_sample,
        "median_us": {name: 1e6 * value for name, value in medians.items()},
        "spread": spreads,
        "ratios": {
            "worker_overhead": worker,
            "main_process_overhead": medians["main_process"] / medians["transform"] - 1,
        },
        "target": {
            "worker_overhead_below": WORKER_OVERHEAD_TARGET,
            "met": worker < WORKER_OVERHEAD_TARGET,
        },
    }


def report(results: dict[str, Any]) -> None:
    for name, value in results["median_us"].items():
        print(f"{name:14s} {value:8.1f} us/sample (spread {results['spread'][name]:.1%})")
    verdict = "met" if results["target"]["met"] else "NOT met"
    print_ratios(
        NAME,
        results["ratios"],
        f"(worker_overhead target < {WORKER_OVERHEAD_TARGET:.0%}: {verdict})",
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    publish(NAME, run(args), report, args.out)


if __name__ == "__main__":
    main()
