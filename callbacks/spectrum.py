"""Singular-value spectrum metrics of feature matrices: SVE, LSVR and three label-free companions.

NMTune (ICLR 2024) characterises what noisy pre-training does to a frozen feature space through
the singular values ``sigma_1 >= sigma_2 >= ... >= 0`` of the ``N x D`` feature matrix ``F`` of a
data set (one row per sample). With ``p_i = sigma_i / sum_j sigma_j``:

* **SVE** (singular value entropy, the paper's Definition 2.1) ``= -sum_i p_i log p_i``. It
  measures how evenly the variance is spread over directions: ``0`` for a rank-one feature space,
  ``log D`` for a perfectly isotropic one.
* **LSVR** (largest singular value ratio, Definition 2.2) ``= -log(sigma_1 / sum_j sigma_j)``. It
  measures how little the top direction dominates: ``0`` when one direction holds everything,
  ``log D`` at isotropy.

From the same singular values, three measures other papers proposed to predict transfer without
labels (see each function): RankMe's effective rank ``erank``, the stable rank ``stable_rank`` and
alpha-ReQ's eigenspectrum decay ``alpha_req``. All five are invariant to a global scale of ``F``.

Preprocessing (the paper's definitions do not specify one). Each row is optionally L2-normalised
so every sample weighs the same, then optionally centred (``center``):

* ``"none"`` (alias ``False``): the raw second-moment spectrum;
* ``"column"`` (alias ``True``): subtract the mean row, a PCA (covariance) spectrum;
* ``"row"``: subtract each row's own mean over its ``D`` coordinates, ``F' = F P`` with
  ``P = I - 1 1^T / D``, as the official NMTune analysis does (``src/models/svd.py``: rows
  normalised, then ``features - features.mean(dim=1, keepdim=True)``).

:data:`PROTOCOLS` names the two combinations that matter: ``paper`` (rows normalised, no centring:
the suite's default) and ``official`` (rows normalised, row-centred).

Two paths compute the same numbers:

* :func:`spectral_metrics` takes the whole matrix and runs ``torch.linalg.svdvals``.
* :class:`GramAccumulator` (a torchmetrics ``Metric``) streams batches into ``G = F^T F`` (plus
  column sums and the row count), which is ``O(D^2)`` memory regardless of ``N``, is summed
  across ranks by torchmetrics, and yields ``sigma_i = sqrt(eig_i(G'))`` with ``G' = G`` (none),
  ``G - s s^T / N`` (column; ``s`` the column sums) or ``P G P`` (row).

Precision and the shared threshold: singular values obtained as square roots of Gram eigenvalues
carry an absolute error of roughly ``sqrt(machine_eps * ||F||^2)``, so singular values that are
tiny relative to the largest one are noise on that path (and differ from ``svdvals``). Either
centring of ``G`` adds a cancellation error of the same order (every entry of ``s s^T / N`` and of
``P G P - G`` is bounded by ``||F||_F^2``). To make both paths agree, both zero every singular
value with ``sigma_i^2 <= RELATIVE_EIGENVALUE_TOL * ||F||_F^2``, where ``||F||_F`` is the
Frobenius norm of the (row-normalised, *uncentred*) features, i.e. the scale that governs the
rounding error, whichever centring follows. That drops singular values below ``1e-6 * ||F||_F``,
each at most ``1e-6`` of ``sum_j sigma_j`` (which is ``>= ||F||_F``), so the metrics barely move,
and in float64 the two paths then agree to a relative error below ``1e-6`` (checked by the tests,
also for low-rank features). Consequences: centred features whose rows are all (numerically)
identical (column) or constant (row) are reported as all zero; row-centring always leaves at least
one exact zero when ``N >= D`` (the direction ``1`` is removed), and the threshold makes it 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "CENTER_MODES",
    "METRICS",
    "METRIC_NAMES",
    "PROTOCOLS",
    "RELATIVE_EIGENVALUE_TOL",
    "GramAccumulator",
    "SpectrumProtocol",
    "alpha_req",
    "center_mode",
    "effective_rank",
    "largest_singular_value_ratio",
    "resolve_protocol",
    "singular_value_entropy",
    "spectral_metrics",
    "stable_rank",
]

RELATIVE_EIGENVALUE_TOL: float = 1e-12
"""Squared singular values at or below this fraction of ``||F||_F^2`` are treated as zero."""

CenterMode = Literal["none", "column", "row"]
CENTER_MODES: tuple[str, ...] = ("none", "column", "row")

RANKME_EPS: float = 1e-7
"""RankMe's epsilon, added to every normalised singular value (Garrido et al. 2023)."""
ALPHA_REQ_FIT_RANKS: tuple[int, int] = (11, 100)
"""1-based eigenvalue ranks alpha-ReQ fits (the authors' reference code: indices 10..99)."""

_ALL_ZERO_MESSAGE = "features are all zero: the spectrum is undefined"


def center_mode(center: bool | str) -> CenterMode:
    """``center`` as one of :data:`CENTER_MODES`; ``False``/``True`` mean "none"/"column"."""
    if isinstance(center, bool):
        return "column" if center else "none"
    if center in CENTER_MODES:
        return center  # type: ignore[return-value]
    raise ValueError(
        f"center must be one of {', '.join(repr(m) for m in CENTER_MODES)} "
        f"(or False/True for 'none'/'column'), got {center!r}"
    )


@dataclass(frozen=True)
class SpectrumProtocol:
    """How features are preprocessed before the SVD, and the name that says so in results."""

    name: str
    normalize_rows: bool
    center: CenterMode

    def info(self) -> dict[str, str | bool]:
        """``{"protocol", "normalize_rows", "center"}``, as run cards and spectrum.json state it."""
        return {"protocol": self.name, "normalize_rows": self.normalize_rows, "center": self.center}


PROTOCOLS: dict[str, SpectrumProtocol] = {
    # the paper's Definitions 2.1/2.2 on the feature matrix, rows weighted equally
    "paper": SpectrumProtocol("paper", normalize_rows=True, center="none"),
    # Hhhhhhao/Noisy-Model-Learning src/models/svd.py: normalize(dim=1), minus each row's mean
    "official": SpectrumProtocol("official", normalize_rows=True, center="row"),
}


def resolve_protocol(
    protocol: str | None = None,
    normalize_rows: bool | None = None,
    center: bool | str | None = None,
) -> SpectrumProtocol:
    """The preprocessing a protocol name and/or explicit options ask for.

    With a ``protocol`` name, explicit options must agree with it (a conflict raises ValueError,
    so a config never silently computes something its name does not say). Without one, the
    options decide (defaults: the paper's), and the result is named after the protocol they
    equal, else ``"custom"``; so older configs that only set ``normalize_rows``/``center`` keep
    working and are labelled truthfully.
    """
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    base = PROTOCOLS[protocol or "paper"]
    rows = base.normalize_rows if normalize_rows is None else bool(normalize_rows)
    mode = base.center if center is None else center_mode(center)
    if protocol is not None:
        if (rows, mode) != (base.normalize_rows, base.center):
            raise ValueError(
                f"protocol {protocol!r} means normalize_rows={base.normalize_rows}, "
                f"center={base.center!r}; got normalize_rows={rows}, center={mode!r}. "
                "Drop the protocol to choose the preprocessing yourself"
            )
        return base
    for named in PROTOCOLS.values():
        if (rows, mode) == (named.normalize_rows, named.center):
            return named
    return SpectrumProtocol("custom", rows, mode)


def _check_singular_values(singular_values: Tensor) -> Tensor:
    """Validate a spectrum and return it as float64; shared by all formulas."""
    sv = torch.as_tensor(singular_values).to(torch.float64)
    if sv.ndim != 1:
        raise ValueError(f"singular values must be a 1-D tensor, got shape {tuple(sv.shape)}")
    if not bool(torch.isfinite(sv).all()):
        raise ValueError("singular values contain NaN or Inf")
    if bool((sv < 0).any()):
        raise ValueError("singular values must be non-negative")
    if sv.numel() == 0 or float(sv.sum()) <= 0.0:
        raise ValueError(f"{_ALL_ZERO_MESSAGE} (the singular values sum to zero)")
    return sv


def singular_value_entropy(singular_values: Tensor) -> float:
    """SVE = -sum_i p_i log p_i with p_i = sigma_i / sum_j sigma_j (0 log 0 := 0).

    NMTune's Definition 2.1. Raises ValueError when the singular values sum to zero, since p is
    then undefined.
    """
    sv = _check_singular_values(singular_values)
    p = sv / sv.sum()
    return float(-torch.special.xlogy(p, p).sum())


def largest_singular_value_ratio(singular_values: Tensor) -> float:
    """LSVR = -log(sigma_1 / sum_j sigma_j), with sigma_1 the largest singular value.

    NMTune's Definition 2.2. Raises ValueError when the singular values sum to zero, since the
    ratio is then undefined.
    """
    sv = _check_singular_values(singular_values)
    return float(torch.log(sv.sum()) - torch.log(sv.max()))


def effective_rank(singular_values: Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe = exp(-sum_k p_k log p_k) with p_k = sigma_k / ||sigma||_1 + eps.

    Garrido et al., "RankMe: Assessing the downstream performance of pretrained self-supervised
    representations by their rank" (ICML 2023), with their ``eps = 1e-7`` added to every p_k
    (so p no longer sums to exactly 1, and each zero singular value adds ``-eps log eps``, about
    1.6e-6, to the entropy). The sum runs over all given singular values, zeros included, i.e.
    ``min(N, D)`` of them here. ``D`` for isotropic features, 1 for rank one (up to eps terms):
    the exponential of the SVE, smoothed.
    """
    sv = _check_singular_values(singular_values)
    p = sv / sv.sum() + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def stable_rank(singular_values: Tensor) -> float:
    """Stable rank = sum_i sigma_i^2 / sigma_1^2 = ||F||_F^2 / ||F||_2^2, in [1, rank(F)].

    Rudelson & Vershynin's numerical rank: how many directions carry energy comparable to the
    top one; unlike SVE it weighs directions by variance (sigma^2), so the tail counts less.
    """
    sv = _check_singular_values(singular_values)
    return float(sv.square().sum() / sv.max().square())


def alpha_req(singular_values: Tensor, ranks: tuple[int, int] = ALPHA_REQ_FIT_RANKS) -> float:
    """alpha-ReQ: the decay exponent alpha of the eigenspectrum lambda_i ~ i^-alpha.

    Agrawal et al., "alpha-ReQ: Assessing representation quality in self-supervised learning by
    measuring eigenspectrum decay" (NeurIPS 2022). The eigenvalues are those of the feature
    (covariance) matrix, ``lambda_i = sigma_i^2`` (their scale does not change alpha). As the
    authors' reference code (reptrix ``get_powerlaw``, after Stringer et al. 2019) fits it:
    weighted least squares of ``log lambda_i = c - alpha log i`` with weights ``1 / i`` over the
    1-based ranks ``ranks`` (default 11..100: the leading eigenvalues deviate from a power law,
    and the far tail is noise). Only positive eigenvalues take part: the range is cut at the last
    one; when fewer than 2 of them fall in it, the fit uses ranks 1..(last positive) instead.
    Returns NaN (undefined) when fewer than 2 eigenvalues are positive, e.g. rank-one features.
    Alpha is about 0 for isotropic features and larger for faster decay.
    """
    sv = _check_singular_values(singular_values)
    first, last = ranks
    if not 1 <= first < last:
        raise ValueError(f"ranks must satisfy 1 <= first < last, got {ranks}")
    eigenvalues = torch.sort(sv.square(), descending=True).values
    positive = int((eigenvalues > 0).sum())
    if positive < 2:
        return math.nan
    last = min(last, positive)
    if last - first + 1 < 2:
        first = 1
    i = torch.arange(first, last + 1, dtype=torch.float64)
    design = torch.stack([-torch.log(i), torch.ones_like(i)], dim=1)
    weights = (1.0 / i).unsqueeze(1)
    target = torch.log(eigenvalues[first - 1 : last]).unsqueeze(1)
    solution = torch.linalg.solve(design.T @ (weights * design), design.T @ (weights * target))
    return float(solution[0])


def _check_features(features: Tensor, dim: int | None = None) -> None:
    """Reject inputs that would silently give a meaningless spectrum."""
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {tuple(features.shape)}")
    if dim is not None and features.shape[1] != dim:
        raise ValueError(
            f"features have dimension {features.shape[1]}, but the accumulator expects {dim}"
        )
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or Inf; the spectrum would be meaningless")


def _prepare(features: Tensor, normalize_rows: bool) -> Tensor:
    """Cast to float64 and optionally L2-normalise rows, leaving all-zero rows at zero."""
    x = features.detach().to(torch.float64)
    if normalize_rows:
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        x = x / torch.where(norms > 0, norms, torch.ones_like(norms))
    return x


def _threshold_eigenvalues(eigenvalues: Tensor, frobenius_sq: Tensor | float) -> Tensor:
    """Zero squared singular values that are rounding noise (see the module docstring)."""
    cutoff = RELATIVE_EIGENVALUE_TOL * float(frobenius_sq)
    eigenvalues = eigenvalues.clamp_min(0.0)
    return torch.where(eigenvalues > cutoff, eigenvalues, torch.zeros_like(eigenvalues))


METRICS: dict[str, Callable[[Tensor], float]] = {
    "sve": singular_value_entropy,
    "lsvr": largest_singular_value_ratio,
    "erank": effective_rank,
    "stable_rank": stable_rank,
    "alpha_req": alpha_req,
}
"""Each scalar metric by its key in results and logs, as a function of the singular values."""
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)
"""Keys of the scalar metrics in :func:`spectral_metrics`' result, in logging order."""


def _metrics(singular_values: Tensor) -> dict[str, float | Tensor]:
    """Build the result dict shared by both paths: :data:`METRICS` and the spectrum."""
    return {
        **{name: metric(singular_values) for name, metric in METRICS.items()},
        "singular_values": singular_values,
    }


def spectral_metrics(
    features: Tensor, normalize_rows: bool = True, center: bool | str = "none"
) -> dict[str, float | Tensor]:
    """The :data:`METRIC_NAMES` metrics and the singular values of ``N x D`` features (svdvals).

    Returns ``{"sve", "lsvr", "erank", "stable_rank", "alpha_req": float, "singular_values":
    Tensor}``, the singular values being float64, descending, of length ``min(N, D)``. Rows are
    L2-normalised before centring (``center``: "none", "column" or "row", see the module
    docstring). Raises ValueError on a bad ``center``, on non-finite, empty or all-zero features
    (centred, a single sample or identical rows become all zero and raise as well).
    """
    mode = center_mode(center)
    _check_features(features)
    if features.shape[0] == 0:
        raise ValueError("features have no rows: the spectrum is undefined")
    x = _prepare(features, normalize_rows)
    frobenius_sq = x.square().sum()
    if mode == "column":
        x = x - x.mean(dim=0, keepdim=True)
    elif mode == "row":
        x = x - x.mean(dim=1, keepdim=True)
    sv = torch.linalg.svdvals(x)
    sv = _threshold_eigenvalues(sv.square(), frobenius_sq).sqrt()
    return _metrics(sv)


class EmptySpectrum(ValueError):
    """No row was accumulated (on any rank): there is no spectrum to compute."""


class GramAccumulator(Metric):
    """Streams feature batches into ``F^T F`` so the spectrum of a whole data set fits in O(D^2).

    A torchmetrics ``Metric``: :meth:`update` per batch, then :meth:`spectrum`, which sums G, the
    column sums and N over all ranks (``dist_reduce_fx="sum"`` states) and returns the same dict
    as :func:`spectral_metrics` on the concatenated rows with the same options; see the module
    docstring for the centring of G and the precision. Keep it on the device of the features
    (``.to(device)``); the states are float64.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, dim: int, normalize_rows: bool = True, center: bool | str = "none") -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.normalize_rows = normalize_rows
        self.center = center_mode(center)
        self.gram: Tensor
        self.col_sum: Tensor
        self.count: Tensor
        self.add_state("gram", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("col_sum", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def num_samples(self) -> int:
        """Rows this rank accumulated so far."""
        return round(float(self.count))

    def update(self, features: Tensor) -> None:
        """Add a batch of rows ``(B, dim)`` in float64; an empty batch is a no-op."""
        _check_features(features, self.dim)
        if features.shape[0] == 0:
            return
        x = _prepare(features.to(self.gram.device), self.normalize_rows)
        self.gram.addmm_(x.T, x)
        self.col_sum.add_(x.sum(dim=0))
        self.count.add_(x.shape[0])

    def spectrum(self) -> dict[str, float | Tensor]:
        """:func:`spectral_metrics`' dict over the rows of all ranks (summed here, for this call)
        and their count ``num_samples``. Use it rather than ``compute()``, which torchmetrics
        post-processes: it squeezes a one-element tensor, so one singular value would lose its
        dimension."""
        with self.sync_context():
            return self._spectrum_of_states()

    def compute(self) -> dict[str, float | Tensor]:
        """The metrics of the accumulated rows and their count (see :meth:`spectrum`)."""
        return self._spectrum_of_states()

    def _spectrum_of_states(self) -> dict[str, float | Tensor]:
        return {**_metrics(self.singular_values()), "num_samples": round(float(self.count))}

    def singular_values(self) -> Tensor:
        """Descending float64 singular values of length ``min(N, D)`` from ``eigvalsh`` of G.

        Negative eigenvalues (rounding) are clamped to 0 and the shared relative threshold is
        applied, so tiny singular values are 0 here rather than imprecise.
        """
        count = round(float(self.count))
        if count == 0:
            raise EmptySpectrum("no samples accumulated: call update() before the spectrum")
        gram = self.gram
        if self.center == "column":
            gram = gram - torch.outer(self.col_sum, self.col_sum) / count
        elif self.center == "row":
            # P G P with P = I - 1 1^T / D: subtract row and column means, add back the grand mean
            means = gram.mean(dim=1)
            gram = gram - means.unsqueeze(0) - means.unsqueeze(1) + means.mean()
        eigenvalues = torch.linalg.eigvalsh(gram).flip(0)
        eigenvalues = _threshold_eigenvalues(eigenvalues, torch.trace(self.gram))
        return eigenvalues[: min(count, self.dim)].sqrt()
