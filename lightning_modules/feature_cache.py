"""Frozen-backbone features, extracted once per set and cached on disk.

LP, MLP and NMTune never change the backbone, so running it every step (as the official code
does) wastes most of the compute. Here each rank runs the backbone once over its own share of
every set the DataModule names (:class:`~datamodules.features.ImageSource`), writes it to
``<cache_dir>/<key>/part-<rank>-of-<world>.pt``, and the DataModule then serves the tensors. The
key hashes everything that changes the features: the backbone identity (architecture and a hash
of its weights), the shard spec, the transform and the view index, so a second model never
reuses the first model's features (the official code's cache bug).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from datamodules.features import FeatureRows, ImageSource

CACHE_FORMAT = 1


class FeatureServingData(Protocol):
    """What a DataModule offers a frozen backbone (``ClassificationDataModule`` does)."""

    def frozen_sources(self, stage: str) -> list[ImageSource]: ...

    def serve_features(
        self,
        train_views: list[FeatureRows],
        evaluation: dict[str, dict[str, FeatureRows]],
        two_views: bool,
    ) -> None: ...


def cache_key(**parts: Any) -> str:
    """sha256 of the JSON of everything that determines the features."""
    text = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@torch.no_grad()
def extract(
    batches: Iterable[dict[str, Any]],
    backbone: nn.Module,
    device: torch.device,
    desc: str,
    total: int | None = None,
    progress: bool = True,
) -> FeatureRows:
    """Run ``backbone`` over image batches (eval mode, no grad); keep float32 features on CPU."""
    backbone.eval()
    features, keys, labels = [], [], []
    bar = tqdm(batches, desc=desc, total=total, unit="batch", leave=False, disable=not progress)
    for batch in bar:
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
    """This rank's part of a cached set: loaded when present, else built and saved."""
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


class FeatureCache:
    """The frozen backbone's features of every set a stage reads, on disk under ``directory``.

    Args:
        directory: The cache root; one folder per (backbone, set, view) key.
        progress: A progress bar per set extracted (off where a log would fill with them).
    """

    def __init__(self, directory: str | Path, progress: bool = True) -> None:
        self.directory = Path(directory)
        self.progress = progress

    def attach(
        self,
        datamodule: FeatureServingData,
        backbone: nn.Module,
        stage: str,
        *,
        device: torch.device,
        rank: int,
        world: int,
        barrier: Callable[[], None],
        two_views: bool = False,
    ) -> None:
        """Extract (or load) this rank's share of every set of ``stage``, wait for every rank,
        then make ``datamodule`` serve features: the training rows of all ranks (each rank
        draws its batches from them through its sampler) and this rank's evaluation rows."""
        backbone.to(device)
        train_folders: list[Path] = []
        evaluation: dict[str, dict[str, FeatureRows]] = {}
        for source in datamodule.frozen_sources(stage):
            folder = self.directory / cache_key(backbone=backbone.identity, **source.identity)
            rows = cached_part(
                folder, rank, world, lambda s=source: self._extract(s, backbone, device)
            )
            if source.split == "train":
                train_folders.append(folder)
            else:
                evaluation.setdefault(source.split, {})[source.name] = rows
        barrier()
        train_views = [load_all_parts(folder, world) for folder in train_folders]
        datamodule.serve_features(train_views, evaluation, two_views)

    def _extract(
        self, source: ImageSource, backbone: nn.Module, device: torch.device
    ) -> FeatureRows:
        return extract(
            source.batches(),
            backbone,
            device,
            source.description,
            source.total_batches,
            self.progress,
        )
