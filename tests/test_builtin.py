"""Built-in Fashion-MNIST shards: written from real idx files, both layouts, clear errors."""

from __future__ import annotations

import json

import pytest

from datamodules.builtin import BuiltinDataError, prepare_fashion_mnist
from datamodules.classification import ClassificationDataModule
from datamodules.image_text import ImageTextDataModule
from datamodules.shards import parse_shards
from datamodules.transforms import TransformConfig

TINY = TransformConfig(image_size=28, crop_pct=1.0)


def test_both_layouts_with_splits_and_counts(builtin_root):
    specs = prepare_fashion_mnist(builtin_root)  # already written: returns at once
    for layout in ("classification", "image_text"):
        counts = {split: parse_shards(spec).num_samples for split, spec in specs[layout].items()}
        assert counts == {"train": 500, "val": 100, "test": 120}
    info = json.loads(
        (builtin_root / "fashion_mnist" / "classification" / "_info.json").read_text()
    )
    assert info["num_classes"] == 10 and info["class_names"][9] == "ankle boot"


def test_datamodules_read_real_images_with_labels_and_captions(builtin_root):
    data = ClassificationDataModule(
        num_classes=10,
        builtin="fashion_mnist",
        builtin_root=str(builtin_root),
        batch_size=50,
        num_workers=0,
        transform=TINY,
    )
    data.setup("fit")
    batch = next(iter(data.val_dataloader()[0]))
    assert batch["image"].shape == (50, 3, 28, 28) and batch["image"].std() > 0.1
    assert set(batch["label"].tolist()) <= set(range(10)) and len(set(batch["label"].tolist())) > 3
    text = ImageTextDataModule(
        builtin="fashion_mnist",
        builtin_root=str(builtin_root),
        batch_size=8,
        num_workers=0,
        transform=TINY,
        context_length=16,
    )
    text.setup("fit")
    batch = next(iter(text.train_dataloader()))
    assert batch["text"].shape == (8, 16) and (batch["text"] != 0).sum(1).min() > 4


def test_missing_raw_files_say_how_to_install_them(tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    with pytest.raises(BuiltinDataError, match="apt-get install -y dataset-fashion-mnist"):
        prepare_fashion_mnist(tmp_path / "out", source=str(tmp_path / "nowhere"))


def test_environment_variable_points_at_other_idx_files(tiny_fashion_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tiny_fashion_mnist))
    specs = prepare_fashion_mnist(tmp_path / "env", samples_per_shard=1000)
    assert parse_shards(specs["classification"]["test"]).num_samples == 120
