"""Backbones: the same features as the model they load, content identities, cards, mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from datamodules.errors import ConfigError
from lightning_modules.backbones import (
    BackboneConfig,
    from_card,
    open_clip_backbone,
    timm_backbone,
)
from lightning_modules.pretrain_fs import SupervisedPretraining

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
}
TINY_CLIP_NAME = "test-backbones-tiny-clip"


def save_state(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def images(size: int, count: int = 4) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_timm_file_gives_the_models_pre_logits_features(tmp_path):
    model = timm.create_model("test_resnet", num_classes=5).eval()
    backbone = timm_backbone("test_resnet", save_state(model, tmp_path / "model.safetensors"))
    x = images(32)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(backbone(x), expected, rtol=0, atol=0)
    assert backbone(x).shape == (4, backbone.dim) == (4, 96)
    assert (backbone.normalization, backbone.image_size) == ("imagenet", 160)


def test_frozen_stays_in_eval_mode_and_unfrozen_trains(tmp_path):
    path = save_state(timm.create_model("test_resnet", num_classes=0), tmp_path / "w.safetensors")
    frozen = timm_backbone("test_resnet", path)
    parent = torch.nn.Sequential(frozen).train()
    assert not any(m.training for m in parent[0].modules())
    assert not any(p.requires_grad for p in frozen.parameters())
    tuned = timm_backbone("test_resnet", path, frozen=False)
    assert not tuned.training, "returned in eval mode"
    assert all(p.requires_grad for p in tuned.parameters())
    assert all(m.training for m in tuned.train().modules())


def test_identity_follows_the_weights_content(tmp_path):
    model = timm.create_model("test_resnet", num_classes=0)
    first = save_state(model, tmp_path / "a.safetensors")
    copy = save_state(model, tmp_path / "b.safetensors")
    identity = timm_backbone("test_resnet", first).identity
    assert identity.startswith("timm:test_resnet:")
    assert timm_backbone("test_resnet", first).identity == identity
    assert timm_backbone("test_resnet", copy).identity == identity, "content, not the path"
    with torch.no_grad():
        model.conv1[0].weight[0, 0, 0, 0] += 1e-3
    changed = save_state(model, tmp_path / "c.safetensors")
    assert timm_backbone("test_resnet", changed).identity != identity


def write_fs_card(directory: Path, module: SupervisedPretraining) -> Path:
    """The card ``callbacks.export.write_card`` writes, by hand."""
    directory.mkdir(parents=True, exist_ok=True)
    card = {"backbone": module.export(directory), "epochs": 1, "data": {}, "metrics": {}}
    path = directory / "card.json"
    path.write_text(json.dumps(card))
    return path


def test_fs_card_round_trip(tmp_path):
    module = SupervisedPretraining(
        "test_vit", num_classes=4, model_kwargs={"img_size": 32, "patch_size": 8}
    ).eval()
    card = write_fs_card(tmp_path / "export", module)
    backbone = from_card(card)
    x = images(32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), module.features({"image": x}))
    assert (backbone.dim, backbone.image_size) == (module.feature_dim, 32)
    direct = timm_backbone(
        "test_vit", tmp_path / "export" / "model.safetensors", {"img_size": 32, "patch_size": 8}
    )
    assert from_card(tmp_path / "export").identity == direct.identity == backbone.identity


def test_open_clip_inline_config_and_weights_file(tmp_path):
    reference = open_clip_backbone(TINY_CLIP_NAME, model_config=TINY_CLIP)
    weights = save_state(reference.model, tmp_path / "open_clip_model.safetensors")
    backbone = open_clip_backbone(TINY_CLIP_NAME, str(weights), TINY_CLIP)
    x = images(16)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference.model.encode_image(x))
    assert backbone.identity == reference.identity
    assert (backbone.dim, backbone.image_size, backbone.normalization) == (16, 16, "clip")
    card = {
        "backbone": {
            "library": "open_clip",
            "model_name": TINY_CLIP_NAME,
            "model_config": TINY_CLIP,
            "weights": weights.name,
        }
    }
    (tmp_path / "card.json").write_text(json.dumps(card))
    assert from_card(tmp_path / "card.json").identity == reference.identity


def test_config_builds_each_source(tmp_path):
    module = SupervisedPretraining("test_resnet", num_classes=3)
    card = write_fs_card(tmp_path / "export", module)
    weights = str(tmp_path / "export" / "model.safetensors")
    identity = from_card(card).identity
    assert BackboneConfig(card=str(card)).build().identity == identity
    assert BackboneConfig(timm="test_resnet", pretrained=weights).build().identity == identity
    clip = BackboneConfig(open_clip=TINY_CLIP_NAME, model_config=TINY_CLIP).build(frozen=False)
    assert clip.dim == 16 and all(p.requires_grad for p in clip.parameters())
    assert BackboneConfig().build() is None, "no source: the data are embeddings"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"card": "c.json", "timm": "resnet18"}, "one of card, timm or open_clip"),
        ({"card": "c.json", "pretrained": True}, "backbone.pretrained does not go"),
        ({"open_clip": "RN50", "model_kwargs": {}}, "backbone.model_kwargs does not go"),
        ({"timm": "resnet18", "model_config": {}}, "backbone.model_config does not go"),
        ({"open_clip": "RN50", "pretrained": True}, "backbone.pretrained: true does not go"),
    ],
)
def test_config_mistakes(options, message):
    with pytest.raises(ConfigError, match=message):
        BackboneConfig(**options)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """No network and an empty cache: hub downloads fail at once instead of retrying."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_timm_mistakes_are_config_errors(tmp_path, offline_hub):
    with pytest.raises(ConfigError, match="'resnet_does_not_exist' is not a timm model"):
        timm_backbone("resnet_does_not_exist")
    with pytest.raises(ConfigError, match=r"missing\.safetensors' not found"):
        timm_backbone("test_resnet", tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match=r"hub is unreachable.*pass pretrained="):
        timm_backbone("test_resnet", pretrained=True)
    other = save_state(timm.create_model("test_vit", num_classes=0), tmp_path / "vit.safetensors")
    with pytest.raises(ConfigError, match=r"lacks .* tensors of timm model 'test_resnet'"):
        timm_backbone("test_resnet", other)
    with pytest.raises(ConfigError, match=r"model_kwargs .* are not options"):
        timm_backbone("test_resnet", model_kwargs={"no_such_option": 1})


def test_open_clip_mistakes_are_config_errors(tmp_path, offline_hub):
    with pytest.raises(ConfigError, match="'NoSuchClip' is not an open_clip model"):
        open_clip_backbone("NoSuchClip")
    with pytest.raises(ConfigError, match="neither an existing weights file nor a pretrained tag"):
        open_clip_backbone("RN50", str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConfigError, match=r"could not be downloaded.*hub is unreachable"):
        open_clip_backbone("RN50", "openai")
    timm_weights = save_state(timm.create_model("test_resnet"), tmp_path / "t.safetensors")
    with pytest.raises(ConfigError, match="cannot be loaded into open_clip model"):
        open_clip_backbone(TINY_CLIP_NAME, str(timm_weights), TINY_CLIP)


def test_card_mistakes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"card .* not found"):
        from_card(tmp_path / "card.json")
    (tmp_path / "card.json").write_text('{"epochs": 1}')
    with pytest.raises(ConfigError, match="not a backbone card"):
        from_card(tmp_path)
    card = {"backbone": {"library": "keras", "model_name": "x", "weights": "w"}}
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ConfigError, match="'keras' is neither 'timm' nor 'open_clip'"):
        from_card(tmp_path)
    card["backbone"]["library"] = "timm"
    card["backbone"]["model_name"] = "test_resnet"
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ConfigError, match=r"weights file .* not found"):
        from_card(tmp_path)
