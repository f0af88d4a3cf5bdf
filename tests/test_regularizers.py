"""Unit tests for the NMTune regularisers (lightning_modules/regularizers.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.regularizers import (
    NMTuneLossWeights,
    consistency_loss,
    covariance_loss,
    dominant_singular_loss,
    nmtune_regularizer,
)

# ---------------------------------------------------------------------------------------------
# Reference implementations written with explicit loops in numpy (independent of the module).
# ---------------------------------------------------------------------------------------------


def _np_consistency(f: np.ndarray, z: np.ndarray, reduction: str) -> float:
    m, d = f.shape
    total = 0.0
    for i in range(m):
        fn = f[i] / math.sqrt(sum(v * v for v in f[i]))
        zn = z[i] / math.sqrt(sum(v * v for v in z[i]))
        total += sum((zn[j] - fn[j]) ** 2 for j in range(d))
    return total / m if reduction == "sample" else total / (m * d)


def _np_covariance(z: np.ndarray) -> float:
    m, d = z.shape
    mean = [sum(z[i, j] for i in range(m)) / m for j in range(d)]
    loss = 0.0
    for a in range(d):
        for b in range(d):
            if a == b:
                continue
            c = sum((z[i, a] - mean[a]) * (z[i, b] - mean[b]) for i in range(m)) / (m - 1)
            loss += c * c
    return loss / d


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _assert_finite_grad(t: torch.Tensor) -> None:
    assert t.grad is not None
    assert torch.isfinite(t.grad).all(), t.grad


# ---------------------------------------------------------------------------------------------
# consistency_loss
# ---------------------------------------------------------------------------------------------


def test_consistency_hand_computed() -> None:
    # f = [[.6, .8], [1, 0]], z = [[1, 0], [0, 1]]
    # row 0: (.4, -.8) -> .16 + .64 = .8 ; row 1: (-1, 1) -> 2
    features = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    transformed = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    sample = consistency_loss(features, transformed, "sample")
    element = consistency_loss(features, transformed, "element")
    assert sample.item() == pytest.approx((0.8 + 2.0) / 2, rel=1e-6)
    assert element.item() == pytest.approx((0.8 + 2.0) / 4, rel=1e-6)
    assert consistency_loss(features, transformed).item() == pytest.approx(1.4, rel=1e-6)


@pytest.mark.parametrize("reduction", ["sample", "element"])
def test_consistency_matches_explicit_loops(reduction: str) -> None:
    f, z = _rand(5, 3, seed=1), _rand(5, 3, seed=2)
    expected = _np_consistency(f.numpy(), z.numpy(), reduction)
    got = consistency_loss(f, z, reduction).item()
    assert got == pytest.approx(expected, rel=1e-10)


def test_consistency_sample_equals_element_times_dim() -> None:
    f, z = _rand(7, 6, seed=3), _rand(7, 6, seed=4)
    sample = consistency_loss(f, z, "sample")
    element = consistency_loss(f, z, "element")
    torch.testing.assert_close(sample, element * 6)


def test_consistency_element_matches_official_mse() -> None:
    f, z = _rand(4, 5, seed=5), _rand(4, 5, seed=6)
    official = torch.nn.MSELoss()(F.normalize(z, dim=1), F.normalize(f.detach(), dim=1))
    torch.testing.assert_close(consistency_loss(f, z, "element"), official)


def test_consistency_is_scale_invariant_and_zero_for_parallel_rows() -> None:
    f = _rand(3, 4, seed=7)
    loss = consistency_loss(f, 2.5 * f)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_consistency_features_get_no_gradient() -> None:
    f = _rand(3, 4, seed=8).requires_grad_()
    z = _rand(3, 4, seed=9).requires_grad_()
    consistency_loss(f, z).backward()
    assert f.grad is None
    _assert_finite_grad(z)


@pytest.mark.parametrize("reduction", ["sample", "element"])
def test_consistency_zero_rows_finite(reduction: str) -> None:
    f = torch.zeros(3, 4, requires_grad=True)
    z = torch.zeros(3, 4)
    z[1] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    z.requires_grad_()
    loss = consistency_loss(f, z, reduction)
    assert torch.isfinite(loss)
    loss.backward()
    _assert_finite_grad(z)
    # zero F rows normalise to zero, so each loss row is ||z_i||^2 in {0, 1}
    expected = 1.0 / 3 if reduction == "sample" else 1.0 / 12
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_consistency_gradcheck() -> None:
    f = _rand(4, 3, seed=10)
    z = _rand(4, 3, seed=11).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: consistency_loss(f, t), (z,))


def test_consistency_bad_arguments() -> None:
    f, z = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="sample"):
        consistency_loss(f, z, "mean")
    with pytest.raises(ValueError, match="shape"):
        consistency_loss(f, torch.randn(3, 5))
    with pytest.raises(ValueError, match="2-D"):
        consistency_loss(torch.randn(4), torch.randn(4))


# ---------------------------------------------------------------------------------------------
# covariance_loss
# ---------------------------------------------------------------------------------------------


def test_covariance_hand_computed() -> None:
    # mean = (3, 4); centred = [[-2, -2], [0, 2], [2, 0]]
    # C = centred^T centred / 2 = [[4, 2], [2, 4]] -> off-diagonal squares 2 * 2^2 = 8, / D=2 -> 4
    z = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]])
    assert covariance_loss(z).item() == pytest.approx(4.0, rel=1e-6)
    c = np.cov(z.numpy(), rowvar=False)
    np.testing.assert_allclose(c, [[4.0, 2.0], [2.0, 4.0]])


def test_covariance_matches_explicit_loops_and_official_code() -> None:
    z = _rand(6, 4, seed=12)
    assert covariance_loss(z).item() == pytest.approx(_np_covariance(z.numpy()), rel=1e-10)

    # Official code: off_diagonal(cov).pow(2).sum().div(D) with the flatten/view trick.
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (z.shape[0] - 1)
    n = cov.shape[0]
    off = cov.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()
    torch.testing.assert_close(covariance_loss(z), off.pow(2).sum() / n)


def test_covariance_zero_for_decorrelated_batch() -> None:
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert covariance_loss(z).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "z",
    [
        torch.tensor([[1.0, 2.0, 3.0]] * 4),  # repeated rows
        torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]]),  # batch of 2
        torch.zeros(5, 3),  # all zero
    ],
    ids=["repeated_rows", "batch_of_2", "zeros"],
)
def test_covariance_degenerate_finite_grad(z: torch.Tensor) -> None:
    z = z.clone().requires_grad_()
    loss = covariance_loss(z)
    assert torch.isfinite(loss)
    loss.backward()
    _assert_finite_grad(z)


def test_covariance_gradcheck() -> None:
    z = _rand(5, 3, seed=13).requires_grad_()
    assert torch.autograd.gradcheck(covariance_loss, (z,))


def test_covariance_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        covariance_loss(torch.randn(1, 4))
    with pytest.raises(ValueError, match="2-D"):
        covariance_loss(torch.randn(2, 3, 4))


# ---------------------------------------------------------------------------------------------
# dominant_singular_loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("top_k", "expected"),
    [(1, -3.0 / 6.0), (2, -((3.0 + 2.0) / 2) / 6.0), (3, -(6.0 / 3) / 6.0), (5, -(6.0 / 3) / 6.0)],
)
def test_dominant_singular_diagonal(top_k: int, expected: float) -> None:
    # singular values of diag(3, 2, 1) are (3, 2, 1); sum = 6; top_k > 3 uses all three
    z = torch.diag(torch.tensor([1.0, 3.0, 2.0]))
    assert dominant_singular_loss(z, top_k).item() == pytest.approx(expected, rel=1e-6)


def test_dominant_singular_rectangular_and_default_top1() -> None:
    # columns are orthogonal with norms 2 and 5 -> sigma = (5, 2)
    z = torch.tensor([[0.0, 0.0], [0.0, 5.0], [2.0, 0.0]])
    assert dominant_singular_loss(z).item() == pytest.approx(-5.0 / 7.0, rel=1e-6)
    assert dominant_singular_loss(z.T).item() == pytest.approx(-5.0 / 7.0, rel=1e-6)


def test_dominant_singular_uncentred_and_scale_invariant() -> None:
    # rank one, not centred: sigma = (||z||_F, 0) -> -1 (centering would give 0/0)
    z = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    assert dominant_singular_loss(z).item() == pytest.approx(-1.0, rel=1e-5)
    r = _rand(6, 4, seed=14)
    torch.testing.assert_close(dominant_singular_loss(r, 2), dominant_singular_loss(7.0 * r, 2))


def test_dominant_singular_matches_official_code() -> None:
    z = _rand(8, 6, seed=15)
    _, s, _ = torch.svd(z)
    s = s / s.sum()
    torch.testing.assert_close(dominant_singular_loss(z, top_k=5), -s[:5].mean())


@pytest.mark.parametrize("top_k", [1, 5])
@pytest.mark.parametrize(
    "z",
    [
        torch.tensor([[1.0, 2.0, 3.0]] * 4),  # repeated rows: rank 1, repeated zero sigmas
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        torch.eye(3),  # all singular values repeated
        torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]]),  # batch of 2
        torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]),  # batch of 2, identical rows
    ],
    ids=["repeated_rows", "repeated_pairs", "identity", "batch_of_2", "batch_of_2_identical"],
)
def test_dominant_singular_degenerate_finite_grad(z: torch.Tensor, top_k: int) -> None:
    z = z.clone().requires_grad_()
    loss = dominant_singular_loss(z, top_k)
    assert torch.isfinite(loss)
    loss.backward()
    _assert_finite_grad(z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dominant_singular_zero_batch_is_zero_with_zero_grad(dtype: torch.dtype) -> None:
    z = torch.zeros(4, 3, dtype=dtype, requires_grad=True)
    loss = dominant_singular_loss(z, 5)
    assert loss.item() == 0.0
    loss.backward()
    _assert_finite_grad(z)
    assert torch.count_nonzero(z.grad) == 0


def test_dominant_singular_gradcheck() -> None:
    z = _rand(5, 4, seed=16).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: dominant_singular_loss(t, 2), (z,))


def test_dominant_singular_half_precision_upcast() -> None:
    z = _rand(4, 3, seed=17, dtype=torch.float32)
    out = dominant_singular_loss(z.to(torch.bfloat16))
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(dominant_singular_loss(z).item(), abs=1e-2)


def test_dominant_singular_bad_arguments() -> None:
    with pytest.raises(ValueError, match="top_k"):
        dominant_singular_loss(torch.randn(3, 3), top_k=0)
    with pytest.raises(ValueError, match="top_k"):
        dominant_singular_loss(torch.randn(3, 3), top_k=-2)
    with pytest.raises(ValueError, match="non-empty"):
        dominant_singular_loss(torch.randn(0, 3))


# ---------------------------------------------------------------------------------------------
# NMTuneLossWeights and nmtune_regularizer
# ---------------------------------------------------------------------------------------------


def test_presets() -> None:
    p = NMTuneLossWeights.paper()
    assert (p.consistency, p.covariance, p.dominant_singular) == (0.01, 0.01, 0.01)
    assert (p.top_k, p.consistency_reduction) == (1, "sample")
    o = NMTuneLossWeights.official_code()
    assert (o.consistency, o.covariance, o.dominant_singular) == (1.0, 0.04, 0.001)
    assert (o.top_k, o.consistency_reduction) == (5, "element")
    assert NMTuneLossWeights() == p


def test_weights_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sample"):
        NMTuneLossWeights(1.0, 1.0, 1.0, 1, "sum")
    with pytest.raises(ValueError, match="top_k"):
        NMTuneLossWeights(1.0, 1.0, 1.0, 0, "sample")


@pytest.mark.parametrize("preset", ["paper", "official_code"])
def test_nmtune_regularizer_total_is_weighted_sum(preset: str) -> None:
    w = getattr(NMTuneLossWeights, preset)()
    f = _rand(6, 4, seed=18).requires_grad_()
    z = _rand(6, 4, seed=19).requires_grad_()
    out = nmtune_regularizer(f, z, w)
    assert set(out) == {"consistency", "covariance", "dominant_singular", "total"}
    torch.testing.assert_close(out["consistency"], consistency_loss(f, z, w.consistency_reduction))
    torch.testing.assert_close(out["covariance"], covariance_loss(z))
    torch.testing.assert_close(out["dominant_singular"], dominant_singular_loss(z, w.top_k))
    expected = (
        w.consistency * out["consistency"]
        + w.covariance * out["covariance"]
        + w.dominant_singular * out["dominant_singular"]
    )
    torch.testing.assert_close(out["total"], expected)
    out["total"].backward()
    assert f.grad is None
    _assert_finite_grad(z)


def test_nmtune_regularizer_zero_weight_terms_are_reported_but_not_trained() -> None:
    w = NMTuneLossWeights(consistency=0.5, covariance=0.0, dominant_singular=0.0)
    f, z = _rand(4, 3, seed=20), _rand(4, 3, seed=21).requires_grad_()
    out = nmtune_regularizer(f, z, w)
    assert not out["covariance"].requires_grad
    assert not out["dominant_singular"].requires_grad
    torch.testing.assert_close(out["covariance"], covariance_loss(z).detach())
    torch.testing.assert_close(out["total"], 0.5 * out["consistency"])

    all_zero = nmtune_regularizer(f, z, NMTuneLossWeights(0.0, 0.0, 0.0))
    assert all_zero["total"].item() == 0.0


def test_nmtune_regularizer_degenerate_batch_finite_grad() -> None:
    f = torch.tensor([[1.0, 2.0, 3.0]] * 3)
    z = torch.tensor([[1.0, 2.0, 3.0]] * 3, requires_grad=True)
    out = nmtune_regularizer(f, z, NMTuneLossWeights.official_code())
    assert all(torch.isfinite(v) for v in out.values())
    out["total"].backward()
    _assert_finite_grad(z)
