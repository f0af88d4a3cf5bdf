"""Weight-space ensembling of a fine-tuned model with its start (WiSE-FT, Wortsman et al. 2022;
the official ``src/wise_ft.py``)."""

from __future__ import annotations

import torch


def interpolate_weights(
    theta_0: dict[str, torch.Tensor], theta_1: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``theta_alpha = (1 - alpha) * theta_0 + alpha * theta_1`` for every floating-point entry
    of two state dicts with the same keys (the official ``_merge``); integer entries (BatchNorm's
    ``num_batches_tracked``) are taken from ``theta_1``."""
    if theta_0.keys() != theta_1.keys():
        raise ValueError(f"state dicts differ in {sorted(theta_0.keys() ^ theta_1.keys())[:5]}")
    return {
        key: (1 - alpha) * theta_0[key] + alpha * end if end.is_floating_point() else end.clone()
        for key, end in theta_1.items()
    }
