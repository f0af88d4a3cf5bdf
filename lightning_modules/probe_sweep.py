"""Linear probe weight-decay sweep: one head per weight decay, selected on a validation set.

CLIP_benchmark's linear probe trains one probe per candidate weight decay on a training split,
keeps the one with the best accuracy on a validation split, and reports that probe on the test
set. Here the candidates train side by side, on the same batches of the same cached features,
in one run: each head is its own ``nn.Linear`` in its own optimiser parameter group (with its own
weight decay), and the loss is the sum of the heads' cross-entropies, so every head gets exactly
the gradient it would get alone. After each validation epoch the head with the best accuracy on
the selection set becomes the classifier; every set is then reported for that head, and the test
stage uses the head selected last (the choice is a buffer, so it is saved in checkpoints).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError
from lightning_modules.base import ParameterGroup
from lightning_modules.classifier import ScoredSet


def weight_decay_label(weight_decay: float) -> str:
    """``1e-05`` -> ``wd_1e-05``: the name of a head's metrics in the logs."""
    return f"wd_{weight_decay:g}"


class WeightDecaySweep(nn.Module):
    """One linear head per weight decay; ``forward`` is the selected head (a
    :class:`~lightning_modules.classifier.ClassifierHead`).

    Args:
        dim: Feature dimension D.
        num_classes: Output classes.
        weight_decays: Candidate weight decays (at least two, none negative); on equal
            validation accuracy the first listed wins.
    """

    def __init__(self, dim: int, num_classes: int, weight_decays: Sequence[float]) -> None:
        super().__init__()
        if len(weight_decays) < 2 or min(weight_decays) < 0:
            raise ConfigError(
                "model.weight_decay_sweep needs at least two weight decays, none negative; "
                f"got {list(weight_decays)}"
            )
        self.weight_decays = tuple(float(value) for value in weight_decays)
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in self.weight_decays)
        self.register_buffer("selected", torch.tensor(0))
        self.num_classes = num_classes
        self.metrics = nn.ModuleDict()

    @property
    def in_features(self) -> int:
        return self.heads[0].in_features

    @property
    def selected_weight_decay(self) -> float:
        return self.weight_decays[int(self.selected)]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.heads[int(self.selected)](features)

    def loss(
        self, features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sum_k CE(head_k(x), y)``: each head's gradient is the one it would get alone;
        logged as the mean over heads."""
        total = sum(F.cross_entropy(head(features), labels) for head in self.heads)
        return total, total / len(self.heads)

    def parameter_groups(self) -> list[ParameterGroup]:
        """Each head in its own group, with its own weight decay."""
        return [
            ParameterGroup(head, weight_decay=weight_decay, name=weight_decay_label(weight_decay))
            for head, weight_decay in zip(self.heads, self.weight_decays, strict=True)
        ]

    # --- evaluation -----------------------------------------------------------------------
    def add_evaluation_set(self, name: str, classes: Sequence[int] | None = None) -> None:
        """Accuracy, macro F1 and mean cross-entropy of every head on the set ``name`` (over
        ``classes`` only, when given)."""
        self.metrics[name] = nn.ModuleList(
            ScoredSet(name, self.num_classes, classes) for _ in self.heads
        )

    def update(self, name: str, features: torch.Tensor, labels: torch.Tensor) -> None:
        for head, scored in zip(self.heads, self.metrics[name], strict=True):
            scored.update(head(features), labels)

    def compute(self, names: Sequence[str], selection_set: str | None) -> dict[str, float]:
        """Every head's metrics on ``names`` (synced across ranks by torchmetrics), then reset.

        With ``selection_set`` the head with the best accuracy on that set is selected first.
        Returns ``<set>/<metric>`` for the selected head, ``<set>/acc_wd_<value>`` for each
        head, and ``selected_weight_decay``.
        """
        values = {name: [scored.compute() for scored in self.metrics[name]] for name in names}
        if selection_set is not None:
            accuracies = torch.stack([head["acc"] for head in values[selection_set]])
            self.selected.fill_(int(torch.argmax(accuracies)))
        chosen = int(self.selected)
        logs = {"selected_weight_decay": self.selected_weight_decay}
        for name in names:
            logs.update({f"{name}/{key}": float(v) for key, v in values[name][chosen].items()})
            for weight_decay, head in zip(self.weight_decays, values[name], strict=True):
                logs[f"{name}/acc_{weight_decay_label(weight_decay)}"] = float(head["acc"])
        return logs

    def card(self) -> dict[str, Any]:
        return {
            "weight_decay_sweep": list(self.weight_decays),
            "selected_weight_decay": self.selected_weight_decay,
        }
