"""Zero-shot heads from an open_clip text tower: equal to a direct computation, scored by
``train.py validate``, and the start of fine-tuning with ``zeroshot.init_head``."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import open_clip
import pytest
import torch
import torch.nn.functional as F

from callbacks.export import write_card
from datamodules.classification import ClassificationDataModule
from datamodules.errors import ConfigError
from datamodules.transforms import TransformConfig
from lightning_modules.adapt import Adaptation
from lightning_modules.backbones import BackboneConfig, from_card
from lightning_modules.pretrain_clip import ContrastivePretraining
from lightning_modules.zeroshot import ZeroShotConfig, zero_shot_classifier
from tests.conftest import quiet_trainer, run_train

# open_clip's BPE vocabulary, so real prompts tokenise; everything else tiny
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLASSES = ["cat", "dog", "tulip"]


@pytest.fixture(scope="module")
def clip_card(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    module = ContrastivePretraining("test-zeroshot-tiny-clip", TINY_CLIP)
    with torch.no_grad():
        module.model.logit_scale.fill_(2.0)  # exp(2): the scale must be folded in
    return write_card(module, None, tmp_path_factory.mktemp("clip"), epochs=0, metrics={})


def test_the_head_is_the_official_zero_shot_classifier_computed_directly(clip_card):
    """Each row: mean over prompts of the normalised text embeddings, normalised, times
    exp(logit_scale); the image features are normalised before it (wise-ft's
    ``get_zeroshot_classifier`` and ``ClassificationHead(normalize=True)``)."""
    backbone = from_card(clip_card)
    templates = ZeroShotConfig("simple").prompt_templates()
    head = zero_shot_classifier(backbone, CLASSES, templates, torch.device("cpu"))

    model = open_clip.create_model(f"local-dir:{clip_card.parent}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{clip_card.parent}")
    rows = []
    with torch.no_grad():
        for name in CLASSES:
            text = model.encode_text(tokenizer([t.format(name) for t in templates]))
            mean = (text / text.norm(dim=-1, keepdim=True)).mean(dim=0)
            rows.append(mean / mean.norm())
        weights = torch.stack(rows) * model.logit_scale.exp()
        images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        image_features = model.encode_image(images)
        expected = F.normalize(image_features, dim=-1) @ weights.T
        logits = head(backbone(images))
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.equal(head.bias, torch.zeros(3))
    assert head.card() == {"head": {"init": "zeroshot", "templates": len(templates)}}


def test_a_timm_backbone_or_missing_class_names_stop_with_the_option_to_fix(tmp_path):
    from tests.test_adapt import TINY_VIT, export_card

    timm_card = export_card(tmp_path, "vit_tiny_patch16_224", TINY_VIT)
    with pytest.raises(ConfigError, match="needs a text tower: use an open_clip backbone"):
        zero_shot_classifier(from_card(timm_card), CLASSES, ["{}"], torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"model\.zeroshot\.class_names"):
        ZeroShotConfig().names_for(None, 3)
    with pytest.raises(ConfigError, match=r"2 class names for model\.num_classes 3"):
        ZeroShotConfig(class_names=["a", "b"]).names_for(None, 3)
    with pytest.raises(ConfigError, match=r"format strings with \{\}"):
        ZeroShotConfig(templates=["a photo"]).prompt_templates()
    with pytest.raises(ConfigError, match="init_head starts ft or lora"):
        Adaptation(
            "lp", 3, BackboneConfig(card=str(timm_card)), zeroshot=ZeroShotConfig(init_head=True)
        )


def quickstart_args(clip_card: Path, builtin_root: Path, source: Path, tmp_path: Path) -> list[str]:
    return [
        "--config=quickstart/zeroshot_ood.yaml",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--model.init_args.backbone.card={clip_card}",
        f"--model.init_args.cache_dir={tmp_path / 'cache'}",
        "--model.init_args.zeroshot.templates=simple",
        f"--data.init_args.builtin_root={builtin_root}",
        f"--data.init_args.builtin_source={source}",
        "--data.init_args.num_workers=0",
    ]


def test_train_py_validate_scores_every_set_and_exports_the_head(
    clip_card, builtin_root, tiny_fashion_mnist, tmp_path
):
    args = quickstart_args(clip_card, builtin_root, tiny_fashion_mnist, tmp_path)
    result = run_train("validate", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    (card_path,) = tmp_path.glob("*/version_0/export/card.json")
    card = json.loads(card_path.read_text())
    assert card["backbone"]["method"] == "zeroshot"
    assert card["backbone"]["head"] == {"init": "zeroshot", "templates": 7}
    for name in ("val", "clean", "gaussian_noise"):
        kind = "val" if name == "val" else "test"
        for key in (f"{kind}/{name}/acc", f"{kind}/{name}/f1", f"spectrum/{name}/lsvr"):
            assert 0 <= card["metrics"][key] < float("inf"), key
    assert "export:" in result.stdout

    refused = run_train("fit", *args[:1], *args[1:], f"--trainer.default_root_dir={tmp_path}")
    assert refused.returncode != 0
    assert "zeroshot trains nothing: run python train.py validate" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_fine_tuning_can_start_from_the_zero_shot_head(
    clip_card, builtin_root, tiny_fashion_mnist, tmp_path
):
    """``ft`` with ``zeroshot.init_head``: the classifier at the first step is the zero-shot
    head of the data's class names, and it trains."""
    data = ClassificationDataModule(
        builtin="fmnist_heldout",
        builtin_root=str(builtin_root),
        builtin_source=str(tiny_fashion_mnist),
        num_classes=10,
        batch_size=8,
        num_workers=0,
        transform=TransformConfig(image_size=32, crop_pct=1.0, normalization="clip"),
    )
    module = Adaptation(
        "ft", 10, BackboneConfig(card=str(clip_card)), zeroshot=ZeroShotConfig("simple", None, True)
    )
    start: dict[str, torch.Tensor] = {}

    class AtStart(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            start["weight"] = pl_module.classifier.weight.detach().clone()

    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=[AtStart()]
    )
    trainer.fit(module, data)
    names = data.class_names
    assert names is not None and len(names) == 10
    backbone = from_card(clip_card)
    expected = zero_shot_classifier(
        backbone, names, ZeroShotConfig("simple").prompt_templates(), torch.device("cpu")
    )
    assert torch.allclose(start["weight"], expected.weight, atol=1e-6)
    assert not torch.allclose(module.classifier.weight, start["weight"])  # it trained
