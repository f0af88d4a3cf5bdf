"""Training accuracy against observed and clean labels, split by noisy/clean, on known flips."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.pretrain_fs import NoisyLabelMetrics


def test_memorisation_metrics_on_a_batch_with_known_flips():
    clean = torch.tensor([0, 1, 2, 3, 4, 5])
    observed = torch.tensor([0, 1, 2, 9, 8, 7])  # the last three labels were flipped
    noisy = torch.tensor([False, False, False, True, True, True])
    # predictions: 2 of 3 clean right; noisy: one fits its wrong label, one its true class
    preds = torch.tensor([0, 1, 6, 9, 4, 1])
    metrics = NoisyLabelMetrics()
    metrics.update(preds, {"label": observed, "clean_label": clean, "is_noisy": noisy})
    got = {name: float(metric.compute()) for name, metric in metrics.means.items()}
    assert got == pytest.approx(
        {
            "acc_observed": 3 / 6,  # 0, 1 and the memorised 9
            "acc_clean": 3 / 6,  # 0, 1 and the recovered 4
            "clean_subset_acc": 2 / 3,
            "memorised": 1 / 3,  # noisy samples predicted as their wrong label
            "noisy_clean": 1 / 3,  # noisy samples predicted as their true class
        }
    )


def test_batches_without_noisy_samples_do_not_dilute_the_noisy_subset():
    metrics = NoisyLabelMetrics()
    labels = torch.tensor([1, 2])
    metrics.update(
        labels, {"label": labels, "clean_label": labels, "is_noisy": torch.tensor([False, False])}
    )
    flipped = {
        "label": torch.tensor([3]),
        "clean_label": torch.tensor([4]),
        "is_noisy": torch.tensor([True]),
    }
    metrics.update(torch.tensor([3]), flipped)
    assert float(metrics.means["memorised"].compute()) == 1.0
    assert float(metrics.means["acc_observed"].compute()) == 1.0
    assert float(metrics.means["clean_subset_acc"].compute()) == 1.0
