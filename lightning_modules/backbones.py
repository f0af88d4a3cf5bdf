"""Frozen feature extractors, however users bring them: one small interface for every consumer.

A :class:`Backbone` maps normalised images ``(B, 3, S, S)`` to features ``(B, dim)`` and says how
to feed it (``normalization``, ``image_size``) and what it is (``identity``, a key that changes
whenever the weights do). Build one with a constructor that reads like the config it comes from::

    timm_backbone("resnet50", pretrained=True)                       # timm hub weights
    timm_backbone("resnet50", pretrained="runs/x/export/model.safetensors")
    timm_backbone("local-dir:runs/x/export", pretrained=True)        # an export (or hf-hub:)
    open_clip_backbone("ViT-B-16", pretrained="openai")              # a tag or a weights file
    open_clip_backbone("local-dir:runs/y/export")                    # an export (or hf-hub:)
    from_card("runs/x/export/card.json")                             # what this suite exported

In a YAML config the same choices are a :class:`BackboneConfig` (``card: ...``, or ``timm: NAME``
with ``pretrained: ...``, or ``open_clip: NAME`` with ``pretrained: TAG_OR_FILE``).
Hub weights need the internet; offline, download them elsewhere and pass the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from timm.models import get_model_args
from torch import nn

from callbacks.export import card_path, read_card
from datamodules.errors import ConfigError
from datamodules.transforms import NORMALIZATIONS

log = logging.getLogger(__name__)

# Names that timm and open_clip resolve to a hub-style folder (config + weights) themselves.
HUB_STYLE = ("local-dir:", "hf-hub:")
HUB_CONFIGS = {"timm": "config.json", "open_clip": "open_clip_config.json"}

__all__ = ["Backbone", "BackboneConfig", "from_card", "open_clip_backbone", "timm_backbone"]


class Backbone(nn.Module):
    """An image feature extractor plus what a data pipeline and a feature cache need to know.

    Attributes:
        dim: Feature dimension of :meth:`forward`.
        normalization: Name in ``datamodules.transforms.NORMALIZATIONS`` the weights expect.
        image_size: Side of the square input the weights were made for.
        identity: ``library:model_name:digest``; the digest hashes the architecture options and
            every weight as loaded, so two different weights never share an identity.
        frozen: Parameters do not require grad and the module stays in eval mode even when a
            parent module is put in training mode (BatchNorm statistics never move).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        dim: int,
        normalization: str,
        image_size: int,
        library: str,
        model_name: str,
        options: dict[str, Any],
        frozen: bool,
    ) -> None:
        super().__init__()
        self.model = model
        self.dim = int(dim)
        self.normalization = normalization
        self.image_size = int(image_size)
        self.identity = f"{library}:{model_name}:{weights_digest(model, options)[:16]}"
        self.frozen = frozen
        self.requires_grad_(not frozen)
        self.eval()

    def train(self, mode: bool = True) -> Backbone:
        return super().train(mode and not self.frozen)

    def extra_repr(self) -> str:
        return f"identity={self.identity!r}, dim={self.dim}, frozen={self.frozen}"


class TimmBackbone(Backbone):
    """timm's pre-logits features: ``forward_head(forward_features(x), pre_logits=True)``,
    exactly what ``SupervisedPretraining.features`` computes during training."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)


class OpenClipBackbone(Backbone):
    """open_clip's image embedding ``encode_image(x)``, not L2-normalised (consumers decide).
    The whole model stays inside: its text tower makes zero-shot heads (``zeroshot.py``) with
    the tokenizer that ``open_clip.get_tokenizer(tokenizer_name)`` gives."""

    def __init__(self, model: nn.Module, *, tokenizer_name: str, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.tokenizer_name = tokenizer_name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


def weights_digest(model: nn.Module, options: dict[str, Any]) -> str:
    """sha256 of the construction options and of every state tensor's name, dtype, shape and
    bytes: the weights actually loaded, whichever file format or hub they came from."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def timm_backbone(
    model_name: str,
    pretrained: bool | str | Path = False,
    model_kwargs: dict[str, Any] | None = None,
    frozen: bool = True,
) -> Backbone:
    """A timm model without its classifier.

    Args:
        model_name: timm architecture (``resnet50``, ``vit_base_patch16_224.augreg_in21k``...),
            or ``local-dir:FOLDER`` / ``hf-hub:REPO`` of a timm hub folder (an FS export).
        pretrained: ``False`` random init, ``True`` timm's hub weights (or the folder's), or a
            weights file (the ``model.safetensors`` an FS export wrote, or any timm state dict).
        model_kwargs: Extra ``timm.create_model`` arguments (``img_size``, ...), as trained.
        frozen: Freeze the weights (False to fine-tune).
    """
    kwargs = dict(model_kwargs or {})
    hub_style = model_name.startswith(HUB_STYLE)
    if not hub_style and not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0].split('.')[0]}*")[:8]
        raise ConfigError(
            f"model_name {model_name!r} is not a timm model (timm.list_models() lists them); "
            f"similar names: {close}"
        )
    weights = None if isinstance(pretrained, bool) else _existing_file(pretrained)
    overlay = {} if weights is None else {"pretrained_cfg_overlay": {"file": str(weights)}}
    try:
        model = timm.create_model(
            model_name, pretrained=pretrained is not False, num_classes=0, **overlay, **kwargs
        )
    except TypeError as err:
        raise ConfigError(
            f"model_kwargs {kwargs} are not options of timm model {model_name!r}: {err}"
        ) from err
    except Exception as err:  # hub, file-format and shape errors alike: these weights are unusable
        if pretrained is False:
            raise
        if weights is not None:
            raise _misfit(weights, f"timm model {model_name!r}", kwargs, err) from err
        if model_name.startswith("local-dir:"):
            raise ConfigError(
                f"timm cannot load {model_name!r} ({_brief(err)}): it needs a folder with "
                "config.json and model.safetensors, as an FS export"
            ) from err
        raise ConfigError(
            f"pretrained=True could not load timm's hub weights for {model_name!r} "
            f"({_brief(err)}); the hub is unreachable offline: download the weights "
            "where there is internet and pass pretrained='path/to/model.safetensors'"
        ) from err
    if weights is not None:
        _check_all_loaded(model, weights, model_name)
    # hub weights and exports say how they were trained; files and random weights get the
    # suite's default
    normalization = "imagenet"
    if pretrained is True:
        normalization = _normalization_named(model.pretrained_cfg["mean"], model_name)
    image_size = kwargs.get("img_size", model.pretrained_cfg["input_size"][-1])
    return TimmBackbone(
        model,
        dim=getattr(model, "head_hidden_size", None) or model.num_features,
        normalization=normalization,
        image_size=image_size if isinstance(image_size, int) else image_size[-1],
        library="timm",
        model_name=model.pretrained_cfg["architecture"] if hub_style else model_name,
        # what built it, however given (kwargs, or an export's model_args): a file and the
        # export folder it sits in share one identity
        options={"model_args": get_model_args(model)},
        frozen=frozen,
    )


def open_clip_backbone(
    model_name: str,
    pretrained: str | Path | None = None,
    model_config: dict[str, Any] | None = None,
    frozen: bool = True,
) -> Backbone:
    """The image tower of an open_clip model.

    Args:
        model_name: open_clip architecture (``ViT-B-16``, ``RN50``...), the name to register
            ``model_config`` under, or ``local-dir:FOLDER`` / ``hf-hub:REPO`` of an open_clip
            hub folder (a CLIP export: config and weights together).
        pretrained: A pretrained tag (``openai``, ``laion2b_s34b_b88k``...: needs the hub) or a
            weights file (the ``open_clip_model.safetensors`` a CLIP export wrote); None leaves
            the weights random.
        model_config: An inline open_clip config (``embed_dim``, ``vision_cfg``, ``text_cfg``),
            as ``ContrastivePretraining`` takes it.
        frozen: Freeze the weights (False to fine-tune).
    """
    if model_name.startswith(HUB_STYLE):
        if pretrained is not None or model_config is not None:
            raise ConfigError(
                f"{model_name!r} brings its own config and weights: drop pretrained and "
                "model_config"
            )
        return _open_clip_backbone(_hub_style_open_clip(model_name), model_name, None, frozen)
    import open_clip  # imported by runs on open_clip backbones only

    from lightning_modules.pretrain_clip import require_open_clip_model

    require_open_clip_model(model_name, model_config, option="backbone.open_clip")
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    source = None if pretrained is None else str(pretrained)
    if source is not None and source not in tags:
        weights = Path(source).expanduser()
        if not weights.is_file():
            raise ConfigError(
                f"pretrained {source!r} is neither an existing weights file nor a pretrained tag "
                f"of {model_name!r} (tags: {tags}); fix the path or pick a tag"
            )
        source = str(weights)
    try:
        model = open_clip.create_model(model_name, pretrained=source, pretrained_text=False)
    except Exception as err:  # download, file-format, shape and config errors alike
        if source in tags:
            raise ConfigError(
                f"pretrained tag {source!r} of {model_name!r} could not be downloaded "
                f"({_brief(err)}); the hub is unreachable offline: download the weights "
                "where there is internet and pass their file as pretrained"
            ) from err
        if source is None:
            raise ConfigError(
                f"open_clip cannot build {model_name!r} ({_brief(err)}); fix model_config"
            ) from err
        raise _misfit(source, f"open_clip model {model_name!r}", model_config, err) from err
    return _open_clip_backbone(model, model_name, model_config, frozen)


def _hub_style_open_clip(model_name: str) -> nn.Module:
    """open_clip's own ``local-dir:``/``hf-hub:`` loading; a local folder without weights
    would give random ones with only a log line, so it stops the run here."""
    folder = Path(model_name.removeprefix("local-dir:"))
    if model_name.startswith("local-dir:") and not any(
        folder.glob(f"*.{suffix}") for suffix in ("safetensors", "bin", "pth")
    ):
        raise ConfigError(
            f"{model_name!r} holds no weights: it needs open_clip_config.json and "
            "open_clip_model.safetensors, as a CLIP export"
        )
    import open_clip

    try:
        return open_clip.create_model(model_name, pretrained_text=False)
    except Exception as err:  # missing folder or config, download and shape errors alike
        raise ConfigError(
            f"open_clip cannot load {model_name!r} ({_brief(err)}): it needs "
            "open_clip_config.json and open_clip_model.safetensors, as a CLIP export"
        ) from err


def _open_clip_backbone(
    model: nn.Module, model_name: str, model_config: dict[str, Any] | None, frozen: bool
) -> Backbone:
    """Feed the image tower as its preprocessing config says (an export's: as trained)."""
    preprocess = model.visual.preprocess_cfg
    size = preprocess["size"]
    return OpenClipBackbone(
        model,
        tokenizer_name=model_name,  # a registered name, or the local-dir:/hf-hub: folder
        dim=model.visual.output_dim,
        normalization=_normalization_named(preprocess["mean"], model_name),
        image_size=size if isinstance(size, int) else size[-1],
        library="open_clip",
        model_name=model_name,
        options={"model_config": model_config},
        frozen=frozen,
    )


def from_card(card: str | Path, frozen: bool = True) -> Backbone:
    """The backbone a training run exported: ``card.json`` (or its folder), loaded from the
    hub-style folder around it as ``local-dir:`` (exports older than those folders: from the
    weights file the card names)."""
    entry = read_card(card).get("backbone")
    folder = card_path(card).parent
    try:
        library, model_name = entry["library"], entry["model_name"]
        weights = folder / entry["weights"]
    except (KeyError, TypeError) as err:
        raise ConfigError(
            f"{card_path(card)} is not a backbone card of this suite (needs backbone.library, "
            f"backbone.model_name and backbone.weights): {type(err).__name__}: {err}"
        ) from err
    hub_style = weights.is_file() and (folder / HUB_CONFIGS.get(library, "")).is_file()
    if library == "timm":
        if hub_style:
            return timm_backbone(f"local-dir:{folder}", True, frozen=frozen)
        return timm_backbone(model_name, weights, entry.get("model_kwargs"), frozen)
    if library == "open_clip":
        if hub_style:
            return open_clip_backbone(f"local-dir:{folder}", frozen=frozen)
        return open_clip_backbone(model_name, weights, entry.get("model_config"), frozen)
    raise ConfigError(
        f"{card_path(card)}: backbone.library {library!r} is neither 'timm' nor 'open_clip'"
    )


@dataclass(frozen=True)
class BackboneConfig:
    """Where a backbone comes from, as a config section: one of ``card``, ``timm`` or
    ``open_clip``, or none of them when the data already are embeddings.

    Args:
        card: ``card.json`` (or its folder) that a training run of this suite exported.
        timm: timm model name.
        open_clip: open_clip model name.
        pretrained: With ``timm``: ``true`` for timm's hub weights, a weights file, or ``false``
            for random weights. With ``open_clip``: a pretrained tag or a weights file
            (``false``: random weights).
        model_kwargs: With ``timm``: extra ``timm.create_model`` arguments.
        model_config: With ``open_clip``: an inline open_clip model config.
    """

    card: str | None = None
    timm: str | None = None
    open_clip: str | None = None
    pretrained: bool | str = False
    model_kwargs: dict[str, Any] | None = None
    model_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        sources = [name for name in ("card", "timm", "open_clip") if getattr(self, name)]
        if len(sources) > 1:
            raise ConfigError(f"backbone takes one of card, timm or open_clip, got {sources}")
        misplaced = {
            "pretrained": self.pretrained is not False and not (self.timm or self.open_clip),
            "model_kwargs": self.model_kwargs is not None and not self.timm,
            "model_config": self.model_config is not None and not self.open_clip,
            "pretrained: true": self.pretrained is True and bool(self.open_clip),
        }
        wrong = [name for name, bad in misplaced.items() if bad]
        if wrong:
            raise ConfigError(
                f"backbone.{wrong[0]} does not go with backbone {sources or 'none'}: pretrained "
                "and model_kwargs go with timm, pretrained (a tag or file) and model_config "
                "with open_clip, nothing with card"
            )

    def build(self, frozen: bool = True) -> Backbone | None:
        """The backbone, or None when no source is set (embedding data)."""
        if self.card:
            return from_card(self.card, frozen)
        if self.timm:
            return timm_backbone(self.timm, self.pretrained, self.model_kwargs, frozen)
        if self.open_clip:
            pretrained = self.pretrained or None
            return open_clip_backbone(self.open_clip, pretrained, self.model_config, frozen)
        return None


def _existing_file(value: str | Path) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"pretrained weights file {str(path)!r} not found: pass the model.safetensors a "
            "training run exported (<log_dir>/export/) or another existing weights file"
        )
    return path


def _check_all_loaded(model: nn.Module, weights: Path, model_name: str) -> None:
    """timm loads a file into a model without classifier non-strictly, so a file of another
    architecture would leave layers silently random: the file must hold every tensor by name."""
    if weights.suffix == ".safetensors":
        with safe_open(str(weights), framework="pt") as handle:
            stored = set(handle.keys())
    else:
        stored = set(timm.models.load_state_dict(str(weights)))
    missing = [name for name in model.state_dict() if name not in stored]
    if missing:
        raise ConfigError(
            f"pretrained weights file {str(weights)!r} lacks {len(missing)} tensors of timm model "
            f"{model_name!r} (e.g. {missing[:3]}): it holds another architecture, was trained "
            "with other model_kwargs, or names its tensors unlike timm; pass the matching "
            "model_name and model_kwargs, or convert the file to timm names"
        )


def _misfit(weights: Path | str, what: str, options: Any, err: BaseException) -> ConfigError:
    return ConfigError(
        f"weights file {str(weights)!r} cannot be loaded into {what} with options {options} "
        f"({_brief(err)}); pass an intact file and the model_name and options it was "
        "trained with"
    )


def _normalization_named(mean: Sequence[float], model_name: str) -> str:
    """The suite's normalisation whose mean matches; ``imagenet`` (with a warning) otherwise."""
    for name, (known_mean, _) in NORMALIZATIONS.items():
        if all(abs(a - b) < 1e-4 for a, b in zip(mean, known_mean, strict=True)):
            return name
    log.warning(
        "%s expects input mean %s, which no suite normalisation offers (%s); using imagenet",
        model_name,
        tuple(mean),
        sorted(NORMALIZATIONS),
    )
    return "imagenet"


def _brief(err: BaseException, limit: int = 300) -> str:
    """An exception as one line, cut to ``limit`` characters (state-dict errors run long)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
