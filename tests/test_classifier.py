"""The linear classifier head: epoch metrics per set, reset after compute, the official init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from datamodules.pipeline import DataQualityError
from lightning_modules.classifier import LinearClassifier


def test_metrics_are_per_set_over_the_epoch_and_reset() -> None:
    head = LinearClassifier(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        head.bias.zero_()
    for name in ("val", "clean"):
        head.add_evaluation_set(name)
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0]])
    head.update("val", x[:2], torch.tensor([0, 1]))
    head.update("val", x[2:], torch.tensor([1]))  # wrong
    head.update("clean", x, torch.tensor([0, 1, 0]))
    logs = head.compute(["val", "clean"], selection_set=None)
    expected_loss = F.cross_entropy(head(x), torch.tensor([0, 1, 1])).item()
    assert math.isclose(logs["val/acc"], 2 / 3, rel_tol=1e-6)
    assert math.isclose(logs["val/loss"], expected_loss, rel_tol=1e-6)  # per sample, not batch
    assert logs["clean/acc"] == 1.0 and logs["clean/f1"] == 1.0
    head.update("val", x, torch.tensor([0, 1, 0]))
    assert head.compute(["val"], selection_set=None)["val/acc"] == 1.0  # reset in between
    loss, logged = head.loss(x, torch.tensor([0, 1, 0]))
    assert loss is logged and head.card() == {}


def test_official_init_draws_kaiming_uniform_first_and_zeroes_the_bias() -> None:
    torch.manual_seed(0)
    head = LinearClassifier(64, 10, init="official")
    torch.manual_seed(0)
    expected = torch.nn.init.kaiming_uniform_(torch.empty(10, 64))
    assert torch.equal(head.weight, expected) and not head.bias.any()
    assert head.bias.requires_grad


def test_a_class_subset_scores_as_the_official_projection() -> None:
    """ImageNet-A/R: ``logits[:, subset]`` against labels renumbered in the subset (the
    official project_logits / project_labels), so a wrong class outside the subset that
    scores highest does not count."""
    torch.manual_seed(0)
    subset = [1, 4, 6, 7]
    head = LinearClassifier(5, 10)
    head.add_evaluation_set("in1k_a", subset)
    head.add_evaluation_set("in1k", None)
    x = torch.randn(64, 5)
    labels = torch.tensor(subset)[torch.randint(0, 4, (64,))]
    head.update("in1k_a", x, labels)
    head.update("in1k", x, labels)
    logs = head.compute(["in1k_a", "in1k"], selection_set=None)
    logits = head(x)[:, subset]
    official = torch.tensor([subset.index(int(y)) for y in labels])
    expected = (logits.argmax(1) == official).float().mean().item()
    assert math.isclose(logs["in1k_a/acc"], expected, rel_tol=1e-6)
    assert math.isclose(logs["in1k_a/loss"], F.cross_entropy(logits, official).item(), rel_tol=1e-5)
    assert logs["in1k/acc"] < logs["in1k_a/acc"]  # 10-way is harder


def test_a_label_outside_the_subset_stops_with_its_set_named() -> None:
    head = LinearClassifier(5, 10)
    head.add_evaluation_set("in1k_r", [1, 2])
    with pytest.raises(DataQualityError, match=r"'in1k_r' has labels \[3\] outside"):
        head.update("in1k_r", torch.randn(2, 5), torch.tensor([1, 3]))
