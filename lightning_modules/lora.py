"""LoRA adapters on any backbone through peft's ``inject_adapter_in_model``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from datamodules.errors import ConfigError

# The official NMTune code adapts the MLP layers of each transformer block.
DEFAULT_TARGETS = r".*(mlp\.fc1|mlp\.fc2|mlp\.c_fc|mlp\.c_proj)$"


@dataclass(frozen=True)
class LoraConfig:
    """LoRA on the backbone (``method: lora``).

    Args:
        rank: Rank r of each adapter (official code: 8).
        alpha: Scaling numerator (peft default 8; the update is scaled by alpha / r).
        dropout: Dropout on the adapter input (peft default 0).
        target_modules: Regex over module names, or a list of name suffixes. Default: the MLP
            layers of timm ViTs (``mlp.fc1``/``mlp.fc2``) and open_clip ViTs
            (``mlp.c_fc``/``mlp.c_proj``). timm's fused ``attn.qkv`` can be targeted whole.
    """

    rank: int = 8
    alpha: int = 8
    dropout: float = 0.0
    target_modules: str | list[str] = DEFAULT_TARGETS


def add_lora(backbone: nn.Module, config: LoraConfig) -> None:
    """Inject adapters in place and leave only them trainable."""
    targets = config.target_modules
    names = [name for name, _ in backbone.named_modules()]
    matched = (
        [n for n in names if re.fullmatch(targets, n)]
        if isinstance(targets, str)
        else [n for n in names if any(n.endswith(t) for t in targets)]
    )
    if not matched:
        raise ConfigError(
            f"model.lora.target_modules {targets!r} matches no module of the backbone; LoRA's "
            "defaults target transformer MLPs (a ViT), e.g. names like "
            f"{[n for n in names if n][:5]}"
        )
    from peft import LoraConfig as PeftLoraConfig  # imported by LoRA runs only
    from peft import inject_adapter_in_model

    peft_config = PeftLoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
    )
    inject_adapter_in_model(peft_config, backbone)
    for name, param in backbone.named_parameters():
        param.requires_grad = "lora_" in name
