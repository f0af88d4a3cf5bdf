"""Fixtures: tiny real shards and tiny Fashion-MNIST idx files, made by the tests themselves."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules.builtin import FASHION_MNIST_DEFAULT_DIR, read_idx
from datamodules.keyed_random import SavedGenerators, seed_for_sample

REPO = Path(__file__).resolve().parents[1]


def png_bytes(seed: int, size: int = 8) -> bytes:
    """A small random RGB PNG (real encoded image bytes)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path: Path, samples: Iterable[dict]) -> Path:
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return path


def classification_samples(
    prefix: str, count: int, num_classes: int = 10, start: int = 0
) -> list[dict]:
    return [
        {
            "__key__": f"{prefix}-{i:05d}",
            "png": png_bytes(i),
            "cls": str(i % num_classes),
        }
        for i in range(start, start + count)
    ]


@pytest.fixture
def make_shards(tmp_path: Path) -> Callable[..., str]:
    """Write ``sizes`` classification shards into tmp_path and return their brace spec."""

    def make(sizes: list[int], num_classes: int = 10, name: str = "train") -> str:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        start = 0
        for index, size in enumerate(sizes):
            samples = classification_samples(f"{name}{index}", size, num_classes, start)
            write_tar(folder / f"{name}-{index:04d}.tar", samples)
            start += size
        return f"{folder}/{name}-{{0000..{len(sizes) - 1:04d}}}.tar"

    return make


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def tiny_fashion_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 600 training and 120 test images of the real Fashion-MNIST, as idx files."""
    source = Path(FASHION_MNIST_DEFAULT_DIR)
    folder = tmp_path_factory.mktemp("fmnist_idx")
    for prefix, count in (("train", 600), ("t10k", 120)):
        for kind, n in (("images", 3), ("labels", 1)):
            name = f"{prefix}-{kind}-idx{n}-ubyte.gz"
            _write_idx(folder / name, read_idx(source / name)[:count])
    return folder


@pytest.fixture(scope="session")
def builtin_root(tiny_fashion_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in shards written from the tiny idx files (shared by the CLI tests)."""
    from datamodules.builtin import prepare_fashion_mnist

    root = tmp_path_factory.mktemp("builtin")
    prepare_fashion_mnist(root, str(tiny_fashion_mnist), samples_per_shard=100)
    return root


def run_train(
    *args: str, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python train.py ARGS`` as a user would, from the repository root."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar a run logged to TensorBoard: tag -> values in step order."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def quiet_trainer(**options: Any) -> L.Trainer:
    """A CPU Trainer that writes nothing (no logger, checkpoints, progress bar or summary);
    ``options`` add to or override those."""
    defaults = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**defaults, **options})


@contextmanager
def keyed_draws(seed: int, key: str, stream: str, restore: bool = True) -> Iterator[None]:
    """One sample's keyed draws, as the training stream makes them (``seed_for_sample``), with
    the generators given back afterwards unless ``restore`` is false."""
    saved = SavedGenerators()
    if restore:
        saved.put_aside()
    seed_for_sample(seed, key, stream)
    try:
        yield
    finally:
        saved.give_back()
