"""Deterministic, auditable label and caption noise.

Every decision is a pure function of ``(seed, sample key)`` (caption swaps: of the seed and the
samples of one shard), never of the epoch, the data-loader worker, the DDP rank or the process.
The same seed and ratio therefore corrupt the same samples with the same wrong labels in every
epoch, worker, rank and resume, and a run can be audited from the keys alone.

Conventions (see README, "How noise is defined"):

* Symmetric label noise flips a sample with probability ``ratio`` to a class drawn uniformly from
  the *other* ``K - 1`` classes (Patrini et al., Co-teaching), so the realised noise rate equals
  the nominal one up to sampling error. ``include_true_class=True`` reproduces the official
  NMTune code / DivideMix instead: the new label is uniform over all ``K`` classes, so a drawn
  sample keeps its label with probability ``1/K`` and the realised rate is ``ratio * (K-1)/K``.
* Ratios are nested: the flip decision is ``u(seed, key) < ratio`` and the wrong label is drawn
  from an independent uniform, so a sample noisy at 5 % is noisy, with the same label, at 10 %.
* Asymmetric noise maps class ``c`` to ``transitions[c]`` with probability ``ratio``; classes
  without a transition are never flipped.
* Caption noise swaps the captions of pairs of selected samples (the paper's YFCC15M setting).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

_TWO_POW_64 = float(2**64)


def keyed_uniform(seed: int, key: str, stream: str) -> float:
    """A uniform number in [0, 1) that depends only on ``(seed, stream, key)``.

    ``u = int64(blake2b(seed | stream | key)) / 2**64``. A cryptographic hash (rather than
    Python's ``hash``, which is salted per process) makes the value identical in every process.
    """
    digest = hashlib.blake2b(f"{seed}\x00{stream}\x00{key}".encode(), digest_size=8).digest()
    return struct.unpack("<Q", digest)[0] / _TWO_POW_64


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"noise ratio must be in [0, 1), got {ratio}")


class SymmetricLabelNoise:
    """Flip ``ratio`` of the labels uniformly to another class.

    ``noisy = u_flip(seed, key) < ratio``; ``new = (y + 1 + floor(u_label * (K - 1))) mod K``,
    which is uniform over the ``K - 1`` wrong classes. With ``include_true_class`` the new
    label is ``floor(u_label * K)`` (uniform over all classes, the official code's convention).
    With ``selected`` (see :meth:`exact_count`) exactly those keys are flipped instead.
    """

    def __init__(
        self,
        ratio: float,
        num_classes: int,
        seed: int = 0,
        include_true_class: bool = False,
        selected: frozenset[str] | None = None,
    ) -> None:
        _check_ratio(ratio)
        if num_classes < 2:
            raise ValueError(f"label noise needs at least 2 classes, got num_classes={num_classes}")
        self.ratio = ratio
        self.num_classes = num_classes
        self.seed = seed
        self.include_true_class = include_true_class
        self.selected = selected

    def exact_count(self, keys: Sequence[str]) -> SymmetricLabelNoise:
        """The same noise on exactly ``ceil(ratio * N)`` of the ``N`` keys, those with the
        smallest ``u_flip(seed, key)`` (so still nested across ratios): the count of the
        official ``sample_noise_data``, which relabels the first ``i < ratio * N`` samples of a
        random permutation."""
        count = math.ceil(self.ratio * len(keys))
        chosen = sorted(keys, key=lambda key: keyed_uniform(self.seed, key, "flip"))[:count]
        return SymmetricLabelNoise(
            self.ratio, self.num_classes, self.seed, self.include_true_class, frozenset(chosen)
        )

    @property
    def expected_rate(self) -> float:
        """Expected fraction of samples whose observed label differs from the clean one."""
        if self.include_true_class:
            return self.ratio * (self.num_classes - 1) / self.num_classes
        return self.ratio

    def __call__(self, key: str, label: int) -> tuple[int, bool]:
        if self.selected is not None:
            if key not in self.selected:
                return label, False
        elif self.ratio == 0.0 or keyed_uniform(self.seed, key, "flip") >= self.ratio:
            return label, False
        draw = keyed_uniform(self.seed, key, "label")
        if self.include_true_class:
            new = int(draw * self.num_classes)
        else:
            new = (label + 1 + int(draw * (self.num_classes - 1))) % self.num_classes
        return new, new != label


class AsymmetricLabelNoise:
    """Class-conditional noise: ``y -> transitions[y]`` with probability ``ratio``.

    ``noisy = y in transitions and u_flip(seed, key) < ratio``. The flip uniform is the same
    stream as the symmetric noise, so both kinds select nested subsets as the ratio grows.
    """

    # CIFAR-10 ids: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 7 horse, 9 truck
    CIFAR10_TRANSITIONS: Mapping[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

    def __init__(self, ratio: float, transitions: Mapping[int, int], seed: int = 0) -> None:
        _check_ratio(ratio)
        self.ratio = ratio
        self.transitions = {int(k): int(v) for k, v in transitions.items()}
        self.seed = seed

    @classmethod
    def cifar10(cls, ratio: float, seed: int = 0) -> AsymmetricLabelNoise:
        """Patrini et al.: truck->automobile, bird->airplane, deer->horse, cat<->dog."""
        return cls(ratio, cls.CIFAR10_TRANSITIONS, seed)

    @classmethod
    def from_json(cls, path: str | Path, ratio: float, seed: int = 0) -> AsymmetricLabelNoise:
        """Read ``{"3": 5, ...}`` or ``{"transitions": {"3": 5, ...}}`` (source -> target class)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"label-noise transitions file not found: {path}")
        data = json.loads(path.read_text())
        data = data.get("transitions", data)
        try:
            transitions = {int(k): int(v) for k, v in data.items()}
        except (TypeError, ValueError, AttributeError) as err:
            raise ValueError(
                f"{path}: transitions must map integer class ids to integer class ids, "
                f'e.g. {{"3": 5, "5": 3}}'
            ) from err
        return cls(ratio, transitions, seed)

    def __call__(self, key: str, label: int) -> tuple[int, bool]:
        target = self.transitions.get(label)
        if target is None or self.ratio == 0.0:
            return label, False
        if keyed_uniform(self.seed, key, "flip") >= self.ratio:
            return label, False
        return target, target != label


class CaptionSwapNoise:
    """Swap the captions of pairs of samples, as in the paper's noisy YFCC15M.

    A sample is selected when ``u_flip(seed, key) < ratio``. The stream is cut into blocks of
    ``buffer_size`` consecutive samples; inside a block the selected samples are shuffled by a
    generator seeded with ``(seed, first key of the block)`` and paired off, each pair exchanging
    its captions. Every sample is swapped at most once; an odd selected sample out stays clean, so
    the realised rate is at most ``ratio`` and below it by at most one sample per block. Applied
    per shard, the result depends only on the seed and the shard's content, never on the epoch,
    worker or rank. A swap between two identical captions is not counted as noise.

    Output samples keep their order and gain ``is_noisy``; a swapped one keeps its own caption
    under ``clean_<field>``.
    """

    def __init__(
        self, ratio: float, seed: int = 0, buffer_size: int = 1000, field: str = "txt"
    ) -> None:
        _check_ratio(ratio)
        if buffer_size < 2:
            raise ValueError(f"caption swap buffer_size must be >= 2, got {buffer_size}")
        self.ratio = ratio
        self.seed = seed
        self.buffer_size = buffer_size
        self.field = field

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        block: list[dict[str, Any]] = []
        for sample in samples:
            block.append(sample)
            if len(block) == self.buffer_size:
                yield from self._swap_block(block)
                block = []
        yield from self._swap_block(block)

    def _swap_block(self, block: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for sample in block:
            sample["is_noisy"] = False
        if self.ratio == 0.0 or not block:
            return block
        chosen = [s for s in block if keyed_uniform(self.seed, s["__key__"], "flip") < self.ratio]
        random.Random(f"{self.seed}/{block[0]['__key__']}").shuffle(chosen)
        clean = f"clean_{self.field}"
        for first, second in zip(chosen[0::2], chosen[1::2], strict=False):
            first[clean], second[clean] = first[self.field], second[self.field]
            first[self.field], second[self.field] = second[clean], first[clean]
            differ = first[self.field] != second[self.field]
            first["is_noisy"] = second["is_noisy"] = differ
        return block
