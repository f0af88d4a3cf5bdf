"""timm's random-resized crop and flip, with the resize moved from the loader to whole batches on
the training device, bit-identical to the per-sample PIL path.

The loader still draws each sample's crop box and flip with timm's and torchvision's own code,
under the sample's keyed seed, so the draws are those of the per-sample path; it then only cuts
the box out of the decoded image (a copy, no resampling). The resize, the part that costs, runs
on the batch: PIL's two-pass resampling written as two batched matrix products whose
coefficients are PIL's own fixed-point integers, in float64, where every sum is an exact integer.
The result equals ``PIL.Image.resize`` to the bit (``tests/test_device_augment.py``), so a run
trains on the same pixels either way.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T

PRECISION_BITS = 22  # PIL's fixed-point coefficients for 8-bit images (Resample.c)
FILTER_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


class PendingAugmentation(NamedTuple):
    """One sample's crop (uint8, ``(C, h, w)``) and ``[h, w, flip]``, finished on the batch."""

    crop: torch.Tensor
    params: torch.Tensor


class CropSampler:
    """The loader's part: timm's crop box and torchvision's flip, drawn as the per-sample
    transform draws them (the same generators, in the same order), and the box cut out."""

    def __init__(
        self, crop: RandomResizedCropAndInterpolation, flip: T.RandomHorizontalFlip | None
    ):
        self.crop = crop
        self.flip_p = 0.0 if flip is None else float(flip.p)

    def __call__(self, image: Image.Image) -> PendingAugmentation:
        top, left, height, width = self.crop.get_params(image, self.crop.scale, self.crop.ratio)
        flip = self.flip_p > 0 and bool(torch.rand(1) < self.flip_p)
        box = image.crop((left, top, left + width, top + height))
        crop = torch.from_numpy(np.array(box)).permute(2, 0, 1)
        return PendingAugmentation(
            crop, torch.tensor([height, width, int(flip)], dtype=torch.int32)
        )


def pil_resample_weights(
    in_sizes: torch.Tensor, out_size: int, padded_size: int, interpolation: str
) -> torch.Tensor:
    """:func:`pil_coefficients` for each input length, zero-padded to ``padded_size`` columns:
    ``(len(in_sizes), out_size, padded_size)``, float64 on the CPU."""
    sizes = in_sizes.to("cpu", torch.int64)
    weights = torch.zeros(len(sizes), out_size, padded_size, dtype=torch.float64)
    for size in sizes.unique().tolist():
        weights[sizes == size, :, :size] = pil_coefficients(size, out_size, interpolation)
    return weights


@functools.lru_cache(maxsize=4096)
def pil_coefficients(in_size: int, out_size: int, interpolation: str) -> torch.Tensor:
    """Pillow's fixed-point resampling coefficients from ``in_size`` to ``out_size`` pixels, an
    ``(out_size, in_size)`` float64 matrix of integers (cached: treat it as read-only).

    For output pixel ``o``: ``scale = in / out``, ``f = max(scale, 1)``, ``center = (o + 0.5)
    scale``, support ``s = support(filter) f``; taps ``j`` with ``trunc(center - s + 0.5) <= j <
    trunc(center + s + 0.5)`` (clipped to ``[0, in)``) weigh ``filter((j - center + 0.5) / f)``,
    normalised to sum 1 and rounded half away from zero to ``k * 2**22`` (``precompute_coeffs``
    and ``normalize_coeffs_8bpc`` of Pillow's Resample.c). The sums run left to right on the
    CPU, as Pillow's loop adds them.
    """
    if interpolation not in FILTER_SUPPORT:
        raise ValueError(f"interpolation {interpolation!r}: use one of {sorted(FILTER_SUPPORT)}")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = FILTER_SUPPORT[interpolation] * filterscale
    center = (torch.arange(out_size, dtype=torch.float64).view(-1, 1) + 0.5) * scale
    low = torch.trunc(center - support + 0.5).clamp(min=0)
    high = torch.trunc(center + support + 0.5).clamp(max=in_size)
    taps = torch.arange(in_size, dtype=torch.float64).view(1, -1)
    weights = _filter((taps - center + 0.5) / filterscale, interpolation)
    weights = torch.where((taps >= low) & (taps < high), weights, 0.0)
    total = weights.cumsum(-1)[..., -1:]  # left to right, as Pillow's loop adds them
    weights = torch.where(total != 0, weights / total, weights)
    fixed = weights * (1 << PRECISION_BITS)
    return torch.where(fixed < 0, torch.trunc(fixed - 0.5), torch.trunc(fixed + 0.5))


def _filter(x: torch.Tensor, interpolation: str) -> torch.Tensor:
    """Pillow's filters: bilinear ``1 - |x|``; bicubic Keys with ``a = -0.5``."""
    x = x.abs()
    if interpolation == "bilinear":
        return (1.0 - x).clamp(min=0.0)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, 0.0))


def _fixed_point_round(sums: torch.Tensor) -> torch.Tensor:
    """``clip8``, in place: ``floor((sum + 2**21) / 2**22)`` clipped to ``[0, 255]`` (the
    product by ``2**-22`` is exact)."""
    sums.add_(1 << (PRECISION_BITS - 1)).mul_(2.0**-PRECISION_BITS).floor_()
    return sums.clamp_(0, 255)


def resized_crops(
    crops: torch.Tensor, params: torch.Tensor, size: int, interpolation: str, chunk: int = 32
) -> torch.Tensor:
    """Resize each zero-padded uint8 crop ``crops[b, :, :h_b, :w_b]`` to ``size x size`` and flip
    it where ``flip_b``, as Pillow 13 does: two passes, each rounded to 8 bits (``clip8``),
    ``rows = clip8(img Kx^T)`` then ``clip8(Ky rows)``, except that the vertical pass goes first
    when the height shrinks by more than twice as many pixels as the width (Resample.c's
    ``horizontal_first``). ``Kx``, ``Ky`` come from :func:`pil_resample_weights`, ``Kx``'s rows
    reversed for a flip. Returns float32 values in ``[0, 255]`` on ``crops``' device; ``chunk``
    samples at a time bound the float64 memory."""
    heights, widths, flips = params.to("cpu", torch.int64).unbind(1)
    padded_h, padded_w = crops.shape[-2:]
    kx = pil_resample_weights(widths, size, padded_w, interpolation)
    kx = torch.where(flips.bool().view(-1, 1, 1), kx.flip(1), kx)
    ky = pil_resample_weights(heights, size, padded_h, interpolation)
    shrink_h, shrink_w = heights - size, widths - size
    vertical_first = (shrink_h > 0) & (shrink_h > 2 * shrink_w)
    out = torch.empty(crops.shape[0], crops.shape[1], size, size, device=crops.device)
    for order in (False, True):
        chosen = torch.nonzero(vertical_first == order).flatten()
        for part in chosen.split(chunk):
            images = crops[part.to(crops.device)].to(torch.float64)
            out[part.to(crops.device)] = _two_passes(
                images, kx[part].to(images), ky[part].to(images), order
            ).float()
    return out


def _two_passes(
    images: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, vertical_first: bool
) -> torch.Tensor:
    kx_t, ky = kx.transpose(1, 2).unsqueeze(1), ky.unsqueeze(1)  # broadcast over channels
    if vertical_first:
        return _fixed_point_round(_fixed_point_round(ky @ images) @ kx_t)
    return _fixed_point_round(ky @ _fixed_point_round(images @ kx_t))


def device_crop_sampler(transform: T.Compose) -> CropSampler:
    """The loader's part of timm's training transform, whose batch-wise rest is
    :func:`resized_crops` to the transform's size with its filter; a step this path cannot
    reproduce is a ``ValueError`` that names it."""
    crop, *rest = transform.transforms
    if not isinstance(crop, RandomResizedCropAndInterpolation):
        raise ValueError(f"the first step is {type(crop).__name__}, not timm's random crop")
    if isinstance(crop.interpolation, (list, tuple)):
        raise ValueError("interpolation 'random' draws a filter per sample")
    interpolation = crop.interpolation.value
    if interpolation not in FILTER_SUPPORT:
        raise ValueError(f"interpolation {interpolation!r} has no batch-wise version")
    flip = rest.pop(0) if rest and isinstance(rest[0], T.RandomHorizontalFlip) else None
    for step in rest:
        if isinstance(step, T.ColorJitter) and _is_identity(step):
            continue  # timm adds it with color_jitter 0; its random order changes no pixel
        if type(step).__name__ in ("ToTensor", "MaybeToTensor", "Normalize", "PILToTensor"):
            continue
        raise ValueError(f"timm's {type(step).__name__} step has no batch-wise version")
    height, width = crop.size
    if height != width:
        raise ValueError(f"a square output size is needed, got {crop.size}")
    return CropSampler(crop, flip)


def _is_identity(jitter: T.ColorJitter) -> bool:
    return all(
        getattr(jitter, name) is None for name in ("brightness", "contrast", "saturation", "hue")
    )
