"""How many CPU cores feed one GPU: the training loader's images/s per worker process for a
ResNet-50 input (224 px) from JPEG shards, with and without ``transform.normalize_on_device``.

The shards hold real photographs (scikit-image's astronaut, coffee, chelsea, rocket, Hubble deep
field and immunohistochemistry images), cut into ImageNet-sized JPEGs (about 500 x 375, quality
90, random crops and scales: no two alike). Interleaved, each a full ``EpochLoader(ShardStream)``
training pass (read, label noise, shuffle, JPEG decode, timm's random-resized crop and flip,
collate), with ``--workers`` loader processes:

* ``float``: timm's whole transform in the workers (float32 normalised images cross over);
* ``uint8``: ``normalize_on_device``: uint8 images cross over, and the batch is converted and
  normalised where the training step runs (here the CPU, timed as part of the pass; on a GPU
  that step is a few microseconds a batch).

Reported: images/s of each and per worker (with workers on separate cores: per core), and the
ratio uint8/float. On a machine with fewer free cores than workers, per-core figures fall.

    python -m benchmarks.loader_per_core            # 5 repeats of 1,024 images, 2 workers
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import skimage.data
from PIL import Image

from benchmarks import common
from datamodules.formats import ClassificationFormat
from datamodules.noise import SymmetricLabelNoise
from datamodules.pipeline import EpochLoader, ShardStream
from datamodules.shards import ShardSpec, parse_shards
from datamodules.transforms import TransformConfig, normalize_uint8
from datamodules.writer import write_split

NAME = "loader_per_core"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
SIZE = (500, 375)  # about ImageNet's median photo


def jpeg_samples(count: int) -> list[dict[str, Any]]:
    """``count`` distinct JPEGs: random crops of the photos, resized to ``SIZE``."""
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    samples = []
    for index in range(count):
        photo = photos[index % len(photos)]
        width, height = photo.size
        w, h = int(width * rng.uniform(0.5, 1.0)), int(height * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        buffer = io.BytesIO()
        photo.crop((x, y, x + w, y + h)).resize(SIZE).save(buffer, format="JPEG", quality=90)
        key = f"photo-{index:06d}"
        samples.append({"__key__": key, "jpg": buffer.getvalue(), "cls": str(index % 10)})
    return samples


def loader_pass(spec: ShardSpec, args: argparse.Namespace, uint8: bool) -> Callable[[], float]:
    config = TransformConfig(image_size=224)
    transform = config.build(True, uint8=uint8)
    noise = SymmetricLabelNoise(0.2, 10, seed=0)
    stream = ShardStream(
        spec,
        ClassificationFormat(10, transform, label_noise=noise),
        args.batch_size,
        training=True,
        batches_per_rank=args.images // args.batch_size,
        seed=0,
    )
    loader = EpochLoader(stream, args.workers)
    mean, std = config.mean_std()

    def images_per_s() -> float:
        def count() -> int:
            seen = 0
            for batch in loader:
                images = batch["image"]
                if uint8:
                    images = normalize_uint8(images, mean, std)
                seen += len(images)
            return seen

        seen, seconds = common.timed(count)
        return seen / seconds

    return images_per_s


def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(args.root) / "jpeg_photos"
    if not (folder / "_info.json").is_file():
        write_split(jpeg_samples(args.images), folder, "train", samples_per_shard=64)
    last = len(list(folder.glob("train-*.tar"))) - 1
    spec = parse_shards(str(folder / f"train-{{0000..{last:04d}}}.tar"))
    for url in spec.urls:  # page cache: both read the same, already cached, files
        Path(url).read_bytes()
    passes = {"float": loader_pass(spec, args, False), "uint8": loader_pass(spec, args, True)}
    rates = common.interleaved(passes, args.repeats, warmup=1, unit="images/s")
    workers = max(1, args.workers)
    return {
        "config": {**vars(args), "shards": spec.spec, "jpeg_size": list(SIZE), "image_size": 224},
        "candidates": rates,
        "ratios": {
            "uint8_over_float": common.ratio(rates["uint8"], rates["float"]),
            "float_images_per_s_per_worker": rates["float"].median / workers,
            "uint8_images_per_s_per_worker": rates["uint8"].median / workers,
        },
        "target": {"uint8_faster": rates["uint8"].median > rates["float"].median},
    }


def main(argv: list[str] | None = None) -> None:
    parser = common.arguments(__doc__, images=1024, batch_size=64, workers=2)
    common.publish(NAME, parser.parse_args(argv), run)


if __name__ == "__main__":
    main()
