"""Image-text shards (img2dataset / open_clip layout) with controlled caption swaps."""

from __future__ import annotations

from typing import Any

import open_clip

from datamodules.base import ShardDataModule
from datamodules.errors import ConfigError
from datamodules.formats import ImageTextFormat
from datamodules.noise import CaptionSwapNoise


class ImageTextDataModule(ShardDataModule):
    """Image + caption shards; a seeded fraction of training captions swapped in pairs.

    Args:
        caption_noise_ratio: Fraction of training samples whose caption is swapped with another
            sample's (the paper's noisy YFCC15M), in ``[0, 1)``.
        swap_block_size: Consecutive samples of a shard among which swap partners are drawn.
        tokenizer: open_clip model name whose tokenizer encodes the captions.
        context_length: Tokens per caption (open_clip default 77).
        text_key: File extension of the caption inside the shards.
        **kwargs: Shard, loader and transform options of :class:`ShardDataModule`.
    """

    layout = "image_text"

    def __init__(
        self,
        caption_noise_ratio: float = 0.0,
        swap_block_size: int = 1000,
        tokenizer: str = "ViT-B-16",
        context_length: int = 77,
        text_key: str = "txt",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= caption_noise_ratio < 1.0:
            raise ConfigError(
                f"data.caption_noise_ratio must be in [0, 1), got {caption_noise_ratio}"
            )
        self.noise = (
            CaptionSwapNoise(caption_noise_ratio, self.seed, swap_block_size, text_key)
            if caption_noise_ratio
            else None
        )
        self.tokenizer_name = tokenizer
        self.context_length = context_length
        self.text_key = text_key

    def sample_format(self, training: bool) -> ImageTextFormat:
        tokenizer = open_clip.get_tokenizer(self.tokenizer_name, context_length=self.context_length)
        return ImageTextFormat(
            self.transform.build(training),
            tokenizer,
            caption_noise=self.noise if training else None,
            text_key=self.text_key,
        )

    def noise_summary(self) -> dict[str, Any]:
        ratio = 0.0 if self.noise is None else self.noise.ratio
        return {"type": "caption_swap" if ratio else "none", "ratio": ratio, "expected_rate": ratio}
