"""Shard specs: brace expansion, sources, counts from metadata, command URLs, missing files."""

from __future__ import annotations

import json

import pytest

from datamodules.shards import ShardSpecError, count_tar_samples, parse_shards
from tests.conftest import classification_samples, write_tar


def test_braces_sources_and_inline_counts(make_shards):
    first = make_shards([3, 4, 5], name="a")
    second = make_shards([2], name="b")
    spec = parse_shards(f"{first}|12::{second}")
    assert len(spec.sources) == 2
    assert [len(s.urls) for s in spec.sources] == [3, 1]
    assert spec.sources[0].num_samples == 12  # given inline
    assert spec.sources[1].num_samples == 2  # scanned from the tar
    assert spec.num_samples == 14


def test_counts_from_timm_info_json(make_shards, tmp_path):
    spec = make_shards([3, 4])
    info = {
        "splits": {
            "train": {
                "name": "train",
                "filenames": ["train-0000.tar", "train-0001.tar"],
                "shard_lengths": [30, 40],
                "num_samples": 70,
            }
        }
    }
    (tmp_path / "train" / "_info.json").write_text(json.dumps(info))
    assert parse_shards(spec).num_samples == 70  # metadata wins over scanning


def test_counts_from_sizes_json_and_img2dataset_stats(tmp_path):
    write_tar(tmp_path / "00000.tar", classification_samples("x", 3))
    write_tar(tmp_path / "00001.tar", classification_samples("y", 3))
    (tmp_path / "00001_stats.json").write_text(json.dumps({"successes": 9}))
    assert parse_shards(f"{tmp_path}/{{00000..00001}}.tar").num_samples == 3 + 9
    other = tmp_path / "wds"
    other.mkdir()
    write_tar(other / "00000.tar", classification_samples("z", 3))
    (other / "sizes.json").write_text(json.dumps({"00000.tar": 5}))
    assert parse_shards(f"{other}/00000.tar").num_samples == 5


def test_count_tar_samples_groups_files_by_key(tmp_path):
    path = write_tar(tmp_path / "t.tar", classification_samples("k", 7))
    assert count_tar_samples(path) == 7
    (tmp_path / "broken.tar").write_bytes(b"not a tar at all")
    assert count_tar_samples(tmp_path / "broken.tar") is None


@pytest.mark.parametrize(
    "url", ["pipe:cat /tmp/x.tar", "https://example.com/x.tar", "s3://b/x.tar"]
)
def test_command_urls_are_refused_unless_allowed(url):
    with pytest.raises(ShardSpecError, match="allow_shard_commands"):
        parse_shards(url)
    spec = parse_shards(url, allow_commands=True)
    assert spec.urls == [url] and spec.num_samples is None


def test_missing_shards_are_named(make_shards, tmp_path):
    spec = make_shards([2, 2])
    with pytest.raises(ShardSpecError, match=r"1 of 3 shards not found: .*train-0002\.tar"):
        parse_shards(spec.replace("0001}", "0002}"))


def test_bad_counts_and_weights_are_explained(make_shards):
    spec = make_shards([2])
    with pytest.raises(ShardSpecError, match="must be an integer"):
        parse_shards(f"{spec}|many")
    with pytest.raises(ShardSpecError, match="one weight per"):
        parse_shards(spec, weights=[1.0, 2.0])
    with pytest.raises(ShardSpecError, match="empty"):
        parse_shards("  ")


def test_one_shard_feeds_a_cached_feature_run_but_not_a_streamed_one(make_shards):
    """Training shards that a model only extracts features from are read once, like an
    evaluation set: one shard is enough for two workers. A streamed training run refuses it."""
    from datamodules.classification import ClassificationDataModule

    data = ClassificationDataModule(
        train_shards=make_shards([40]), num_classes=10, batch_size=8, num_workers=2
    )
    data.check_before_training("fit", world_size=1, streams_training=False)
    with pytest.raises(ShardSpecError, match="1 shards cannot feed 1 ranks x 2 workers"):
        data.check_before_training("fit", world_size=1, streams_training=True)
