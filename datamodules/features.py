"""Feature tensors as training and evaluation data: the data side of a frozen backbone.

A DataModule names the images a frozen backbone must see (:class:`ImageSource`, this rank's
share of each set, clean labels); ``lightning_modules/feature_cache.py`` runs the backbone over
them once and hands back :class:`FeatureRows`, which the DataModule serves through the datasets
below. Labels stay clean in the rows; label noise is applied when a row is read, by the same
keyed noise as the streaming pipeline, so one cache serves every noise ratio.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from datamodules.formats import LabelNoise
from datamodules.subset import TrainingSubset


@dataclass
class FeatureRows:
    """Features with their keys and clean labels (one view)."""

    features: torch.Tensor
    keys: list[str]
    clean_labels: torch.Tensor

    def take(self, indices: list[int]) -> FeatureRows:
        """The rows at ``indices``, in that order."""
        index = torch.tensor(indices, dtype=torch.long)
        return FeatureRows(
            self.features[index], [self.keys[i] for i in indices], self.clean_labels[index]
        )

    @classmethod
    def cat(cls, parts: list[FeatureRows]) -> FeatureRows:
        return cls(
            torch.cat([p.features for p in parts]),
            [key for p in parts for key in p.keys],
            torch.cat([p.clean_labels for p in parts]),
        )


@dataclass(frozen=True)
class ImageSource:
    """Images a frozen backbone must see once: this rank's share of one set, clean labels.

    Args:
        split: ``train``, ``val`` or ``test``.
        name: The evaluation set's name (``train`` for training views).
        identity: Everything on the data side that decides the features (shards, transform,
            augmentation, view, label key): part of the cache key.
        batches: Builds the loader of ``image``/``key``/``clean_label`` batches (called only
            when the features are not cached yet).
        description: What a progress bar shows while the features are extracted.
        total_batches: The number of batches when it is known exactly (progress and ETA).
    """

    split: str
    name: str
    identity: dict[str, Any]
    batches: Callable[[], Iterable[dict[str, Any]]]
    description: str
    total_batches: int | None = None


def _row(rows: FeatureRows, index: int, noise: LabelNoise | None) -> dict[str, Any]:
    key, clean = rows.keys[index], int(rows.clean_labels[index])
    label, is_noisy = noise(key, clean) if noise is not None else (clean, False)
    return {"key": key, "label": label, "clean_label": clean, "is_noisy": is_noisy}


def training_features(
    views: list[FeatureRows],
    noise: LabelNoise | None,
    subset: TrainingSubset,
    exact_count: bool,
    two_views: bool = False,
) -> tuple[TrainingFeatures, dict[str, Any] | None]:
    """The training rows a head sees, and what the card records of their subset: the
    ``subset`` of the rows (chosen on the first view's keys and clean labels), with the label
    noise counted on exactly those rows when ``exact_count`` (symmetric noise)."""
    info = None
    if not subset.everything:
        first = views[0]
        kept = subset.select(first.keys, first.clean_labels.tolist())
        info = subset.summary(len(kept), len(first.keys))
        views = [view.take(kept) for view in views]
    if exact_count:
        noise = noise.exact_count(views[0].keys)  # type: ignore[union-attr]
    return TrainingFeatures(views, noise, two_views), info


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

    def __len__(self) -> int:
        """Rows of this rank (read in the main process), so progress bars know the total."""
        return len(self.rows.keys)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self.rows.keys)):
            yield {**_row(self.rows, index, None), "features": self.rows.features[index]}
