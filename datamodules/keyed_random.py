"""Random augmentation as a pure function of the sample: the same draws in every worker, rank,
epoch order and resume."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def keyed_seed(seed: int, key: str, stream: str) -> int:
    """``int64(blake2b(seed | stream | key))``: the seed of one sample's draws (as the noise's
    ``keyed_uniform``, before its division by 2**64)."""
    digest = hashlib.blake2b(f"{seed}\x00{stream}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@contextmanager
def keyed_randomness(seed: int, key: str, stream: str, restore: bool = True) -> Iterator[None]:
    """Run the block with Python's, NumPy's and torch's (CPU) global generators seeded by
    :func:`keyed_seed`. timm's and torchvision's random transforms draw from those three, so
    what they do to a sample depends on ``(seed, stream, key)`` alone, not on the samples a
    worker transformed before it; a resumed run can then leave samples out without changing the
    augmentation of the others.

    ``restore`` gives the generators back their state after the block, as the main process
    needs (its generators drive more than the data). A data-loader worker's generators serve
    only its samples, so it skips that: saving and restoring NumPy's state alone costs about
    70 us a sample, a quarter of a small image's whole transform.
    """
    value = keyed_seed(seed, key, stream)
    if not restore:
        _seed_all(value)
        yield
        return
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        _seed_all(value)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _seed_all(value: int) -> None:
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.default_generator.manual_seed(value)
