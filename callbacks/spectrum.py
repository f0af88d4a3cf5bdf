"""Singular-value spectrum metrics of feature matrices: SVE and LSVR.

NMTune (ICLR 2024) characterises what noisy pre-training does to a frozen feature space through
the singular values ``sigma_1 >= sigma_2 >= ... >= 0`` of the ``N x D`` feature matrix ``F`` of a
data set (one row per sample). With ``p_i = sigma_i / sum_j sigma_j``:

* **SVE** (singular value entropy) ``= -sum_i p_i log p_i``. It measures how evenly the variance
  is spread over directions: ``0`` for a rank-one feature space, ``log D`` for a perfectly
  isotropic one.
* **LSVR** (largest singular value ratio) ``= -log(sigma_1 / sum_j sigma_j)``. It measures how
  little the top direction dominates: ``0`` when one direction holds everything, ``log D`` at
  isotropy.

Both are invariant to a global scale of ``F``. By default each row is L2-normalised first so every
sample weighs the same; optionally the columns are centred (PCA-style spectrum).

Two paths compute the same numbers:

* :func:`spectral_metrics` takes the whole matrix and runs ``torch.linalg.svdvals``.
* :class:`GramAccumulator` streams batches into ``G = F^T F`` (plus column sums and the row
  count), which is ``O(D^2)`` memory regardless of ``N``, can be summed across ranks with
  ``torch.distributed``, and yields ``sigma_i = sqrt(eig_i(G))``.

Precision and the shared threshold: singular values obtained as square roots of Gram eigenvalues
carry an absolute error of roughly ``sqrt(machine_eps * ||F||^2)``, so singular values that are
tiny relative to the largest one are noise on that path (and differ from ``svdvals``). Centering
via ``G - s s^T / N`` adds a cancellation error of the same order. To make both paths agree, both
zero every singular value with ``sigma_i^2 <= RELATIVE_EIGENVALUE_TOL * ||F||_F^2``, where
``||F||_F`` is the Frobenius norm of the (row-normalised, *uncentred*) features, i.e. the scale
that governs the rounding error. That drops singular values below ``1e-6 * ||F||_F``, each at
most ``1e-6`` of ``sum_j sigma_j`` (which is ``>= ||F||_F``), so the metrics barely move, and in
float64 the two paths then agree to a relative error below ``1e-6`` (checked by the tests, also
for low-rank features). A consequence: column-centred features whose
rows are all (numerically) identical are reported as all zero.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "RELATIVE_EIGENVALUE_TOL",
    "GramAccumulator",
    "largest_singular_value_ratio",
    "singular_value_entropy",
    "spectral_metrics",
]

RELATIVE_EIGENVALUE_TOL: float = 1e-12
"""Squared singular values at or below this fraction of ``||F||_F^2`` are treated as zero."""

_ALL_ZERO_MESSAGE = "features are all zero: the spectrum is undefined"


def _check_singular_values(singular_values: Tensor) -> Tensor:
    """Validate a spectrum and return it as float64; shared by both formulas."""
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

    Raises ValueError when the singular values sum to zero, since p is then undefined.
    """
    sv = _check_singular_values(singular_values)
    p = sv / sv.sum()
    return float(-torch.special.xlogy(p, p).sum())


def largest_singular_value_ratio(singular_values: Tensor) -> float:
    """LSVR = -log(sigma_1 / sum_j sigma_j), with sigma_1 the largest singular value.

    Raises ValueError when the singular values sum to zero, since the ratio is then undefined.
    """
    sv = _check_singular_values(singular_values)
    return float(torch.log(sv.sum()) - torch.log(sv.max()))


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


def _metrics(singular_values: Tensor) -> dict[str, float | Tensor]:
    """Build the result dict shared by both paths."""
    return {
        "sve": singular_value_entropy(singular_values),
        "lsvr": largest_singular_value_ratio(singular_values),
        "singular_values": singular_values,
    }


def spectral_metrics(
    features: Tensor, normalize_rows: bool = True, center: bool = False
) -> dict[str, float | Tensor]:
    """SVE, LSVR and the singular values of an ``N x D`` feature matrix, via ``svdvals``.

    Returns ``{"sve": float, "lsvr": float, "singular_values": Tensor}``, the singular values
    being float64, descending, of length ``min(N, D)``. Rows are L2-normalised before column
    centring. Raises ValueError on non-finite, empty or all-zero features (with ``center=True``
    a single sample, or identical rows, centre to zero and raise as well).
    """
    _check_features(features)
    if features.shape[0] == 0:
        raise ValueError("features have no rows: the spectrum is undefined")
    x = _prepare(features, normalize_rows)
    frobenius_sq = x.square().sum()
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    sv = torch.linalg.svdvals(x)
    sv = _threshold_eigenvalues(sv.square(), frobenius_sq).sqrt()
    return _metrics(sv)


class GramAccumulator:
    """Streams feature batches into ``F^T F`` so the spectrum of a whole data set fits in O(D^2).

    Call :meth:`update` per batch, :meth:`all_reduce` once on every rank after the last update
    (it sums, so calling it twice double-counts), then :meth:`metrics`. Results match
    :func:`spectral_metrics` on the concatenated rows; see the module docstring for precision.
    """

    def __init__(self, dim: int, normalize_rows: bool = True, center: bool = False) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.normalize_rows = normalize_rows
        self.center = center
        self.reset()

    def reset(self) -> None:
        """Drop all accumulated statistics (buffers go back to CPU until the next update)."""
        self._gram = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        self._col_sum = torch.zeros(self.dim, dtype=torch.float64)
        self._count = 0

    @property
    def num_samples(self) -> int:
        """Number of rows seen so far (global after :meth:`all_reduce`)."""
        return self._count

    @property
    def device(self) -> torch.device:
        """Device holding the buffers."""
        return self._gram.device

    def _to(self, device: torch.device) -> None:
        """Move the buffers, so accumulation happens where the features live."""
        self._gram = self._gram.to(device)
        self._col_sum = self._col_sum.to(device)

    def update(self, features: Tensor) -> None:
        """Add a batch of rows ``(B, dim)`` in float64; an empty batch is a no-op."""
        _check_features(features, self.dim)
        if features.shape[0] == 0:
            return
        if self._count == 0 and features.device != self.device:
            self._to(features.device)
        x = _prepare(features.to(self.device), self.normalize_rows)
        self._gram.addmm_(x.T, x)
        self._col_sum.add_(x.sum(dim=0))
        self._count += int(x.shape[0])

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> None:
        """Sum G, column sums and N over all ranks in one collective; no-op without a group."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_backend(group) == "nccl" and self.device.type != "cuda":
            self._to(torch.device("cuda", torch.cuda.current_device()))
        count = torch.tensor([float(self._count)], dtype=torch.float64, device=self.device)
        flat = torch.cat([self._gram.reshape(-1), self._col_sum, count])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        d2 = self.dim * self.dim
        self._gram = flat[:d2].reshape(self.dim, self.dim).clone()
        self._col_sum = flat[d2 : d2 + self.dim].clone()
        self._count = round(float(flat[-1]))

    def singular_values(self) -> Tensor:
        """Descending float64 singular values of length ``min(N, D)`` from ``eigvalsh`` of G.

        Negative eigenvalues (rounding) are clamped to 0 and the shared relative threshold is
        applied, so tiny singular values are 0 here rather than imprecise.
        """
        if self._count == 0:
            raise ValueError("no samples accumulated: call update() before computing the spectrum")
        gram = self._gram
        if self.center:
            gram = gram - torch.outer(self._col_sum, self._col_sum) / self._count
        eigenvalues = torch.linalg.eigvalsh(gram).flip(0)
        eigenvalues = _threshold_eigenvalues(eigenvalues, torch.trace(self._gram))
        return eigenvalues[: min(self._count, self.dim)].sqrt()

    def metrics(self) -> dict[str, float | Tensor]:
        """Same dict as :func:`spectral_metrics` on all accumulated rows."""
        return _metrics(self.singular_values())
