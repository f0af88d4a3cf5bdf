"""The shard pipeline: determinism over workers/epochs/restarts, fixed epoch length, bad input."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from datamodules import shards as shards_module
from datamodules.base import auto_workers, usable_cpus
from datamodules.classification import ClassificationDataModule
from datamodules.formats import ClassificationFormat
from datamodules.noise import SymmetricLabelNoise
from datamodules.pipeline import SKIP_REASONS, DataQualityError, EpochLoader, ShardStream
from datamodules.shards import parse_shards
from datamodules.transforms import TransformConfig
from tests.conftest import classification_samples, keyed_draws, png_bytes, write_tar

NOISE = SymmetricLabelNoise(0.3, 10, seed=4)


def make_stream(spec: str, training: bool, **options) -> ShardStream:
    noise = options.pop("noise", NOISE)
    transform = TransformConfig(image_size=8, crop_pct=1.0).build(training)
    fmt = ClassificationFormat(10, transform, label_noise=noise)
    options.setdefault("batch_size", 4)
    options.setdefault("shuffle_buffer", 16)
    batch_size = options.pop("batch_size")
    return ShardStream(parse_shards(spec), fmt, batch_size, training=training, **options)


def run(stream: ShardStream, num_workers: int, epoch: int = 0) -> tuple[list, int, Counter]:
    """Samples as (key, label, clean, noisy), the batch count and skip counts of one pass."""
    samples, batches, skipped = [], 0, Counter()
    for batch in EpochLoader(stream, num_workers, epoch_source=lambda: epoch):
        batches += 1
        rows = zip(
            batch["key"], batch["label"], batch["clean_label"], batch["is_noisy"], strict=True
        )
        samples += [(k, int(y), int(c), bool(n)) for k, y, c, n in rows]
        skipped.update(dict(zip(SKIP_REASONS, batch["skipped"].tolist(), strict=True)))
    return samples, batches, +skipped


def test_noise_is_identical_across_workers_epochs_and_restarts(make_shards):
    spec = make_shards([25, 25, 25, 25])
    reference, _, _ = run(make_stream(spec, training=False), num_workers=0)
    assert len({key for key, *_ in reference}) == 100  # every sample exactly once
    noisy = {key: (label, flag) for key, label, _, flag in reference}
    assert 0 < sum(flag for _, flag in noisy.values()) < 100
    for workers in (0, 2):
        got, _, _ = run(make_stream(spec, training=False), num_workers=workers)
        assert sorted(got) == sorted(reference)
    epochs = {}
    for epoch in (0, 1):
        stream = make_stream(spec, training=True, batches_per_rank=25)
        epochs[epoch], batches, _ = run(stream, num_workers=2, epoch=epoch)
        assert batches == 25
        for key, label, _, flag in epochs[epoch]:
            assert noisy[key] == (label, flag)
    assert [s[0] for s in epochs[0]] != [s[0] for s in epochs[1]]  # the epoch hook reshuffles
    restarted, _, _ = run(make_stream(spec, training=True, batches_per_rank=25), 2, epoch=1)
    assert restarted == epochs[1]  # a resumed epoch replays the same order and labels


def test_every_rank_steps_the_same_number_of_full_batches(make_shards):
    spec = make_shards([3, 17, 5, 9, 1])  # odd count, unequal sizes
    for rank in (0, 1):
        stream = make_stream(spec, True, batches_per_rank=4, rank=rank, world_size=2)
        samples, batches, _ = run(stream, num_workers=2)
        assert batches == 4 and len(samples) == 16
    shards_of = {0: {0, 2, 4}, 1: {1, 3}}  # 5 shards over 2 ranks: rank r reads shards r::2
    for rank in (0, 1):
        urls = make_stream(spec, False, rank=rank, world_size=2).shard_urls(0, 1)
        assert {int(Path(u).stem[-4:]) for u in urls} == shards_of[rank]


def test_too_few_shards_for_the_readers_is_an_error_unless_resampling(make_shards):
    spec = make_shards([10, 10, 10])
    stream = make_stream(spec, True, batches_per_rank=3, rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"3 shards cannot feed 2 ranks x 2 workers"):
        EpochLoader(stream, num_workers=2)
    resampled = make_stream(spec, True, batches_per_rank=3, world_size=2, resample=True)
    _, batches, _ = run(resampled, num_workers=2)
    assert batches == 3


def bad_shards(folder: Path) -> str:
    """One good shard and one shard per kind of defect; returns the brace spec."""
    folder.mkdir()
    write_tar(folder / "s-0000.tar", classification_samples("good", 40))
    corrupt = classification_samples("corrupt", 3)
    corrupt[1]["png"] = png_bytes(1)[:40]  # truncated PNG
    write_tar(folder / "s-0001.tar", corrupt)
    no_label = [{"__key__": "nolabel", "png": png_bytes(2)}]
    bad_label = [{"__key__": "badlabel", "png": png_bytes(3), "cls": "cat"}]
    out_of_range = [{"__key__": "range", "png": png_bytes(4), "cls": "99"}]
    write_tar(folder / "s-0002.tar", no_label + bad_label + out_of_range)
    write_tar(folder / "s-0003.tar", classification_samples("good", 2))  # keys repeated
    path = write_tar(folder / "s-0004.tar", classification_samples("trunc", 20))
    path.write_bytes(path.read_bytes()[:5000])  # a tar cut mid-file
    return f"{folder}/s-{{0000..0004}}.tar"


def test_bad_samples_are_skipped_and_counted_per_reason(tmp_path):
    spec = bad_shards(tmp_path / "bad")
    samples, _, skipped = run(make_stream(spec, False, max_skip_fraction=0.5), num_workers=0)
    keys = {key for key, *_ in samples}
    survivors = sum(key.startswith("trunc") for key in keys)  # read before the cut
    half_sample = skipped.pop("missing_key") - 1  # 1 without cls, maybe 1 cut in half
    assert skipped == {
        "decode_error": 1,
        "bad_label": 1,
        "label_out_of_range": 1,
        "duplicate_key": 2,
        "read_error": 1,
    }
    assert half_sample in (0, 1) and 1 <= survivors < 20
    assert "corrupt-00001" not in keys and "corrupt-00000" in keys
    assert len(samples) == 40 + 2 + survivors


def test_too_many_skips_stop_the_run_naming_the_shards(tmp_path):
    spec = bad_shards(tmp_path / "bad")
    with pytest.raises(DataQualityError, match=r"s-0002\.tar .*max_skip_fraction"):
        run(make_stream(spec, False), num_workers=0)


def test_a_stream_of_nothing_but_skips_fails_fast(tmp_path):
    folder = tmp_path / "nolabels"
    folder.mkdir()
    samples = [{"__key__": f"k{i}", "png": png_bytes(i)} for i in range(300)]
    write_tar(folder / "x-0000.tar", samples)
    write_tar(folder / "x-0001.tar", samples[:10])
    stream = make_stream(f"{folder}/x-{{0000..0001}}.tar|310", True, batches_per_rank=10)
    with pytest.raises(DataQualityError, match=r"100 of 100 samples skipped .*x-0000\.tar"):
        run(stream, num_workers=0)


def test_a_key_split_across_two_tars_is_not_merged(tmp_path):
    folder = tmp_path / "split"
    folder.mkdir()
    write_tar(
        folder / "p-0000.tar",
        [*classification_samples("a", 5), {"__key__": "x", "png": png_bytes(9)}],
    )
    write_tar(
        folder / "p-0001.tar", [{"__key__": "x", "cls": "1"}, *classification_samples("b", 5)]
    )
    stream = make_stream(f"{folder}/p-{{0000..0001}}.tar", False, max_skip_fraction=0.5)
    samples, _, skipped = run(stream, 0)
    # the first half lacks its label; the second half repeats a key seen in another tar
    assert len(samples) == 10 and skipped == {"missing_key": 1, "duplicate_key": 1}


def test_batches_carry_the_documented_fields(make_shards):
    batch = next(iter(EpochLoader(make_stream(make_shards([8]), False), 0)))
    assert set(batch) == {"key", "image", "label", "clean_label", "is_noisy", "skipped"}
    assert batch["image"].shape == (4, 3, 8, 8) and batch["is_noisy"].dtype == torch.bool


def test_truncated_tar_is_a_valid_tar_prefix(tmp_path):
    """Guard for the fixture above: the cut file really is an unreadable tar tail."""
    spec = bad_shards(tmp_path / "bad")
    with (
        pytest.raises((tarfile.TarError, OSError, EOFError)),
        tarfile.open(spec.split("{")[0] + "0004.tar") as tar,
    ):
        for member in tar:
            tar.extractfile(member).read()


@pytest.mark.parametrize("rank_world", [(0, 1), (0, 2), (1, 2)])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_gives_the_rest_of_the_uninterrupted_epoch(
    make_shards, rank_world, workers
):
    """Resumed k batches into an epoch, a rank's loader yields the uninterrupted epoch's batches
    from the (k+1)-th on, the same augmented images (crop and flip draws depend on the seed,
    epoch and key alone) and labels, and its first batches count the left-out samples' noise."""
    rank, world = rank_world
    spec = make_shards([16] * 8)
    options = {"batches_per_rank": 6, "rank": rank, "world_size": world, "seed": 3}

    def batches(trained: int) -> list[dict]:
        stream = make_stream(spec, training=True, **options)
        loader = EpochLoader(
            stream, workers, epoch_source=lambda: 1, trained_source=lambda: trained
        )
        return list(loader)

    full = batches(0)
    assert len(full) == 6 and not any("trained_before_resume" in b for b in full)
    for trained in (1, 4):
        resumed = batches(trained)
        assert [b["key"] for b in resumed] == [b["key"] for b in full[trained:]]
        for ours, theirs in zip(resumed, full[trained:], strict=True):
            assert torch.equal(ours["image"], theirs["image"])
            assert torch.equal(ours["label"], theirs["label"])
        left_out = sum(
            (b["trained_before_resume"] for b in resumed if "trained_before_resume" in b),
            torch.zeros(2, dtype=torch.long),
        )
        noisy_before = sum(int(b["is_noisy"].sum()) for b in full[:trained])
        assert left_out.tolist() == [noisy_before, 4 * trained]  # batch_size 4


def test_augmentation_draws_do_not_depend_on_the_other_samples(make_shards):
    """Same seed, epoch and key: the same crop and flip, whatever was transformed before."""
    spec = make_shards([16, 16])
    images = {}
    for workers in (0, 2):
        stream = make_stream(spec, training=True, batches_per_rank=8)
        for batch in EpochLoader(stream, workers, epoch_source=lambda: 0):
            for key, image in zip(batch["key"], batch["image"], strict=True):
                assert key not in images or torch.equal(images[key], image), key
                images[key] = image
    assert len(images) == 32


@pytest.mark.parametrize("rank_world", [(0, 1), (1, 2)])
@pytest.mark.parametrize("workers", [0, 2])
def test_an_evaluation_loader_knows_its_batches_from_the_recorded_sizes(
    make_shards, rank_world, workers
):
    """With the shards' sizes recorded (webdataset's sizes.json here), validation progress
    bars get a total: exactly the batches the pass gives; without them, no length."""
    spec = make_shards([9, 7, 5, 3, 6])
    rank, world = rank_world
    unknown = EpochLoader(make_stream(spec, training=False, rank=rank, world_size=world), workers)
    with pytest.raises(TypeError, match="record no sample counts"):
        len(unknown)
    folder = Path(spec.split("/train-")[0])
    sizes = {f"train-{i:04d}.tar": n for i, n in enumerate([9, 7, 5, 3, 6])}
    (folder / "sizes.json").write_text(json.dumps(sizes))
    shards_module._metadata_lengths.cache_clear()
    loader = EpochLoader(make_stream(spec, training=False, rank=rank, world_size=world), workers)
    assert len(loader) == len(list(loader))


def test_keyed_draws_restore_the_main_process_generators_and_match_without_restoring():
    """In the main process the global generators are given back; a worker skips that (it is
    the costly part) and draws the same numbers."""
    import random

    import numpy as np

    def draws() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    before = draws()
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    with keyed_draws(0, "key", "augment/0"):
        restored = draws()
    assert draws() == before  # as if the block had not run
    with keyed_draws(0, "key", "augment/0", restore=False):
        unrestored = draws()
    assert unrestored == restored != before


def test_a_main_process_pass_leaves_the_training_generators_as_workers_would(make_shards):
    """With no workers the samples draw from keyed seeds in the training process; their
    generators are put aside once a batch and given back at collation, so the draws between
    batches (a training step's dropout, say) are those of a run whose workers load the data."""
    import random

    import numpy as np

    def draws_between_batches(workers: int) -> list[tuple[float, float, float]]:
        random.seed(3)
        np.random.seed(3)
        torch.manual_seed(3)
        stream = make_stream(make_shards([10, 7]), training=True, batches_per_rank=4)
        draws = []
        for _ in EpochLoader(stream, workers, epoch_source=lambda: 0):
            draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
        return draws

    assert draws_between_batches(0) == draws_between_batches(2)


@pytest.mark.parametrize(
    ("cpus", "node_ranks", "world_size", "train_shards", "workers"),
    [
        (2, 1, 1, None, 0),  # a laptop-size machine: the main process reads fastest
        (3, 1, 1, None, 2),
        (16, 1, 1, None, 15),
        (16, 2, 2, 8, 4),  # no more readers than shards
        (128, 8, 16, 1024, 15),  # 2 nodes of 8 GPUs and 128 CPUs
        (4, 4, 4, 64, 0),  # one CPU per rank
    ],
)
def test_auto_workers_follow_the_cpus_the_ranks_and_the_shards(
    cpus, node_ranks, world_size, train_shards, workers
):
    assert auto_workers(cpus, node_ranks, world_size, train_shards) == workers


def test_a_data_module_resolves_auto_workers_at_setup(make_shards):
    data = ClassificationDataModule(
        num_classes=10, train_shards=make_shards([10, 10, 10]), batch_size=4, num_workers="auto"
    )
    data.setup("fit")
    assert data.loader_workers == auto_workers(usable_cpus(), 1, 1, 3)
    assert data.train_dataloader().num_workers == data.loader_workers
