"""Heads that adapt frozen features: the NMTune residual MLP and the classifier on top."""

from __future__ import annotations

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """NMTune's feature transform ``Z = s * MLP(F) + F`` (the official code's ``nml_tune``).

    ``MLP = Linear(D, rD) -> BatchNorm1d -> ReLU -> Linear(rD, D)`` and ``s`` is a learnable
    per-dimension scale (initialised to ``scale_init``), so at ``s = 0`` the transform is the
    identity and the head starts from the pre-trained features.
    """

    def __init__(self, dim: int, ratio: int = 4, scale_init: float = 1.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, ratio * dim),
            nn.BatchNorm1d(ratio * dim),
            nn.ReLU(inplace=True),
            nn.Linear(ratio * dim, dim),
        )
        self.scale = nn.Parameter(torch.full((dim,), float(scale_init)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * self.mlp(features) + features
