"""Random augmentation as a pure function of the sample: the same draws in every worker, rank,
epoch order and resume."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def keyed_seed(seed: int, key: str, stream: str) -> int:
    """``int64(blake2b(seed | stream | key))``: the seed of one sample's draws (as the noise's
    ``keyed_uniform``, before its division by 2**64)."""
    digest = hashlib.blake2b(f"{seed}\x00{stream}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def seed_for_sample(seed: int, key: str, stream: str) -> None:
    """Seed Python's, NumPy's and torch's (CPU) global generators by :func:`keyed_seed`. timm's
    and torchvision's random transforms draw from those three, so what they do to a sample
    then depends on ``(seed, stream, key)`` alone, not on the samples transformed before it; a
    resumed run can leave samples out without changing the augmentation of the others."""
    value = keyed_seed(seed, key, stream)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.default_generator.manual_seed(value)


class SavedGenerators:
    """The three global generators' states, put aside before keyed draws and given back after.

    The main process needs them back (its generators drive more than the data), a loader
    worker does not (its generators serve only its samples). Saving NumPy's state costs about
    85 us, a third of a small image's transform, so the training stream puts them aside once
    per batch, before its first sample, and gives them back when the batch is collated, before
    the training step sees them.
    """

    def __init__(self) -> None:
        self._states: tuple[Any, ...] | None = None

    def put_aside(self) -> None:
        if self._states is None:
            self._states = (random.getstate(), np.random.get_state(), torch.get_rng_state())

    def give_back(self) -> None:
        if self._states is not None:
            python_state, numpy_state, torch_state = self._states
            random.setstate(python_state)
            np.random.set_state(numpy_state)
            torch.set_rng_state(torch_state)
            self._states = None
