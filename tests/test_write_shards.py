"""Tests for scripts/write_shards.py: real image files in, shards read back by the pipeline."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image
from webdataset.shardlists import expand_urls

from datamodules.formats import ClassificationFormat, ImageTextFormat
from datamodules.pipeline import ShardStream, SkipLedger, read_shard
from datamodules.shards import parse_shards
from datamodules.transforms import TransformConfig
from datamodules.writer import write_split
from scripts.write_shards import csv_samples, folder_samples, main

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "write_shards.py"
IMAGE_SIZE = 16


def save_image(path: Path, seed: int, fmt: str) -> np.ndarray:
    """A small random RGB image saved in ``fmt``; returns its pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return pixels


def corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4)


@pytest.fixture()
def image_folder(tmp_path: Path) -> tuple[Path, dict[str, int], dict[str, np.ndarray]]:
    """ROOT/<class>/<files>: 7 good images (jpg, jpeg, png, webp, bmp, nested, dotted name), a
    corrupt .jpg, a .txt and an empty class. Returns root, key -> label, key -> pixels
    of the lossless images."""
    root = tmp_path / "images"
    files = [  # (path, format, expected key)
        ("cat/a.jpg", "JPEG", "cat/a"),
        ("cat/b.png", "PNG", "cat/b"),
        ("cat/c.jpeg", "JPEG", "cat/c"),
        ("cat/sub/d.bmp", "BMP", "cat/sub/d"),
        ("dog/e.v2.png", "PNG", "dog/e_v2"),
        ("dog/f.webp", "WEBP", "dog/f"),
        ("dog/g.JPG", "JPEG", "dog/g"),
    ]
    labels, lossless = {}, {}
    for seed, (name, fmt, key) in enumerate(files):
        pixels = save_image(root / name, seed, fmt)
        labels[key] = 0 if name.startswith("cat") else 1
        if fmt in ("PNG", "BMP"):
            lossless[key] = pixels
    corrupt(root / "dog" / "broken.jpg")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "zebra").mkdir()
    return root, labels, lossless


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def spec_from(stdout: str) -> str:
    """The spec of the ``use: data.<split>_shards: <spec>`` line the CLI prints."""
    return re.search(r"^use: data\.\w+_shards: (.+)$", stdout, re.MULTILINE).group(1)


def read_back(spec: str, sample_format) -> list[dict]:
    """Every sample of ``spec`` through the repo's evaluation pipeline, one batch of 4 at a time."""
    stream = ShardStream(parse_shards(spec), sample_format, batch_size=4, training=False)
    batches = list(stream)
    assert all(int(batch["skipped"].sum()) == 0 for batch in batches)
    return [
        {name: value[i] for name, value in batch.items() if name != "skipped"}
        for batch in batches
        for i in range(len(batch["key"]))
    ]


def raw_samples(spec: str) -> dict[str, dict]:
    ledger = SkipLedger(0.0, "test")
    return {s["__key__"]: s for url in parse_shards(spec).urls for s in read_shard(url, ledger)}


def transform():
    return TransformConfig(image_size=IMAGE_SIZE, crop_pct=1.0).build(False)


def test_folder_cli_writes_readable_classification_shards(image_folder, tmp_path: Path) -> None:
    root, labels, lossless = image_folder
    out = tmp_path / "shards"
    result = run_cli("folder", root, out, "--samples-per-shard", "3")
    assert result.returncode == 0, result.stderr
    assert "train: wrote 7 samples in 3 shards" in result.stdout
    assert "1 unreadable" in result.stdout and "1 not_an_image" in result.stdout
    assert "use: data.num_classes: 3" in result.stdout
    spec = spec_from(result.stdout)

    parsed = parse_shards(spec)
    assert len(parsed.urls) == math.ceil(7 / 3) and parsed.num_samples == 7
    info = json.loads((out / "_info.json").read_text())
    assert info["num_classes"] == 3 and info["class_names"] == ["cat", "dog", "zebra"]
    assert info["splits"]["train"]["shard_lengths"] == [3, 3, 1]
    assert info["splits"]["train"]["filenames"] == [f"train-{i:04d}.tar" for i in range(3)]

    samples = read_back(spec, ClassificationFormat(3, transform()))
    assert {s["key"]: int(s["label"]) for s in samples} == labels
    assert all(s["image"].shape == (3, IMAGE_SIZE, IMAGE_SIZE) for s in samples)

    raw = raw_samples(spec)
    assert raw["cat/a"]["jpg"] == (root / "cat/a.jpg").read_bytes()
    assert raw["cat/c"]["jpg"] == (root / "cat/c.jpeg").read_bytes()
    assert raw["dog/g"]["jpg"] == (root / "dog/g.JPG").read_bytes()
    assert raw["dog/f"]["webp"] == (root / "dog/f.webp").read_bytes()
    for key, pixels in lossless.items():  # png kept as is, bmp re-encoded to png
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(raw[key]["png"]))), pixels)


def test_folder_shuffle_is_seeded(image_folder, tmp_path: Path, capsys) -> None:
    root, labels, _ = image_folder
    sorted_keys = list(labels)

    def order(*options: str) -> list[str]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        main(["folder", str(root), str(out), *options])
        spec = spec_from(capsys.readouterr().out)
        return list(raw_samples(spec))

    assert order("--no-shuffle") == sorted_keys
    shuffled = order("--seed", "1")
    assert shuffled != sorted_keys and sorted(shuffled) == sorted(sorted_keys)
    assert order("--seed", "1", "--split", "val") == shuffled
    assert order("--seed", "2") != shuffled


def test_folder_refuses_old_shards_and_other_classes(image_folder, tmp_path: Path, capsys) -> None:
    root, _, _ = image_folder
    out = tmp_path / "shards"
    main(["folder", str(root), str(out), "--samples-per-shard", "2"])
    with pytest.raises(SystemExit) as exit_info:
        main(["folder", str(root), str(out)])
    assert exit_info.value.code == 2
    assert "4 train shards already in" in capsys.readouterr().err

    main(["folder", str(root), str(out), "--overwrite"])
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-0000.tar"]

    (root / "zebra").rmdir()
    with pytest.raises(SystemExit):
        main(["folder", str(root), str(out), "--split", "val"])
    assert "differ from the class_names" in capsys.readouterr().err


def open_clip_train_size(spec: str) -> int:
    """How ``open_clip_train.data.get_dataset_size`` counts a brace spec (not installed here):
    the ``sizes.json`` beside the first shard, looked up by each shard's file name."""
    urls = expand_urls(spec.split("|")[0])
    sizes = json.loads((Path(urls[0]).parent / "sizes.json").read_text())
    return sum(int(sizes[Path(url).name]) for url in urls)


def test_sizes_json_counts_every_split_for_open_clip_train(image_folder, tmp_path, capsys) -> None:
    root, _, _ = image_folder
    out = tmp_path / "shards"
    specs = {}
    for split, per_shard in (("train", "2"), ("val", "3"), ("train", "5")):  # train rewritten
        main(["folder", str(root), str(out), "--split", split, "--samples-per-shard", per_shard,
              "--overwrite"])  # fmt: skip
        specs[split] = spec_from(capsys.readouterr().out)
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {"train-0000.tar": 5, "train-0001.tar": 2, "val-0000.tar": 3,
                     "val-0001.tar": 3, "val-0002.tar": 1}  # fmt: skip
    for spec in specs.values():
        assert open_clip_train_size(spec) == 7


def test_csv_writes_readable_image_text_shards(tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    save_image(images / "one.jpg", 0, "JPEG")
    save_image(images / "two.png", 1, "PNG")
    save_image(tmp_path / "elsewhere" / "three.gif", 2, "GIF")
    save_image(images / "four.png", 3, "PNG")
    corrupt(images / "bad.jpg")
    rows = [
        ("one.jpg", "a photo of one"),
        ("two.png", "  two, with a comma  "),
        (str(tmp_path / "elsewhere" / "three.gif"), "three"),  # absolute path
        ("missing.jpg", "never there"),
        ("four.png", "   "),
        ("bad.jpg", "corrupt"),
    ]
    table = tmp_path / "captions.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "text", "extra"])
        writer.writerows((path, caption, "x") for path, caption in rows)
    out = tmp_path / "shards"

    options = ["--path-column", "file", "--caption-column", "text", "--root", str(images)]
    main(["csv", str(table), str(out), "--split", "val", "--samples-per-shard", "2", *options])
    stdout = capsys.readouterr().out
    assert "val: wrote 3 samples in 2 shards" in stdout
    for skipped in ("1 missing_file", "1 empty_caption", "1 unreadable"):
        assert skipped in stdout
    spec = spec_from(stdout)
    info = json.loads((out / "_info.json").read_text())
    assert info["splits"]["val"]["shard_lengths"] == [2, 1]

    captions = {
        "000000000": "a photo of one",
        "000000001": "two, with a comma",
        "000000002": "three",
    }
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    samples = read_back(spec, ImageTextFormat(transform(), tokenizer))
    assert sorted(s["key"] for s in samples) == sorted(captions)
    for sample in samples:
        assert sample["text"].equal(tokenizer([captions[sample["key"]]])[0])
        assert sample["image"].shape == (3, IMAGE_SIZE, IMAGE_SIZE)

    raw = raw_samples(spec)
    assert raw["000000000"]["jpg"] == (images / "one.jpg").read_bytes()
    assert "png" in raw["000000002"]  # gif re-encoded
    assert json.loads(raw["000000001"]["json"]) == {
        "path": "two.png",
        "caption": "two, with a comma",
    }


def test_csv_paths_default_to_the_csv_folder(tmp_path: Path) -> None:
    save_image(tmp_path / "img" / "x.png", 0, "PNG")
    table = tmp_path / "list.csv"
    table.write_text("path,caption\nimg/x.png,an x\n")
    sample = next(csv_samples(table).samples)
    assert isinstance(sample, dict) and sample["txt"] == "an x" and "png" in sample


def test_input_errors_are_clear(tmp_path: Path) -> None:
    table = tmp_path / "bad.csv"
    table.write_text("file,text\nx.jpg,a caption\n")
    result = run_cli("csv", table, tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "column 'path' not in" in result.stderr
    assert "columns found: file, text" in result.stderr and "--path-column" in result.stderr

    result = run_cli("folder", tmp_path / "nowhere", tmp_path / "out")
    assert result.returncode == 2 and "image folder not found" in result.stderr
    result = run_cli("csv", tmp_path / "nowhere.csv", tmp_path / "out")
    assert result.returncode == 2 and "CSV file not found" in result.stderr
    with pytest.raises(ValueError, match="no class sub-folders"):
        folder_samples(tmp_path)
    assert not (tmp_path / "out").exists()


def test_help_shows_usage() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "python scripts/write_shards.py folder" in result.stdout
    assert "python scripts/write_shards.py csv" in result.stdout


def test_a_subset_of_classes_keeps_the_full_label_space(image_folder, tmp_path, capsys) -> None:
    """ImageNet-A's way: its class folders indexed by the full space's sorted folders, the
    subset written for data.class_subsets; a folder outside the space is refused."""
    root, labels, _ = image_folder
    space = tmp_path / "space"
    for name in ("ant", "cat", "cow", "dog", "zebra"):
        (space / name).mkdir(parents=True)
    out = tmp_path / "subset_shards"
    main(["folder", str(root), str(out), "--split", "test", "--class-names-from", str(space)])
    printed = capsys.readouterr().out
    assert f"use: data.class_subsets: {{<set name>: {out / 'test_class_subset.json'}}}" in printed
    assert json.loads((out / "test_class_subset.json").read_text()) == [1, 3, 4]
    info = json.loads((out / "_info.json").read_text())
    assert info["num_classes"] == 5 and "class_subset" not in info
    cls = {key: int(sample["cls"]) for key, sample in raw_samples(spec_from(printed)).items()}
    assert cls == {key: 1 if label == 0 else 3 for key, label in labels.items()}

    (space / "dog").rmdir()
    result = run_cli("folder", root, tmp_path / "other", "--class-names-from", space)
    assert result.returncode != 0 and "class folders ['dog']" in result.stderr


def test_shards_have_no_pax_headers_and_the_same_samples_give_the_same_bytes(tmp_path) -> None:
    """A float mtime per file would put a PAX header before each one, doubling what a reader
    parses (datamodules/writer.py)."""
    samples = [{"__key__": f"s{i}", "png": bytes([i]) * 40, "cls": str(i % 3)} for i in range(6)]
    for name in ("a", "b"):
        write_split(iter(samples), tmp_path / name, "train", samples_per_shard=4)
    for shard in ("train-0000.tar", "train-0001.tar"):
        first = (tmp_path / "a" / shard).read_bytes()
        assert first == (tmp_path / "b" / shard).read_bytes()
        with tarfile.open(tmp_path / "a" / shard) as tar:
            members = tar.getmembers()
        assert [m.pax_headers for m in members] == [{}] * len(members)
