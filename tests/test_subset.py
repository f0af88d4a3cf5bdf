"""Subsets: of the training data (fraction, k shots per class: exact, nested, keyed by the
seed) and of the classes an evaluation set is scored on."""

from __future__ import annotations

import pytest
import torch

from datamodules.classification import ClassificationDataModule, read_class_subset
from datamodules.embeddings import EmbeddingDataModule
from datamodules.errors import ConfigError
from datamodules.subset import TrainingSubset
from lightning_modules.adapt import Adaptation
from lightning_modules.backbones import BackboneConfig

KEYS = [f"sample-{i:04d}" for i in range(1000)]
LABELS = [i % 10 for i in range(1000)]


def test_fractions_keep_floor_of_each_class_and_are_nested() -> None:
    """Per class, as the official sample_num_shot: int(len(class) * ratio) of each."""
    labels = LABELS[:-5] + [0] * 5  # class 0 has 105 samples, classes 5-9 have 99
    kept = {f: set(TrainingSubset(fraction=f).select(KEYS, labels)) for f in (0.05, 0.1, 0.5)}
    counts = torch.bincount(torch.tensor([labels[i] for i in kept[0.1]])).tolist()
    assert counts == [10] * 5 + [9] * 5  # int(10.5), int(10.0) and int(9.9)
    assert [len(kept[f]) for f in (0.05, 0.5)] == [5 * 5 + 4 * 5, 52 + 4 * 50 + 5 * 49]
    assert kept[0.05] < kept[0.1] < kept[0.5]


def test_subsets_follow_keys_and_seed_not_row_order() -> None:
    order = list(reversed(range(1000)))
    subset = TrainingSubset(fraction=0.1, seed=3)
    straight = {KEYS[i] for i in subset.select(KEYS, LABELS)}
    reversed_keys = [KEYS[i] for i in order]
    shuffled = {reversed_keys[i] for i in subset.select(reversed_keys, [LABELS[i] for i in order])}
    assert straight == shuffled
    other_seed = {KEYS[i] for i in TrainingSubset(fraction=0.1, seed=4).select(KEYS, LABELS)}
    assert other_seed != straight


def test_shots_per_class_are_k_per_class_nested_and_whole_small_classes() -> None:
    labels = LABELS[:-97] + [10] * 97  # class 10 has 97 samples, the others about 90
    labels[:3] = [11, 11, 11]  # class 11 has 3
    four = TrainingSubset(shots_per_class=4).select(KEYS, labels)
    eight = TrainingSubset(shots_per_class=8).select(KEYS, labels)
    counts = torch.bincount(torch.tensor([labels[i] for i in four]))
    assert counts.tolist() == [4] * 11 + [3]
    assert set(four) < set(eight) and four == sorted(four)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fraction": 0.0}, r"train_fraction must be in \(0, 1\]"),
        ({"fraction": 1.5}, r"train_fraction must be in \(0, 1\]"),
        ({"shots_per_class": 0}, "shots_per_class must be a positive integer"),
        ({"fraction": 0.5, "shots_per_class": 4}, "set one"),
    ],
)
def test_bad_subset_options_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainingSubset(**options)


def test_embeddings_train_on_the_subset_and_record_it(tmp_path) -> None:
    features = torch.randn(200, 6)
    torch.save({"features": features, "labels": torch.arange(200) % 4}, tmp_path / "train.pt")
    data = EmbeddingDataModule(
        train=str(tmp_path / "train.pt"), num_classes=4, shots_per_class=5, batch_size=4
    )
    data.setup("fit")
    rows = [row for batch in data.train_dataloader() for row in batch["clean_label"].tolist()]
    assert sorted(rows) == sorted([0, 1, 2, 3] * 5)
    assert data.subset_info == {"train_fraction": 1.0, "shots_per_class": 5, "kept": 20, "of": 200}


def test_class_subsets_come_from_lists_or_files_and_name_real_sets(make_shards, tmp_path) -> None:
    spec = make_shards([80])
    (tmp_path / "a.json").write_text("[1, 4, 6]")
    (tmp_path / "r.txt").write_text("2\n3\n")
    data = ClassificationDataModule(
        num_classes=10,
        train_shards=spec,
        test_shards={"in1k_a": spec, "in1k_r": spec, "in1k_v2": spec},
        class_subsets={"in1k_a": str(tmp_path / "a.json"), "in1k_r": str(tmp_path / "r.txt")},
    )
    data.setup("fit")
    assert data.class_subsets == {"in1k_a": [1, 4, 6], "in1k_r": [2, 3]}
    typo = ClassificationDataModule(
        num_classes=10, train_shards=spec, test_shards={"in1k_a": spec}, class_subsets={"a": [1, 2]}
    )
    with pytest.raises(ConfigError, match=r"names \['a'\], which are not evaluation sets"):
        typo.setup("fit")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 10], r"indices span \[1, 10\] but num_classes is 10"),
        ([3, 3], "at least two distinct"),
        ("missing.json", "class subset file not found"),
    ],
)
def test_bad_class_subsets_are_config_errors(value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        read_class_subset(value, 10, "data.class_subsets.in1k_a")


def test_whole_set_options_stop_a_streamed_run_before_training() -> None:
    """Exact-count noise, like the subsets, needs every training key at once: a run that
    streams its training images (FT, LoRA, cache_features: false) is refused, in one line."""
    data = ClassificationDataModule(
        num_classes=10, label_noise="symmetric", noise_ratio=0.2, noise_exact_count=True
    )
    with pytest.raises(ConfigError, match="noise_exact_count counts over the whole training set"):
        data.check_before_training("fit", world_size=1, streams_training=True)


def test_predict_on_embeddings_names_the_mistake() -> None:
    module = Adaptation("lp", 4, BackboneConfig())
    with pytest.raises(ConfigError, match="these data are embeddings already"):
        module.predict_step({"features": torch.zeros(2, 3)}, 0)
