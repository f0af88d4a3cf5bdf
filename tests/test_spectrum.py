"""Tests for callbacks.spectrum: metrics against numpy and sklearn, Gram path, DDP, protocols."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from callbacks.spectrum import (
    METRIC_NAMES,
    PROTOCOLS,
    GramAccumulator,
    alpha_req,
    effective_rank,
    largest_singular_value_ratio,
    resolve_protocol,
    singular_value_entropy,
    spectral_metrics,
    stable_rank,
)

REL_TOL = 1e-6


def numpy_singular_values(x: np.ndarray, normalize_rows: bool, center: bool | str) -> np.ndarray:
    """np.linalg.svd of the preprocessed rows, tiny values (rank deficiency) set to 0 as the
    suite's threshold does: squares at most 1e-12 of the uncentred squared Frobenius norm."""
    x = np.asarray(x, dtype=np.float64)
    if normalize_rows:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    frobenius_sq = np.square(x).sum()
    if center in (True, "column"):
        x = x - x.mean(axis=0, keepdims=True)
    elif center == "row":
        x = x - x.mean(axis=1, keepdims=True)
    s = np.linalg.svd(x, compute_uv=False)
    return np.where(s**2 > 1e-12 * frobenius_sq, s, 0.0)


def numpy_alpha(s: np.ndarray, first: int = 11, last: int = 100) -> float:
    """alpha-ReQ by np.polyfit of log(sigma^2) on log(rank), squared residuals weighted 1/rank
    (polyfit's ``w`` multiplies the residual, hence the square root)."""
    lam = np.sort(s[s > 0] ** 2)[::-1]
    last = min(last, len(lam))
    if last - first + 1 < 2:
        first = 1
    i = np.arange(first, last + 1, dtype=np.float64)
    slope, _ = np.polyfit(np.log(i), np.log(lam[first - 1 : last]), 1, w=np.sqrt(1.0 / i))
    return float(-slope)


def numpy_metrics(s: np.ndarray) -> dict[str, float]:
    """The five metrics straight from their definitions."""
    p = s / s.sum()
    nz = p[p > 0]
    q = p + 1e-7
    return {
        "sve": float(-(nz * np.log(nz)).sum()),
        "lsvr": float(-np.log(s.max() / s.sum())),
        "erank": float(np.exp(-(q * np.log(q)).sum())),
        "stable_rank": float((s**2).sum() / s.max() ** 2),
        "alpha_req": numpy_alpha(s) if (s > 0).sum() >= 2 else math.nan,
    }


def numpy_reference(x: np.ndarray, normalize_rows: bool, center: bool | str) -> tuple[float, float]:
    """Independent SVE/LSVR, with np.linalg.svd."""
    metrics = numpy_metrics(numpy_singular_values(x, normalize_rows, center))
    return metrics["sve"], metrics["lsvr"]


def make_features(kind: str, seed: int = 0) -> torch.Tensor:
    """Test matrices: dense N > D, dense N < D, rank 3 in D = 16 (with a small or dominant mean).

    ``low_rank_offset`` has a mean 20x the spread: without the shared eigenvalue threshold the
    Gram path (and its ``G - s s^T / N`` centring) disagrees with svdvals by more than 1e-6.
    """
    g = torch.Generator().manual_seed(seed)
    if kind == "random_tall":
        return torch.randn(300, 16, generator=g, dtype=torch.float64)
    if kind == "random_wide":
        return torch.randn(10, 32, generator=g, dtype=torch.float64)
    if kind in ("low_rank", "low_rank_offset"):
        a = torch.randn(120, 3, generator=g, dtype=torch.float64)
        b = torch.randn(3, 16, generator=g, dtype=torch.float64)
        offset = 2.0 if kind == "low_rank" else 20.0
        return a @ b + offset * b[0]  # offset stays in the row space: rank 3 with a mean
    raise ValueError(kind)


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


KINDS = ["random_tall", "random_wide", "low_rank", "low_rank_offset"]
CENTERS = ["none", "column", "row"]
OPTIONS = [(n, c) for n in (True, False) for c in CENTERS]


def assert_metrics_close(got: dict, expected: dict, rel: float) -> None:
    """Every metric of METRIC_NAMES within ``rel`` (NaN where the expected value is NaN)."""
    for name in METRIC_NAMES:
        if math.isnan(expected[name]):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(expected[name], rel=rel, abs=1e-12), name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("normalize_rows", "center"), OPTIONS)
def test_matches_numpy(kind: str, normalize_rows: bool, center: str) -> None:
    x = make_features(kind)
    out = spectral_metrics(x, normalize_rows=normalize_rows, center=center)
    s = numpy_singular_values(x.numpy(), normalize_rows, center)
    assert_metrics_close(out, numpy_metrics(s), 1e-9)
    torch.testing.assert_close(out["singular_values"], torch.from_numpy(s), rtol=0, atol=1e-12)
    sv = out["singular_values"]
    assert sv.dtype == torch.float64 and sv.ndim == 1
    assert sv.numel() == min(x.shape)
    assert torch.all(sv[:-1] >= sv[1:])


@pytest.mark.parametrize("kind", ["low_rank", "low_rank_offset"])
@pytest.mark.parametrize("center", CENTERS)
def test_low_rank_spectrum_has_rank_three(kind: str, center: str) -> None:
    x = make_features(kind)
    assert int((spectral_metrics(x, center=center)["singular_values"] > 0).sum()) == 3
    acc = GramAccumulator(x.shape[1], center=center)
    acc.update(x)
    assert int((acc.singular_values() > 0).sum()) == 3


def test_float32_input_is_computed_in_float64() -> None:
    x = make_features("random_tall").to(torch.float32)
    out = spectral_metrics(x)
    sve, lsvr = numpy_reference(x.numpy(), True, False)
    assert rel_err(out["sve"], sve) < 1e-9 and rel_err(out["lsvr"], lsvr) < 1e-9
    assert out["singular_values"].dtype == torch.float64


@pytest.mark.parametrize("dim", [1, 4, 16])
@pytest.mark.parametrize("repeats", [1, 3])
def test_isotropic_is_log_dim(dim: int, repeats: int) -> None:
    x = 2.5 * torch.eye(dim).repeat(repeats, 1)
    out = spectral_metrics(x, normalize_rows=False)
    assert out["sve"] == pytest.approx(math.log(dim), abs=1e-12)
    assert out["lsvr"] == pytest.approx(math.log(dim), abs=1e-12)
    acc = GramAccumulator(dim, normalize_rows=True)
    acc.update(x)
    assert acc.spectrum()["sve"] == pytest.approx(math.log(dim), abs=1e-12)
    assert acc.spectrum()["lsvr"] == pytest.approx(math.log(dim), abs=1e-12)


def test_formula_functions() -> None:
    assert singular_value_entropy(torch.tensor([3.0, 0.0, 0.0])) == 0.0
    assert largest_singular_value_ratio(torch.tensor([3.0, 0.0])) == 0.0
    assert singular_value_entropy(torch.tensor([1.0, 1.0])) == pytest.approx(math.log(2))
    assert largest_singular_value_ratio(torch.tensor([1.0, 3.0])) == pytest.approx(-math.log(0.75))
    with pytest.raises(ValueError, match="all zero"):
        singular_value_entropy(torch.zeros(4))
    with pytest.raises(ValueError, match="all zero"):
        largest_singular_value_ratio(torch.zeros(4))
    with pytest.raises(ValueError, match="non-negative"):
        singular_value_entropy(torch.tensor([1.0, -1.0]))


@pytest.mark.parametrize("dim", [16, 64])
def test_new_metrics_on_isotropic_features(dim: int) -> None:
    """sigma all equal: erank D (up to RankMe's eps), stable rank D, no decay (alpha 0)."""
    out = spectral_metrics(torch.eye(dim).repeat(2, 1))
    p = 1.0 / dim + 1e-7
    assert out["erank"] == pytest.approx(math.exp(-dim * p * math.log(p)), rel=1e-12)
    assert out["erank"] == pytest.approx(dim, rel=1e-4)
    assert out["stable_rank"] == pytest.approx(dim, rel=1e-12)
    assert out["alpha_req"] == pytest.approx(0.0, abs=1e-10)


def test_new_metrics_on_rank_one_features() -> None:
    """One direction: erank 1 (plus the eps of 15 zero singular values), stable rank 1, and no
    decay to fit (alpha undefined: NaN)."""
    x = torch.randn(40, 1, generator=torch.Generator().manual_seed(3)) * torch.arange(1.0, 17.0)
    out = spectral_metrics(x, normalize_rows=False)
    assert int((out["singular_values"] > 0).sum()) == 1
    top = (1 + 1e-7) * math.log(1 + 1e-7)
    assert out["erank"] == pytest.approx(math.exp(-top - 15 * 1e-7 * math.log(1e-7)), rel=1e-9)
    assert out["erank"] == pytest.approx(1.0, rel=1e-4)
    assert out["stable_rank"] == pytest.approx(1.0, rel=1e-12)
    assert math.isnan(out["alpha_req"])


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.3])
def test_alpha_req_recovers_an_exact_power_law(alpha: float) -> None:
    """Features with eigenvalues exactly i^-alpha (orthogonal rows, each scaled): alpha back,
    whatever the fit range; both paths."""
    dim = 200
    rows = torch.diag(torch.arange(1, dim + 1, dtype=torch.float64) ** (-alpha / 2))
    out = spectral_metrics(rows, normalize_rows=False)
    assert out["alpha_req"] == pytest.approx(alpha, rel=1e-10)
    acc = GramAccumulator(dim, normalize_rows=False)
    acc.update(rows)
    assert acc.spectrum()["alpha_req"] == pytest.approx(alpha, rel=1e-8)
    sv = out["singular_values"]
    assert alpha_req(sv, ranks=(1, 200)) == pytest.approx(alpha, rel=1e-10)
    assert alpha_req(sv[:5]) == pytest.approx(alpha, rel=1e-10), "fewer than 12: ranks 1..5"


def test_new_metric_formulas_against_numpy() -> None:
    """A noisy spectrum of 300 values: each function against its hand formula in numpy."""
    rng = np.random.default_rng(4)
    s = np.sort(np.arange(1, 301) ** -0.7 * rng.uniform(0.5, 1.5, 300))[::-1].copy()
    expected = numpy_metrics(s)
    sv = torch.from_numpy(s)
    assert effective_rank(sv) == pytest.approx(expected["erank"], rel=1e-12)
    assert stable_rank(sv) == pytest.approx(expected["stable_rank"], rel=1e-12)
    assert alpha_req(sv) == pytest.approx(expected["alpha_req"], rel=1e-10)
    assert alpha_req(sv, ranks=(2, 50)) == pytest.approx(numpy_alpha(s, 2, 50), rel=1e-10)
    with pytest.raises(ValueError, match="1 <= first < last"):
        alpha_req(sv, ranks=(5, 5))
    with pytest.raises(ValueError, match="all zero"):
        effective_rank(torch.zeros(3))


def test_center_aliases_and_bad_values() -> None:
    x = make_features("random_tall")
    assert spectral_metrics(x, center=True)["sve"] == spectral_metrics(x, center="column")["sve"]
    assert spectral_metrics(x, center=False)["sve"] == spectral_metrics(x)["sve"]
    assert GramAccumulator(16, center=True).center == "column"
    assert GramAccumulator(16, center=False).center == "none"
    message = "center must be one of 'none', 'column', 'row'"
    for bad in ("rows", "Row", 1, None):
        with pytest.raises(ValueError, match=message):
            spectral_metrics(x, center=bad)
        with pytest.raises(ValueError, match=message):
            GramAccumulator(16, center=bad)


def official_preprocessing(x: torch.Tensor) -> torch.Tensor:
    """Written as the official src/models/svd.py does it, in float64."""
    features = torch.nn.functional.normalize(x.double(), dim=1)
    return features - features.mean(dim=1, keepdim=True)


@pytest.mark.parametrize("kind", KINDS)
def test_official_protocol_is_the_exact_svd_of_row_centred_features(kind: str) -> None:
    """center="row" (the "official" protocol) through both paths against torch's and numpy's
    exact SVD of the features preprocessed as the official code does."""
    x = make_features(kind)
    features = official_preprocessing(x)
    exact = torch.linalg.svdvals(features)
    assert torch.allclose(features.sum(dim=1), torch.zeros(len(x), dtype=torch.float64))
    official = PROTOCOLS["official"]
    out = spectral_metrics(x, official.normalize_rows, official.center)
    tol = 1e-12 * float(exact[0])
    torch.testing.assert_close(out["singular_values"][exact > tol], exact[exact > tol])
    assert_metrics_close(out, numpy_metrics(torch.where(exact > tol, exact, 0.0).numpy()), 1e-9)
    acc = GramAccumulator(x.shape[1], official.normalize_rows, official.center)
    for chunk in torch.split(x, 7):
        acc.update(chunk)
    assert_metrics_close(acc.spectrum(), out, REL_TOL)
    if x.shape[0] >= x.shape[1]:  # the direction 1 is removed: one exact zero
        assert out["singular_values"][-1] == 0.0 and acc.singular_values()[-1] == 0.0


@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float64, 1e-9), (np.float32, 1e-5)])
def test_official_randomized_truncated_svd_agrees_within_its_tolerance(
    dtype: type, tolerance: float
) -> None:
    """sklearn's randomized TruncatedSVD(n_components=D), as the official code runs it (no
    random_state, float32 features), on the same rows: the spectrum matches the exact one to
    rounding of its dtype, for any seed, since D + 10 random vectors span all D directions."""
    from sklearn.decomposition import TruncatedSVD

    x = make_features("random_tall")
    exact = spectral_metrics(x, center="row")
    features = official_preprocessing(x).numpy().astype(dtype)
    for seed in range(3):
        svd = TruncatedSVD(n_components=features.shape[1], random_state=seed).fit(features)
        sv = torch.from_numpy(svd.singular_values_.astype(np.float64))
        assert sv.shape == exact["singular_values"].shape
        top = float(exact["singular_values"][0])
        torch.testing.assert_close(
            sv, exact["singular_values"], rtol=0, atol=tolerance * top, msg=f"seed {seed}"
        )
        assert singular_value_entropy(sv) == pytest.approx(exact["sve"], rel=tolerance)
        assert largest_singular_value_ratio(sv) == pytest.approx(exact["lsvr"], rel=tolerance)
        assert stable_rank(sv) == pytest.approx(exact["stable_rank"], rel=tolerance)


def test_protocols_and_their_resolution() -> None:
    assert PROTOCOLS["paper"].info() == {
        "protocol": "paper",
        "normalize_rows": True,
        "center": "none",
    }
    assert PROTOCOLS["official"].info() == {
        "protocol": "official",
        "normalize_rows": True,
        "center": "row",
    }
    assert resolve_protocol() is PROTOCOLS["paper"]
    assert resolve_protocol("official", normalize_rows=True) is PROTOCOLS["official"]
    assert resolve_protocol(center="row") is PROTOCOLS["official"], "named by what it computes"
    assert resolve_protocol(center=False) is PROTOCOLS["paper"]
    custom = resolve_protocol(normalize_rows=False, center=True)
    assert custom.info() == {"protocol": "custom", "normalize_rows": False, "center": "column"}
    with pytest.raises(ValueError, match="protocol 'official' means normalize_rows=True"):
        resolve_protocol("official", center="none")
    with pytest.raises(ValueError, match="protocol 'paper' means"):
        resolve_protocol("paper", normalize_rows=False)
    with pytest.raises(ValueError, match="protocol must be one of paper, official"):
        resolve_protocol("pca")
    with pytest.raises(ValueError, match="center must be one of"):
        resolve_protocol(center="diag")


def batchings(n: int) -> list[list[int]]:
    """Split sizes: whole, batch size 1, uneven, a random split with empty batches."""
    rng = np.random.default_rng(n)
    cuts = np.sort(rng.integers(0, n + 1, size=5))
    random_split = np.diff(np.concatenate([[0], cuts, [n]])).tolist()
    uneven = [1, 2, 3, n - 6]  # every test matrix has n >= 7
    return [[n], [1] * n, uneven, random_split]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("normalize_rows", "center"), OPTIONS)
def test_accumulator_matches_svd_in_any_batching(
    kind: str, normalize_rows: bool, center: str
) -> None:
    x = make_features(kind)
    ref = spectral_metrics(x, normalize_rows=normalize_rows, center=center)
    for sizes in batchings(x.shape[0]):
        acc = GramAccumulator(x.shape[1], normalize_rows=normalize_rows, center=center)
        for chunk in torch.split(x, sizes):
            acc.update(chunk)
        assert acc.num_samples == x.shape[0]
        out = acc.spectrum()
        assert_metrics_close(out, ref, REL_TOL)
        sv = out["singular_values"]
        assert sv.dtype == torch.float64 and sv.shape == ref["singular_values"].shape
        assert torch.all(sv[:-1] >= sv[1:])
        torch.testing.assert_close(sv, ref["singular_values"], rtol=0, atol=1e-6 * sv[0].item())


def test_accumulator_reset_and_num_samples() -> None:
    x = make_features("random_tall")
    acc = GramAccumulator(16)
    acc.update(x[:10])
    assert acc.num_samples == 10
    acc.reset()
    assert acc.num_samples == 0
    with pytest.raises(ValueError, match="no samples"):
        acc.spectrum()
    acc.update(x)
    assert acc.spectrum()["sve"] == pytest.approx(spectral_metrics(x)["sve"], rel=REL_TOL)


# --- degenerate inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("normalize_rows", [True, False])
def test_single_sample(normalize_rows: bool) -> None:
    x = torch.randn(1, 8, generator=torch.Generator().manual_seed(1))
    out = spectral_metrics(x, normalize_rows=normalize_rows)
    assert out["sve"] == 0.0 and out["lsvr"] == 0.0
    assert out["singular_values"].shape == (1,)
    acc = GramAccumulator(8, normalize_rows=normalize_rows)
    acc.update(x)
    m = acc.spectrum()
    assert m["sve"] == pytest.approx(0.0, abs=1e-12) and m["lsvr"] == pytest.approx(0.0, abs=1e-12)
    assert m["singular_values"].shape == (1,)


def test_single_sample_centered_is_all_zero() -> None:
    x = torch.randn(1, 8)
    with pytest.raises(ValueError, match="all zero"):
        spectral_metrics(x, center=True)
    acc = GramAccumulator(8, center=True)
    acc.update(x)
    with pytest.raises(ValueError, match="all zero"):
        acc.spectrum()


@pytest.mark.parametrize("normalize_rows", [True, False])
def test_all_zero_features_raise(normalize_rows: bool) -> None:
    x = torch.zeros(5, 8)
    with pytest.raises(ValueError, match="features are all zero: the spectrum is undefined"):
        spectral_metrics(x, normalize_rows=normalize_rows)
    acc = GramAccumulator(8, normalize_rows=normalize_rows)
    acc.update(x)
    with pytest.raises(ValueError, match="features are all zero: the spectrum is undefined"):
        acc.spectrum()


def test_zero_rows_stay_zero() -> None:
    x = make_features("random_tall")[:20].clone()
    x[3] = 0.0
    out = spectral_metrics(x)
    assert math.isfinite(out["sve"]) and math.isfinite(out["lsvr"])
    sve, lsvr = numpy_reference(x.numpy(), True, False)
    assert rel_err(out["sve"], sve) < 1e-9 and rel_err(out["lsvr"], lsvr) < 1e-9
    acc = GramAccumulator(16)
    acc.update(x)
    assert rel_err(acc.spectrum()["sve"], sve) < REL_TOL


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_raise(bad: float) -> None:
    x = torch.randn(6, 4)
    x[2, 1] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        spectral_metrics(x)
    acc = GramAccumulator(4)
    with pytest.raises(ValueError, match="NaN or Inf"):
        acc.update(x)
    assert acc.num_samples == 0


def test_bad_shapes_raise() -> None:
    acc = GramAccumulator(4)
    with pytest.raises(ValueError, match="dimension 5"):
        acc.update(torch.randn(3, 5))
    with pytest.raises(ValueError, match="2-D"):
        acc.update(torch.randn(4))
    with pytest.raises(ValueError, match="2-D"):
        spectral_metrics(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="no rows"):
        spectral_metrics(torch.zeros(0, 4))
    acc.update(torch.zeros(0, 4))  # an empty shard is fine
    assert acc.num_samples == 0


def test_more_dims_than_samples() -> None:
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = spectral_metrics(x)
    assert out["singular_values"].shape == (3,)
    sve, lsvr = numpy_reference(x.numpy(), True, False)
    assert rel_err(out["sve"], sve) < 1e-9 and rel_err(out["lsvr"], lsvr) < 1e-9
    assert 0.0 < out["sve"] <= math.log(3) + 1e-12
    acc = GramAccumulator(64)
    acc.update(x)
    m = acc.spectrum()
    assert m["singular_values"].shape == (3,)
    assert rel_err(m["sve"], sve) < REL_TOL and rel_err(m["lsvr"], lsvr) < REL_TOL


# --- real DDP (2 processes, gloo, CPU) ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str, center: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
    )
    try:
        x = make_features("random_tall")
        half = x.shape[0] // world_size
        shard = x[rank * half : (rank + 1) * half] if rank < world_size - 1 else x[rank * half :]
        acc = GramAccumulator(x.shape[1], center=center)
        for chunk in torch.split(shard, 7):
            acc.update(chunk)
        m = acc.spectrum()  # the ranks' sum
        result = {
            "num_samples": m["num_samples"],
            **{name: m[name] for name in METRIC_NAMES},
            "singular_values": m["singular_values"].tolist(),
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.timeout(120)
@pytest.mark.parametrize("center", ["column", "row"])
def test_ddp_all_reduce_matches_single_process(tmp_path: Path, center: str) -> None:
    """Row-centring is applied to the summed Gram matrix: 2 ranks give the exact spectrum."""
    world_size = 2
    mp.spawn(
        _ddp_worker,
        args=(world_size, _free_port(), str(tmp_path), center),
        nprocs=world_size,
        join=True,
    )
    x = make_features("random_tall")
    ref = spectral_metrics(x, center=center)
    for rank in range(world_size):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["num_samples"] == x.shape[0]
        assert_metrics_close(got, ref, REL_TOL)
        torch.testing.assert_close(
            torch.tensor(got["singular_values"], dtype=torch.float64),
            ref["singular_values"],
            rtol=1e-6,
            atol=1e-9,
        )
