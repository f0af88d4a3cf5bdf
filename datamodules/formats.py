"""Sample formats: how the raw files of one webdataset sample become one training sample.

A format has three steps, placed by the pipeline where they are cheapest:

* ``check(raw)`` before the shuffle buffer: pick the fields, parse the label or caption, apply
  per-sample noise. Raises :class:`SkipSample` for a missing key or a bad label.
* ``per_shard(samples)`` on the samples of one shard, in tar order: caption swaps happen here so
  that they depend on the shard's content only, never on the epoch, worker or rank.
* ``finish(sample)`` after the shuffle buffer: decode the image, transform, tokenize. Raises
  :class:`SkipSample` for an undecodable image.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image

from datamodules.device_augment import PendingAugmentation
from datamodules.noise import AsymmetricLabelNoise, CaptionSwapNoise, SymmetricLabelNoise

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
LabelNoise = SymmetricLabelNoise | AsymmetricLabelNoise
Sample = dict[str, Any]


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _field(raw: Sample, keys: Sequence[str]) -> bytes:
    for key in keys:
        if key in raw:
            return raw[key]
    raise SkipSample("missing_key", f"none of {'/'.join(keys)}")


def decode_image(data: bytes) -> Image.Image:
    """Decode fully (``load``) so truncated files fail here, and convert to RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except Exception as err:  # PIL raises many types for corrupt data
        raise SkipSample("decode_error", str(err)) from err


def set_image(sample: Sample, transformed: torch.Tensor | PendingAugmentation) -> Sample:
    """The transformed image, or a crop with the parameters that the device finishes
    (``augment``: ``[h, w, flip]``, see :mod:`datamodules.device_augment`)."""
    if isinstance(transformed, PendingAugmentation):
        sample["image"], sample["augment"] = transformed
    else:
        sample["image"] = transformed
    return sample


class ClassificationFormat:
    """timm ImageNet shards: an image (``jpg;jpeg;png;webp``) and an integer label (``cls``)."""

    def __init__(
        self,
        num_classes: int,
        transform: Callable[[Image.Image], torch.Tensor],
        label_noise: LabelNoise | None = None,
        image_keys: Sequence[str] = IMAGE_KEYS,
        label_key: str = "cls",
    ) -> None:
        self.num_classes = num_classes
        self.transform = transform
        self.label_noise = label_noise
        self.image_keys = tuple(image_keys)
        self.label_key = label_key

    def check(self, raw: Sample) -> Sample:
        image = _field(raw, self.image_keys)
        text = _field(raw, (self.label_key,))
        try:
            label = int(text.decode().strip())
        except (UnicodeDecodeError, ValueError) as err:
            raise SkipSample("bad_label", repr(text[:20])) from err
        if not 0 <= label < self.num_classes:
            raise SkipSample("label_out_of_range", f"{label} not in [0, {self.num_classes})")
        observed, is_noisy = (label, False)
        if self.label_noise is not None:
            observed, is_noisy = self.label_noise(raw["__key__"], label)
        return {
            "__key__": raw["__key__"],
            "image": image,
            "label": observed,
            "clean_label": label,
            "is_noisy": is_noisy,
        }

    def per_shard(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        return iter(samples)

    def finish(self, sample: Sample) -> Sample:
        return set_image(sample, self.transform(decode_image(sample["image"])))


class ImageTextFormat:
    """img2dataset / open_clip shards: an image and a caption (``txt``); other files are ignored."""

    def __init__(
        self,
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        caption_noise: CaptionSwapNoise | None = None,
        image_keys: Sequence[str] = IMAGE_KEYS,
        text_key: str = "txt",
    ) -> None:
        self.transform = transform
        self.tokenizer = tokenizer
        self.caption_noise = caption_noise
        self.image_keys = tuple(image_keys)
        self.text_key = text_key

    def check(self, raw: Sample) -> Sample:
        image = _field(raw, self.image_keys)
        try:
            caption = _field(raw, (self.text_key,)).decode().strip()
        except UnicodeDecodeError as err:
            raise SkipSample("decode_error", f"{self.text_key} is not UTF-8") from err
        return {"__key__": raw["__key__"], "image": image, "txt": caption, "is_noisy": False}

    def per_shard(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        if self.caption_noise is None:
            return iter(samples)
        return self.caption_noise(samples)

    def finish(self, sample: Sample) -> Sample:
        set_image(sample, self.transform(decode_image(sample["image"])))
        sample["text"] = self.tokenizer([sample.pop("txt")])[0]
        sample.pop("clean_txt", None)
        return sample


def collate(samples: list[Sample]) -> dict[str, Any]:
    """Stack tensors and numbers; keep keys as a list of strings."""
    batch: dict[str, Any] = {"key": [s["__key__"] for s in samples]}
    for name, value in samples[0].items():
        if name == "__key__":
            continue
        if isinstance(value, torch.Tensor):
            batch[name] = stack_padded([s[name] for s in samples])
        elif isinstance(value, bool):
            batch[name] = torch.tensor([s[name] for s in samples], dtype=torch.bool)
        elif isinstance(value, int):
            batch[name] = torch.tensor([s[name] for s in samples], dtype=torch.long)
    return batch


def stack_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``; tensors whose last two sizes differ (the crops of
    :mod:`datamodules.device_augment`) are zero-padded at the bottom and right to the largest."""
    first = tensors[0]
    if all(t.shape == first.shape for t in tensors):
        return torch.stack(tensors)
    height = max(t.shape[-2] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    out = first.new_zeros(len(tensors), *first.shape[:-2], height, width)
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-2], : t.shape[-1]] = t
    return out
