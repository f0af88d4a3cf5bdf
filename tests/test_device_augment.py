"""``transform.augment_on_device``: the loader draws timm's crop box and flip and cuts the box
out; the batch is resized and flipped on the device as Pillow does it, to the bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.device_augment import resized_crops
from datamodules.errors import ConfigError
from datamodules.formats import stack_padded
from datamodules.transforms import TransformConfig, TwoViewTransformConfig, normalize_uint8
from tests.conftest import keyed_draws

FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


@pytest.mark.parametrize("interpolation", sorted(FILTERS))
def test_batched_resize_equals_pillow_to_the_bit(interpolation):
    """Up- and down-scaling, flips, and crops tall enough for Pillow 13's vertical-first order."""
    rng = np.random.default_rng(0)
    for _ in range(25):
        size = int(rng.integers(8, 48))
        crops, params, expected = [], [], []
        for _ in range(4):
            height, width = int(rng.integers(3, 120)), int(rng.integers(3, 120))
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            flip = int(rng.integers(0, 2))
            resized = Image.fromarray(pixels).resize((size, size), FILTERS[interpolation])
            if flip:
                resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            expected.append(torch.from_numpy(np.array(resized)).permute(2, 0, 1))
            crops.append(torch.from_numpy(pixels).permute(2, 0, 1))
            params.append([height, width, flip])
        got = resized_crops(stack_padded(crops), torch.tensor(params), size, interpolation, chunk=3)
        assert torch.equal(got, torch.stack(expected).float()), params


@pytest.mark.parametrize(
    "config",
    [
        TransformConfig(image_size=24, scale=(0.3, 1.0), color_jitter=0.0),
        TransformConfig(
            image_size=32, color_jitter=0.0, interpolation="bilinear", normalization="clip"
        ),
        TransformConfig(image_size=20, color_jitter=0.0, hflip=0.0),
    ],
)
def test_a_batch_augmented_on_the_device_equals_timms_per_sample_transform(config):
    on_device = TransformConfig(**{**config.__dict__, "augment_on_device": True})
    sampler = on_device.build(True, uint8=True)
    rng = np.random.default_rng(1)
    crops, params, expected = [], [], []
    for key in range(10):
        shape = (int(rng.integers(10, 80)), int(rng.integers(10, 80)), 3)
        image = Image.fromarray(rng.integers(0, 255, shape, np.uint8))
        with keyed_draws(0, str(key), "train"):
            expected.append(config.build(True)(image))
        with keyed_draws(0, str(key), "train"):
            crop, param = sampler(image)
        crops.append(crop)
        params.append(param)
    size, interpolation = config.image_size, config.interpolation
    resized = resized_crops(stack_padded(crops), torch.stack(params), size, interpolation)
    assert torch.equal(normalize_uint8(resized, *config.mean_std()), torch.stack(expected))


@pytest.mark.parametrize(
    "options, step",
    [
        ({"color_jitter": 0.4}, "ColorJitter"),
        ({"color_jitter": 0.0, "auto_augment": "rand-m9-mstd0.5"}, "RandAugment"),
        ({"color_jitter": 0.0, "interpolation": "random"}, "'random'"),
        ({"color_jitter": 0.0, "interpolation": "lanczos"}, "'lanczos'"),
    ],
)
def test_what_cannot_run_batch_wise_is_refused_by_name(options, step):
    with pytest.raises(ConfigError, match=f"augment_on_device: .*{step}"):
        TransformConfig(augment_on_device=True, **options)


def test_two_fresh_views_stay_in_the_loader():
    config = TransformConfig(color_jitter=0.0, augment_on_device=True)
    with pytest.raises(ConfigError, match="two fresh views"):
        TwoViewTransformConfig.of(config, strong_randaugment=False)
