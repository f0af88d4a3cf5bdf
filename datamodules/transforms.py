"""Image transforms, built by timm so augmentation options read as timm's do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision import transforms as T

from datamodules.device_augment import CropSampler, device_crop_sampler, resized_crops
from datamodules.errors import ConfigError

# open_clip's OPENAI_DATASET_MEAN/STD, written out: importing open_clip for two tuples costs
# every run half a second (tests/test_lazy_imports.py checks they stay equal)
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)
Transform = Callable[[Image.Image], torch.Tensor]
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
        normalize_on_device: Training batches leave the loader as uint8 images (timm's crop,
            flip and colour steps still run in the loader workers, per sample); the conversion to
            float and the normalisation run on the whole batch on the training device. A quarter
            of the bytes cross from the workers, and the per-sample float work leaves them.
        augment_on_device: Also move the random-resized crop's resize and the flip to the
            training device (:mod:`datamodules.device_augment`): the loader only draws each
            sample's box and flip, as timm does, and cuts the box out; the batch is resized as
            Pillow resizes, to the bit. Needs ``color_jitter: 0``, no ``auto_augment`` and a
            ``bilinear`` or ``bicubic`` interpolation.
    """

    image_size: int = 224
    normalization: str = "imagenet"
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: str | None = None
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    normalize_on_device: bool = False
    augment_on_device: bool = False

    def __post_init__(self) -> None:
        if self.augment_on_device:
            try:
                device_crop_sampler(self._timm_transform(training=True))
            except ValueError as err:
                raise ConfigError(
                    f"data.transform.augment_on_device: {err}; set color_jitter: 0, "
                    "auto_augment: null and interpolation: bicubic or bilinear, or "
                    "augment_on_device: false"
                ) from None

    @property
    def uint8_training_batches(self) -> bool:
        """Training images leave the loader as uint8 and are finished on the device."""
        return self.normalize_on_device or self.augment_on_device

    def build(self, training: bool, uint8: bool = False) -> Transform | CropSampler:
        """timm's transform; with ``uint8``, without its last two steps (to float, normalise),
        which :func:`normalize_uint8` then applies to whole batches; with ``uint8`` and
        ``augment_on_device`` in training, the loader's part of the crop and flip only."""
        transform = self._timm_transform(training)
        if not uint8:
            return transform
        if training and self.augment_on_device:
            return device_crop_sampler(transform)
        *steps, to_float, normalize = transform.transforms
        assert isinstance(normalize, T.Normalize) and "ToTensor" in type(to_float).__name__
        return T.Compose([*steps, T.PILToTensor()])

    def finish_batch(self, images: torch.Tensor, augment: torch.Tensor | None) -> torch.Tensor:
        """What a uint8 training batch still needs, on its device: the crops' resize and flip
        (``augment``, from the loader's :class:`CropSampler`), then the normalisation."""
        if augment is not None:
            images = resized_crops(images, augment, self.image_size, self.interpolation)
        return normalize_uint8(images, *self.mean_std())

    def _timm_transform(self, training: bool) -> T.Compose:
        mean, std = self.mean_std()
        return create_transform(  # a Compose whose first step is the random crop in training
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

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"unknown normalization {self.normalization!r}; use one of {sorted(NORMALIZATIONS)}"
            )
        mean, std = NORMALIZATIONS[self.normalization]
        return tuple(mean), tuple(std)


def normalize_uint8(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """``(images / 255 - mean) / std`` per channel (channels at dim -3), in float32: what
    torchvision's ``ToTensor`` then ``Normalize`` do to each image, for a whole batch at once
    (uint8 images, or the float 0-255 values of :func:`resized_crops`)."""
    shape = (len(mean), 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(shape)
    return images.float().div_(255).sub_(mean_t).div_(std_t)


def _pair(values: Sequence[float]) -> tuple[float, float]:
    low, high = values
    return float(low), float(high)


# The official NMTune code's strong view (``--use-weak-strong``): torchvision RandAugment with
# 3 operations at magnitude 5, bicubic, inserted right after the random crop.
STRONG_RANDAUGMENT = {"num_ops": 3, "magnitude": 5}


class TwoViews:
    """Two independently augmented views of one image, stacked ``(2, C, H, W)`` so that the
    default collate gives ``(B, 2, C, H, W)``: view 0 is the weak one, view 1 the strong one."""

    def __init__(self, weak: Transform, strong: Transform) -> None:
        self.weak = weak
        self.strong = strong

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.stack([self.weak(image), self.strong(image)])


def with_randaugment(transform: T.Compose) -> T.Compose:
    """``transform`` with the official strong RandAugment(3, 5) after its first step (the random
    crop: the official code inserts it at ``len - 3`` of ``[crop, flip, to_tensor, normalize]``,
    the same place)."""
    steps = list(transform.transforms)
    randaugment = T.RandAugment(**STRONG_RANDAUGMENT, interpolation=T.InterpolationMode.BICUBIC)
    return T.Compose([steps[0], randaugment, *steps[1:]])


@dataclass(frozen=True)
class TwoViewTransformConfig(TransformConfig):
    """A :class:`TransformConfig` whose training transform returns two fresh views of every image
    at every step (the official NMTune step's ``TransformTwice``); evaluation is unchanged.

    Args:
        strong_randaugment: The second view adds RandAugment(3, 5), as the official
            ``--use-weak-strong``; off (the official README's commands), both views are two
            independent draws of the same training transform.
    """

    strong_randaugment: bool = False

    @classmethod
    def of(cls, config: TransformConfig, strong_randaugment: bool) -> TwoViewTransformConfig:
        if config.augment_on_device:
            raise ConfigError(
                "data.transform.augment_on_device: the official NMTune step's two fresh views "
                "are made per sample in the loader; set augment_on_device: false"
            )
        return cls(**{**asdict(config), "strong_randaugment": strong_randaugment})

    def build(self, training: bool, uint8: bool = False) -> Transform | CropSampler:
        if not training:
            return super().build(False, uint8)
        weak = super().build(True, uint8)
        return TwoViews(weak, with_randaugment(weak) if self.strong_randaugment else weak)
