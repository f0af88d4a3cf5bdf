"""Built-in downstream suites: ID tasks and the shifted OOD test sets, written from real images."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from datamodules import builtin_suites as suites
from datamodules.builtin import BUILTIN_DATASETS, prepare_builtin, read_idx
from datamodules.classification import ClassificationDataModule
from datamodules.errors import ConfigError
from datamodules.image_text import ImageTextDataModule
from datamodules.shards import ShardSpecError, parse_shards
from datamodules.transforms import TransformConfig

TINY = TransformConfig(image_size=28, crop_pct=1.0)
SHIFT_NAMES = ["clean", "rotate", "invert", "gaussian_blur", "gaussian_noise", "contrast"]


def read_split(spec: str) -> dict[str, tuple[np.ndarray, int]]:
    """key -> (pixels, label) of every sample in the shards of ``spec``, in order."""
    samples: dict[str, dict[str, bytes]] = {}
    for url in parse_shards(spec).urls:
        with tarfile.open(url) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return {
        key: (np.asarray(Image.open(io.BytesIO(s["png"]))), int(s["cls"]))
        for key, s in samples.items()
    }


@pytest.fixture(scope="module")
def suites_root(tiny_fashion_mnist, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suites")
    for name in ("fmnist_heldout", "fmnist_shift", "digits", "lfw_faces"):
        prepare_builtin(name, root, str(tiny_fashion_mnist), samples_per_shard=400)
    return root


@pytest.fixture(scope="module")
def t10k(tiny_fashion_mnist) -> tuple[np.ndarray, np.ndarray]:
    return tuple(
        read_idx(tiny_fashion_mnist / f"t10k-{kind}-idx{n}-ubyte.gz")
        for kind, n in (("images", 3), ("labels", 1))
    )


def test_registry_names_and_layouts():
    assert list(BUILTIN_DATASETS) == [
        "fashion_mnist",
        "fmnist_heldout",
        "digits",
        "lfw_faces",
        "fmnist_shift",
    ]
    assert BUILTIN_DATASETS["fashion_mnist"].layouts == ("classification", "image_text")
    assert all(
        d.layouts == ("classification",)
        for n, d in BUILTIN_DATASETS.items()
        if n != "fashion_mnist"
    )
    # the real files: 6,000 / 1,000 / 3,000 of the 10,000 t10k images; the tiny 120 scale down
    assert [len(p) for p in suites.fraction_split(10000, suites.HELDOUT_FRACTIONS)] == [
        6000,
        1000,
        3000,
    ]
    assert [len(p) for p in suites.fraction_split(120, suites.HELDOUT_FRACTIONS)] == [72, 12, 36]


@pytest.mark.parametrize(
    ("name", "counts", "class_names"),
    [
        ("fmnist_heldout", (72, 12, 36), None),
        ("digits", (1000, 200, 597), [str(d) for d in range(10)]),
        ("lfw_faces", (120, 30, 50), ["non-face", "face"]),
    ],
)
def test_id_tasks_sizes_disjoint_keys_labels(suites_root, name, counts, class_names):
    specs = prepare_builtin(name, suites_root)["classification"]  # written: returns at once
    splits = {split: read_split(specs[split]) for split in ("train", "val", "test")}
    assert tuple(len(s) for s in splits.values()) == counts
    keys = [set(s) for s in splits.values()]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    info = json.loads((suites_root / name / "classification" / "_info.json").read_text())
    dataset = BUILTIN_DATASETS[name]
    assert info["num_classes"] == dataset.num_classes
    assert info["class_names"] == list(dataset.class_names)
    if class_names:
        assert info["class_names"] == class_names
    labels = [label for s in splits.values() for _, label in s.values()]
    assert set(labels) == set(range(dataset.num_classes))
    if name == "lfw_faces":  # the first 100 images of lfw_subset are the faces
        assert all(
            label == (int(k.split("-")[1]) < 100)
            for s in splits.values()
            for k, (_, label) in s.items()
        )


def test_heldout_is_the_t10k_file_cut_by_index(suites_root, t10k):
    images, labels = t10k
    specs = prepare_builtin("fmnist_heldout", suites_root)["classification"]
    test = read_split(specs["test"])
    assert list(test) == [f"fmnist-t10k-{i:05d}" for i in range(84, 120)]
    for key, (pixels, label) in test.items():
        index = int(key.rsplit("-", 1)[1])
        assert label == labels[index] and np.array_equal(pixels, images[index])


def test_shift_functions_do_what_the_docstring_says():
    x = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    assert np.array_equal(suites.SHIFTS["clean"](x, "k"), x)
    assert np.array_equal(suites.invert(x, "k"), 255 - x.astype(int))
    low = suites.contrast(x, "k")
    assert (
        np.array_equal(low, 77 + (2 * x.astype(int)) // 5) and 77 <= low.min() <= low.max() <= 179
    )
    assert suites.contrast(np.array([[0, 255]], np.uint8), "k").tolist() == [[77, 179]]
    blurred = np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(1.0)))
    assert np.array_equal(suites.gaussian_blur(x, "k"), blurred) and not np.array_equal(blurred, x)

    angles = [suites.rotation_angle(f"fmnist-t10k-{i:05d}") for i in range(200)]
    assert all(15 <= abs(a) <= 35 for a in angles) and min(angles) < 0 < max(angles)
    assert suites.rotation_angle("a") == suites.rotation_angle("a") != suites.rotation_angle("b")
    rotated = np.asarray(Image.fromarray(x).rotate(suites.rotation_angle("a"), Image.BILINEAR))
    assert np.array_equal(suites.rotate(x, "a"), rotated) and not np.array_equal(rotated, x)

    grey = np.full((64, 64), 128, np.uint8)
    noisy = suites.gaussian_noise(grey, "a")
    assert noisy.dtype == np.uint8 and 35 < noisy.astype(float).std() < 45
    assert np.array_equal(noisy, suites.gaussian_noise(grey, "a"))
    assert not np.array_equal(noisy, suites.gaussian_noise(grey, "b"))
    assert suites.gaussian_noise(np.full((8, 8), 250, np.uint8), "a").max() == 255  # clipped


def test_shift_task_trains_on_heldout_and_tests_on_shifted_copies(
    suites_root, tiny_fashion_mnist, tmp_path
):
    specs = prepare_builtin("fmnist_shift", suites_root)["classification"]
    heldout = prepare_builtin("fmnist_heldout", suites_root)["classification"]
    for split in ("train", "val"):
        assert read_split(specs[split]).keys() == read_split(heldout[split]).keys()
    assert list(specs["test"]) == SHIFT_NAMES
    clean = read_split(specs["test"]["clean"])
    source = read_split(heldout["test"])
    assert clean.keys() == source.keys()
    assert all(np.array_equal(clean[k][0], source[k][0]) for k in clean)
    again = prepare_builtin("fmnist_shift", tmp_path, str(tiny_fashion_mnist))["classification"]
    for name in SHIFT_NAMES:
        shifted = read_split(specs["test"][name])
        assert shifted.keys() == clean.keys()
        for key, (pixels, label) in shifted.items():
            assert label == clean[key][1]
            assert np.array_equal(pixels, suites.SHIFTS[name](clean[key][0], key))
        second = read_split(again["test"][name])
        assert all(np.array_equal(shifted[k][0], second[k][0]) for k in shifted)


def test_datamodule_reads_every_named_test_set(suites_root):
    data = ClassificationDataModule(
        num_classes=10,
        builtin="fmnist_shift",
        builtin_root=str(suites_root),
        batch_size=12,
        num_workers=0,
        transform=TINY,
    )
    data.prepare_data()
    data.setup()
    assert data.eval_names("test") == SHIFT_NAMES and data.eval_names("val") == ["val"]
    means = []
    for loader in data.test_dataloader():
        batch = next(iter(loader))
        assert batch["image"].shape == (12, 3, 28, 28) and batch["label"].max() < 10
        means.append(batch["image"].mean().item())
    assert len(set(np.round(means, 4))) == len(SHIFT_NAMES)  # every set differs
    assert data.class_names[9] == "ankle boot"


@pytest.mark.parametrize(("name", "num_classes"), [("digits", 10), ("lfw_faces", 2)])
def test_digits_and_faces_load_with_their_class_count(suites_root, name, num_classes):
    options = dict(builtin=name, builtin_root=str(suites_root), batch_size=25, num_workers=0)
    data = ClassificationDataModule(num_classes=num_classes, transform=TINY, **options)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (25, 3, 28, 28) and batch["label"].max() < num_classes
    with pytest.raises(ShardSpecError, match=f"set num_classes: {num_classes}"):
        ClassificationDataModule(num_classes=num_classes + 1, **options).setup("fit")


def test_unknown_name_and_missing_layout_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="fashion_mnist, fmnist_heldout, digits, lfw_faces"):
        ClassificationDataModule(num_classes=10, builtin="cifar10")
    with pytest.raises(ConfigError, match="'digits' has no image_text layout"):
        ImageTextDataModule(builtin="digits", builtin_root=str(tmp_path))
    with pytest.raises(ConfigError, match="fmnist_shift"):
        prepare_builtin("nope", tmp_path)
    assert not any(tmp_path.iterdir())
