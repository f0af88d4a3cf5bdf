"""TensorBoard's HPARAMS tab and the run's config as text.

Lightning writes the hparams summary when training starts, before there is any result, with a
placeholder ``hp_metric``; train.py turns that off (``default_hp_metric: false``) and
:class:`HparamsSummary` writes it once the run has its final metrics, naming the scalar tags
the tab shows for each run (the last value of each), so the runs of a sweep compare side by
side. :class:`ConfigText` adds the resolved config to the TEXT tab.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

from callbacks.export import exports_after_validate
from lightning_modules.metric_keys import (
    ACCURACY,
    F1,
    PAPER_SPECTRUM,
    parse_evaluation_tag,
    parse_spectrum_tag,
)


def run_hparams(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """What a run of the suite is, in the terms a sweep varies: the model and method, the
    backbone and its own pre-training noise, the data's noise, the optimiser and the seed."""
    hp = pl_module.hparams_initial
    backbone = hp.get("backbone") or {}
    pretraining = hp.get("backbone_pretraining") or {}
    optimizer = hp.get("optimizer") or {}
    data = trainer.datamodule
    noise = data.noise_summary() if hasattr(data, "noise_summary") else {}
    values = {
        "model": type(pl_module).__name__,
        "method": hp.get("method", "pretrain"),
        "backbone": backbone.get("card")
        or backbone.get("timm")
        or backbone.get("open_clip")
        or hp.get("model_name"),
        "backbone_noise_type": pretraining.get("noise_type"),
        "backbone_noise_ratio": pretraining.get("noise_ratio"),
        "backbone_seed": pretraining.get("seed"),
        "noise_type": noise.get("type"),
        "noise_ratio": noise.get("ratio"),
        "lr": optimizer.get("lr"),
        "weight_decay": optimizer.get("weight_decay"),
        "batch_size": getattr(data, "batch_size", None),
        "seed": getattr(data, "seed", None),
        "max_epochs": trainer.max_epochs,
    }
    return {key: value for key, value in values.items() if value is not None}


def result_tags(metrics: dict[str, Any]) -> list[str]:
    """The logged scalars the tab shows: every set's accuracy and macro F1 (and the test
    mean), and its SVE and LSVR."""
    tags = []
    for tag in metrics:
        evaluation, spectral = parse_evaluation_tag(tag), parse_spectrum_tag(tag)
        if (evaluation and evaluation[2] in (ACCURACY, F1)) or (
            spectral and spectral[1] in PAPER_SPECTRUM
        ):
            tags.append(tag)
    return tags


class HparamsSummary(L.Callback):
    """After ``fit`` (and after ``validate`` of a model that trains nothing), rank 0 writes the
    run's hyperparameters with the tags of its final results to TensorBoard's HPARAMS tab.

    Args:
        enabled: Turn it off.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if exports_after_validate(trainer, pl_module):
            self._write(trainer, pl_module)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = trainer.logger
        if not (self.enabled and trainer.is_global_zero and isinstance(logger, TensorBoardLogger)):
            return
        tags = result_tags(trainer.callback_metrics)
        # the values are read from the scalars of each tag; the summary names them only
        experiment, start, end = hparams(run_hparams(trainer, pl_module), dict.fromkeys(tags, 0))
        writer = logger.experiment._get_file_writer()  # as Lightning's log_hyperparams does
        for summary in (experiment, start, end):
            writer.add_summary(summary)
        writer.flush()


class ConfigText(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` in the log folder, and the same YAML in TensorBoard's
    TEXT tab (tag ``config``)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logger = trainer.logger
        if isinstance(logger, TensorBoardLogger):
            text = self.parser.dump(self.config, skip_none=False)
            indented = "\n".join("    " + line for line in text.splitlines())  # markdown code
            logger.experiment.add_text("config", indented, global_step=0)
