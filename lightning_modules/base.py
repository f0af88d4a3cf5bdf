"""What every training module shares: optimiser and schedule, hyperparameters, export hook.
The learning rate and the throughput are logged by Lightning's ``LearningRateMonitor`` and
``ThroughputMonitor`` (``train.py`` adds both)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.data import AttributeDict
from timm.optim import create_optimizer_v2, list_optimizers, param_groups_weight_decay

from callbacks.export import card_pretraining
from datamodules.errors import ConfigError
from datamodules.transforms import NORMALIZATIONS, TransformConfig
from lightning_modules import metric_keys

# What LightningCLI records with the hyperparameters it passes: ``load_from_checkpoint`` then
# builds the module through jsonargparse, which turns the plain dicts back into dataclasses.
CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimiser and learning-rate schedule, read like timm's training script.

    Args:
        name: Any timm optimiser name (``sgd``, ``adamw``, ``lamb``...). Norm and bias
            parameters get no weight decay, as in timm.
        lr: Peak learning rate.
        weight_decay: Decoupled (AdamW) or L2 (SGD) weight decay.
        momentum: Momentum for SGD-type optimisers.
        warmup_epochs: Linear warm-up length in epochs (fractions allowed); 0 disables it.
        schedule: ``cosine`` (per-step cosine decay to ``min_lr_ratio * lr``) or ``constant``.
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
    """

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.name.lower() not in list_optimizers():
            raise ConfigError(f"optimizer.name {self.name!r} is not a timm optimizer")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(
                f"optimizer.schedule must be cosine or constant, got {self.schedule!r}"
            )
        if self.lr <= 0:
            raise ConfigError(f"optimizer.lr must be positive, got {self.lr}")

    def lr_factor(self, step: int, total_steps: int, warmup_steps: int) -> float:
        """Linear warm-up ``(step + 1) / warmup`` then ``min + (1 - min) * (1 + cos(pi *
        progress)) / 2``: the official code's ``cosine_lr`` (from wise-ft) at ``min`` 0. Written
        here because timm's ``CosineLRScheduler`` warms up from ``warmup_lr_init`` instead, which
        would move every warm-up step off the official schedule."""
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )


@dataclass(frozen=True)
class ParameterGroup:
    """Parameters optimised together: a learning-rate scale and, when set, their own weight
    decay (else ``optimizer.weight_decay``). ``name`` names its learning rate in the logs
    (``train/lr/<name>``; timm's second group of it, the weights with decay: ``<name>_2``)."""

    module: torch.nn.Module
    lr_scale: float = 1.0
    weight_decay: float | None = None
    name: str = "model"


class NoisyTrainingModule(L.LightningModule):
    """Base of the pre-training and adaptation modules.

    Subclasses implement ``training_step``/``validation_step``, ``trainable_model`` (what the
    optimiser sees), ``features`` (what the spectrum callback analyses) and ``export``.
    """

    def __init__(self, optimizer: OptimizerConfig = OptimizerConfig()) -> None:
        super().__init__()
        self.save_hyperparameters()  # the init arguments of the subclass too
        if "_instantiator" not in self.hparams:  # built in Python, not by LightningCLI
            plain = json.loads(json.dumps(dict(self.hparams), default=_plain))
            self.save_hyperparameters({**plain, "_instantiator": CLI_INSTANTIATOR})
        self.optimizer_config = optimizer
        self.input_config: dict[str, Any] | None = None
        # Lightning's ThroughputMonitor reports FLOPs when a module defines them; none here
        self.flops_per_batch: int | None = None

    @property
    def hparams_initial(self) -> AttributeDict:
        """What the logger records: the init arguments and, for a backbone exported by this
        suite, its own pre-training noise and seed from its card. Checkpoints keep ``hparams``
        alone, so they still build the module."""
        initial = super().hparams_initial
        card = (initial.get("backbone") or {}).get("card")
        if card and (pretraining := card_pretraining(card)):
            initial["backbone_pretraining"] = pretraining
        return initial

    def record_input(self, transform: TransformConfig) -> None:
        """Keep how the data fed the model (size, crop, mean, std): the export repeats it."""
        mean, std = NORMALIZATIONS[transform.normalization]
        self.input_config = {
            "input_size": (3, transform.image_size, transform.image_size),
            "crop_pct": transform.crop_pct,
            "interpolation": transform.interpolation,
            "mean": tuple(mean),
            "std": tuple(std),
        }

    # --- interface ----------------------------------------------------------------------------
    def trainable_model(self) -> torch.nn.Module:
        """The module whose parameters are optimised."""
        raise NotImplementedError

    def parameter_groups(self) -> list[ParameterGroup]:
        """What to optimise, in groups; frozen parameters are left out."""
        return [ParameterGroup(self.trainable_model())]

    @property
    def feature_dim(self) -> int:
        """D of :meth:`features`, known before the first batch (for the spectrum callback)."""
        raise NotImplementedError

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, D) features of a batch for the spectrum analysis."""
        raise NotImplementedError

    def export(self, directory: Path) -> dict[str, Any]:
        """Write the backbone so timm / open_clip load it; return the card entries."""
        raise NotImplementedError

    def evaluate(self, batch: dict[str, Any], split: str, name: str) -> dict[str, Any]:
        """One batch of the evaluation set ``name``; returns ``{"features": ...}`` for the
        spectrum callback."""
        raise NotImplementedError

    # --- evaluation: one set per dataloader, named by the DataModule -------------------------
    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict:
        return self.evaluate(
            batch, "val", self.trainer.datamodule.eval_names("val")[dataloader_idx]
        )

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self.evaluate(
            batch, "test", self.trainer.datamodule.eval_names("test")[dataloader_idx]
        )

    def evaluation_tag(self, split: str, name: str, metric: str) -> str:
        """``val/<set>/<metric>`` or ``test/<set>/<metric>``: a test set keeps ``test`` also in
        the validation loop (the DataModule's ``evaluation_kind``)."""
        kind_of = getattr(self.trainer.datamodule, "evaluation_kind", None)
        kind = split if kind_of is None else kind_of(split, name)
        return metric_keys.evaluation_tag(kind, name, metric)

    def log_classification(
        self,
        split: str,
        name: str,
        logits: torch.Tensor,
        labels: torch.Tensor,
        metrics: torch.nn.ModuleDict,
    ) -> None:
        """Cross-entropy and each metric of ``metrics`` of the set ``name``, per epoch."""
        log = {"add_dataloader_idx": False, "on_epoch": True, "batch_size": len(labels)}
        loss = F.cross_entropy(logits, labels)
        self.log(self.evaluation_tag(split, name, metric_keys.LOSS), loss, sync_dist=True, **log)
        for metric_name, metric in metrics.items():
            metric.update(logits, labels)
            self.log(self.evaluation_tag(split, name, metric_name), metric, **log)

    # --- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optimizer_config
        groups = [
            {**group, "lr": cfg.lr * spec.lr_scale, "name": spec.name}
            for spec in self.parameter_groups()
            for group in param_groups_weight_decay(  # no decay on norms and biases, as timm
                spec.module, cfg.weight_decay if spec.weight_decay is None else spec.weight_decay
            )
            if group["params"]
        ]
        name_groups(groups)
        optimizer = create_optimizer_v2(
            groups,
            opt=cfg.name,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warmup = min(total, round(cfg.warmup_epochs * per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cfg.lr_factor(step, total, warmup)
        )
        return {
            "optimizer": optimizer,
            # LearningRateMonitor logs each group as train/lr/<group name>
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }


def name_groups(groups: list[dict[str, Any]]) -> None:
    """Unique names for the learning-rate logs: a module's groups after the first (timm puts
    norms and biases, without weight decay, in their own) get ``_2``, ``_3``..."""
    seen: dict[str, int] = {}
    for group in groups:
        seen[group["name"]] = seen.get(group["name"], 0) + 1
        if seen[group["name"]] > 1:
            group["name"] = f"{group['name']}_{seen[group['name']]}"


def _plain(value: Any) -> Any:
    """JSON form of the config objects a module takes (dataclasses, paths)."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a plain hyperparameter")
