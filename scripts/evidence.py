"""The statistics behind the sweep report: confidence intervals over seeds, trend slopes,
verdicts and rank correlations. Pure functions on plain numbers, no I/O.

The replicate unit is the seed: a seed of the sweep is a full replicate (its own pre-training
at every ratio: model init, data order and which samples are noisy; its own adaptations), so
values of different seeds are independent draws, and values of one seed at different ratios
are not (they share the init and the data order). Every interval here is therefore computed
over seeds, after any averaging over ratios, tasks or test sets has been done within each seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95
VERDICTS = ("reproduced", "contradicted", "inconclusive")


@dataclass(frozen=True)
class Estimate:
    """The mean of ``n`` values with the half-width of its Student-t confidence interval
    (``None`` when ``n < 2``: one value has no interval)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean and t-interval half-width ``t_{(1+c)/2, n-1} * s / sqrt(n)``, with ``s`` the sample
    standard deviation (``n - 1`` in the denominator)."""
    if not values:
        raise ValueError("no values to estimate from")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Estimate(mean, None, n)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n), n)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope ``sum (x - xbar)(y - ybar) / sum (x - xbar)^2`` of ``y`` on ``x``."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"a slope needs two or more (x, y) pairs, got {len(xs)} and {len(ys)}")
    x_mean, y_mean = math.fsum(xs) / len(xs), math.fsum(ys) / len(ys)
    spread = math.fsum((x - x_mean) ** 2 for x in xs)
    if spread == 0:
        raise ValueError("a slope needs at least two different x values")
    return math.fsum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True)) / spread


def verdict(estimate: Estimate, expected_sign: int) -> str:
    """``reproduced`` when the interval excludes 0 on the expected side (``expected_sign`` +1:
    an increase, -1: a decrease), ``contradicted`` when it excludes 0 on the other side, else
    ``inconclusive`` (the interval includes 0, or there is none: fewer than two seeds)."""
    if expected_sign not in (1, -1):
        raise ValueError(f"expected_sign must be +1 or -1, got {expected_sign}")
    if estimate.low is None or estimate.high is None:
        return "inconclusive"
    if estimate.low > 0 or estimate.high < 0:
        return "reproduced" if (estimate.low > 0) == (expected_sign > 0) else "contradicted"
    return "inconclusive"


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho over ``n`` units with a percentile bootstrap interval (``None`` when it
    cannot be estimated: fewer than 4 units, or a constant variable)."""

    rho: float | None
    low: float | None
    high: float | None
    n: int


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's r of the average ranks); None if a side is
    constant."""
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(stats.spearmanr(xs, ys).statistic)


def bootstrap_spearman(
    xs: Sequence[float],
    ys: Sequence[float],
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Correlation:
    """Spearman's rho of paired values and its percentile bootstrap interval: the units (pairs)
    are drawn with replacement ``resamples`` times (seeded); resamples where a side is constant
    have no rho and are left out."""
    n = len(xs)
    rho = spearman(xs, ys) if n >= 4 else None
    if rho is None:
        return Correlation(rho, None, None, n)
    draw = random.Random(seed)
    values = []
    for _ in range(resamples):
        picks = [draw.randrange(n) for _ in range(n)]
        value = spearman([xs[i] for i in picks], [ys[i] for i in picks])
        if value is not None and not math.isnan(value):
            values.append(value)
    values.sort()
    tail = (1 - confidence) / 2
    low = values[int(tail * (len(values) - 1))]
    high = values[math.ceil((1 - tail) * (len(values) - 1))]
    return Correlation(rho, low, high, n)
