"""Deterministic training subsets: a fraction of the data, or k shots per class.

The paper adapts with "various percentages of data" (Fig. 3); the official code takes
``--num-shots``, a per-class ratio, and has k-shot ImageNet samplers (``ImageNetK``). Both
subsets here are, in every class, prefixes of one keyed order, so they are nested (the 5 % subset
lies inside the 10 % one, the 4-shot inside the 8-shot) and depend only on the seed and the
sample keys: the same in every run, rank, worker and resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from datamodules.errors import ConfigError
from datamodules.noise import keyed_uniform


@dataclass(frozen=True)
class TrainingSubset:
    """Which training samples an adaptation sees.

    Args:
        fraction: Keep ``floor(fraction * N)`` samples: those with the smallest
            ``u(seed, key, "subset")`` (:func:`~datamodules.noise.keyed_uniform`). 1 keeps all.
        shots_per_class: Keep, in every class, the ``k`` samples with the smallest
            ``u(seed, key, "shots")`` (all of a class that has fewer). None keeps all.
        seed: The data seed.
    """

    fraction: float = 1.0
    shots_per_class: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"data.train_fraction must be in (0, 1], got {self.fraction}")
        if self.shots_per_class is not None and self.shots_per_class < 1:
            raise ConfigError(
                f"data.shots_per_class must be a positive integer, got {self.shots_per_class}"
            )
        if self.shots_per_class is not None and self.fraction < 1.0:
            raise ConfigError(
                "data.train_fraction and data.shots_per_class both select a subset: set one"
            )

    @property
    def everything(self) -> bool:
        return self.fraction == 1.0 and self.shots_per_class is None

    def select(self, keys: Sequence[str], labels: Sequence[int]) -> list[int]:
        """Indices of the kept samples, in their original order."""
        if self.everything:
            return list(range(len(keys)))
        stream = "shots" if self.shots_per_class is not None else "subset"
        by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            by_class.setdefault(int(label), []).append(index)
        kept = []
        for members in by_class.values():
            members.sort(key=lambda i: keyed_uniform(self.seed, keys[i], stream))
            count = self.shots_per_class or int(self.fraction * len(members))
            kept += members[:count]
        return sorted(kept)

    def summary(self, kept: int, total: int) -> dict[str, float | int | None]:
        """What the card and the logs record."""
        return {
            "train_fraction": self.fraction,
            "shots_per_class": self.shots_per_class,
            "kept": kept,
            "of": total,
        }
