"""NMTune feature-space regularisers (Chen et al., ICLR 2024, "Understanding and Mitigating the
Label Noise in Pre-training on Downstream Tasks").

NMTune puts a small MLP on top of frozen pre-trained features ``F`` and trains it with

    L = CE + lambda_mse * L_consistency + lambda_cov * L_covariance + lambda_svd * L_dominant

where ``Z = MLP(F)`` are the transformed features. The three regularisers live here as pure
tensor functions (no Lightning, no I/O) so they can be unit-tested in isolation and reused by
any training loop. Shapes: ``F`` and ``Z`` are ``(M, D)`` batches (M rows/samples, D features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CONSISTENCY_REDUCTIONS",
    "NMTuneLossWeights",
    "consistency_loss",
    "covariance_loss",
    "dominant_singular_loss",
    "nmtune_regularizer",
]

CONSISTENCY_REDUCTIONS: tuple[str, ...] = ("sample", "element")

# Added to row norms so zero rows normalise to zero instead of 0/0 (same role as
# ``torch.nn.functional.normalize``'s eps).
_NORM_EPS = 1e-12
# Below this, the sum of singular values is treated as zero (Z is all zeros): the ratio
# sigma_i / sum_j sigma_j is undefined there, so the loss is defined as 0 with zero gradient.
_SINGULAR_SUM_EPS = 1e-12


def _check_batch(name: str, x: Tensor) -> None:
    """Every loss here is defined on a non-empty (M, D) batch; fail loudly on anything else."""
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (batch, dim) tensor, got shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")


def _upcast(x: Tensor) -> Tensor:
    """Half precision overflows in squared terms and svdvals does not support it: use fp32."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def _row_normalize(x: Tensor) -> Tensor:
    """x_i / (||x_i||_2 + eps): finite value and gradient even for all-zero rows."""
    norm = torch.linalg.vector_norm(x, ord=2, dim=1, keepdim=True)
    return x / (norm + _NORM_EPS)


def consistency_loss(features: Tensor, transformed: Tensor, reduction: str = "sample") -> Tensor:
    """Keep the transformed features close to the (frozen) pre-trained ones (paper eq. 3).

    With f_i = F_i / ||F_i||_2 and z_i = Z_i / ||Z_i||_2 (F detached, i.e. a constant target):

    * ``"sample"``:  L = (1/M) * sum_i ||z_i - f_i||_2^2                      (paper eq. 3)
    * ``"element"``: L = (1/(M*D)) * sum_{i,d} (z_id - f_id)^2   (official code's nn.MSELoss)

    so ``sample == element * D``. Rows are normalised with a small eps in the denominator so that
    zero rows yield finite values and gradients.
    """
    if reduction not in CONSISTENCY_REDUCTIONS:
        raise ValueError(f"reduction must be one of {CONSISTENCY_REDUCTIONS}, got {reduction!r}")
    _check_batch("features", features)
    _check_batch("transformed", transformed)
    if features.shape != transformed.shape:
        raise ValueError(
            "features and transformed must have the same shape, got "
            f"{tuple(features.shape)} and {tuple(transformed.shape)}"
        )
    f = _row_normalize(_upcast(features.detach()))
    z = _row_normalize(_upcast(transformed))
    sq = (z - f).pow(2)
    if reduction == "sample":
        return sq.sum(dim=1).mean()
    return sq.mean()


def covariance_loss(transformed: Tensor) -> Tensor:
    """Decorrelate feature dimensions (paper eq. 4), which raises the effective rank of Z.

    C = (Z - mean(Z))^T (Z - mean(Z)) / (M - 1)   (D x D, unbiased covariance over the batch)
    L = (1/D) * sum_{i != j} C_ij^2

    Raises ValueError for M < 2, where the unbiased covariance is undefined.
    """
    _check_batch("transformed", transformed)
    m, d = transformed.shape
    if m < 2:
        raise ValueError(f"covariance_loss needs at least 2 rows (samples), got {m}")
    z = _upcast(transformed)
    zc = z - z.mean(dim=0, keepdim=True)
    cov = zc.T @ zc / (m - 1)
    off_diag = cov - torch.diag_embed(torch.diagonal(cov))
    return off_diag.pow(2).sum() / d


def dominant_singular_loss(transformed: Tensor, top_k: int = 1) -> Tensor:
    """Reward a dominant top singular subspace of Z, suppressing the noisy tail (paper eq. 5).

    sigma = svdvals(Z) of the *uncentred* batch (descending), k = min(top_k, len(sigma)):
    L = -(1/k) * sum_{i<=k} sigma_i / sum_j sigma_j

    ``top_k=1`` is the paper's eq. 5; the official code uses ``top_k=5``. Gradients are taken
    through ``torch.linalg.svdvals`` only (its backward is U diag(dL/dsigma) V^T, which stays
    finite for repeated or zero singular values, unlike backward through U/V). The ratio is
    scale-invariant and undefined for Z = 0; there the loss is 0 with zero gradient.
    Raises ValueError for top_k < 1.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    _check_batch("transformed", transformed)
    sigma = torch.linalg.svdvals(_upcast(transformed))
    k = min(int(top_k), sigma.shape[0])
    total = sigma.sum()
    nonzero = total > _SINGULAR_SUM_EPS
    # Double-where: the masked branch divides by 1, so no inf/NaN ever reaches backward.
    safe_total = torch.where(nonzero, total, torch.ones_like(total))
    ratio = sigma[:k].mean() / safe_total
    return torch.where(nonzero, -ratio, torch.zeros_like(ratio))


@dataclass
class NMTuneLossWeights:
    """Weights (lambda) of the three NMTune regularisers and the knobs that differ between the
    paper and the official code. Defaults equal the :meth:`paper` preset."""

    consistency: float = 0.01
    covariance: float = 0.01
    dominant_singular: float = 0.01
    top_k: int = 1
    consistency_reduction: str = "sample"

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.consistency_reduction not in CONSISTENCY_REDUCTIONS:
            raise ValueError(
                f"consistency_reduction must be one of {CONSISTENCY_REDUCTIONS}, "
                f"got {self.consistency_reduction!r}"
            )

    @classmethod
    def paper(cls) -> NMTuneLossWeights:
        """Paper: L = CE + lambda (MSE + COV + SVD) with lambda = 0.01, eq. 5 with top-1."""
        return cls(
            consistency=0.01,
            covariance=0.01,
            dominant_singular=0.01,
            top_k=1,
            consistency_reduction="sample",
        )

    @classmethod
    def official_code(cls) -> NMTuneLossWeights:
        """Hhhhhhao/Noisy-Model-Learning README: --mse-loss-weight=1.0 --cov-loss-weight=0.04
        --svd-loss-weight=0.001, ``torch.mean(s[:5])`` and ``nn.MSELoss`` (element mean)."""
        return cls(
            consistency=1.0,
            covariance=0.04,
            dominant_singular=0.001,
            top_k=5,
            consistency_reduction="element",
        )


def nmtune_regularizer(
    features: Tensor,
    transformed: Tensor,
    weights: NMTuneLossWeights,
    rows: Tensor | None = None,
) -> dict[str, Tensor]:
    """All three NMTune terms plus their weighted sum.

    total = w_cons * consistency(F, Z) + w_cov * covariance(R) + w_svd * dominant_singular(R)

    with R = ``rows`` (default: Z). Returns raw (unweighted) ``"consistency"``,
    ``"covariance"``, ``"dominant_singular"`` for logging and the weighted ``"total"`` to add
    to the task loss. Terms whose weight is 0 are still reported but computed without autograd
    and left out of ``total``. The caller chooses the rows: the official code compares Z of a
    strong view with F of a weak view and applies the covariance/SVD terms to Z of both views
    concatenated.
    """
    batch_rows = transformed if rows is None else rows
    terms = {
        "consistency": (
            weights.consistency,
            lambda: consistency_loss(features, transformed, weights.consistency_reduction),
        ),
        "covariance": (weights.covariance, lambda: covariance_loss(batch_rows)),
        "dominant_singular": (
            weights.dominant_singular,
            lambda: dominant_singular_loss(batch_rows, weights.top_k),
        ),
    }
    out: dict[str, Tensor] = {}
    total: Tensor | None = None
    for name, (weight, fn) in terms.items():
        if weight == 0:
            with torch.no_grad():
                out[name] = fn()
            continue
        value = fn()
        out[name] = value
        weighted = weight * value
        total = weighted if total is None else total + weighted
    if total is None:
        total = torch.zeros((), dtype=out["consistency"].dtype, device=out["consistency"].device)
    out["total"] = total
    return out
