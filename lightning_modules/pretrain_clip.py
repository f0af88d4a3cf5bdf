"""Contrastive (CLIP) pre-training of any open_clip model on captions with controlled swaps."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from datamodules.errors import ConfigError
from datamodules.image_text import ImageTextDataModule
from lightning_modules import metric_keys
from lightning_modules.base import NoisyTrainingModule, OptimizerConfig
from lightning_modules.retrieval import RetrievalRecall

# open_clip's 7-prompt ensemble from the CLIP paper, as format strings so YAML can override it
DEFAULT_TEMPLATES = tuple(template("{}") for template in open_clip.SIMPLE_IMAGENET_TEMPLATES)
MAX_LOGIT_SCALE = math.log(100)  # open_clip's clamp: temperature never below 0.01
WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"


def register_model_config(model_name: str, config: dict[str, Any]) -> None:
    """Add ``config`` to open_clip's registry under ``model_name`` with the public
    ``add_model_config`` (it reads ``<name>.json``); the entry outlives the temporary file."""
    missing = sorted({"embed_dim", "vision_cfg", "text_cfg"} - set(config))
    if missing:
        raise ConfigError(
            f"model.model_config lacks {missing}; an open_clip config has embed_dim, vision_cfg "
            "and text_cfg"
        )
    known = open_clip.get_model_config(model_name)
    if known is not None and known != config:
        raise ConfigError(
            f"model.model_name {model_name!r} is already an open_clip model with another config; "
            "give the inline model_config a new name"
        )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{model_name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


def require_open_clip_model(
    model_name: str, model_config: dict[str, Any] | None, option: str = "model.model_name"
) -> None:
    """Register an inline config; stop with a message naming ``option`` if the name is unknown."""
    if model_config is not None:
        register_model_config(model_name, model_config)
    known = open_clip.list_models()
    if model_name not in known:
        stem = model_name.split("-")[0].lower()
        close = [name for name in known if stem in name.lower()][:8] or known[:8]
        raise ConfigError(
            f"{option} {model_name!r} is not an open_clip model (define one with an inline "
            f"model_config); e.g. {close}"
        )


def create_open_clip_model(model_name: str, model_config: dict[str, Any] | None) -> nn.Module:
    """A randomly initialised open_clip model; an unknown name stops the run naming the option."""
    require_open_clip_model(model_name, model_config)
    # no pretrained tower weights either: everything here trains from scratch, offline
    return open_clip.create_model(model_name, pretrained_text=False, output_dict=True)


def make_clip_loss(rank: int, world_size: int) -> open_clip.ClipLoss:
    """open_clip's distributed CLIP loss: each rank scores its samples against the global batch
    gathered with gradients. Averaged by DDP, its gradients are those of the single-process
    loss on the global batch, at O(local x global) memory instead of O(global^2)."""
    return open_clip.ClipLoss(
        local_loss=True,
        gather_with_grad=True,
        cache_labels=True,
        rank=rank,
        world_size=world_size,
    )


class ContrastivePretraining(NoisyTrainingModule):
    """The symmetric InfoNCE loss of CLIP on (possibly swapped) image-caption pairs.

    Args:
        model_name: open_clip architecture, e.g. ``ViT-B-16``, ``RN50``, ``ViT-B-32``; with
            ``model_config`` the name under which that config is registered.
        model_config: An open_clip model config inline (``embed_dim``, ``vision_cfg``,
            ``text_cfg``), for architectures open_clip does not ship, e.g. a tiny CPU CLIP.
        zeroshot_templates: Prompt format strings (``{}`` = class name) averaged into each
            zero-shot class embedding (default: open_clip's 7 CLIP-paper ImageNet prompts).
        optimizer: Optimiser and schedule.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        model_config: dict[str, Any] | None = None,
        zeroshot_templates: list[str] | None = None,
        optimizer: OptimizerConfig = OptimizerConfig(),
    ) -> None:
        super().__init__(optimizer)
        self.model_name = model_name
        # a JSON round trip keeps plain types only, so checkpoints load with weights_only=True
        self.model_config = None if model_config is None else json.loads(json.dumps(model_config))
        self.model = create_open_clip_model(model_name, self.model_config)
        self.open_clip_config = open_clip.get_model_config(model_name)
        self.zeroshot_templates = list(zeroshot_templates or DEFAULT_TEMPLATES)
        self.loss_fn: open_clip.ClipLoss | None = None
        self.zeroshot_metrics = nn.ModuleDict()
        self.retrieval_metrics = nn.ModuleDict()
        self._classifiers: dict[str, torch.Tensor] = {}

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, ImageTextDataModule):
            raise ConfigError(
                "ContrastivePretraining needs image-text data: set data.class_path to "
                "datamodules.image_text.ImageTextDataModule"
            )
        self._check_data(datamodule)
        self.record_input(datamodule.transform)
        self.loss_fn = make_clip_loss(self.trainer.global_rank, self.trainer.world_size)
        for name in datamodule.zeroshot_names:
            classes = len(datamodule.zeroshot_classes[name])
            self.zeroshot_metrics[name] = MulticlassAccuracy(classes, average="micro")
        for name in datamodule.eval_names("val") + datamodule.eval_names("test"):
            if name not in datamodule.zeroshot_names:
                self.retrieval_metrics[name] = RetrievalRecall(
                    self.feature_dim, datamodule.context_length
                )

    def _check_data(self, datamodule: ImageTextDataModule) -> None:
        """Mismatched sizes would otherwise fail deep in a positional embedding."""
        vision, text = self.open_clip_config["vision_cfg"], self.open_clip_config["text_cfg"]
        pairs = {
            "context_length": (datamodule.context_length, text.get("context_length", 77)),
            "transform.image_size": (datamodule.transform.image_size, vision.get("image_size")),
        }
        for option, (data, model) in pairs.items():
            if isinstance(model, int) and data != model:
                raise ConfigError(
                    f"data.{option} is {data} but model {self.model_name!r} expects {model}; "
                    "set them equal"
                )

    def trainable_model(self) -> nn.Module:
        return self.model

    @property
    def feature_dim(self) -> int:
        return self.open_clip_config["embed_dim"]

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """L2-normalised image embeddings: the space zero-shot and retrieval use."""
        return self.model.encode_image(batch["image"], normalize=True)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.model(batch["image"], batch["text"])
        loss = self.loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        size = len(batch["key"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        # exp of the learnt log-scale: the inverse softmax temperature, at most 100
        self.log("train/logit_scale", out["logit_scale"], on_epoch=False, batch_size=size)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    # --- evaluation: retrieval on image-text sets, zero-shot top-1 on labelled sets -----------
    def on_validation_epoch_start(self) -> None:
        self._start_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._start_evaluation("test")

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval("val")

    def on_test_epoch_end(self) -> None:
        self._log_retrieval("test")

    def _start_evaluation(self, split: str) -> None:
        """Empty the retrieval metrics; embed the zero-shot prompts with the current weights."""
        datamodule = self.trainer.datamodule
        for metric in self.retrieval_metrics.values():
            metric.reset()
        tokenizer = datamodule.tokenizer()
        zeroshot = datamodule.zeroshot_names if split == "val" else []
        self._classifiers = {
            name: open_clip.build_zero_shot_classifier(
                self.model,
                tokenizer,
                datamodule.zeroshot_classes[name],
                self.zeroshot_templates,
                device=self.device,
            ).float()
            for name in zeroshot
        }

    def evaluate(self, batch: dict[str, Any], split: str, name: str) -> dict:
        """Zero-shot accuracy or stored embeddings; features go to the spectrum callback."""
        image = self.model.encode_image(batch["image"], normalize=True).float()
        if name in self._classifiers:
            metric = self.zeroshot_metrics[name]
            metric.update(image @ self._classifiers[name], batch["label"])
            self.log(
                self.evaluation_tag(split, name, metric_keys.ACCURACY),
                metric,
                add_dataloader_idx=False,
                on_epoch=True,
                batch_size=len(batch["key"]),
            )
        else:
            text = self.model.encode_text(batch["text"], normalize=True)
            self.retrieval_metrics[name].update(image, text, batch["text"])
        return {"features": image}

    def _log_retrieval(self, split: str) -> None:
        """Recall over each whole set (the metric gathers every rank's pairs first)."""
        for name in self.trainer.datamodule.eval_names(split):
            if name not in self.retrieval_metrics:
                continue
            for metric, value in self.retrieval_metrics[name].compute().items():
                # identical on every rank; the sync only keeps Lightning's bookkeeping uniform
                self.log(self.evaluation_tag(split, name, metric), value, sync_dist=True)
            self.retrieval_metrics[name].reset()

    def export(self, directory: Path) -> dict[str, Any]:
        """open_clip's hub layout: ``open_clip_config.json`` (``model_cfg``, and as
        ``preprocess_cfg`` the training input size, mean, std and interpolation) and
        ``open_clip_model.safetensors``, loaded by ``open_clip.create_model_and_transforms(
        "local-dir:<directory>")``. open_clip's ``save_for_hf`` would also save the tokenizer,
        which its default ``SimpleTokenizer`` cannot, so the config is written here."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        preprocess = dict(self.model.visual.preprocess_cfg)
        if self.input_config is not None:
            preprocess.update(
                size=self.input_config["input_size"][-1],
                mean=self.input_config["mean"],
                std=self.input_config["std"],
                interpolation=self.input_config["interpolation"],
                resize_mode="shortest",  # resize, then centre crop: timm's eval at crop_pct 1
            )
        config = {"model_cfg": self.open_clip_config, "preprocess_cfg": preprocess}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        folder = str(directory.resolve())
        return {
            "library": "open_clip",
            "model_name": self.model_name,
            "model_config": self.model_config,
            "weights": WEIGHTS_FILE,
            "config": CONFIG_FILE,
            "load": f"open_clip.create_model_and_transforms({'local-dir:' + folder!r})",
        }
