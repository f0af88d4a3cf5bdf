"""How many CPU cores feed one GPU: the training loader's images/s per worker process for a
ResNet-50 input (224 px) from JPEG shards, for the three places the augmentation can finish.

The shards hold real photographs (scikit-image's astronaut, coffee, chelsea, rocket, Hubble deep
field and immunohistochemistry images), cut into ImageNet-sized JPEGs (about 500 x 375, quality
90, random crops and scales: no two alike). Interleaved, each a full ``EpochLoader(ShardStream)``
training pass (read, label noise, shuffle, JPEG decode, timm's random-resized crop and flip as
the paper config has them, ``color_jitter: 0``, collate), with ``--workers`` loader processes:

* ``float``: timm's whole transform in the workers (float32 normalised images cross over);
* ``uint8``: ``normalize_on_device``: uint8 images cross over; the batch is converted and
  normalised where the training step runs;
* ``augment``: ``augment_on_device``: the workers draw the crop box and flip and cut the box
  out (uint8 crops cross over); the batch is resized, flipped and normalised where the training
  step runs, as Pillow would, to the bit.

The loader rates count what the workers deliver; what ``uint8`` and ``augment`` leave to the
training device is timed apart, on this machine's CPU (``device_ms_per_batch``), since on a GPU
it is a few batched kernels. Reported: images/s of each and per worker (with workers on
separate cores: per core), and the ratios to ``float``. On a machine with fewer free cores than
workers, per-core figures fall.

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
from datamodules.transforms import TransformConfig
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


MODES = {  # candidate: (normalize_on_device, augment_on_device)
    "float": (False, False),
    "uint8": (True, False),
    "augment": (True, True),
}


def transform_config(mode: str) -> TransformConfig:
    normalize, augment = MODES[mode]
    return TransformConfig(
        image_size=224, color_jitter=0.0, normalize_on_device=normalize, augment_on_device=augment
    )


def loader(spec: ShardSpec, args: argparse.Namespace, mode: str) -> EpochLoader:
    config = transform_config(mode)
    transform = config.build(True, uint8=config.uint8_training_batches)
    noise = SymmetricLabelNoise(0.2, 10, seed=0)
    stream = ShardStream(
        spec,
        ClassificationFormat(10, transform, label_noise=noise),
        args.batch_size,
        training=True,
        batches_per_rank=args.images // args.batch_size,
        seed=0,
    )
    return EpochLoader(stream, args.workers)


def loader_pass(spec: ShardSpec, args: argparse.Namespace, mode: str) -> Callable[[], float]:
    batches = loader(spec, args, mode)

    def images_per_s() -> float:
        seen, seconds = common.timed(lambda: sum(len(batch["image"]) for batch in batches))
        return seen / seconds

    return images_per_s


def device_pass(spec: ShardSpec, args: argparse.Namespace, mode: str) -> Callable[[], float]:
    """Milliseconds the training device (here the CPU) spends finishing one batch."""
    config = transform_config(mode)
    batch = next(iter(loader(spec, args, mode)))

    def milliseconds() -> float:
        _, seconds = common.timed(lambda: config.finish_batch(batch["image"], batch.get("augment")))
        return 1000 * seconds

    return milliseconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(args.root) / "jpeg_photos"
    if not (folder / "_info.json").is_file():
        write_split(jpeg_samples(args.images), folder, "train", samples_per_shard=64)
    last = len(list(folder.glob("train-*.tar"))) - 1
    spec = parse_shards(str(folder / f"train-{{0000..{last:04d}}}.tar"))
    for url in spec.urls:  # page cache: both read the same, already cached, files
        Path(url).read_bytes()
    passes = {mode: loader_pass(spec, args, mode) for mode in MODES}
    rates = common.interleaved(passes, args.repeats, warmup=1, unit="images/s")
    finishing = {mode: device_pass(spec, args, mode) for mode in ("uint8", "augment")}
    device = common.interleaved(finishing, args.repeats, warmup=1, unit="ms")
    workers = max(1, args.workers)
    return {
        "config": {**vars(args), "shards": spec.spec, "jpeg_size": list(SIZE), "image_size": 224},
        "candidates": rates,
        "device_ms_per_batch": {mode: timing.published(mode) for mode, timing in device.items()},
        "ratios": {
            "uint8_over_float": common.ratio(rates["uint8"], rates["float"]),
            "augment_over_float": common.ratio(rates["augment"], rates["float"]),
            **{f"{mode}_images_per_s_per_worker": rates[mode].median / workers for mode in MODES},
        },
        "target": {"augment_fastest": max(rates, key=lambda m: rates[m].median) == "augment"},
    }


def main(argv: list[str] | None = None) -> None:
    parser = common.arguments(__doc__, images=1024, batch_size=64, workers=2)
    common.publish(NAME, parser.parse_args(argv), run)


if __name__ == "__main__":
    main()
