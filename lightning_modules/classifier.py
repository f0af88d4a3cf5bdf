"""The classifier of an adaptation: what it trains on, how it is scored, what its card says.

:class:`~lightning_modules.adapt.Adaptation` talks to its classifier through
:class:`ClassifierHead` alone, so a new kind of head (the linear probe's weight-decay sweep in
``probe_sweep.py`` is one) plugs in without a branch in the training story.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from datamodules.pipeline import DataQualityError
from lightning_modules.base import ParameterGroup


class ClassifierHead(Protocol):
    """A classifier on (B, D) features that scores itself on named evaluation sets."""

    in_features: int

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C) logits of the head that is the classifier now."""

    def loss(
        self, features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss and the cross-entropy to log (a mean over heads for several)."""

    def parameter_groups(self) -> list[ParameterGroup]:
        """The head's parameters for the optimiser, with their own weight decay if any."""

    def add_evaluation_set(self, name: str, classes: Sequence[int] | None = None) -> None:
        """Create the metrics of the evaluation set ``name``, scored on ``classes`` only when
        given (see :class:`ClassSubset`)."""

    def update(self, name: str, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Score one batch of the set ``name``."""

    def compute(self, names: Sequence[str], selection_set: str | None) -> dict[str, float]:
        """``<set>/<metric>`` of every set in ``names`` over the epoch (synced across ranks by
        torchmetrics), then reset; ``selection_set`` lets a head re-select itself first."""

    def card(self) -> dict[str, Any]:
        """What the export card records about the head beyond its weights."""


class ClassSubset(nn.Module):
    """Score a set on a subset of the classes, as the official ``project_logits`` and
    ``project_labels`` do for ImageNet-A and ImageNet-R (200 of the 1000 classes): the logits of
    those columns only, ``logits[:, classes]``, and each label renumbered to its position in
    ``classes``. A label outside the subset is a data mistake and stops the run.

    Args:
        classes: The class indices kept, in the order of the new numbering.
        num_classes: Size of the full label space.
        name: The evaluation set (for the error message).
    """

    def __init__(self, classes: Sequence[int], num_classes: int, name: str) -> None:
        super().__init__()
        position = torch.full((num_classes,), -1, dtype=torch.long)
        position[torch.tensor(list(classes))] = torch.arange(len(classes))
        self.register_buffer("columns", torch.tensor(list(classes)), persistent=False)
        self.register_buffer("position", position, persistent=False)
        self.name = name

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        projected = self.position[labels]
        if (projected < 0).any():
            outside = sorted(set(labels[projected < 0].tolist()))[:5]
            raise DataQualityError(
                f"evaluation set {self.name!r} has labels {outside} outside its class subset "
                "(data.class_subsets); fix the subset or the set's labels"
            )
        return logits[:, self.columns], projected


class ScoredSet(nn.Module):
    """One evaluation set's metrics, over a class subset when it has one."""

    def __init__(self, name: str, num_classes: int, classes: Sequence[int] | None) -> None:
        super().__init__()
        self.subset = None if classes is None else ClassSubset(classes, num_classes, name)
        self.metrics = classification_metrics(num_classes if classes is None else len(classes))

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.subset is not None:
            logits, labels = self.subset(logits, labels)
        update_classification(self.metrics, logits, labels)

    def compute(self) -> dict[str, torch.Tensor]:
        return compute_and_reset(self.metrics)


def classification_metrics(num_classes: int) -> nn.ModuleDict:
    """Micro accuracy, macro F1 and the sample-weighted mean cross-entropy of one set."""
    return nn.ModuleDict(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
            "loss": MeanMetric(),
        }
    )


def update_classification(
    metrics: nn.ModuleDict, logits: torch.Tensor, labels: torch.Tensor
) -> None:
    metrics["acc"].update(logits, labels)
    metrics["f1"].update(logits, labels)
    metrics["loss"].update(F.cross_entropy(logits, labels), weight=len(labels))


def compute_and_reset(metrics: nn.ModuleDict) -> dict[str, torch.Tensor]:
    values = {key: metric.compute() for key, metric in metrics.items()}
    for metric in metrics.values():
        metric.reset()
    return values


class LinearClassifier(nn.Linear):
    """One linear head, ``logits = W F + b``.

    Args:
        dim: Feature dimension D.
        num_classes: Output classes C.
        init: ``default`` (``nn.Linear``'s) or ``official`` (the official
            ``ClassificationHead(False, kaiming_uniform(empty(C, D)))``: weights from
            ``kaiming_uniform_`` with its defaults (bound sqrt(6 / D), not nn.Linear's
            1 / sqrt(D)) drawn first, and a bias that starts at zero and trains).
    """

    def __init__(
        self, dim: int, num_classes: int, init: Literal["default", "official"] = "default"
    ) -> None:
        official = init == "official"
        weight = nn.init.kaiming_uniform_(torch.empty(num_classes, dim)) if official else None
        super().__init__(dim, num_classes)  # its own draw comes after, as officially
        if weight is not None:
            with torch.no_grad():
                self.weight.copy_(weight)
                self.bias.zero_()
        self.num_classes = num_classes
        self.metrics = nn.ModuleDict()

    def loss(
        self, features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss = F.cross_entropy(self(features), labels)
        return loss, loss

    def parameter_groups(self) -> list[ParameterGroup]:
        return [ParameterGroup(self, name="head")]

    def add_evaluation_set(self, name: str, classes: Sequence[int] | None = None) -> None:
        self.metrics[name] = ScoredSet(name, self.num_classes, classes)

    def update(self, name: str, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.metrics[name].update(self(features), labels)

    def compute(self, names: Sequence[str], selection_set: str | None) -> dict[str, float]:
        return {
            f"{name}/{key}": float(value)
            for name in names
            for key, value in self.metrics[name].compute().items()
        }

    def card(self) -> dict[str, Any]:
        return {}
