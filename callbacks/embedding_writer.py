"""``train.py predict`` writes a backbone's embeddings of every set as embedding files.

Embed once with any backbone the suite loads (an export card, timm, open_clip), then adapt many
times on the files with ``datamodules.embeddings.EmbeddingDataModule`` (the paper's black-box
case): each file is ``torch.save({"features": N x D float32, "labels": N, "keys": N})``, the
format that DataModule reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


def merge_parts(parts: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """One file's content from every rank's batch outputs, rank after rank."""
    batches = [batch for part in parts for batch in part]
    if not batches:
        empty = torch.zeros(0, dtype=torch.long)
        return {"features": torch.zeros(0, 0), "labels": empty, "keys": []}
    return {
        "features": torch.cat([batch["features"] for batch in batches]),
        "labels": torch.cat([batch["label"] for batch in batches]),
        "keys": [key for batch in batches for key in batch["key"]],
    }


class EmbeddingWriter(BasePredictionWriter):
    """At the end of ``predict``, rank 0 writes ``<dirpath>/<set>.pt`` for every set the
    DataModule names (``train``, ``test-<set>``, ``val-<set>``) from all ranks' rows, and prints
    the ``EmbeddingDataModule`` options that read them (``directory``, or each file).

    Args:
        dirpath: Where the files go (default: ``embeddings`` inside the run's log folder).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.dirpath = dirpath

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: list[Any],
        batch_indices: list[Any],
    ) -> None:
        names = trainer.datamodule.predict_names()
        per_set = predictions if len(names) > 1 else [predictions]
        gathered = [_gather(trainer, outputs) for outputs in per_set]
        directory = Path(self.dirpath or Path(trainer.log_dir or ".") / "embeddings")
        if not trainer.is_global_zero:
            return
        directory.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, parts in zip(names, gathered, strict=True):
            files[name] = directory.resolve() / f"{name}.pt"
            torch.save(merge_parts(parts), files[name])
        print(f"embeddings: {directory.resolve()}")
        print(f"use: data.init_args.directory: {directory.resolve()}")
        print("  or each file:")
        for split in ("train", "val", "test"):
            chosen = {n.split("-", 1)[-1]: str(p) for n, p in files.items() if n.startswith(split)}
            if chosen:
                value = chosen["train"] if split == "train" else json.dumps(chosen)
                print(f"  data.init_args.{split}: {value}")


def _gather(trainer: L.Trainer, outputs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Every rank's batch outputs of one set, in rank order (one rank: its own)."""
    if trainer.world_size == 1:
        return [outputs]
    gathered: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, outputs)
    return gathered
