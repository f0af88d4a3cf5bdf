"""Log the realised noise rate and the skipped samples of each training epoch."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from datamodules.pipeline import SKIP_REASONS


class DataAudit(L.Callback):
    """Counts, over all ranks, the noisy and the skipped samples that training really saw.

    Logged per epoch: ``noise/realised_rate`` (noisy / seen, from each batch's ``is_noisy``),
    ``noise/nominal_ratio`` and ``noise/expected_rate`` (from the DataModule),
    ``data/seen_samples`` (what a training subset or the epoch length leaves),
    ``data/skipped`` (all skipped samples) and ``data/skipped_<reason>`` for each skip reason
    of the pipeline from the first epoch it is non-zero on (six flat zero charts would crowd
    TensorBoard's first screen).
    """

    def __init__(self) -> None:
        self.counts = torch.zeros(2 + len(SKIP_REASONS), dtype=torch.float64)
        self.skip_reasons_seen: set[str] = set()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.counts.zero_()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
    ) -> None:
        self.counts[0] += float(batch["is_noisy"].sum())
        self.counts[1] += len(batch["key"])
        if "trained_before_resume" in batch:  # a resumed epoch: what was trained before it
            noisy, seen = batch["trained_before_resume"].tolist()
            self.counts[0] += noisy
            self.counts[1] += seen
        if "skipped" in batch:  # cached features and embeddings have nothing left to skip
            self.counts[2:] += batch["skipped"].to(self.counts)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        totals = trainer.strategy.reduce(self.counts.to(pl_module.device), reduce_op="sum")
        totals = totals.cpu()
        metrics = {
            "noise/realised_rate": float(totals[0] / max(float(totals[1]), 1.0)),
            "data/seen_samples": float(totals[1]),
        }
        summary = getattr(trainer.datamodule, "noise_summary", None)
        if summary is not None:
            nominal = summary()
            metrics["noise/nominal_ratio"] = float(nominal["ratio"])
            metrics["noise/expected_rate"] = float(nominal["expected_rate"])
        metrics["data/skipped"] = float(totals[2:].sum())
        for reason, count in zip(SKIP_REASONS, totals[2:].tolist(), strict=True):
            if count or reason in self.skip_reasons_seen:  # the totals agree on every rank
                self.skip_reasons_seen.add(reason)
                metrics[f"data/skipped_{reason}"] = count
        pl_module.log_dict(metrics, on_epoch=True, sync_dist=False)
