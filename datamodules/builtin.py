"""Built-in real data, written once into shards so that everything runs offline.

:data:`BUILTIN_DATASETS` names every built-in dataset; :func:`prepare_builtin` writes one under
``root/<name>/<layout>/`` once and returns its shard specs.

``fashion_mnist`` (pre-training; Debian's ``dataset-fashion-mnist``: 70,000 real 28x28 grey
images, 10 classes) comes in two layouts of the same images:

* ``classification/``: timm ImageNet layout (``png`` + ``cls``), splits ``train`` (the first
  50,000 training images), ``val`` (the last 10,000) and ``test`` (the official 10,000);
* ``image_text/``: img2dataset layout (``png`` + ``txt`` + ``json``), same splits, with a
  caption made from the class name and one of a few templates chosen by the sample key.

Keys are ``fmnist-<split>-<index>`` so noise decisions are stable and readable.

The downstream suites ``fmnist_heldout``, ``digits``, ``lfw_faces`` (in-domain) and
``fmnist_shift`` (out-of-domain, several shifted test sets) are classification only; they are
described in :mod:`datamodules.builtin_suites`.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules import builtin_suites as suites
from datamodules.errors import ConfigError
from datamodules.noise import keyed_uniform
from datamodules.writer import WRITER_VERSION, range_spec, write_split

FASHION_MNIST_ENV = "FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
CAPTION_TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a product photo of a {}.",
    "a picture of a {}, an item of clothing.",
)
LAYOUTS = ("classification", "image_text")
# split name -> (idx file prefix, start, end as fractions of that file): 50,000 / 10,000 / 10,000
_SPLITS = {"train": ("train", 0, 5 / 6), "val": ("train", 5 / 6, 1), "test": ("t10k", 0, 1)}


class BuiltinDataError(FileNotFoundError):
    """The raw files of a built-in dataset are missing; the message says how to get them."""


def fashion_mnist_source_dir(explicit: str | None = None) -> Path:
    """Where the idx files are: ``explicit``, else ``$FASHION_MNIST_DIR``, else Debian's path."""
    folder = Path(explicit or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_DIR)
    needed = [
        f"{p}-{kind}-idx{n}-ubyte.gz"
        for p in ("train", "t10k")
        for kind, n in (("images", 3), ("labels", 1))
    ]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise BuiltinDataError(
            f"Fashion-MNIST files not found in {folder} (missing {', '.join(missing)}). Install "
            "them with `sudo apt-get install -y dataset-fashion-mnist`, or point "
            f"${FASHION_MNIST_ENV} (or the data option `builtin_source`) at a folder with the "
            "four idx .gz files."
        )
    return folder


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format): magic, dims (big-endian int32), uint8 data."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist_file(source: str | None, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    folder = fashion_mnist_source_dir(source)
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    return images, read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")


def _fashion_mnist_samples(
    images: np.ndarray, labels: np.ndarray, split: str, layout: str
) -> Iterator[dict]:
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        key = f"fmnist-{split}-{index:05d}"
        sample = {"__key__": key, "png": suites.png_bytes(pixels)}
        label = int(label)
        if layout == "classification":
            sample["cls"] = str(label)
        else:
            name = FASHION_MNIST_CLASSES[label]
            template = CAPTION_TEMPLATES[
                int(keyed_uniform(0, key, "template") * len(CAPTION_TEMPLATES))
            ]
            sample["txt"] = template.format(name)
            sample["json"] = json.dumps({"label": label, "class_name": name})
        yield sample


def _fashion_mnist_splits(layout: str, source: str | None) -> Iterator[suites.SplitData]:
    for split, (prefix, start, end) in _SPLITS.items():
        images, labels = _fashion_mnist_file(source, prefix)
        first, last = round(start * len(labels)), round(end * len(labels))
        samples = _fashion_mnist_samples(images[first:last], labels[first:last], split, layout)
        yield split, samples, last - first


# --- the registry -------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuiltinDataset:
    """A built-in dataset: its layouts, its classes, and the splits it writes.

    ``splits(layout, source)`` yields ``(split, samples, count)``; ``source`` is the folder of the
    Fashion-MNIST idx files (``None``: the default places). The names in ``test_sets`` are
    written as splits ``test_<name>`` and returned as the ``{name: spec}`` dict of ``test``.
    """

    layouts: tuple[str, ...]
    class_names: tuple[str, ...]
    splits: Callable[[str, str | None], Iterable[suites.SplitData]]
    test_sets: tuple[str, ...] = ()
    version: int = 1

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "fashion_mnist": BuiltinDataset(LAYOUTS, FASHION_MNIST_CLASSES, _fashion_mnist_splits),
    "fmnist_heldout": BuiltinDataset(
        ("classification",),
        FASHION_MNIST_CLASSES,
        lambda layout, source: suites.heldout_splits(*_fashion_mnist_file(source, "t10k")),
    ),
    "digits": BuiltinDataset(
        ("classification",), suites.DIGITS_CLASSES, lambda layout, source: suites.digits_splits()
    ),
    "lfw_faces": BuiltinDataset(
        ("classification",), suites.LFW_CLASSES, lambda layout, source: suites.lfw_splits()
    ),
    "fmnist_shift": BuiltinDataset(
        ("classification",),
        FASHION_MNIST_CLASSES,
        lambda layout, source: suites.shift_splits(*_fashion_mnist_file(source, "t10k")),
        test_sets=tuple(suites.SHIFTS),
        version=2,  # 2: the ImageNet-C names (gaussian_noise, gaussian_blur, contrast)
    ),
}


def builtin_dataset(name: str) -> BuiltinDataset:
    """The registry entry of ``name``; a :class:`ConfigError` listing the names otherwise."""
    if name not in BUILTIN_DATASETS:
        raise ConfigError(
            f"data.builtin must be one of {', '.join(BUILTIN_DATASETS)}, got {name!r}"
        )
    return BUILTIN_DATASETS[name]


def builtin_dir(root: str | Path, layout: str, name: str = "fashion_mnist") -> Path:
    return Path(root) / name / layout


def prepare_builtin(
    name: str, root: str | Path, source: str | None = None, samples_per_shard: int = 5000
) -> dict[str, dict[str, str | dict[str, str]]]:
    """Write every layout of ``name`` under ``root/<name>`` once; return layout -> split -> spec.

    ``test`` is a ``{set name: spec}`` dict for datasets with several test sets. Written into a
    temporary folder and renamed, so an interrupted run never leaves half a dataset that a
    later run would trust; a folder written by another version is rewritten.
    """
    dataset = builtin_dataset(name)
    specs: dict[str, dict[str, str | dict[str, str]]] = {}
    for layout in dataset.layouts:
        target = builtin_dir(root, layout, name)
        info_path = target / "_info.json"
        written = json.loads(info_path.read_text()) if info_path.is_file() else {}
        if (written.get("version"), written.get("writer")) != (dataset.version, WRITER_VERSION):
            _write(dataset, name, layout, target, source, samples_per_shard)
        specs[layout] = builtin_specs(target)
    return specs


def _write(
    dataset: BuiltinDataset,
    name: str,
    layout: str,
    target: Path,
    source: str | None,
    samples_per_shard: int,
) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    info = {
        "name": f"{name}_{layout}",
        "version": dataset.version,
        "writer": WRITER_VERSION,
        "num_classes": dataset.num_classes,
        "class_names": list(dataset.class_names),
    }
    if dataset.test_sets:
        info["test_sets"] = list(dataset.test_sets)
    try:
        for split, samples, total in dataset.splits(layout, source):
            what = f"{name} ({layout} shards)"  # the layouts of one dataset are told apart
            write_split(samples, tmp, split, samples_per_shard, total=total, info=info, what=what)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def prepare_fashion_mnist(
    root: str | Path, source: str | None = None, samples_per_shard: int = 5000
) -> dict[str, dict[str, str | dict[str, str]]]:
    """``prepare_builtin("fashion_mnist", ...)``: both layouts, layout -> split -> spec."""
    return prepare_builtin("fashion_mnist", root, source, samples_per_shard)


def builtin_specs(folder: Path) -> dict[str, str | dict[str, str]]:
    """split -> absolute shard spec with count, from the folder's ``_info.json``; the splits
    ``test_<name>`` of the ``test_sets`` it lists are grouped as ``test: {name: spec}``."""
    info = json.loads((folder / "_info.json").read_text())
    specs: dict[str, str | dict[str, str]] = {
        split: range_spec(folder, entry["filenames"], entry["num_samples"])
        for split, entry in info["splits"].items()
    }
    if info.get("test_sets"):
        specs["test"] = {name: specs.pop(f"test_{name}") for name in info["test_sets"]}
    return specs
