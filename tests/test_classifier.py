"""The linear classifier head: epoch metrics per set, reset after compute, the official init."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
