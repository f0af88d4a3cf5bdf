"""``nmtune.preset: official_code`` against the official NMTune step.

The reference here is a transcription of one training step of ``src/models/nml_tune.py`` (with
``ImageEncoderMLP`` and ``ClassificationHead`` of ``src/models/modeling.py``) in the public
repository Hhhhhhao/Noisy-Model-Learning, written from a reading of that code: the backbone in
eval mode on the 2B images ``[weak; strong]``, the MLP run once on the 2B features, CE on all 2B
rows with the labels repeated, ``nn.MSELoss`` between the normalised Z of the strong view and the
detached normalised F of the weak view, ``- w * mean(s[:5] / sum(s))`` from ``torch.svd`` of the
uncentred 2B-row Z, the covariance term on the centred 2B rows, and ``AdamW`` over every
trainable parameter with one weight decay.

Both sides run in float64: Adam's first step is ``lr * g / (|g| + eps)``, so float32 roundoff in a
gradient near zero moves a weight by up to ``lr`` (the first Linear's bias, cancelled by the
BatchNorm after it, has a gradient that is roundoff only); in float64 that roundoff is far below
``eps`` and the whole update is compared at 1e-6.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from datamodules.classification import ClassificationDataModule
from datamodules.errors import ConfigError
from datamodules.transforms import TransformConfig, TwoViewTransformConfig
from lightning_modules.adapt import Adaptation, NMTuneConfig, official_classifier
from lightning_modules.backbones import BackboneConfig
from lightning_modules.base import OptimizerConfig
from tests.conftest import run_train
from tests.test_adapt import data_module, export_card

TOL = {"rtol": 1e-6, "atol": 1e-6}
# Large enough that a parameter left out of the weight decay moves by more than the tolerance.
LR, WEIGHT_DECAY = 0.01, 0.5
BACKBONE = BackboneConfig(timm="resnet18", model_kwargs={"layers": [1, 1, 1, 1]})
# The official timm training transform: RandomResizedCrop(scale 0.8-1), flip, no colour jitter.
OFFICIAL_TRANSFORM = TransformConfig(
    image_size=16, crop_pct=1.0, scale=(0.8, 1.0), color_jitter=0.0
)


class OfficialModel(nn.Module):
    """``ImageClassifier(ImageEncoderMLP, ClassificationHead)`` as the official code builds it
    with ``--mlp-with-res=True --mlp-after-layers=1``: a (1, D) scale on the residual branch."""

    def __init__(self, encoder: nn.Module, dim: int, ratio: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.mlp_after = nn.Sequential(
            nn.Linear(dim, ratio * dim),
            nn.BatchNorm1d(ratio * dim),
            nn.ReLU(),
            nn.Linear(ratio * dim, dim),
        )
        self.scale_after = nn.Parameter(torch.ones(1, dim))
        self.head = nn.Linear(dim, num_classes)

    def forward_encoder(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder(images)
        return feats, self.scale_after * self.mlp_after(feats) + feats


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The official flatten trick: every entry but the diagonal of a square matrix."""
    n = matrix.shape[0]
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def official_step(
    model: OfficialModel,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    weights: tuple[float, float, float] = (1.0, 0.04, 0.001),
) -> dict[str, torch.Tensor]:
    """One step of the official training loop on ``images`` (B, 2, C, H, W)."""
    mse_weight, cov_weight, svd_weight = weights
    model.train()
    model.encoder.eval()
    optimizer.zero_grad()
    inputs = torch.cat([images[:, 0], images[:, 1]], dim=0)
    feats, mlp_feats = model.forward_encoder(inputs)
    feats_w, _ = feats.chunk(2)
    _, mlp_feats_s = mlp_feats.chunk(2)
    ce = nn.CrossEntropyLoss()(model.head(mlp_feats), torch.cat([labels, labels], dim=0))
    mse = nn.MSELoss()(F.normalize(mlp_feats_s, dim=1), F.normalize(feats_w.detach(), dim=1))
    s = torch.svd(mlp_feats)[1]
    top = torch.mean((s / torch.sum(s))[:5])
    centred = mlp_feats - mlp_feats.mean(dim=0)
    cov = centred.T @ centred / (centred.size(0) - 1)
    cov_loss = off_diagonal(cov).pow(2).sum().div(centred.size(1))
    loss = ce + mse_weight * mse - svd_weight * top + cov_weight * cov_loss
    loss.backward()
    optimizer.step()
    return {"ce": ce, "consistency": mse, "covariance": cov_loss, "dominant_singular": -top}


def official_copy(module: Adaptation) -> OfficialModel:
    """The official model holding the suite module's (initial) weights."""
    dim = module.backbone.dim
    model = OfficialModel(
        copy.deepcopy(module.backbone), dim, module.nmtune_config.mlp_ratio, module.num_classes
    )
    model.mlp_after.load_state_dict(module.transform.mlp.state_dict())
    model.head.load_state_dict(module.classifier.state_dict())
    with torch.no_grad():
        model.scale_after.copy_(module.transform.scale.view(1, dim))
    return model


def suite_view(model: OfficialModel) -> dict[str, torch.Tensor]:
    """The official model's trainable state under the suite's names (BatchNorm buffers too)."""
    state = {f"transform.mlp.{k}": v for k, v in model.mlp_after.state_dict().items()}
    state |= {f"classifier.{k}": v for k, v in model.head.state_dict().items()}
    state["transform.scale"] = model.scale_after.detach().view(-1)
    return state


def suite_grads(model: OfficialModel) -> dict[str, torch.Tensor]:
    grads = {f"transform.mlp.{k}": p.grad for k, p in model.mlp_after.named_parameters()}
    grads |= {f"classifier.{k}": p.grad for k, p in model.head.named_parameters()}
    grads["transform.scale"] = model.scale_after.grad.view(-1)
    return grads


class Recorder(L.Callback):
    """The batch the suite trained on, and its gradients just before the optimiser step."""

    def __init__(self) -> None:
        self.batch: dict[str, Any] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.lr = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch = {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lr = optimizer.param_groups[0]["lr"]
        self.grads = {
            n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None
        }


def data(spec: str, **options: Any) -> ClassificationDataModule:
    datamodule = data_module(spec, **options)
    datamodule.transform = OFFICIAL_TRANSFORM
    return datamodule


def one_step(module: Adaptation, datamodule: ClassificationDataModule, recorder: Recorder) -> dict:
    trainer = L.Trainer(
        accelerator="cpu",
        precision="64-true",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[recorder],
    )
    trainer.fit(module, datamodule=datamodule)
    return {k: v.detach().clone() for k, v in trainer.callback_metrics.items()}


def test_one_step_equals_the_official_step(make_shards, tmp_path) -> None:
    torch.manual_seed(0)
    module = Adaptation(
        "nmtune",
        10,
        BACKBONE,
        nmtune=NMTuneConfig(preset="official_code"),
        cache_features=False,
        optimizer=OptimizerConfig(name="adamw", lr=LR, weight_decay=WEIGHT_DECAY),
    )
    official = official_copy(module).double()
    recorder = Recorder()
    metrics = one_step(module, data(make_shards([16])), recorder)

    images, labels = recorder.batch["image"].double(), recorder.batch["label"]
    assert images.shape == (8, 2, 3, 16, 16)  # two views of every image, drawn this step
    assert not torch.equal(images[:, 0], images[:, 1])
    assert recorder.lr == pytest.approx(LR)  # step 0 of the cosine schedule, no warm-up
    optimizer = torch.optim.AdamW(
        [p for p in official.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY
    )
    terms = official_step(official, optimizer, images, labels)

    torch.testing.assert_close(metrics["train/ce_step"], terms["ce"], **TOL)
    for name in ("consistency", "covariance", "dominant_singular"):
        torch.testing.assert_close(metrics[f"train/reg_{name}"], terms[name], **TOL)
    grads = suite_grads(official)
    assert set(recorder.grads) == set(grads)  # the backbone has no gradient
    for name, grad in grads.items():
        torch.testing.assert_close(recorder.grads[name], grad, **TOL, msg=name)
    state = module.state_dict()
    for name, value in suite_view(official).items():  # updated weights and BatchNorm statistics
        torch.testing.assert_close(state[name], value, **TOL, msg=name)
    for name, value in official.encoder.state_dict().items():  # eval mode: nothing moved
        torch.testing.assert_close(state[f"backbone.{name}"], value, rtol=0, atol=0)


def test_official_classifier_is_the_official_head() -> None:
    """``kaiming_uniform`` weights drawn first (bound sqrt(6 / D)), a zero bias that trains."""
    torch.manual_seed(3)
    head = official_classifier(64, 10)
    torch.manual_seed(3)
    torch.testing.assert_close(head.weight, nn.init.kaiming_uniform_(torch.empty(10, 64)))
    assert head.weight.abs().max() > 1 / 64**0.5  # beyond nn.Linear's default bound
    assert torch.equal(head.bias, torch.zeros(10)) and head.bias.requires_grad


def test_two_view_transform_draws_two_fresh_views() -> None:
    image = Image.new("RGB", (28, 28))
    image.putdata([(i % 251, (7 * i) % 253, (13 * i) % 255) for i in range(28 * 28)])
    config = TwoViewTransformConfig.of(OFFICIAL_TRANSFORM, strong_randaugment=True)
    transform = config.build(True)
    first, second = transform(image), transform(image)
    assert first.shape == (2, 3, 16, 16) and not torch.equal(first, second)
    steps = [type(t).__name__ for t in transform.strong.transforms]
    assert steps[:2] == ["RandomResizedCropAndInterpolation", "RandAugment"]
    assert "RandAugment" not in [type(t).__name__ for t in transform.weak.transforms]
    torch.testing.assert_close(config.build(False)(image), OFFICIAL_TRANSFORM.build(False)(image))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "train_views >= 2"),
        ({"strong_randaugment": True, "train_views": 2}, "cache_features: false"),
    ],
)
def test_cached_official_step_needs_cached_views(options, message, make_shards, tmp_path) -> None:
    """With the feature cache the two views come from K >= 2 cached views; RandAugment's
    strong view only exists fresh. Both are said before any feature is extracted."""
    strong = options.pop("strong_randaugment", False)
    module = Adaptation(
        "nmtune",
        10,
        BACKBONE,
        nmtune=NMTuneConfig(preset="official_code", strong_randaugment=strong),
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(ConfigError, match=message):
        one_step(module, data(make_shards([16]), **options), Recorder())
    assert not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_card(tmp_path_factory.mktemp("rn"), "resnet18", {"layers": [1, 1, 1, 1]})


def test_official_overlay_runs_through_train_py(
    card, builtin_root, tiny_fashion_mnist, tmp_path
) -> None:
    """``--config nmtune_official.yaml`` over the quickstart: fresh views, every metric."""
    short_run = {
        "trainer.max_epochs": 1,
        "trainer.limit_train_batches": 2,
        "trainer.limit_val_batches": 1,
        "trainer.num_sanity_val_steps": 0,
        "trainer.enable_checkpointing": "false",
        "trainer.logger.init_args.save_dir": tmp_path,
        "model.init_args.backbone.card": card,
        "model.init_args.cache_dir": tmp_path / "cache",
        "data.init_args.builtin_root": builtin_root,
        "data.init_args.builtin_source": tiny_fashion_mnist,
        "data.init_args.num_workers": 0,
        "data.init_args.batch_size": 16,
    }
    configs = ("--config=quickstart/nmtune_id.yaml", "--config=nmtune_official.yaml")
    result = run_train("fit", *configs, *(f"--{key}={value}" for key, value in short_run.items()))
    assert result.returncode == 0, result.stderr[-3000:]
    (card_path,) = tmp_path.glob("*/version_0/export/card.json")
    metrics = json.loads(card_path.read_text())["metrics"]
    assert 0 <= metrics["test/test/acc"] <= 1 and metrics["train/reg_covariance"] >= 0
    assert not (tmp_path / "cache").exists()  # the backbone ran on fresh views, nothing cached
