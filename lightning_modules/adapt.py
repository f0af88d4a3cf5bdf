"""Downstream adaptation of a (noisily) pre-trained backbone: LP, MLP, NMTune, LoRA, FT, and
the zero-shot baseline.

One module, one training story for every method; they differ only in which parameters train
and which loss terms are on:

=========  ===========================  ================================  =====================
method     trains                       features the classifier sees      loss
=========  ===========================  ================================  =====================
lp         Linear head (or one per      frozen backbone F                 CE
           swept weight decay)
mlp        residual MLP + head          Z = s * MLP(F) + F                CE
nmtune     residual MLP + head          Z = s * MLP(F) + F                CE + NMTune terms
lora       LoRA adapters (peft) + head  adapted backbone                  CE (+ COV, SVD terms)
ft         whole backbone + head        fine-tuned backbone               CE (+ COV, SVD terms)
zeroshot   nothing (``train.py          frozen backbone F, normalised     (none)
           validate``): text head
=========  ===========================  ================================  =====================

Frozen methods train on cached features by default (see ``feature_cache.py``). ``zeroshot``
scores an open_clip model's text head (``zeroshot.py``); ``ft``/``lora`` can start from it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from datamodules.errors import ConfigError
from datamodules.transforms import TwoViewTransformConfig
from lightning_modules import metric_keys
from lightning_modules.backbones import Backbone, BackboneConfig
from lightning_modules.base import NoisyTrainingModule, OptimizerConfig, ParameterGroup
from lightning_modules.classifier import ClassifierHead, LinearClassifier
from lightning_modules.feature_cache import FeatureCache
from lightning_modules.heads import ResidualMLP
from lightning_modules.lora import LoraConfig, add_lora
from lightning_modules.probe_sweep import WeightDecaySweep
from lightning_modules.regularizers import NMTuneLossWeights, nmtune_regularizer
from lightning_modules.zeroshot import ZeroShotClassifier, ZeroShotConfig, zero_shot_classifier

Method = Literal["lp", "mlp", "nmtune", "lora", "ft", "zeroshot"]
METHODS = ("lp", "mlp", "nmtune", "lora", "ft", "zeroshot")
FROZEN_METHODS = ("lp", "mlp", "nmtune", "zeroshot")


@dataclass(frozen=True)
class NMTuneConfig:
    """NMTune head, regulariser weights and training protocol.

    Args:
        preset: ``paper`` (the default: what the paper specifies, lambda 0.01 on MSE, COV and
            SVD, top-1 singular value, per-sample MSE between F and Z of the same view, the
            suite's single view and optimiser groups) or ``official_code`` (the step of the
            public repository's ``src/models/nml_tune.py``: 1.0 / 0.04 / 0.001, top-5,
            element-wise MSE, two views, a zero-bias classifier with ``kaiming_uniform``
            weights, weight decay on every trainable parameter). With ``method: nmtune``
            only; other methods read its weights (``backbone_regularizer``) and head.
        consistency: Override the preset's MSE weight.
        covariance: Override the preset's COV weight.
        dominant_singular: Override the preset's SVD weight.
        top_k: Override the number of leading singular values in the SVD term.
        mlp_ratio: Hidden width of the residual MLP as a multiple of D.
        scale_init: Initial per-dimension scale of the residual branch.
        two_views: Train on two augmented views of every image: CE on all 2B rows, MSE between
            Z of the second view and F of the first, COV and SVD on all 2B rows, the MLP run
            once on the 2B rows. Fresh views at every step with ``cache_features: false``;
            two of the ``data.train_views`` cached views otherwise. Default: on for
            ``official_code`` with ``method: nmtune``, off otherwise.
        strong_randaugment: The second view adds RandAugment(3, 5) (the official
            ``--use-weak-strong``; its README's commands run without it). Fresh views only.
    """

    preset: Literal["paper", "official_code"] = "paper"
    consistency: float | None = None
    covariance: float | None = None
    dominant_singular: float | None = None
    top_k: int | None = None
    mlp_ratio: int = 4
    scale_init: float = 1.0
    two_views: bool | None = None
    strong_randaugment: bool = False

    @property
    def official(self) -> bool:
        return self.preset == "official_code"

    def weights(self) -> NMTuneLossWeights:
        base = NMTuneLossWeights.official_code() if self.official else NMTuneLossWeights.paper()
        overrides = {
            name: value
            for name in ("consistency", "covariance", "dominant_singular", "top_k")
            if (value := getattr(self, name)) is not None
        }
        return replace(base, **overrides)


def official_classifier(dim: int, num_classes: int) -> LinearClassifier:
    """The official NMTune classifier (see :class:`LinearClassifier`, ``init="official"``)."""
    return LinearClassifier(dim, num_classes, init="official")


def stack_views(images: torch.Tensor) -> torch.Tensor:
    """``(B, 2, C, H, W)`` two-view images -> ``(2B, C, H, W)`` rows ``[weak; strong]``, the
    official step's ``torch.cat([inputs_w, inputs_s])``."""
    return torch.cat([images[:, 0], images[:, 1]])


class Adaptation(NoisyTrainingModule):
    """Adapt a backbone to a downstream classification task.

    Args:
        method: ``lp``, ``mlp``, ``nmtune``, ``lora``, ``ft`` or ``zeroshot`` (no training:
            run it with ``train.py validate``).
        num_classes: Classes of the downstream task.
        backbone: Where the backbone comes from (an export card of this suite, a timm or
            open_clip model, or none when the data already are embeddings).
        nmtune: NMTune head and loss options (``method: nmtune``; ``mlp`` uses its head only).
        lora: LoRA options (``method: lora``).
        zeroshot: Zero-shot head options: prompt templates and class names (``method:
            zeroshot``), and ``init_head`` to start ``ft``/``lora`` from that head.
        backbone_regularizer: For ``lora``/``ft``: add the NMTune covariance and
            dominant-singular-value terms on the backbone features (the paper's extension).
        backbone_lr_scale: For ``ft``: backbone learning rate as a fraction of the head's.
        weight_decay_sweep: For ``lp``: candidate weight decays, e.g. ``[1e-6, 1e-5, 1e-4,
            1e-3, 1e-2]``. One linear head per value trains side by side (each with its own
            weight decay, replacing ``optimizer.weight_decay``); after every validation the
            head with the best accuracy on ``weight_decay_selection`` is the classifier, as
            CLIP_benchmark's linear probe selects on a validation split. Empty: one head.
        weight_decay_selection: The validation set (a name of ``data.val_shards``) that picks
            the head.
        cache_features: Frozen methods train on features extracted once (False: run the
            backbone every step, as the official code does).
        cache_dir: Where cached features are written.
        optimizer: Optimiser and schedule (official: AdamW, cosine; LP lr 0.01, NMTune 1e-3).
    """

    def __init__(
        self,
        method: Method = "nmtune",
        num_classes: int = 10,
        backbone: BackboneConfig = BackboneConfig(),
        nmtune: NMTuneConfig = NMTuneConfig(),
        lora: LoraConfig = LoraConfig(),
        zeroshot: ZeroShotConfig = ZeroShotConfig(),
        backbone_regularizer: bool = False,
        backbone_lr_scale: float = 0.1,
        weight_decay_sweep: list[float] | None = None,
        weight_decay_selection: str = "val",
        cache_features: bool = True,
        cache_dir: str = "cache/features",
        optimizer: OptimizerConfig = OptimizerConfig(name="adamw", lr=1e-3, weight_decay=1e-4),
    ) -> None:
        super().__init__(optimizer)
        if method not in METHODS:
            raise ConfigError(f"model.method must be one of {', '.join(METHODS)}, got {method!r}")
        if num_classes < 2:
            raise ConfigError(f"model.num_classes must be at least 2, got {num_classes}")
        if weight_decay_sweep and method != "lp":
            raise ConfigError(
                f"model.weight_decay_sweep is for method lp (the linear probe), not {method!r}"
            )
        self.method = method
        self.num_classes = num_classes
        self.backbone_config = backbone
        self.nmtune_config = nmtune
        self.zeroshot_config = zeroshot
        self.zeroshot_head = method == "zeroshot" or zeroshot.init_head
        if zeroshot.init_head and method not in ("ft", "lora"):
            raise ConfigError(
                f"model.zeroshot.init_head starts ft or lora from the zero-shot head, not "
                f"{method!r} (method zeroshot always uses it)"
            )
        self.official_step = method == "nmtune" and nmtune.official
        default_views = self.official_step if nmtune.two_views is None else nmtune.two_views
        self.two_views = default_views and method in FROZEN_METHODS
        if nmtune.two_views and method not in FROZEN_METHODS:
            raise ConfigError(f"model.nmtune.two_views is for frozen backbones, not {method!r}")
        self.regularizer_weights = _regularizer_weights(method, nmtune, backbone_regularizer)
        self.backbone_lr_scale = backbone_lr_scale
        self.weight_decay_sweep = list(weight_decay_sweep or [])
        self.weight_decay_selection = weight_decay_selection
        self.cache_features = cache_features and method in FROZEN_METHODS
        self.cache_dir = cache_dir
        self.backbone: Backbone | None = backbone.build(frozen=method in FROZEN_METHODS)
        if method == "lora":
            if self.backbone is None:
                raise ConfigError("method lora needs a backbone (model.backbone), not embeddings")
            add_lora(self.backbone, lora)
        if method in ("ft", "zeroshot") and self.backbone is None:
            raise ConfigError(f"method {method} needs a backbone (model.backbone), not embeddings")
        self.transform: ResidualMLP | None = None
        self.classifier: ClassifierHead | None = None
        if self.backbone is not None and not self.zeroshot_head:  # a text head: in setup
            self._build_head(self.backbone.dim)

    # --- construction -------------------------------------------------------------------
    def _build_head(self, dim: int) -> None:
        if self.method in ("mlp", "nmtune"):
            self.transform = ResidualMLP(
                dim, self.nmtune_config.mlp_ratio, self.nmtune_config.scale_init
            )
        if self.weight_decay_sweep:
            self.classifier = WeightDecaySweep(dim, self.num_classes, self.weight_decay_sweep)
        else:
            init = "official" if self.official_step else "default"
            self.classifier = LinearClassifier(dim, self.num_classes, init)

    @property
    def training_free(self) -> bool:
        """Nothing to train (zero-shot): ``validate`` scores it and exports its head."""
        return self.method == "zeroshot"

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        declared = getattr(datamodule, "num_classes", self.num_classes)
        if declared != self.num_classes:
            raise ConfigError(
                f"model.num_classes is {self.num_classes} but data.num_classes is {declared}"
            )
        if self.training_free and stage == "fit":
            raise ConfigError(
                "model.method zeroshot trains nothing: run python train.py validate (or test) "
                "with the same config"
            )
        if self.zeroshot_head and not isinstance(self.classifier, ZeroShotClassifier):
            names = self.zeroshot_config.names_for(
                getattr(datamodule, "class_names", None), self.num_classes
            )
            self.classifier = zero_shot_classifier(
                self.backbone,
                names,
                self.zeroshot_config.prompt_templates(),
                self.trainer.strategy.root_device,
            )
            self.classifier.requires_grad_(not self.training_free)
        if self.weight_decay_sweep and stage == "fit":  # before any extraction
            val_names = datamodule.eval_names("val")
            if self.weight_decay_selection not in val_names:
                raise ConfigError(
                    f"model.weight_decay_selection is {self.weight_decay_selection!r} but the "
                    f"validation sets are {val_names}: name one of them (data.val_shards)"
                )
        if self.backbone is None:
            if self.classifier is None:
                self._build_head(datamodule.embedding_dim)
        elif datamodule.transform.normalization != self.backbone.normalization:
            warnings.warn(
                f"data.transform.normalization is {datamodule.transform.normalization!r} but the "
                f"backbone expects {self.backbone.normalization!r}",
                stacklevel=2,
            )
        if self.two_views:  # before any extraction
            self._two_view_data(datamodule)
        if self.backbone is not None and self.cache_features and stage != "predict":
            progress = self.trainer.progress_bar_callback is not None  # quiet where bars are off
            FeatureCache(self.cache_dir, progress).attach(
                datamodule,
                self.backbone,
                stage,
                device=self.trainer.strategy.root_device,
                rank=self.trainer.global_rank,
                world=self.trainer.world_size,
                barrier=lambda: self.trainer.strategy.barrier("feature cache"),
                two_views=self.two_views,
            )
        subsets = getattr(datamodule, "class_subsets", {})
        for name in datamodule.eval_names("val") + datamodule.eval_names("test"):
            self.classifier.add_evaluation_set(name, subsets.get(name))

    def _two_view_data(self, datamodule: Any) -> None:
        """Cached features: two of the ``data.train_views`` views per row. Images: the training
        transform gives two fresh views of every image at every step."""
        strong = self.nmtune_config.strong_randaugment
        if self.backbone is None:
            raise ConfigError(
                "model.nmtune.two_views needs images and a backbone, not embeddings: set "
                "model.nmtune.two_views: false"
            )
        if self.cache_features:
            if getattr(datamodule, "train_views", 1) < 2:
                raise ConfigError(
                    "model.nmtune.two_views with cached features needs data.train_views >= 2 "
                    "(or model.cache_features: false for fresh views at every step)"
                )
            if strong:
                raise ConfigError(
                    "model.nmtune.strong_randaugment draws fresh views: set "
                    "model.cache_features: false"
                )
            return
        datamodule.transform = TwoViewTransformConfig.of(datamodule.transform, strong)

    def parameter_groups(self) -> list[ParameterGroup]:
        """The head at the base learning rate (each swept head with its weight decay); the
        backbone's trainable part (LoRA adapters, or everything for FT at
        ``backbone_lr_scale``) beside it."""
        groups = self.classifier.parameter_groups()
        if self.transform is not None:
            groups = [ParameterGroup(self.transform, name="mlp"), *groups]
        if self.backbone is None:
            return groups
        scale = self.backbone_lr_scale if self.method == "ft" else 1.0
        return [*groups, ParameterGroup(self.backbone, scale, name="backbone")]

    @property
    def feature_dim(self) -> int:
        return self.classifier.in_features

    # --- the training story -------------------------------------------------------------
    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """What the classifier sees: Z for MLP/NMTune, backbone features otherwise."""
        return self._transform(self._backbone_features(batch))

    def _backbone_features(self, batch: dict[str, Any]) -> torch.Tensor:
        """Cached features when the batch has them, else the backbone on the images."""
        if "features" in batch:
            return batch["features"]
        with torch.set_grad_enabled(self.method not in FROZEN_METHODS and torch.is_grad_enabled()):
            return self.backbone(batch["image"])

    def _transform(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.transform is None else self.transform(features)

    def _two_view_features(self, batch: dict[str, Any]) -> torch.Tensor:
        """F of both views, ``[weak; strong]`` (2B rows): two cached views, or the backbone run
        once on the 2B freshly augmented images."""
        if "features" in batch:
            return torch.cat([batch["features"], batch["features_strong"]])
        return self._backbone_features({"image": stack_views(batch["image"])})

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        labels = batch["label"]
        if self.two_views:  # CE on both views; MSE between Z(strong) and F(weak)
            features, labels = self._two_view_features(batch), labels.repeat(2)
        else:
            features = self._backbone_features(batch)
        rows = self._transform(features)  # one pass: BatchNorm sees every row, as officially
        weak, strong = (
            (features.chunk(2)[0], rows.chunk(2)[1]) if self.two_views else (features, rows)
        )
        loss, cross_entropy = self.classifier.loss(rows, labels)
        log = {"on_step": True, "on_epoch": True, "batch_size": len(labels)}
        self.log("train/ce", cross_entropy, prog_bar=True, **log)
        if self.regularizer_weights is not None:
            terms = nmtune_regularizer(weak, strong, self.regularizer_weights, rows)
            for name, value in terms.items():
                self.log(f"train/reg_{name}", value, **{**log, "on_step": False})
            loss = loss + terms["total"]
        self.log("train/loss", loss, **log)
        return loss

    def evaluate(self, batch: dict[str, Any], split: str, name: str) -> dict:
        """The classifier scores the batch (logged at the end of the epoch); Z (or F) goes to
        the spectrum callback."""
        transformed = self.features(batch)
        self.classifier.update(name, transformed, batch["label"])
        return {"features": transformed}

    def on_validation_epoch_end(self) -> None:
        selection = None if self.trainer.sanity_checking else self.weight_decay_selection
        self._log_evaluation("val", selection)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test", None)

    def _log_evaluation(self, split: str, selection: str | None) -> None:
        """Every set's accuracy, macro F1 and loss (after a weight-decay sweep re-selects its
        head on ``selection``), and their means over the test sets (``test/mean/*``); already
        synced across ranks by torchmetrics."""
        datamodule = self.trainer.datamodule
        names = datamodule.eval_names(split)
        logs = self.classifier.compute(names, selection)
        tagged = self.tagged(split, logs)
        mean_sets = getattr(datamodule, "mean_sets", lambda split, names: [])(split, names)
        for metric in (metric_keys.ACCURACY, metric_keys.F1) if mean_sets else ():
            mean = sum(logs[f"{name}/{metric}"] for name in mean_sets) / len(mean_sets)
            tagged[metric_keys.evaluation_tag("test", metric_keys.MEAN_SET, metric)] = mean
        self.log_dict(tagged, sync_dist=False)

    def tagged(self, split: str, scores: dict[str, float]) -> dict[str, float]:
        """The classifier's ``<set>/<metric>`` scores of ``split``'s loop under their tags
        (``val/`` or ``test/``, see ``metric_keys.py``); a bare key (the sweep's selected weight
        decay) goes under ``<split>/``."""
        tags = {}
        for key, value in scores.items():
            name, _, metric = key.rpartition("/")
            tags[self.evaluation_tag(split, name, metric) if name else f"{split}/{key}"] = value
        return tags

    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        """The backbone's embeddings F of a batch with its keys and clean labels (``train.py
        predict``; ``callbacks/embedding_writer.py`` writes them as embedding files)."""
        if self.backbone is None:
            raise ConfigError(
                "train.py predict embeds images with model.backbone; these data are embeddings "
                "already"
            )
        return {
            "features": self._backbone_features(batch).float().cpu(),
            "key": list(batch["key"]),
            "label": batch["clean_label"].cpu(),
        }

    # --- optimisation -------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """The suite's groups; under ``official_code`` every group decays (biases, BatchNorm
        and the scale too), as the official ``AdamW(params, weight_decay=wd)``. AdamW's update
        is per parameter, so equal hyperparameters in two groups equal one group."""
        config = super().configure_optimizers()
        if self.official_step:
            for group in config["optimizer"].param_groups:
                group["weight_decay"] = self.optimizer_config.weight_decay
        return config

    def on_train_epoch_start(self) -> None:
        if self.backbone is not None:  # a frozen Backbone stays in eval mode; LoRA/FT train
            self.backbone.train()

    # --- export ---------------------------------------------------------------------------
    def export(self, directory: Path) -> dict[str, Any]:
        """The classifier and the trained parameters (MLP, adapters or the whole backbone)."""
        path = (directory / "adapted.safetensors").resolve()
        trainable = {
            name: param.detach().cpu().contiguous()
            for name, param in self.named_parameters()
            if param.requires_grad or name.startswith("classifier.")
        }
        save_file(trainable, str(path))
        return {
            "method": self.method,
            **self.classifier.card(),
            "backbone": json.loads(json.dumps(asdict(self.backbone_config))),
            "num_classes": self.num_classes,
            "weights": path.name,
        }


def _regularizer_weights(
    method: str, nmtune: NMTuneConfig, backbone_regularizer: bool
) -> NMTuneLossWeights | None:
    """NMTune's three terms for ``nmtune``; COV and SVD only (no frozen F to stay close to)
    on the backbone features of ``lora``/``ft`` when asked; nothing otherwise."""
    if method == "nmtune":
        return nmtune.weights()
    if method in ("lora", "ft") and backbone_regularizer:
        return replace(nmtune.weights(), consistency=0.0)
    return None
