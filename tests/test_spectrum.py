"""Tests for callbacks.spectrum: SVE/LSVR against numpy, streaming Gram path, DDP reduction."""

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
    GramAccumulator,
    largest_singular_value_ratio,
    singular_value_entropy,
    spectral_metrics,
)

REL_TOL = 1e-6


def numpy_reference(x: np.ndarray, normalize_rows: bool, center: bool) -> tuple[float, float]:
    """Independent SVE/LSVR straight from the definitions, with np.linalg.svd."""
    x = np.asarray(x, dtype=np.float64)
    if normalize_rows:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    if center:
        x = x - x.mean(axis=0, keepdims=True)
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum()
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum()), float(-np.log(s.max() / s.sum()))


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
OPTIONS = [(n, c) for n in (True, False) for c in (False, True)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("normalize_rows", "center"), OPTIONS)
def test_matches_numpy(kind: str, normalize_rows: bool, center: bool) -> None:
    x = make_features(kind)
    out = spectral_metrics(x, normalize_rows=normalize_rows, center=center)
    sve, lsvr = numpy_reference(x.numpy(), normalize_rows, center)
    assert rel_err(out["sve"], sve) < 1e-9
    assert rel_err(out["lsvr"], lsvr) < 1e-9
    sv = out["singular_values"]
    assert sv.dtype == torch.float64 and sv.ndim == 1
    assert sv.numel() == min(x.shape)
    assert torch.all(sv[:-1] >= sv[1:])


@pytest.mark.parametrize("kind", ["low_rank", "low_rank_offset"])
@pytest.mark.parametrize("center", [False, True])
def test_low_rank_spectrum_has_rank_three(kind: str, center: bool) -> None:
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
    assert acc.metrics()["sve"] == pytest.approx(math.log(dim), abs=1e-12)
    assert acc.metrics()["lsvr"] == pytest.approx(math.log(dim), abs=1e-12)


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
    kind: str, normalize_rows: bool, center: bool
) -> None:
    x = make_features(kind)
    ref = spectral_metrics(x, normalize_rows=normalize_rows, center=center)
    for sizes in batchings(x.shape[0]):
        acc = GramAccumulator(x.shape[1], normalize_rows=normalize_rows, center=center)
        for chunk in torch.split(x, sizes):
            acc.update(chunk)
        assert acc.num_samples == x.shape[0]
        out = acc.metrics()
        assert rel_err(out["sve"], ref["sve"]) < REL_TOL, sizes
        assert rel_err(out["lsvr"], ref["lsvr"]) < REL_TOL, sizes
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
        acc.metrics()
    acc.update(x)
    assert acc.metrics()["sve"] == pytest.approx(spectral_metrics(x)["sve"], rel=REL_TOL)


def test_all_reduce_without_process_group_is_noop() -> None:
    acc = GramAccumulator(16)
    acc.update(make_features("random_tall"))
    before = acc.metrics()
    acc.all_reduce()
    assert acc.num_samples == 300
    assert acc.metrics()["sve"] == before["sve"]


# --- degenerate inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("normalize_rows", [True, False])
def test_single_sample(normalize_rows: bool) -> None:
    x = torch.randn(1, 8, generator=torch.Generator().manual_seed(1))
    out = spectral_metrics(x, normalize_rows=normalize_rows)
    assert out["sve"] == 0.0 and out["lsvr"] == 0.0
    assert out["singular_values"].shape == (1,)
    acc = GramAccumulator(8, normalize_rows=normalize_rows)
    acc.update(x)
    m = acc.metrics()
    assert m["sve"] == pytest.approx(0.0, abs=1e-12) and m["lsvr"] == pytest.approx(0.0, abs=1e-12)
    assert m["singular_values"].shape == (1,)


def test_single_sample_centered_is_all_zero() -> None:
    x = torch.randn(1, 8)
    with pytest.raises(ValueError, match="all zero"):
        spectral_metrics(x, center=True)
    acc = GramAccumulator(8, center=True)
    acc.update(x)
    with pytest.raises(ValueError, match="all zero"):
        acc.metrics()


@pytest.mark.parametrize("normalize_rows", [True, False])
def test_all_zero_features_raise(normalize_rows: bool) -> None:
    x = torch.zeros(5, 8)
    with pytest.raises(ValueError, match="features are all zero: the spectrum is undefined"):
        spectral_metrics(x, normalize_rows=normalize_rows)
    acc = GramAccumulator(8, normalize_rows=normalize_rows)
    acc.update(x)
    with pytest.raises(ValueError, match="features are all zero: the spectrum is undefined"):
        acc.metrics()


def test_zero_rows_stay_zero() -> None:
    x = make_features("random_tall")[:20].clone()
    x[3] = 0.0
    out = spectral_metrics(x)
    assert math.isfinite(out["sve"]) and math.isfinite(out["lsvr"])
    sve, lsvr = numpy_reference(x.numpy(), True, False)
    assert rel_err(out["sve"], sve) < 1e-9 and rel_err(out["lsvr"], lsvr) < 1e-9
    acc = GramAccumulator(16)
    acc.update(x)
    assert rel_err(acc.metrics()["sve"], sve) < REL_TOL


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
    m = acc.metrics()
    assert m["singular_values"].shape == (3,)
    assert rel_err(m["sve"], sve) < REL_TOL and rel_err(m["lsvr"], lsvr) < REL_TOL


# --- real DDP (2 processes, gloo, CPU) ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str, center: bool) -> None:
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
        acc.all_reduce()
        m = acc.metrics()
        result = {
            "num_samples": acc.num_samples,
            "sve": m["sve"],
            "lsvr": m["lsvr"],
            "singular_values": m["singular_values"].tolist(),
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.timeout(120)
def test_ddp_all_reduce_matches_single_process(tmp_path: Path) -> None:
    world_size = 2
    mp.spawn(
        _ddp_worker,
        args=(world_size, _free_port(), str(tmp_path), True),
        nprocs=world_size,
        join=True,
    )
    x = make_features("random_tall")
    ref = spectral_metrics(x, center=True)
    for rank in range(world_size):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["num_samples"] == x.shape[0]
        assert rel_err(got["sve"], ref["sve"]) < REL_TOL
        assert rel_err(got["lsvr"], ref["lsvr"]) < REL_TOL
        torch.testing.assert_close(
            torch.tensor(got["singular_values"], dtype=torch.float64),
            ref["singular_values"],
            rtol=1e-6,
            atol=1e-9,
        )
