"""Label and caption noise: determinism, nesting, rates, uniformity, presets."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from datamodules.embeddings import EmbeddingDataModule
from datamodules.errors import ConfigError
from datamodules.noise import (
    AsymmetricLabelNoise,
    CaptionSwapNoise,
    SymmetricLabelNoise,
    keyed_uniform,
)

KEYS = [f"sample-{i:06d}" for i in range(20_000)]
K = 10


def flips(noise, labels=None) -> list[tuple[int, bool]]:
    labels = labels or [i % K for i in range(len(KEYS))]
    return [noise(key, label) for key, label in zip(KEYS, labels, strict=True)]


def binomial_bounds(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    half = sigmas * (p * (1 - p) / n) ** 0.5
    return p - half, p + half


def test_symmetric_is_a_function_of_seed_and_key_only():
    noise = SymmetricLabelNoise(0.3, K, seed=7)
    first = flips(noise)
    assert first == flips(SymmetricLabelNoise(0.3, K, seed=7))
    assert first != flips(SymmetricLabelNoise(0.3, K, seed=8))
    # the same in a fresh interpreter (no per-process hash salt)
    code = (
        "from datamodules.noise import SymmetricLabelNoise as S;"
        "n=S(0.3,10,seed=7);print([n(f'sample-{i:06d}', i % 10) for i in range(50)])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(first[:50])


def test_symmetric_never_keeps_the_true_label_and_rate_is_binomial():
    labels = [i % K for i in range(len(KEYS))]
    result = flips(SymmetricLabelNoise(0.2, K, seed=0), labels)
    noisy = [(new, old) for (new, is_noisy), old in zip(result, labels, strict=True) if is_noisy]
    assert all(new != old for new, old in noisy)
    assert all(
        not is_noisy and new == old
        for (new, is_noisy), old in zip(result, labels, strict=True)
        if not is_noisy
    )
    low, high = binomial_bounds(len(KEYS), 0.2)
    assert low < len(noisy) / len(KEYS) < high


def test_symmetric_wrong_labels_are_uniform_over_other_classes():
    labels = [3] * len(KEYS)
    result = flips(SymmetricLabelNoise(0.5, K, seed=1), labels)
    counts = Counter(new for new, is_noisy in result if is_noisy)
    assert 3 not in counts and len(counts) == K - 1
    observed = [counts[c] for c in range(K) if c != 3]
    assert chisquare(observed).pvalue > 0.001


def test_ratios_are_nested_with_the_same_wrong_label():
    small = flips(SymmetricLabelNoise(0.05, K, seed=3))
    large = flips(SymmetricLabelNoise(0.10, K, seed=3))
    for (label_small, noisy_small), (label_large, noisy_large) in zip(small, large, strict=True):
        if noisy_small:
            assert noisy_large and label_large == label_small
    assert sum(n for _, n in large) > sum(n for _, n in small)


def test_include_true_class_matches_the_official_convention():
    noise = SymmetricLabelNoise(0.3, K, seed=0, include_true_class=True)
    rate = sum(n for _, n in flips(noise)) / len(KEYS)
    assert noise.expected_rate == pytest.approx(0.3 * (K - 1) / K)
    low, high = binomial_bounds(len(KEYS), noise.expected_rate)
    assert low < rate < high


def test_cifar10_asymmetric_transition_matrix():
    ratio = 0.4
    labels = [i % K for i in range(len(KEYS))]
    result = flips(AsymmetricLabelNoise.cifar10(ratio, seed=0), labels)
    matrix = np.zeros((K, K))
    for (new, _), old in zip(result, labels, strict=True):
        matrix[old, new] += 1
    matrix /= matrix.sum(axis=1, keepdims=True)
    expected = np.eye(K)
    for source, target in {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}.items():
        expected[source, source], expected[source, target] = 1 - ratio, ratio
    assert np.abs(matrix - expected).max() < 0.05


def test_asymmetric_from_json(tmp_path):
    path = tmp_path / "transitions.json"
    path.write_text(json.dumps({"transitions": {"0": 1}}))
    noise = AsymmetricLabelNoise.from_json(path, 0.5, seed=0)
    result = flips(noise, [0] * len(KEYS))
    assert {new for new, _ in result} == {0, 1}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a": "b"}))
    with pytest.raises(ValueError, match="integer class ids"):
        AsymmetricLabelNoise.from_json(bad, 0.5)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        AsymmetricLabelNoise.from_json(tmp_path / "missing.json", 0.5)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        SymmetricLabelNoise(ratio, K)


def caption_stream(n: int) -> list[dict]:
    return [{"__key__": f"img-{i:05d}", "txt": f"caption {i}"} for i in range(n)]


def test_caption_swap_pairs_each_sample_at_most_once():
    ratio = 0.3
    out = list(CaptionSwapNoise(ratio, seed=0, buffer_size=200)(caption_stream(5000)))
    assert [s["__key__"] for s in out] == [f"img-{i:05d}" for i in range(5000)]
    swapped = {s["__key__"]: s for s in out if s["is_noisy"]}
    owner = {f"caption {i}": f"img-{i:05d}" for i in range(5000)}
    for key, sample in swapped.items():
        assert sample["clean_txt"] == f"caption {int(key[4:])}"
        partner = swapped[owner[sample["txt"]]]  # the partner holds our caption, and we hold its
        assert partner["txt"] == sample["clean_txt"] and partner["__key__"] != key
        assert abs(int(partner["__key__"][4:]) - int(key[4:])) < 200  # inside one block
    captions = [s["txt"] for s in out]
    assert len(set(captions)) == len(captions)  # a permutation: nothing lost or duplicated
    for s in out:
        if not s["is_noisy"]:
            assert "clean_txt" not in s and s["txt"] == f"caption {int(s['__key__'][4:])}"
    rate = len(swapped) / len(out)
    assert ratio - 0.03 < rate <= ratio + 0.02


def test_caption_swap_is_deterministic_and_nested_in_selection():
    a = [s["is_noisy"] for s in CaptionSwapNoise(0.2, seed=5)(caption_stream(2000))]
    b = [s["is_noisy"] for s in CaptionSwapNoise(0.2, seed=5)(caption_stream(2000))]
    assert a == b
    c = [s["txt"] for s in CaptionSwapNoise(0.2, seed=6)(caption_stream(2000))]
    assert c != [s["txt"] for s in CaptionSwapNoise(0.2, seed=5)(caption_stream(2000))]


def test_swapping_identical_captions_is_not_counted_as_noise():
    samples = [{"__key__": f"k{i}", "txt": "same"} for i in range(500)]
    out = list(CaptionSwapNoise(0.5, seed=0)(samples))
    assert not any(s["is_noisy"] for s in out)


def test_exact_count_flips_ceil_ratio_n_nested_with_the_same_wrong_labels() -> None:
    """The official sample_noise_data's count: ``i < ratio * N`` over a permutation relabels
    ``ceil(ratio * N)`` samples; here the keys with the smallest flip uniform, nested."""
    keys = [f"k{i}" for i in range(1003)]
    flipped = {}
    for ratio in (0.05, 0.1, 0.3):
        noise = SymmetricLabelNoise(ratio, 10, seed=7, include_true_class=True).exact_count(keys)
        flipped[ratio] = {key for key in keys if key in noise.selected}
        assert len(flipped[ratio]) == math.ceil(ratio * len(keys))
        per_sample = SymmetricLabelNoise(ratio, 10, seed=7, include_true_class=True)
        for key in list(flipped[ratio])[:50]:  # a flipped key gets the per-sample noise's label
            assert noise(key, 3)[0] == int(keyed_uniform(7, key, "label") * 10)
        assert all(noise(key, 3) == (3, False) for key in keys if key not in flipped[ratio])
        assert per_sample.ratio == noise.ratio
    assert flipped[0.05] < flipped[0.1] < flipped[0.3]


def test_exact_count_in_embeddings_realises_the_count(tmp_path) -> None:
    torch.save({"features": torch.randn(90, 4), "labels": torch.arange(90) % 3}, tmp_path / "t.pt")
    data = EmbeddingDataModule(
        train=str(tmp_path / "t.pt"),
        num_classes=3,
        label_noise="symmetric",
        noise_ratio=0.2,
        noise_exact_count=True,
        batch_size=10,
    )
    data.setup("fit")
    changed = sum(
        int((batch["label"] != batch["clean_label"]).sum()) for batch in data.train_dataloader()
    )
    assert changed == 18  # other-class noise: every one of the ceil(0.2 * 90) flips shows
    assert data.noise_summary()["exact_count"] is True
    with pytest.raises(ConfigError, match="noise_exact_count is for label_noise: symmetric"):
        EmbeddingDataModule(train="x.pt", noise_exact_count=True)
