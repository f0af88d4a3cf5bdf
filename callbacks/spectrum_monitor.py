"""Log SVE / LSVR of every evaluation set's features, each validation and test epoch."""

from __future__ import annotations

import io
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.spectrum import GramAccumulator


def spectrum_plot(singular_values: torch.Tensor, title: str) -> np.ndarray:
    """The normalised spectrum sigma_i / sum_j sigma_j on a log scale, as an HWC uint8 image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    values = singular_values.cpu().double()
    values = values[values > 0] / values.sum()
    figure, axis = plt.subplots(figsize=(4, 3), dpi=100)
    axis.semilogy(np.arange(1, len(values) + 1), values.numpy())
    axis.set_xlabel("index i")
    axis.set_ylabel("sigma_i / sum_j sigma_j")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return np.asarray(Image.open(buffer).convert("RGB"))


class SpectrumMonitor(L.Callback):
    """Feature spectrum of each evaluation dataloader, exact whatever the number of ranks.

    Features come from the validation step's output (``outputs["features"]``) when the module
    returns them, else from ``pl_module.features(batch)``: penultimate features for timm models,
    image embeddings for CLIP, the transformed features Z for NMTune. Each rank accumulates the
    Gram matrix of its rows; the matrices are summed across ranks at the end of the epoch.

    Logged: ``spectrum/<set>/sve`` and ``spectrum/<set>/lsvr``; on TensorBoard also the spectrum
    plot (image) and a histogram of log10 singular values.

    Args:
        dataloaders: Names of the evaluation sets to analyse (default: all).
        max_samples: Rows per set at most, over all ranks (each rank keeps its share);
            None uses every sample, which makes the result independent of the number of ranks.
        normalize_rows: L2-normalise each feature row first (as the official analysis).
        center: Subtract the column mean (a PCA spectrum) instead of the raw spectrum.
        every_n_epochs: Analyse every N-th validation epoch (test epochs always).
        log_plots: Also log the spectrum image and histogram to TensorBoard.
    """

    def __init__(
        self,
        dataloaders: list[str] | None = None,
        max_samples: int | None = None,
        normalize_rows: bool = True,
        center: bool = False,
        every_n_epochs: int = 1,
        log_plots: bool = True,
    ) -> None:
        self.dataloaders = dataloaders
        self.max_samples = max_samples
        self.normalize_rows = normalize_rows
        self.center = center
        self.every_n_epochs = every_n_epochs
        self.log_plots = log_plots
        self.accumulators: dict[str, GramAccumulator] = {}

    # --- collection -----------------------------------------------------------------------
    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        self.accumulators = {}
        if trainer.sanity_checking:
            return
        if split == "val" and trainer.current_epoch % self.every_n_epochs:
            return
        names = trainer.datamodule.eval_names(split)
        wanted = names if self.dataloaders is None else [n for n in names if n in self.dataloaders]
        for name in wanted:
            self.accumulators[name] = GramAccumulator(
                pl_module.feature_dim, self.normalize_rows, self.center
            )

    def _collect(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        split: str,
        dataloader_idx: int,
    ) -> None:
        name = trainer.datamodule.eval_names(split)[dataloader_idx]
        accumulator = self.accumulators.get(name)
        if accumulator is None:
            return
        if self.max_samples is not None:
            share = -(-self.max_samples // trainer.world_size)
            if accumulator.num_samples >= share:
                return
        if isinstance(outputs, dict) and "features" in outputs:
            features = outputs["features"]
        else:
            with torch.no_grad():
                features = pl_module.features(batch)
        if self.max_samples is not None:
            features = features[: share - accumulator.num_samples]
        try:
            accumulator.update(features.detach())
        except ValueError as err:
            raise ValueError(f"spectrum of {split} set {name!r}: {err}") from err

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        for name, accumulator in self.accumulators.items():
            accumulator.all_reduce()
            if accumulator.num_samples == 0:
                continue
            try:
                metrics = accumulator.metrics()
            except ValueError as err:
                warnings.warn(f"spectrum of {split} set {name!r} skipped: {err}", stacklevel=2)
                continue
            prefix = f"spectrum/{name}"
            pl_module.log(
                f"{prefix}/sve", metrics["sve"], sync_dist=False, add_dataloader_idx=False
            )
            pl_module.log(
                f"{prefix}/lsvr", metrics["lsvr"], sync_dist=False, add_dataloader_idx=False
            )
            if self.log_plots and trainer.is_global_zero:
                self._plot(trainer, f"{prefix}", metrics["singular_values"])
        self.accumulators = {}

    def _plot(self, trainer: L.Trainer, tag: str, singular_values: torch.Tensor) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                step = trainer.global_step
                title = f"{tag} (step {step})"
                image = spectrum_plot(singular_values, title)
                logger.experiment.add_image(f"{tag}/plot", image, step, dataformats="HWC")
                positive = singular_values[singular_values > 0]
                logger.experiment.add_histogram(f"{tag}/log10_sigma", positive.log10(), step)

    # --- Lightning hooks ------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "test")

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._collect(trainer, pl_module, outputs, batch, "val", dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._collect(trainer, pl_module, outputs, batch, "test", dataloader_idx)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")
