"""The frozen-backbone feature cache as its own component: extract once per rank, reuse, serve."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from datamodules.classification import ClassificationDataModule
from datamodules.features import FeatureRows, ImageSource
from lightning_modules.feature_cache import FeatureCache


class Doubler(nn.Module):
    """A 'backbone' whose features are twice its (B, 2) inputs; its identity names it."""

    dim = 2

    def __init__(self, name: str = "double") -> None:
        super().__init__()
        self.identity = {"name": name}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 2 * images


class FakeData:
    """Four training and two validation rows split over ``world`` ranks; counts every read."""

    def __init__(self, rank: int, world: int, shards: str = "a") -> None:
        self.rank, self.world, self.shards = rank, world, shards
        self.reads = 0
        self.served: tuple | None = None

    def _source(self, split: str, rows: range) -> ImageSource:
        def batches() -> list[dict]:
            self.reads += 1
            mine = [r for r in rows if r % self.world == self.rank]
            return [
                {
                    "image": torch.tensor([[float(r), -float(r)] for r in mine]),
                    "key": [f"{split}-{r}" for r in mine],
                    "clean_label": torch.tensor([r % 2 for r in mine]),
                }
            ]

        return ImageSource(split, split, {"shards": f"{self.shards}-{split}"}, batches, split)

    def frozen_sources(self, stage: str) -> list[ImageSource]:
        return [self._source("train", range(4)), self._source("val", range(10, 12))]

    def serve_features(self, train_views, evaluation, two_views) -> None:
        self.served = (train_views, evaluation, two_views)


def attach(
    cache: FeatureCache,
    data: FakeData,
    backbone: nn.Module | None = None,
    barrier: Callable[[], object] = lambda: None,
) -> None:
    cache.attach(
        data,
        backbone or Doubler(),
        "fit",
        device=torch.device("cpu"),
        rank=data.rank,
        world=data.world,
        barrier=barrier,
    )


def test_each_rank_extracts_its_share_and_trains_on_every_rank_rows(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    ranks = [FakeData(0, 2), FakeData(1, 2)]
    barrier = threading.Barrier(2, timeout=60)  # each rank reads the others' parts after it
    threads = [threading.Thread(target=attach, args=(cache, d, None, barrier.wait)) for d in ranks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for data in ranks:
        train_views, evaluation, _ = data.served
        (train,) = train_views
        assert sorted(train.keys) == ["train-0", "train-1", "train-2", "train-3"]
        assert torch.equal(train.features[train.keys.index("train-3")], torch.tensor([6.0, -6.0]))
        assert evaluation["val"]["val"].keys == [f"val-{10 + data.rank}"]  # its own share only
        assert data.reads == 2


def test_a_second_run_reads_the_cache_and_a_new_backbone_or_data_does_not(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    attach(cache, FakeData(0, 1))
    again = FakeData(0, 1)
    attach(cache, again)
    assert again.reads == 0 and isinstance(again.served[0][0], FeatureRows)
    other_backbone = FakeData(0, 1)
    attach(cache, other_backbone, Doubler("another"))
    other_shards = FakeData(0, 1, shards="b")
    attach(cache, other_shards)
    assert other_backbone.reads == 2 and other_shards.reads == 2
    assert len(list(tmp_path.iterdir())) == 6  # (3 keys) x (train, val)


def test_a_datamodule_names_its_sets_in_words_with_exact_batch_totals(make_shards) -> None:
    """What the progress bars show: the set in the user's words, and the batch count when one
    process reads every shard (so the bar has a total and an ETA)."""
    spec = make_shards([30, 11, 25])
    data = ClassificationDataModule(
        num_classes=10,
        train_shards=f"{spec}|66",
        val_shards={"held_out": spec},
        batch_size=8,
        eval_batch_size=16,
        train_views=2,
    )
    data.setup("fit")
    sources = data.frozen_sources("fit")
    assert [s.description for s in sources] == [
        "embedding the training set, augmented view 1 of 2",
        "embedding the training set, augmented view 2 of 2",
        "embedding the val set 'held_out'",
    ]
    assert [s.total_batches for s in sources] == [5, 5, 5]  # ceil(66 / 16)
    assert sum(len(batch["key"]) for batch in sources[2].batches()) == 66
