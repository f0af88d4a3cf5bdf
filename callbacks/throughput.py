"""Training throughput as Lightning measures it, for the suite's batches."""

from __future__ import annotations

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

    Args:
        window_size: Training steps the rates are averaged over (the first rates appear after
            this many steps).
    """

    def __init__(self, window_size: int = 10) -> None:
        super().__init__(batch_size_fn=batch_samples, window_size=window_size, separator="/")

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Not measured (the time still leaves the training rates)."""

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Not measured."""

    def on_predict_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Not measured."""
