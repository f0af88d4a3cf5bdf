"""Classification shards (timm ImageNet layout) with controlled label noise."""

from __future__ import annotations

from typing import Any, Literal

from datamodules.base import ShardDataModule
from datamodules.errors import ConfigError
from datamodules.formats import ClassificationFormat, LabelNoise
from datamodules.noise import AsymmetricLabelNoise, SymmetricLabelNoise
from datamodules.shards import ShardSpec, ShardSpecError, read_info


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
        label_key: File extension of the label inside the shards.
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
        label_key: str = "cls",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.label_key = label_key
        self.class_names: list[str] | None = None
        self.noise = _make_label_noise(
            label_noise,
            noise_ratio,
            num_classes,
            self.seed,
            noise_include_true_class,
            noise_transitions,
        )

    def sample_format(self, training: bool) -> ClassificationFormat:
        return ClassificationFormat(
            self.num_classes,
            self.transform.build(training),
            label_noise=self.noise if training else None,
            label_key=self.label_key,
        )

    def noise_summary(self) -> dict[str, Any]:
        if self.noise is None:
            return {"type": "none", "ratio": 0.0, "expected_rate": 0.0}
        kind = "symmetric" if isinstance(self.noise, SymmetricLabelNoise) else "asymmetric"
        expected = getattr(self.noise, "expected_rate", self.noise.ratio)
        return {"type": kind, "ratio": self.noise.ratio, "expected_rate": expected}

    def check_shards(self, spec: ShardSpec) -> None:
        info = read_info(spec.urls)
        declared = info.get("num_classes")
        if declared is not None and declared != self.num_classes:
            raise ShardSpecError(
                f"data.num_classes is {self.num_classes} but {spec.spec!r} declares "
                f"{declared} classes in its _info.json; set num_classes: {declared}"
            )
        self.class_names = info.get("class_names", self.class_names)


def _make_label_noise(
    kind: str,
    ratio: float,
    num_classes: int,
    seed: int,
    include_true_class: bool,
    transitions: str | None,
) -> LabelNoise | None:
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
        return AsymmetricLabelNoise.from_json(transitions, ratio, seed)
    raise ConfigError(f"data.label_noise must be none, symmetric or asymmetric, got {kind!r}")
