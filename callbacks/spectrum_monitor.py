"""Log the spectrum metrics (SVE, LSVR, ...) of every evaluation set's features, each epoch."""

from __future__ import annotations

import math
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.spectrum import METRIC_NAMES, EmptySpectrum, GramAccumulator, resolve_protocol
from lightning_modules.metric_keys import spectrum_tag


def spectrum_plot(
    curves: list[tuple[str, torch.Tensor]], title: str, annotation: str
) -> np.ndarray:
    """The normalised spectra sigma_i / sum_j sigma_j on a log scale, one curve per (label,
    singular values), the last one drawn solid and the others dashed, with ``annotation``
    (the metric values) in a corner; an HWC uint8 image sized and lettered for a TensorBoard
    image card."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.8, 3.6), dpi=100)
    # fixed margins: tight_layout would draw the figure twice to measure its labels
    figure.subplots_adjust(left=0.17, right=0.97, bottom=0.14, top=0.91)
    axis = figure.subplots()
    for index, (label, singular_values) in enumerate(curves):
        values = singular_values.cpu().double()
        values = values[values > 0] / values.sum()
        last = index == len(curves) - 1
        axis.semilogy(
            np.arange(1, len(values) + 1),
            values.numpy(),
            label=label,
            linewidth=2.0 if last else 1.5,
            linestyle="-" if last else "--",
            color="tab:blue" if last else "tab:gray",
        )
    axis.set_xlabel("index i", fontsize=12)
    axis.set_ylabel("sigma_i / sum_j sigma_j", fontsize=12)
    axis.tick_params(labelsize=11)
    axis.set_title(title, fontsize=12, y=1.0)  # fixed: no search for room above the ticks
    axis.text(
        0.97,
        0.96,
        annotation,
        transform=axis.transAxes,
        ha="right",
        va="top",
        fontsize=11,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
    )
    axis.legend(loc="lower left", fontsize=10, frameon=False)
    canvas = FigureCanvasAgg(figure)  # the pixels themselves: no PNG encoded and decoded
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class SpectrumMonitor(L.Callback):
    """Feature spectrum of each evaluation dataloader, exact whatever the number of ranks.

    Features come from the validation step's output (``outputs["features"]``) when the module
    returns them, else from ``pl_module.features(batch)``: penultimate features for timm models,
    image embeddings for CLIP, the transformed features Z for NMTune. Each rank accumulates the
    Gram matrix of its rows (a torchmetrics ``Metric``, ``GramAccumulator``); torchmetrics sums
    them across ranks at the end of the epoch.

    Logged: ``spectrum/<set>/<metric>`` for each of ``sve``, ``lsvr``, ``erank``,
    ``stable_rank`` and ``alpha_req`` (see ``callbacks/spectrum.py``; a metric that is undefined
    for these features, such as alpha_req of rank-one features, is not logged); on TensorBoard
    also the spectrum plot (image ``spectrum/<set>/plot``: this epoch's spectrum against the
    first one analysed, with the SVE and LSVR written on it, at the step of the scalars) and, if
    asked, a histogram of log10 singular values. Which preprocessing produced them is
    :attr:`protocol_info`, which the run's export card records. The plot is drawn on a
    background thread, off the evaluation loop; ``teardown`` waits for the last one.

    Args:
        dataloaders: Names of the evaluation sets to analyse (default: all).
        max_samples: Rows per set at most, over all ranks (each rank keeps its share);
            None uses every sample, which makes the result independent of the number of ranks.
        protocol: ``"paper"`` (rows L2-normalised, no centring) or ``"official"`` (rows
            normalised, then each row's own mean subtracted, as the official analysis code).
            None (default): ``normalize_rows``/``center`` decide, defaulting to ``"paper"``.
        normalize_rows: L2-normalise each feature row first; with a protocol, must agree with it.
        center: ``"none"``/False, ``"column"``/True (a PCA spectrum) or ``"row"``; with a
            protocol, must agree with it. Settings that match no protocol are named "custom".
        every_n_epochs: Analyse every N-th validation epoch (test epochs always).
        log_plots: Also log the spectrum image to TensorBoard.
        log_histogram: Also log a histogram of log10 singular values (off: the image says more).
    """

    def __init__(
        self,
        dataloaders: list[str] | None = None,
        max_samples: int | None = None,
        protocol: Literal["paper", "official"] | None = None,
        normalize_rows: bool | None = None,
        center: bool | Literal["none", "column", "row"] | None = None,
        every_n_epochs: int = 1,
        log_plots: bool = True,
        log_histogram: bool = False,
    ) -> None:
        self.dataloaders = dataloaders
        self.max_samples = max_samples
        self.protocol = resolve_protocol(protocol, normalize_rows, center)
        self.every_n_epochs = every_n_epochs
        self.log_plots = log_plots
        self.log_histogram = log_histogram
        self.accumulators: dict[str, GramAccumulator] = {}
        self.first_spectra: dict[str, tuple[int, torch.Tensor]] = {}  # set -> (epoch, sigma)
        self._painter: ThreadPoolExecutor | None = None  # one thread: one figure at a time
        self._pending: list[Future] = []

    @property
    def protocol_info(self) -> dict[str, str | bool]:
        """``{"protocol": "paper" | "official" | "custom", "normalize_rows": bool, "center":
        "none" | "column" | "row"}``: what the logged values were computed with."""
        return self.protocol.info()

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
                pl_module.feature_dim, self.protocol.normalize_rows, self.protocol.center
            ).to(pl_module.device)  # where the features are, and where the ranks' sum runs

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
            try:
                metrics = accumulator.spectrum()  # every rank calls it: the ranks' sum
            except EmptySpectrum:  # no rank saw a row of this set
                continue
            except ValueError as err:
                warnings.warn(f"spectrum of {split} set {name!r} skipped: {err}", stacklevel=2)
                continue
            for metric in METRIC_NAMES:
                if math.isfinite(metrics[metric]):
                    # a float64 tensor: Lightning would round a Python float to float32
                    value = torch.tensor(metrics[metric], dtype=torch.float64)
                    pl_module.log(
                        spectrum_tag(name, metric), value, sync_dist=False, add_dataloader_idx=False
                    )
            if trainer.is_global_zero:
                self._plot(trainer, name, metrics)
        self.accumulators = {}

    def _plot(self, trainer: L.Trainer, name: str, metrics: dict[str, Any]) -> None:
        boards = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not boards or not (self.log_plots or self.log_histogram):
            return
        # the step Lightning logs this epoch's scalars at (validation runs before the step
        # counter of the training loop moves on)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        singular_values = metrics["singular_values"].cpu()
        epoch = trainer.current_epoch
        first_epoch, first = self.first_spectra.setdefault(name, (epoch, singular_values))
        curves = [] if first_epoch == epoch else [(f"epoch {first_epoch}", first)]
        curves.append((f"epoch {epoch}", singular_values))
        annotation = f"SVE {metrics['sve']:.3f}\nLSVR {metrics['lsvr']:.3f}"
        for board in boards:
            if self.log_plots:
                if self._painter is None:
                    self._painter = ThreadPoolExecutor(1, thread_name_prefix="spectrum-plot")
                title = f"{name}, step {step}"
                args = (board, spectrum_tag(name, "plot"), curves, title, annotation, step)
                self._pending.append(self._painter.submit(self._draw, *args))
            if self.log_histogram:
                positive = singular_values[singular_values > 0]
                tag = spectrum_tag(name, "log10_sigma")
                board.experiment.add_histogram(tag, positive.log10(), step)

    def _draw(
        self,
        board: TensorBoardLogger,
        tag: str,
        curves: list[tuple[str, torch.Tensor]],
        title: str,
        annotation: str,
        step: int,
    ) -> None:
        """Draw one plot into ``board`` (on the painter thread)."""
        image = spectrum_plot(curves, title, annotation)
        board.experiment.add_image(tag, image, step, dataformats="HWC")

    def wait_for_plots(self) -> None:
        """Block until every plot asked for so far is in the TensorBoard log; a drawing error
        is raised here."""
        pending, self._pending = self._pending, []
        for job in pending:
            job.result()

    # --- Lightning hooks ------------------------------------------------------------------
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.wait_for_plots()  # before Lightning closes the loggers
        if self._painter is not None:
            self._painter.shutdown()
            self._painter = None

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
