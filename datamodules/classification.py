"""Classification shards (timm ImageNet layout) with controlled label noise."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import DataLoader

from datamodules.base import ShardDataModule
from datamodules.errors import ConfigError
from datamodules.features import EvaluationFeatures, FeatureRows, ImageSource, training_features
from datamodules.formats import ClassificationFormat, LabelNoise
from datamodules.noise import AsymmetricLabelNoise, SymmetricLabelNoise
from datamodules.pipeline import EpochLoader, PredictionBatches, ShardStream
from datamodules.shards import ShardSpec, ShardSpecError, read_info
from datamodules.subset import TrainingSubset

STAGE_SPLITS = {"fit": ("val",), "validate": ("val",), "test": ("test",)}  # evaluation sets


class ClassificationDataModule(ShardDataModule):
    """Image + integer label shards; training labels corrupted by a seeded, keyed noise.

    Args:
        num_classes: Number of classes; labels outside ``[0, num_classes)`` are skipped and
            counted, and an ``_info.json`` that disagrees stops the run.
        label_noise: ``none``, ``symmetric`` (uniform over the other classes) or
            ``asymmetric`` (class-conditional, see ``noise_transitions``).
        noise_ratio: Probability that a training sample's label is corrupted, in ``[0, 1)``.
        noise_include_true_class: Symmetric noise draws the new label over all classes, the
            official NMTune code's convention (realised rate ``ratio * (K-1)/K``).
        noise_transitions: For asymmetric noise: ``cifar10`` or a JSON file mapping source
            class to target class, e.g. ``{"3": 5, "5": 3}``.
        noise_exact_count: Symmetric noise on exactly ``ceil(noise_ratio * N)`` training
            samples (those with the smallest keyed flip uniform), the count of the official
            ``sample_noise_data``, instead of each sample independently. Needs cached features.
        label_key: File extension of the label inside the shards.
        train_views: Training views cached when a frozen backbone's features are cached: 1 uses
            the evaluation transform (no augmentation, as CLIP_benchmark's linear probe); K >= 2
            caches K passes with the training augmentation, one drawn per sample and step.
        train_fraction: Train on this fraction of the training set (the paper's "various
            percentages of data"): the same samples for every backbone and noise ratio, nested
            across fractions (see ``datamodules/subset.py``). Needs cached features.
        shots_per_class: Train on k samples per class (the official ``--num-shots``), chosen
            by their clean labels, nested across k. Needs cached features.
        class_subsets: Evaluation sets scored on a subset of the classes, ``{set name: class
            indices}`` (a list, or a file of indices: a JSON list or one per line), e.g.
            ImageNet-A and ImageNet-R on their 200 classes as the official code does: only
            those logits compete, labels keep their full-space indices.
        **kwargs: Shard, loader and transform options of :class:`ShardDataModule`.
    """

    layout = "classification"

    def __init__(
        self,
        num_classes: int,
        label_noise: Literal["none", "symmetric", "asymmetric"] = "none",
        noise_ratio: float = 0.0,
        noise_include_true_class: bool = False,
        noise_transitions: str | None = None,
        noise_exact_count: bool = False,
        label_key: str = "cls",
        train_views: int = 1,
        train_fraction: float = 1.0,
        shots_per_class: int | None = None,
        class_subsets: dict[str, list[int] | str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if train_views < 1:
            raise ConfigError(f"data.train_views must be at least 1, got {train_views}")
        self.num_classes = num_classes
        self.label_key = label_key
        self.train_views = train_views
        self.cached: dict[str, Any] | None = None
        self.subset = TrainingSubset(train_fraction, shots_per_class, self.seed)
        self.subset_info: dict[str, Any] | None = None
        self.class_subset_options = class_subsets or {}
        self.class_subsets: dict[str, list[int]] = {}  # read in setup, before training
        self.class_names: list[str] | None = None
        self.noise = make_label_noise(
            label_noise,
            noise_ratio,
            num_classes,
            self.seed,
            noise_include_true_class,
            noise_transitions,
            noise_exact_count,
        )
        self.noise_exact_count = noise_exact_count

    def sample_format(
        self, training: bool, uint8: bool = False, noisy: bool | None = None
    ) -> ClassificationFormat:
        """Augmented and noisy for training; ``noisy=False`` gives clean labels (caching)."""
        return ClassificationFormat(
            self.num_classes,
            self.transform.build(training, uint8),
            label_noise=self.noise if (training if noisy is None else noisy) else None,
            label_key=self.label_key,
        )

    # --- what a frozen backbone reads, and the features it gives back ---------------------
    def frozen_sources(self, stage: str) -> list[ImageSource]:
        """The images a frozen backbone must see once for ``stage`` (``fit``: each of the
        ``train_views`` training views and the validation sets; ``validate``: validation;
        ``test``: test; ``predict``: the training set without augmentation and every
        evaluation set once), this rank's share of each, with clean labels."""
        if stage == "predict":
            return self._predict_sources()
        augment = self.train_views > 1
        sources = []
        if self.train_spec is not None and stage == "fit":
            for view in range(self.train_views):
                sources.append(self._image_source("train", "train", self.train_spec, augment, view))
        for split, specs in self.eval_specs.items():
            if split in STAGE_SPLITS.get(stage, ()):
                for name, spec in specs.items():
                    sources.append(self._image_source(split, name, spec, False, 0))
        return sources

    def _predict_sources(self) -> list[ImageSource]:
        """Training set (evaluation transform), test sets, then the validation sets that are
        not test sets repeated by ``test_in_validation``."""
        sources = []
        if self.train_spec is not None:
            sources.append(self._image_source("train", "train", self.train_spec, False, 0))
        seen = set()
        for split in ("test", "val"):
            for name, spec in self.eval_specs[split].items():
                if spec.spec not in seen:
                    seen.add(spec.spec)
                    sources.append(self._image_source(split, name, spec, False, 0))
        return sources

    def predict_dataloader(self) -> list[PredictionBatches]:
        """Every set once, in the order of :meth:`predict_names` (``train.py predict``)."""
        return [PredictionBatches(source.batches()) for source in self.frozen_sources("predict")]

    def predict_names(self) -> list[str]:
        """``train`` and ``<split>-<set>`` for the loaders of :meth:`predict_dataloader`."""
        return [
            "train" if source.split == "train" else f"{source.split}-{source.name}"
            for source in self.frozen_sources("predict")
        ]

    def _image_source(
        self, split: str, name: str, spec: ShardSpec, augment: bool, view: int
    ) -> ImageSource:
        rank, world = self._rank_world()

        def batches() -> EpochLoader:
            stream = ShardStream(
                spec,
                self.sample_format(augment, noisy=False),
                self.eval_batch_size,
                training=False,
                rank=rank,
                world_size=world,
                max_skip_fraction=self.max_skip_fraction,
            )
            return EpochLoader(stream, self.loader_workers)

        identity = {
            "shards": spec.spec,
            "transform": asdict(self.transform),
            "augment": augment,
            "view": view,
            "label_key": self.label_key,
        }
        what = "training set" if split == "train" else f"{split} set {name!r}"
        if split == "train" and self.train_views > 1 and augment:
            what += f", augmented view {view + 1} of {self.train_views}"
        if world > 1:
            what += f", rank {rank + 1} of {world}"
        samples = spec.num_samples  # each rank reads its own shards: exact on one rank only
        total = math.ceil(samples / self.eval_batch_size) if samples and world == 1 else None
        return ImageSource(split, name, identity, batches, f"embedding the {what}", total)

    def serve_features(
        self,
        train_views: list[FeatureRows],
        evaluation: dict[str, dict[str, FeatureRows]],
        two_views: bool = False,
    ) -> None:
        """From now on serve feature rows instead of images: the training views with this
        DataModule's label noise (two views per row with ``two_views``), each evaluation set
        once, in order."""
        train = None
        if train_views:
            train, self.subset_info = training_features(
                train_views, self.noise, self.subset, self.noise_exact_count, two_views
            )
        self.cached = {
            "train": train,
            **{
                split: {name: EvaluationFeatures(rows) for name, rows in sets.items()}
                for split, sets in evaluation.items()
            },
        }

    def train_dataloader(self) -> DataLoader:
        if self.cached is None:
            return super().train_dataloader()
        return DataLoader(self.cached["train"], self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> list[DataLoader]:
        return self._cached_loaders("val") if self.cached else super().val_dataloader()

    def test_dataloader(self) -> list[DataLoader]:
        return self._cached_loaders("test") if self.cached else super().test_dataloader()

    def _cached_loaders(self, split: str) -> list[DataLoader]:
        return [DataLoader(rows, self.eval_batch_size) for rows in self.cached[split].values()]

    def noise_summary(self) -> dict[str, Any]:
        return noise_summary(self.noise, self.noise_exact_count)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        names = set(self.eval_names("val")) | set(self.eval_names("test"))
        self.class_subsets = {
            name: read_class_subset(value, self.num_classes, f"data.class_subsets.{name}")
            for name, value in self.class_subset_options.items()
        }
        if unknown := sorted(set(self.class_subsets) - names):
            raise ConfigError(
                f"data.class_subsets names {unknown}, which are not evaluation sets; the sets "
                f"are {sorted(names)}"
            )

    def check_before_training(
        self, stage: str, world_size: int, streams_training: bool = True, evaluates: bool = True
    ) -> None:
        if stage == "fit" and streams_training and not self.subset.everything:
            raise ConfigError(
                "data.train_fraction and data.shots_per_class choose from the whole training set, "
                "which a streamed training pass never holds: use a frozen method (lp, mlp, "
                "nmtune) with model.cache_features: true, or write the subset to shards"
            )
        if stage == "fit" and streams_training and self.noise_exact_count:
            raise ConfigError(
                "data.noise_exact_count counts over the whole training set, which a streamed "
                "training pass never holds: use a frozen method (lp, mlp, nmtune) with "
                "model.cache_features: true, or per-sample noise (noise_exact_count: false)"
            )
        super().check_before_training(stage, world_size, streams_training, evaluates)

    def check_shards(self, spec: ShardSpec) -> None:
        info = read_info(spec.urls)
        declared = info.get("num_classes")
        if declared is not None and declared != self.num_classes:
            raise ShardSpecError(
                f"data.num_classes is {self.num_classes} but {spec.spec!r} declares "
                f"{declared} classes in its _info.json; set num_classes: {declared}"
            )
        self.class_names = info.get("class_names", self.class_names)


def read_class_subset(value: list[int] | str, num_classes: int, option: str) -> list[int]:
    """Class indices from a list or a file (a JSON list, or whitespace-separated integers);
    they must be distinct, at least two, and in ``[0, num_classes)``."""
    if isinstance(value, str):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"{option}: class subset file not found: {path}")
        text = path.read_text()
        try:
            value = json.loads(text) if text.lstrip().startswith("[") else text.split()
            classes = [int(index) for index in value]
        except ValueError:
            raise ConfigError(
                f"{option}: {path} must hold class indices (a JSON list or one per line)"
            ) from None
    else:
        classes = [int(index) for index in value]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ConfigError(f"{option}: needs at least two distinct class indices")
    if min(classes) < 0 or max(classes) >= num_classes:
        raise ConfigError(
            f"{option}: indices span [{min(classes)}, {max(classes)}] but num_classes is "
            f"{num_classes}"
        )
    return classes


def noise_summary(noise: LabelNoise | None, exact_count: bool = False) -> dict[str, Any]:
    """Type, nominal ratio and expected realised rate of a label noise (for logs and cards)."""
    if noise is None:
        return {"type": "none", "ratio": 0.0, "expected_rate": 0.0}
    kind = "symmetric" if isinstance(noise, SymmetricLabelNoise) else "asymmetric"
    return {
        "type": kind,
        "ratio": noise.ratio,
        "expected_rate": getattr(noise, "expected_rate", noise.ratio),
        **({"exact_count": True} if exact_count else {}),
    }


def make_label_noise(
    kind: str,
    ratio: float,
    num_classes: int,
    seed: int,
    include_true_class: bool,
    transitions: str | None,
    exact_count: bool = False,
) -> LabelNoise | None:
    """The label noise of the ``data.label_noise`` options (``exact_count``: checked here,
    applied by :func:`~datamodules.features.training_features`)."""
    if exact_count and kind != "symmetric":
        raise ConfigError("data.noise_exact_count is for label_noise: symmetric")
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"data.noise_ratio must be in [0, 1), got {ratio}")
    if num_classes < 1:
        raise ConfigError(f"data.num_classes must be positive, got {num_classes}")
    if kind == "none":
        if ratio:
            raise ConfigError(f"data.noise_ratio is {ratio} but label_noise is 'none'")
        return None
    if kind == "symmetric":
        return SymmetricLabelNoise(ratio, num_classes, seed, include_true_class)
    if kind == "asymmetric":
        if transitions is None:
            raise ConfigError(
                "asymmetric label noise needs data.noise_transitions: cifar10 or a JSON"
            )
        if transitions == "cifar10":
            return AsymmetricLabelNoise.cifar10(ratio, seed)
        try:
            return AsymmetricLabelNoise.from_json(transitions, ratio, seed)
        except (OSError, ValueError) as err:  # missing, unreadable or malformed file
            raise ConfigError(f"data.noise_transitions: {err}") from None
    raise ConfigError(f"data.label_noise must be none, symmetric or asymmetric, got {kind!r}")
