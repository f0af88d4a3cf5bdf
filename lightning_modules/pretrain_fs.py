"""Fully-supervised (FS) pre-training of any timm model on labels with controlled noise."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.models import get_model_input_config, save_for_hf
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from datamodules.errors import ConfigError
from lightning_modules import metric_keys
from lightning_modules.base import NoisyTrainingModule, OptimizerConfig

# The architecture's default pretrained config names weights (tag, paper, licence) that an
# export is not: its config says only how to build and feed the model.
NOT_THESE_WEIGHTS = {"tag": None, "license": None, "origin_url": None, "paper_ids": None}


def create_timm_model(model_name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with an error that names the option instead of a deep traceback."""
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:8]
        raise ConfigError(
            f"model.model_name {model_name!r} is not a timm model; similar names: {close}"
        )
    return timm.create_model(model_name, num_classes=num_classes, **kwargs)


class NoisyLabelMetrics(nn.Module):
    """Training accuracy against the observed and the clean labels, split by noisy/clean.

    ``memorised`` is the fraction of noisy samples predicted as their *wrong* observed label:
    how much of the noise the model fits. ``noisy_clean`` is the fraction of noisy samples still
    predicted as their true class. Weighted means, so batches without noisy samples are fine.
    """

    NAMES = ("acc_observed", "acc_clean", "clean_subset_acc", "memorised", "noisy_clean")

    def __init__(self) -> None:
        super().__init__()
        self.means = nn.ModuleDict({name: MeanMetric() for name in self.NAMES})

    def update(self, preds: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        hit_observed = (preds == batch["label"]).float()
        hit_clean = (preds == batch["clean_label"]).float()
        noisy = batch["is_noisy"].float()
        ones = torch.ones_like(noisy)
        self.means["acc_observed"].update(hit_observed, ones)
        self.means["acc_clean"].update(hit_clean, ones)
        self.means["clean_subset_acc"].update(hit_clean, 1 - noisy)
        self.means["memorised"].update(hit_observed, noisy)
        self.means["noisy_clean"].update(hit_clean, noisy)


class SupervisedPretraining(NoisyTrainingModule):
    """Cross-entropy on the observed (possibly noisy) labels of a timm model.

    Args:
        model_name: timm architecture, e.g. ``resnet50``, ``vit_base_patch16_224``, ``resnet18``.
        num_classes: Classes of the pre-training data (must match the DataModule).
        model_kwargs: Extra ``timm.create_model`` arguments (``drop_path_rate``, ``img_size``...).
        label_smoothing: Label smoothing of the cross-entropy.
        mixup_alpha: timm Mixup alpha (0 disables mixup).
        cutmix_alpha: timm CutMix alpha (0 disables cutmix).
        channels_last: Use channels-last memory format (faster convolutions on GPU).
        optimizer: Optimiser and schedule.
    """

    def __init__(
        self,
        model_name: str = "resnet50",
        num_classes: int = 1000,
        model_kwargs: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        channels_last: bool = False,
        optimizer: OptimizerConfig = OptimizerConfig(),
    ) -> None:
        super().__init__(optimizer)
        self.model_name = model_name
        self.num_classes = num_classes
        self.model_kwargs = dict(model_kwargs or {})
        self.model = create_timm_model(model_name, num_classes, **self.model_kwargs)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
            self.soft_loss = SoftTargetCrossEntropy()
        self.label_smoothing = label_smoothing
        self.train_metrics = NoisyLabelMetrics()
        self.val_metrics = nn.ModuleDict()

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        declared = getattr(datamodule, "num_classes", self.num_classes)
        if declared != self.num_classes:
            raise ConfigError(
                f"model.num_classes is {self.num_classes} but data.num_classes is {declared}; "
                "set both to the number of classes in the shards"
            )
        self.record_input(datamodule.transform)
        top5 = min(5, self.num_classes)
        for name in datamodule.eval_names("val") + datamodule.eval_names("test"):
            self.val_metrics[name] = nn.ModuleDict(
                {
                    metric_keys.ACCURACY: MulticlassAccuracy(self.num_classes, average="micro"),
                    metric_keys.TOP5: MulticlassAccuracy(
                        self.num_classes, top_k=top5, average="micro"
                    ),
                }
            )

    def trainable_model(self) -> nn.Module:
        return self.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    @property
    def feature_dim(self) -> int:
        return self.model.num_features

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """Penultimate pooled features (``forward_head(pre_logits=True)``)."""
        return self._features_and_logits(batch["image"])[0]

    def _features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One trunk pass, both heads: timm's pre-logits features and the logits."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        trunk = self.model.forward_features(images)
        return self.model.forward_head(trunk, pre_logits=True), self.model.forward_head(trunk)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
            logits = self(images)
            loss = self.soft_loss(logits, targets)
        else:
            logits = self(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self.train_metrics.update(logits.argmax(dim=1), batch)
        size = len(labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        for name, metric in self.train_metrics.means.items():
            self.log(f"train/{name}", metric, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def evaluate(self, batch: dict[str, Any], split: str, name: str) -> dict:
        """Loss and top-1/top-5 accuracy per evaluation set; features go to the spectrum
        callback."""
        features, logits = self._features_and_logits(batch["image"])
        self.log_classification(split, name, logits, batch["label"], self.val_metrics[name])
        return {"features": features}

    def export(self, directory: Path) -> dict[str, Any]:
        """timm's hub layout, written by ``timm.models.save_for_hf``: ``config.json``
        (architecture, model_args, and the training input size, crop, mean and std) and
        ``model.safetensors``, loaded by ``timm.create_model("local-dir:<directory>",
        pretrained=True)`` (``num_classes=0``: the backbone alone)."""
        # a CPU copy in the default memory format: safetensors stores contiguous tensors only
        model = copy.deepcopy(self.model).to("cpu", memory_format=torch.contiguous_format)
        data_config = self.input_config or {
            "input_size": get_model_input_config(model)["input_size"]
        }
        save_for_hf(
            model,
            str(directory),
            model_config={"pretrained_cfg": NOT_THESE_WEIGHTS},
            safe_serialization=True,
            data_config=data_config,
        )
        folder = str(directory.resolve())
        return {
            "library": "timm",
            "model_name": self.model_name,
            "model_kwargs": self.model_kwargs,
            "num_classes": self.num_classes,
            "weights": "model.safetensors",
            "config": "config.json",
            "load": f"timm.create_model({'local-dir:' + folder!r}, pretrained=True)",
        }
