"""Image-text shards (img2dataset / open_clip layout) with controlled caption swaps."""

from __future__ import annotations

from typing import Any

import open_clip

from datamodules.base import ShardDataModule, Shards
from datamodules.builtin import prepare_fashion_mnist
from datamodules.errors import ConfigError
from datamodules.formats import ClassificationFormat, ImageTextFormat
from datamodules.noise import CaptionSwapNoise
from datamodules.pipeline import EpochLoader, ShardStream
from datamodules.shards import ShardSpec, read_info


class ImageTextDataModule(ShardDataModule):
    """Image + caption shards; a seeded fraction of training captions swapped in pairs.

    Args:
        caption_noise_ratio: Fraction of training samples whose caption is swapped with another
            sample's (the paper's noisy YFCC15M), in ``[0, 1)``.
        swap_block_size: Consecutive samples of a shard among which swap partners are drawn.
        tokenizer: open_clip model name whose tokenizer encodes the captions.
        context_length: Tokens per caption (open_clip default 77).
        text_key: File extension of the caption inside the shards.
        zeroshot_shards: Labelled classification shards (timm layout, never noised) evaluated
            zero-shot after the image-text validation sets: one spec, or ``{name: spec}``.
            Default with ``builtin: fashion_mnist``: its classification ``val`` split; ``{}``
            turns zero-shot evaluation off.
        zeroshot_class_names: Class names in label order for the zero-shot prompts, used for
            every zero-shot set (default: ``class_names`` of each set's ``_info.json``).
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
        zeroshot_shards: Shards = None,
        zeroshot_class_names: list[str] | None = None,
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
        self.zeroshot_shards = zeroshot_shards
        self.zeroshot_class_names = zeroshot_class_names
        self.zeroshot_specs: dict[str, ShardSpec] = {}
        self.zeroshot_classes: dict[str, list[str]] = {}

    def sample_format(self, training: bool, uint8: bool = False) -> ImageTextFormat:
        return ImageTextFormat(
            self.transform.build(training, uint8),
            self.tokenizer(),
            caption_noise=self.noise if training else None,
            text_key=self.text_key,
        )

    def tokenizer(self) -> Any:
        """The caption tokenizer; models use it for their prompts too (zero-shot classifiers)."""
        return open_clip.get_tokenizer(self.tokenizer_name, context_length=self.context_length)

    def noise_summary(self) -> dict[str, Any]:
        ratio = 0.0 if self.noise is None else self.noise.ratio
        return {"type": "caption_swap" if ratio else "none", "ratio": ratio, "expected_rate": ratio}

    # --- zero-shot classification sets, evaluated after the image-text validation sets ------
    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        shards = self.zeroshot_shards
        if shards is None and self.builtin == "fashion_mnist":
            builtin = prepare_fashion_mnist(self.builtin_root, self.builtin_source)
            shards = builtin["classification"]["val"]
        self.zeroshot_specs = self._parse_named(shards, "zeroshot_shards")
        clash = sorted(set(self.zeroshot_specs) & set(self.eval_specs["val"]))
        if clash:
            raise ConfigError(
                f"data.zeroshot_shards and data.val_shards both name a set {clash}; "
                "give the sets distinct names"
            )
        self.zeroshot_classes = {
            name: self._class_names(name, spec) for name, spec in self.zeroshot_specs.items()
        }

    @property
    def zeroshot_names(self) -> list[str]:
        """Names of the zero-shot sets: the last entries of ``eval_names("val")``."""
        return list(self.zeroshot_specs)

    def eval_names(self, split: str = "val") -> list[str]:
        names = super().eval_names(split)
        return names + self.zeroshot_names if split == "val" else names

    def val_dataloader(self) -> list[EpochLoader]:
        return super().val_dataloader() + [
            EpochLoader(self._zeroshot_stream(name, spec), self.loader_workers)
            for name, spec in self.zeroshot_specs.items()
        ]

    def _class_names(self, name: str, spec: ShardSpec) -> list[str]:
        info = read_info(spec.urls)
        names = self.zeroshot_class_names or info.get("class_names")
        if not names:
            raise ConfigError(
                f"zero-shot set {name!r} ({spec.spec}) has no class names: set "
                "data.zeroshot_class_names or add class_names to its _info.json"
            )
        declared = info.get("num_classes")
        if declared is not None and declared != len(names):
            raise ConfigError(
                f"data.zeroshot_class_names has {len(names)} names but {spec.spec!r} declares "
                f"{declared} classes in its _info.json"
            )
        return list(names)

    def _zeroshot_stream(self, name: str, spec: ShardSpec) -> ShardStream:
        rank, world = self._rank_world()
        return ShardStream(
            spec,
            ClassificationFormat(len(self.zeroshot_classes[name]), self.transform.build(False)),
            self.eval_batch_size,
            training=False,
            seed=self.seed,
            rank=rank,
            world_size=world,
            max_skip_fraction=self.max_skip_fraction,
        )
