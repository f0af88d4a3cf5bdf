"""Zero-shot classification from an open_clip model's text tower: the official code's
``get_zeroshot_classifier`` (from wise-ft), built with open_clip's own prompt embedding.

The head is ``logits = exp(t) * (F / ||F||) W^T + b``: each row of W is the mean over the prompt
templates of a class's L2-normalised text embeddings, normalised again
(``open_clip.build_zero_shot_classifier``); exp(t) is the model's learnt logit scale, folded into
W as the official ``zeroshot_weights *= logit_scale.exp()``; b starts at zero. The official
``ClassificationHead(normalize=True, weights)`` normalises the image features the same way.
``method: zeroshot`` scores the head as it is; ``zeroshot.init_head`` starts fine-tuning from it
(the official ``--load-zero-shot-classifier``, its default for CLIP models).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from datamodules.errors import ConfigError
from lightning_modules.backbones import Backbone, OpenClipBackbone
from lightning_modules.classifier import LinearClassifier

# open_clip's prompt sets: the CLIP paper's 80 ImageNet prompts (the official NMTune README's
# ``--template=openai_imagenet_template``) and its 7-prompt subset.
TEMPLATE_SETS = {"openai": "OPENAI_IMAGENET_TEMPLATES", "simple": "SIMPLE_IMAGENET_TEMPLATES"}


@dataclass(frozen=True)
class ZeroShotConfig:
    """Zero-shot head options (open_clip backbones).

    Args:
        templates: ``openai`` (the CLIP paper's 80 ImageNet prompts, as the official README's
            ``openai_imagenet_template``), ``simple`` (its 7-prompt subset) or a list of format
            strings with ``{}`` for the class name.
        class_names: Class names in label order (default: ``class_names`` of the data's
            ``_info.json``, as ``scripts/write_shards.py`` and the built-in sets write it).
        init_head: With ``ft``/``lora``: start the classifier from the zero-shot head, as the
            official fine-tuning does for CLIP models (``--load-zero-shot-classifier``, default
            true there); ``method: zeroshot`` always uses it.
    """

    templates: str | list[str] = "openai"
    class_names: list[str] | None = None
    init_head: bool = False

    def prompt_templates(self) -> list[str]:
        if isinstance(self.templates, str):
            if self.templates not in TEMPLATE_SETS:
                raise ConfigError(
                    f"model.zeroshot.templates {self.templates!r} is neither "
                    f"{' nor '.join(TEMPLATE_SETS)} nor a list of format strings"
                )
            import open_clip  # imported by zero-shot heads only

            prompts = getattr(open_clip, TEMPLATE_SETS[self.templates])
            return [template("{}") for template in prompts]
        if not self.templates or not all("{}" in template for template in self.templates):
            raise ConfigError(
                "model.zeroshot.templates must be format strings with {} for the class name, "
                f"got {self.templates!r}"
            )
        return list(self.templates)

    def names_for(self, data_class_names: Sequence[str] | None, num_classes: int) -> list[str]:
        names = self.class_names or data_class_names
        if not names:
            raise ConfigError(
                "a zero-shot head needs class names: set model.zeroshot.class_names, or write "
                "the shards with scripts/write_shards.py (its _info.json lists class_names)"
            )
        if len(names) != num_classes:
            raise ConfigError(
                f"model.zeroshot: {len(names)} class names for model.num_classes "
                f"{num_classes}; give one name per class, in label order"
            )
        return list(names)


class ZeroShotClassifier(LinearClassifier):
    """``logits = (F / ||F||) W^T + b`` with W = exp(t) x the text head (see the module).

    Args:
        weights: (C, D) class embeddings, logit scale included.
        templates: How many prompts each class averaged (for the card).
    """

    def __init__(self, weights: torch.Tensor, templates: int) -> None:
        super().__init__(weights.shape[1], weights.shape[0])
        with torch.no_grad():
            self.weight.copy_(weights)
            self.bias.zero_()
        self.templates = templates

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(F.normalize(features, dim=-1))

    def card(self) -> dict[str, Any]:
        return {"head": {"init": "zeroshot", "templates": self.templates}}


def zero_shot_classifier(
    backbone: Backbone, class_names: Sequence[str], templates: Sequence[str], device: torch.device
) -> ZeroShotClassifier:
    """The zero-shot head of ``backbone`` for ``class_names`` (prompts embedded on ``device``)."""
    if not isinstance(backbone, OpenClipBackbone):
        raise ConfigError(
            "a zero-shot head needs a text tower: use an open_clip backbone (model.backbone."
            "open_clip, or the card of a CLIP pre-training), not a timm one"
        )
    model = backbone.model.to(device)
    import open_clip

    tokenizer = open_clip.get_tokenizer(backbone.tokenizer_name)
    text_head = open_clip.build_zero_shot_classifier(
        model, tokenizer, list(class_names), list(templates), device=device
    )
    with torch.no_grad():
        weights = (text_head.float().T * model.logit_scale.exp().float()).cpu()
    return ZeroShotClassifier(weights, len(templates))
