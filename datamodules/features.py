"""Frozen-backbone features, extracted once per split and cached on disk.

LP, MLP and NMTune never change the backbone, so running it every step (as the official code
does) wastes most of the compute. Here each rank streams its own share of every split through
the backbone once, writes it to ``<cache_dir>/<key>/part-<rank>-of-<world>.pt``, and training
reads the tensors. The key hashes everything that changes the features: the backbone identity
(architecture and a hash of its weights), the shard spec, the transform and the view index, so a
second model never reuses the first model's features (the official code's cache bug).
Labels are stored clean; label noise is applied when a row is read, by the same keyed noise as
the streaming pipeline, so one cache serves every noise ratio.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset
from tqdm import tqdm

from datamodules.formats import LabelNoise

CACHE_FORMAT = 1


def cache_key(**parts: Any) -> str:
    """sha256 of the JSON of everything that determines the features."""
    text = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class FeatureRows:
    """Features with their keys and clean labels (one view)."""

    features: torch.Tensor
    keys: list[str]
    clean_labels: torch.Tensor

    @classmethod
    def cat(cls, parts: list[FeatureRows]) -> FeatureRows:
        return cls(
            torch.cat([p.features for p in parts]),
            [key for p in parts for key in p.keys],
            torch.cat([p.clean_labels for p in parts]),
        )


@torch.no_grad()
def extract(
    batches: Iterator[dict[str, Any]], backbone: nn.Module, device: torch.device, desc: str
) -> FeatureRows:
    """Run ``backbone`` over image batches (eval mode, no grad); keep float32 features on CPU."""
    backbone.eval()
    features, keys, labels = [], [], []
    for batch in tqdm(batches, desc=desc, unit="batch", leave=False):
        features.append(backbone(batch["image"].to(device)).float().cpu())
        keys += batch["key"]
        labels.append(batch["clean_label"])
    dim = getattr(backbone, "dim", 0)
    if not features:
        return FeatureRows(torch.zeros(0, dim), [], torch.zeros(0, dtype=torch.long))
    return FeatureRows(torch.cat(features), keys, torch.cat(labels))


def cached_part(
    folder: Path, rank: int, world: int, build: Callable[[], FeatureRows]
) -> FeatureRows:
    """This rank's part of a cached split: loaded when present, else built and saved."""
    path = folder / f"part-{rank}-of-{world}.pt"
    if path.is_file():
        data = torch.load(path, weights_only=True)
        return FeatureRows(data["features"], data["keys"], data["clean_labels"])
    rows = build()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"features": rows.features, "keys": rows.keys, "clean_labels": rows.clean_labels}, tmp
    )
    tmp.rename(path)
    return rows


def load_all_parts(folder: Path, world: int) -> FeatureRows:
    """Every rank's part, in rank order (each rank trains on all rows through its sampler)."""
    parts = []
    for rank in range(world):
        data = torch.load(folder / f"part-{rank}-of-{world}.pt", weights_only=True)
        parts.append(FeatureRows(data["features"], data["keys"], data["clean_labels"]))
    return FeatureRows.cat(parts)


def _row(rows: FeatureRows, index: int, noise: LabelNoise | None) -> dict[str, Any]:
    key, clean = rows.keys[index], int(rows.clean_labels[index])
    label, is_noisy = noise(key, clean) if noise is not None else (clean, False)
    return {"key": key, "label": label, "clean_label": clean, "is_noisy": is_noisy}


class TrainingFeatures(Dataset):
    """Map-style training rows: one of ``K`` cached augmented views per read, noisy labels.

    With ``two_views`` a row also carries ``features_strong`` from another view, for the
    official NMTune two-view step. It approximates that step's fresh views: each image has K
    augmentations for the whole run, and the two of a step always differ.
    """

    def __init__(self, views: list[FeatureRows], noise: LabelNoise | None, two_views: bool) -> None:
        self.views = views
        self.noise = noise
        self.two_views = two_views

    def __len__(self) -> int:
        return len(self.views[0].keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        order = random.sample(range(len(self.views)), k=min(2, len(self.views)))
        row = _row(self.views[0], index, self.noise)
        row["features"] = self.views[order[0]].features[index]
        if self.two_views:
            row["features_strong"] = self.views[order[-1]].features[index]
        return row


class EvaluationFeatures(IterableDataset):
    """This rank's own rows of an evaluation set, read once, in order.

    Iterable so Lightning adds no DistributedSampler (which would pad with duplicates): every
    sample is evaluated exactly once over all ranks, as with the streaming pipeline.
    """

    def __init__(self, rows: FeatureRows) -> None:
        self.rows = rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self.rows.keys)):
            yield {**_row(self.rows, index, None), "features": self.rows.features[index]}
