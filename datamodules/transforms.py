"""Image transforms, built by timm so augmentation options read as timm's do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

NORMALIZATIONS = {
    "imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "clip": (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
}


@dataclass(frozen=True)
class TransformConfig:
    """How images become tensors.

    Args:
        image_size: Side of the square model input in pixels.
        normalization: ``imagenet`` (timm) or ``clip`` (OpenAI) mean/std.
        scale: Random-resized-crop area range for training.
        hflip: Horizontal flip probability for training.
        color_jitter: Colour jitter strength for training (0 disables it).
        auto_augment: timm auto-augment policy for training, ``rand-m9-mstd0.5``; None disables.
        crop_pct: Evaluation centre-crop fraction (1.0 keeps the whole image, best for tiny images).
        interpolation: Resize interpolation.
    """

    image_size: int = 224
    normalization: str = "imagenet"
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: str | None = None
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def build(self, training: bool) -> Callable[[Image.Image], torch.Tensor]:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"unknown normalization {self.normalization!r}; use one of {sorted(NORMALIZATIONS)}"
            )
        mean, std = NORMALIZATIONS[self.normalization]
        return create_transform(
            self.image_size,
            is_training=training,
            scale=_pair(self.scale),
            hflip=self.hflip,
            color_jitter=self.color_jitter,
            auto_augment=self.auto_augment,
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
            mean=mean,
            std=std,
        )


def _pair(values: Sequence[float]) -> tuple[float, float]:
    low, high = values
    return float(low), float(high)
