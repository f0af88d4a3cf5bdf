"""Adaptation speed: NMTune on cached features against NMTune with the backbone in the loop.

1. **End to end**: the NMTune quickstart as ``configs/quickstart/nmtune_id.yaml`` composes it
   (paper preset, its optimiser and data: held-out Fashion-MNIST, 6,000 train / 1,000 val images,
   without the test sets in validation), ``--epochs`` epochs of ``trainer.fit``, interleaved as
   ``in_loop`` (a, ``cache_features=False``: the frozen backbone runs on every batch, streamed and
   augmented, as the official code runs) and ``cached`` (b, into a fresh folder each time, so the
   one-time extraction is inside its time; also reported alone). The backbone is ``--model`` (timm,
   random weights: the timing does not depend on them), else ``--card``, else the FS quickstart's
   export, else its model with random weights; ``--train-samples`` / ``--val-samples`` keep the
   first images of each split, to time a large backbone at a large size on a CPU. Target:
   ``speedup = t(a) / t(b) >= 0.8 * epochs``. Also reported: epoch times (``LoopTimer``) and final
   ``val/val/acc`` (they differ: (a) sees new augmentations every epoch, (b) un-augmented
   features, as CLIP_benchmark's linear probe).
2. **Regulariser cost**: a training step of the head alone on random features (``--reg-batch``
   x ``--reg-dim``: ``ResidualMLP(D, 4)`` + ``Linear(D, 10)``, CE, backward, ``AdamW.step``), a
   repeat being the mean of ``--reg-steps`` steps, as ``mlp`` and as NMTune with the ``paper`` and
   ``official_code`` weights. Target: NMTune / MLP at most 1.3. Each term is also timed alone
   (forward + backward with respect to a (batch, D) leaf).

    python -m benchmarks.adaptation_speed                 # 3 epochs x 5 repeats, reg 10 steps
    python -m benchmarks.adaptation_speed --model resnet50 --image-size 224 \\
        --train-samples 640 --val-samples 128 --skip regularizer   # at the paper's size

``--threads 1`` and ``--reg-steps 10`` by default: on 2 CPUs shared with other jobs a step at
D = 2048 takes 0.4 to 1.2 s.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from webdataset.tariterators import base_plus_ext

from benchmarks import common
from callbacks.export import write_card
from datamodules.base import usable_cpus
from datamodules.builtin import prepare_builtin
from datamodules.classification import ClassificationDataModule
from datamodules.features import FeatureRows, ImageSource
from datamodules.shards import parse_shards
from lightning_modules.heads import ResidualMLP
from lightning_modules.regularizers import (
    NMTuneLossWeights,
    consistency_loss,
    covariance_loss,
    dominant_singular_loss,
    nmtune_regularizer,
)

NAME = "adaptation_speed"
CONFIG = "nmtune_id"
SPEEDUP_PER_EPOCH_TARGET = 0.8  # speed-up >= 0.8 x epochs
REG_RATIO_TARGET = 1.3
ACC_METRIC = "val/val/acc"
VARIANTS = {  # name -> (letter, description), in run order
    "in_loop": ("a", "backbone in the loop"),
    "cached": ("b", "cached features (+ extraction)"),
}
REG_VARIANTS = {
    "mlp": None,
    "nmtune_paper": NMTuneLossWeights.paper(),
    "nmtune_official": NMTuneLossWeights.official_code(),
}


# --- 1. end to end -------------------------------------------------------------------------------
class TimedDataModule(ClassificationDataModule):
    """The DataModule, timing the one-time feature extraction (from naming its image sources to
    serving the features) and counting the rows per set."""

    extraction_s: float | None = None
    extracted_rows: dict[str, int] | None = None

    def frozen_sources(self, stage: str) -> list[ImageSource]:
        self._extraction_start = time.perf_counter()
        return super().frozen_sources(stage)

    def serve_features(self, train_views: list[FeatureRows], evaluation: Any, *rest: Any) -> None:
        super().serve_features(train_views, evaluation, *rest)
        self.extraction_s = time.perf_counter() - self._extraction_start
        rows = {"train": len(train_views[0].keys) if train_views else 0}
        for split, sets in evaluation.items():
            rows |= {f"{split}/{name}": len(data.keys) for name, data in sets.items()}
        self.extracted_rows = rows


def find_card(args: argparse.Namespace, scratch: Path) -> tuple[Path, str]:
    """``--model`` with random weights, else the given card, else the FS quickstart's export,
    else a random-weights card of the FS quickstart's model."""
    exported = Path(common.quickstart(CONFIG)["model"]["init_args"]["backbone"]["card"])
    if args.card and not args.model:
        return Path(args.card), "given"
    if exported.is_file() and not args.model:
        return exported, "quickstart export"
    torch.manual_seed(0)
    module = common.quickstart_model(
        "pretrain_fs", **({"model_name": args.model, "model_kwargs": None} if args.model else {})
    )
    card = write_card(module, None, scratch / "card", epochs=0, metrics={})
    return card, f"{args.model or 'quickstart model'}, random weights"


def first_samples(spec: str, count: int, folder: Path, split: str, shards: int) -> str:
    """The first ``count`` samples of the shards ``spec``, copied byte for byte into ``shards``
    new shards (one per loader worker at least), for timing a large backbone on a CPU in
    minutes; returns their spec with the count."""
    samples: dict[str, list[tuple[tarfile.TarInfo, bytes]]] = {}
    for url in parse_shards(spec).urls:
        with tarfile.open(url) as source:
            for member in source:
                key = base_plus_ext(member.name)[0]
                if key not in samples and len(samples) == count:
                    break
                samples.setdefault(key, []).append((member, source.extractfile(member).read()))
        if len(samples) == count:
            break
    else:
        raise SystemExit(f"error: {spec} has {len(samples)} samples, not the {count} asked for")
    groups = list(samples.values())
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(shards):
        with tarfile.open(folder / f"{split}-{index:04d}.tar", "w") as out:
            for files in groups[index::shards]:
                for member, data in files:
                    out.addfile(member, io.BytesIO(data))
    return f"{folder}/{split}-{{0000..{shards - 1:04d}}}.tar|{count}"


def training_shards(args: argparse.Namespace, scratch: Path) -> dict[str, str]:
    """The built-in held-out Fashion-MNIST train and val splits, or their first
    ``--train-samples`` / ``--val-samples`` samples."""
    specs = prepare_builtin("fmnist_heldout", args.root)["classification"]
    limits = {"train": args.train_samples, "val": args.val_samples}
    workers = usable_cpus() if args.num_workers == "auto" else args.num_workers  # at most
    return {
        split: first_samples(specs[split], limit, scratch / "subset", split, workers + 1)
        if limit
        else specs[split]
        for split, limit in limits.items()
    }


def fit_once(
    args: argparse.Namespace, card: Path, shards: dict[str, str], cached: bool, scratch: Path
) -> dict[str, Any]:
    """One ``trainer.fit`` of NMTune for ``--epochs`` epochs; times, extraction, accuracy."""
    L.seed_everything(0, verbose=False)
    cache_dir = tempfile.mkdtemp(prefix="features-", dir=scratch)  # fresh: extraction counted
    module, build_s = common.timed(
        lambda: common.quickstart_model(
            CONFIG, backbone={"card": str(card)}, cache_features=cached, cache_dir=cache_dir
        )
    )
    data = common.quickstart_data(
        CONFIG,
        TimedDataModule,
        builtin=None,
        train_shards=shards["train"],
        val_shards={"val": shards["val"]},
        test_in_validation=False,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        transform={"image_size": args.image_size},
    )
    timer = common.LoopTimer()
    trainer = common.timing_trainer(timer, max_epochs=args.epochs)
    _, wall = common.timed(lambda: trainer.fit(module, datamodule=data))
    if ACC_METRIC not in trainer.callback_metrics:
        raise RuntimeError(f"{ACC_METRIC} was not logged: {sorted(trainer.callback_metrics)}")
    return {
        "fit_wall_s": wall,
        "build_s": build_s,
        "extraction_s": data.extraction_s,
        "extracted_rows": data.extracted_rows,
        "train_epoch_s": timer.train_epoch_s,
        "val_epoch_s": timer.val_epoch_s,
        "acc": float(trainer.callback_metrics[ACC_METRIC]),
    }


def measure_end_to_end(
    args: argparse.Namespace, card: Path, scratch: Path
) -> tuple[dict[str, Any], dict[str, common.Timing], common.Ratio]:
    shards = training_shards(args, scratch)
    walls = common.interleaved(
        {
            name: lambda cached=name == "cached": fit_once(args, card, shards, cached, scratch)
            for name in VARIANTS
        },
        args.repeats,
        warmup=0,
        key="fit_wall_s",
    )
    variants = {}
    for name, (letter, description) in VARIANTS.items():
        runs = walls[name].runs
        extraction = [run["extraction_s"] for run in runs if run["extraction_s"] is not None]
        variants[name] = {
            "letter": letter,
            "description": description,
            **walls[name].published("fit_wall_s"),
            **{
                f"median_{key}": statistics.median(s for run in runs for s in run[key])
                for key in ("train_epoch_s", "val_epoch_s")
            },
            "extraction_s": extraction,
            "median_extraction_s": statistics.median(extraction) if extraction else None,
            "extracted_rows": runs[0]["extracted_rows"],
            "build_s": [run["build_s"] for run in runs],
            "acc": [run["acc"] for run in runs],
            "runs": runs,
        }
    a, b = variants["in_loop"], variants["cached"]
    speedup = common.ratio(walls["in_loop"], walls["cached"])
    epoch_a, epoch_b = (v["median_train_epoch_s"] + v["median_val_epoch_s"] for v in (a, b))
    result = {
        "variants": variants,
        "speedup": speedup.value,
        "speedup_best": min(a["fit_wall_s"]) / min(b["fit_wall_s"]),
        "speedup_per_repeat": speedup.per_repeat,
        "epoch_speedup": epoch_a / epoch_b,  # train + val epoch, extraction left out
        "speedup_target": SPEEDUP_PER_EPOCH_TARGET * args.epochs,
    }
    return result, walls, speedup


# --- 2. regulariser cost -------------------------------------------------------------------------
def head_step(args: argparse.Namespace, weights: NMTuneLossWeights | None) -> Callable[[], None]:
    """One optimiser step of the NMTune head on fixed random features (CE [+ NMTune terms])."""
    torch.manual_seed(0)
    transform = ResidualMLP(args.reg_dim, 4)
    classifier = nn.Linear(args.reg_dim, 10)
    params = [*transform.parameters(), *classifier.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    features = torch.randn(args.reg_batch, args.reg_dim)
    labels = torch.randint(0, 10, (args.reg_batch,))

    def step() -> None:
        transformed = transform(features)
        loss = F.cross_entropy(classifier(transformed), labels)
        if weights is not None:
            loss = loss + nmtune_regularizer(features, transformed, weights)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def term_steps(args: argparse.Namespace) -> dict[str, Callable[[], None]]:
    """Forward + backward of each regulariser term alone, with respect to a (batch, D) leaf."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(args.reg_batch, args.reg_dim, generator=generator)
    leaf = torch.randn(args.reg_batch, args.reg_dim, generator=generator).requires_grad_()
    terms: dict[str, Callable[[], torch.Tensor]] = {
        "consistency_sample": lambda: consistency_loss(features, leaf, "sample"),
        "consistency_element": lambda: consistency_loss(features, leaf, "element"),
        "covariance": lambda: covariance_loss(leaf),
        "dominant_singular_top1": lambda: dominant_singular_loss(leaf, 1),
        "dominant_singular_top5": lambda: dominant_singular_loss(leaf, 5),
    }

    def backward(term: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            leaf.grad = None
            term().backward()

        return run

    return {name: backward(term) for name, term in terms.items()}


def measure_regularizer(
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, common.Timing], dict[str, common.Ratio]]:
    """Each variant's and term's mean step time over ``--reg-steps`` steps, interleaved after a
    warm-up round (allocator, thread pools, first-call paths)."""
    steps = {name: head_step(args, weights) for name, weights in REG_VARIANTS.items()}
    steps |= term_steps(args)

    calls = range(args.reg_steps)
    times = common.interleaved(
        {name: common.per_call(lambda _, s=step: s(), calls) for name, step in steps.items()},
        args.reg_repeats,
    )
    mlp = times["mlp"]
    over = {name: common.ratio(times[name], mlp) for name in REG_VARIANTS}
    result = {
        "batch": args.reg_batch,
        "dim": args.reg_dim,
        "threads": torch.get_num_threads(),
        "step_s": {name: t.values for name, t in times.items()},
        "median_step_s": {name: t.median for name, t in times.items()},
        "spread": {name: t.spread for name, t in times.items()},
        "over_mlp": {name: r.value for name, r in over.items()},
        "over_mlp_best": {name: min(times[name].values) / min(mlp.values) for name in over},
        "term_share_of_mlp_step": {
            name: times[name].median / mlp.median for name in steps if name not in over
        },
    }
    return result, times, over


# --- driver --------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"end_to_end": None, "regularizer": None, "candidates": {}}
    ratios: dict[str, common.Ratio | float] = {}
    target: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as scratch:
        card, card_source = find_card(args, Path(scratch))
        print(f"backbone card: {card} ({card_source})")
        if "end_to_end" not in args.skip:
            end_to_end, walls, speedup = measure_end_to_end(args, card, Path(scratch))
            spread = max(walls[name].spread for name in VARIANTS)
            results |= {"end_to_end": end_to_end, "candidates": walls}
            ratios |= {
                "speedup": speedup,
                "speedup_best": end_to_end["speedup_best"],
                "epoch_speedup": end_to_end["epoch_speedup"],
            }
            target |= {
                "speedup_at_least": end_to_end["speedup_target"],
                "speedup_met": speedup.value >= end_to_end["speedup_target"],
                "speedup_spread": spread,
            }
    if "regularizer" not in args.skip:
        regularizer, steps, over = measure_regularizer(args)
        reg_spread = max(steps[name].spread for name in REG_VARIANTS)
        results |= {"regularizer": regularizer, "candidates": results["candidates"] | steps}
        ratios |= {f"{name}/mlp": over[name] for name in ("nmtune_paper", "nmtune_official")}
        target |= {
            "reg_ratio_at_most": REG_RATIO_TARGET,
            "reg_met": max(over[name].value for name in over) <= REG_RATIO_TARGET,
            "reg_spread": reg_spread,
            "reg_resolved": reg_spread < REG_RATIO_TARGET - 1,
        }
    config = {**vars(args), "card": str(card), "card_source": card_source}
    return {"config": config, **results, "ratios": ratios, "target": target}


def report(results: Mapping[str, Any]) -> None:
    """Per variant its epoch times, extraction and accuracies; per head step its share of the
    MLP's."""
    if results["end_to_end"] is not None:
        variants = results["end_to_end"]["variants"]
        for name, entry in variants.items():
            extraction = entry["median_extraction_s"]
            print(
                f"{name:8s} median epoch {entry['median_train_epoch_s']:.2f} s, val"
                f" {entry['median_val_epoch_s']:.2f} s, extraction"
                f" {'-' if extraction is None else f'{extraction:.1f} s'}, val acc"
                f" {' '.join(f'{acc:.4f}' for acc in entry['acc'])}"
            )
        print(f"extracted rows per split: {variants['cached']['extracted_rows']}")
    if results["regularizer"] is not None:
        reg = results["regularizer"]
        shares = {**reg["over_mlp"], **reg["term_share_of_mlp_step"]}
        print(
            f"head step, batch {reg['batch']}, D {reg['dim']}, over the mlp step (medians): "
            + ", ".join(f"{name} {share:.3f}" for name, share in shares.items())
        )


def main(argv: list[str] | None = None) -> None:
    data = common.quickstart(CONFIG)["data"]["init_args"]
    parser = common.arguments(
        __doc__,
        threads=True,
        epochs=3,
        batch_size=data["batch_size"],
        num_workers=data["num_workers"],
        image_size=data["transform"]["image_size"],
        train_samples=0,  # only the first N training images (0: all)
        val_samples=0,
        reg_batch=256,
        reg_dim=2048,
        reg_steps=10,  # timed steps per repeat
        reg_repeats=5,
    )
    parser.add_argument("--card", help="backbone card (default: the FS quickstart's export)")
    parser.add_argument("--model", help="time this timm architecture instead, random weights")
    parser.add_argument("--skip", nargs="+", default=[], choices=["end_to_end", "regularizer"])
    common.publish(NAME, parser.parse_args(argv), run, report)


if __name__ == "__main__":
    main()
