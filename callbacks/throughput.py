"""Training throughput as Lightning measures it, for the suite's batches, and the time each step
waits for its data."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor


def batch_samples(batch: dict[str, Any]) -> int:
    """Samples in a batch of this suite: every batch carries one key or label per sample."""
    return len(batch["key"]) if "key" in batch else len(batch["label"])


class SampleThroughput(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` on training batches: ``train/device/samples_per_sec``
    (rank 0) and, under DDP, ``train/samples_per_sec`` (all ranks), with the batch rates, over a
    sliding window of training steps; time spent in validation is not counted. Evaluation
    batches are not measured (their rates would only crowd the logs).

    Also, per rank: ``train/data_wait_ms``, the time from the end of one training step to the
    start of the next (the loader's delivery, plus Lightning's own bookkeeping), and per epoch
    ``train/data_wait_share``, that time's share of the epoch's training time: near 0 when the
    model is the bottleneck, large when the loader starves it.

    Args:
        window_size: Training steps the rates are averaged over (the first rates appear after
            this many steps).
    """

    def __init__(self, window_size: int = 10) -> None:
        super().__init__(batch_size_fn=batch_samples, window_size=window_size, separator="/")
        self._step_end: float | None = None
        self._step_start = 0.0
        self._waited = self._computed = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_end = None
        self._waited = self._computed = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._step_end is not None:  # not the epoch's first batch (workers starting)
            waited = now - self._step_end
            self._waited += waited
            size = batch_samples(batch)
            pl_module.log("train/data_wait_ms", 1000 * waited, on_step=True, batch_size=size)
        self._step_start = now

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)
        self._step_end = time.perf_counter()
        self._computed += self._step_end - self._step_start

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = self._waited + self._computed
        if total > 0:
            pl_module.log("train/data_wait_share", self._waited / total)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        self._step_end = None  # a validation inside the epoch is not data wait

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Not measured (the time still leaves the training rates)."""

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Not measured."""

    def on_predict_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Not measured."""
