"""``transform.normalize_on_device`` (and ``augment_on_device``): the loader hands uint8 training
images, the DataModule finishes the whole batch after Lightning moved it to the device. The
images, hence the run, are the same as with timm's per-sample transform, to the bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import train
from datamodules.classification import ClassificationDataModule
from datamodules.transforms import TransformConfig, TwoViewTransformConfig, normalize_uint8
from tests.conftest import keyed_draws
from tests.test_cli_pretrain_fs import quick_args


@pytest.mark.parametrize(
    "config",
    [
        TransformConfig(image_size=24, scale=(0.3, 1.0), color_jitter=0.4),
        TransformConfig(image_size=16, normalization="clip", auto_augment="rand-m9-mstd0.5"),
        TwoViewTransformConfig(image_size=16, strong_randaugment=True),
    ],
)
def test_uint8_images_normalised_as_a_batch_equal_timms_transform(config):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36, 3), np.uint8))
    light = config.build(True, uint8=True)
    for key in ("a", "b", "c"):
        with keyed_draws(0, key, "train"):
            expected = config.build(True)(image)
        with keyed_draws(0, key, "train"):
            images = light(image)
        assert images.dtype == torch.uint8
        got = normalize_uint8(images[None], *config.mean_std())[0]
        assert torch.equal(got, expected), key


@pytest.mark.parametrize("augment", [False, True])
def test_the_training_loader_alone_gives_uint8_and_evaluation_is_unchanged(builtin_root, augment):
    data = ClassificationDataModule(
        builtin="fashion_mnist",
        builtin_root=str(builtin_root),
        num_classes=10,
        batch_size=8,
        epoch_samples=16,
        num_workers=0,
        transform=TransformConfig(
            image_size=16,
            scale=(0.2, 1.0),
            color_jitter=0.0,
            normalize_on_device=True,
            augment_on_device=augment,
        ),
    )
    data.prepare_data()
    data.setup("fit")
    train_batch = next(iter(data.train_dataloader()))
    assert train_batch["image"].dtype == torch.uint8
    assert ("augment" in train_batch) == augment  # [h, w, flip] of each crop
    assert next(iter(data.val_dataloader()[0]))["image"].dtype == torch.float32
    moved = data.on_after_batch_transfer(dict(train_batch), 0)
    assert moved["image"].dtype == torch.float32 and moved["image"].shape == (8, 3, 16, 16)
    assert "augment" not in moved


def test_a_run_finished_on_the_device_ends_with_the_same_weights(builtin_root, tmp_path):
    """Per-sample timm, uint8 normalised per batch, and crop/flip/normalise per batch
    (``augment_on_device``, tests/test_device_augment.py): one run, three data paths."""
    weights = {}
    for mode, (normalize, augment) in {
        "per_sample": (False, False),
        "normalize": (True, False),
        "augment": (True, True),
    }.items():
        save_dir = tmp_path / mode
        train.main(
            [
                *quick_args(builtin_root, save_dir),
                "--data.init_args.epoch_samples=64",
                "--trainer.max_epochs=1",
                "--trainer.limit_val_batches=0",
                "--data.init_args.num_workers=0",
                f"--data.init_args.transform.normalize_on_device={str(normalize).lower()}",
                f"--data.init_args.transform.augment_on_device={str(augment).lower()}",
            ]
        )
        weights[mode] = load_file(str(save_dir / "export" / "model.safetensors"))
    for mode in ("normalize", "augment"):
        assert weights[mode].keys() == weights["per_sample"].keys()
        for name, tensor in weights["per_sample"].items():
            assert torch.equal(tensor, weights[mode][name]), (mode, name)
