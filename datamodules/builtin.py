"""Built-in real data, written once into shards so that everything runs offline.

Fashion-MNIST (Debian's ``dataset-fashion-mnist``: 70,000 real 28x28 grey images, 10 classes)
becomes two layouts of the same images:

* ``classification/``: timm ImageNet layout (``png`` + ``cls``), splits ``train`` (the first
  50,000 training images), ``val`` (the last 10,000) and ``test`` (the official 10,000);
* ``image_text/``: img2dataset layout (``png`` + ``txt`` + ``json``), same splits, with a
  caption made from the class name and one of a few templates chosen by the sample key.

Keys are ``fmnist-<split>-<index>`` so noise decisions are stable and readable.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.noise import keyed_uniform
from datamodules.writer import range_spec, write_split

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
_FORMAT_VERSION = 1


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


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _samples(images: np.ndarray, labels: np.ndarray, split: str, layout: str) -> Iterator[dict]:
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        key = f"fmnist-{split}-{index:05d}"
        sample = {"__key__": key, "png": _png(pixels)}
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


def builtin_dir(root: str | Path, layout: str) -> Path:
    return Path(root) / "fashion_mnist" / layout


def prepare_fashion_mnist(
    root: str | Path, source: str | None = None, samples_per_shard: int = 5000
) -> dict[str, dict[str, str]]:
    """Write both layouts under ``root/fashion_mnist`` once; return layout -> split -> spec.

    Written into a temporary folder and renamed, so an interrupted run never leaves half a
    dataset that a later run would trust.
    """
    specs: dict[str, dict[str, str]] = {}
    for layout in LAYOUTS:
        target = builtin_dir(root, layout)
        info_path = target / "_info.json"
        if not (
            info_path.is_file()
            and json.loads(info_path.read_text()).get("version") == _FORMAT_VERSION
        ):
            folder = fashion_mnist_source_dir(source)
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            info = {
                "name": f"fashion_mnist_{layout}",
                "version": _FORMAT_VERSION,
                "num_classes": len(FASHION_MNIST_CLASSES),
                "class_names": list(FASHION_MNIST_CLASSES),
            }
            for split, (prefix, start, end) in _SPLITS.items():
                images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
                labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
                first, last = round(start * len(labels)), round(end * len(labels))
                images, labels = images[first:last], labels[first:last]
                write_split(
                    _samples(images, labels, split, layout),
                    tmp,
                    split,
                    samples_per_shard,
                    total=len(labels),
                    info=info,
                )
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        specs[layout] = builtin_specs(target)
    return specs


def builtin_specs(folder: Path) -> dict[str, str]:
    """split -> absolute shard spec with count, from the folder's ``_info.json``."""
    info = json.loads((folder / "_info.json").read_text())
    return {
        split: range_spec(folder, entry["filenames"], entry["num_samples"])
        for split, entry in info["splits"].items()
    }
