"""Exports: hub-style folders that timm and open_clip load with one string in a process that
does not import the suite, the card beside them, hyperparameters that rebuild each module, and
another run's export never overwritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.export import ExportBackbone, write_card
from datamodules.errors import ConfigError
from datamodules.transforms import NORMALIZATIONS, TransformConfig
from lightning_modules.adapt import Adaptation
from lightning_modules.backbones import BackboneConfig, from_card
from lightning_modules.pretrain_clip import ContrastivePretraining
from lightning_modules.pretrain_fs import SupervisedPretraining
from tests.test_backbones import TINY_CLIP, TINY_CLIP_NAME

SUITE = ("callbacks", "datamodules", "lightning_modules", "scripts", "train", "tests")

# Run by a bare interpreter outside the repository: only the library loads the folder.
CHECK = """
import json, sys
import torch
from PIL import Image
from safetensors.torch import load_file

folder, tensors, packages = sys.argv[1], load_file(sys.argv[2]), sys.argv[3].split(",")
image = Image.new("RGB", (40, 30))
if "logits" in tensors:
    import timm
    model = timm.create_model("local-dir:" + folder, pretrained=True).eval()
    backbone = timm.create_model("local-dir:" + folder, pretrained=True, num_classes=0).eval()
    with torch.no_grad():
        assert torch.allclose(model(tensors["x"]), tensors["logits"], atol=1e-5)
        assert torch.allclose(backbone(tensors["x"]), tensors["features"], atol=1e-5)
    config = timm.data.resolve_model_data_config(model)
    shape = timm.data.create_transform(**config)(image).shape
    tokens = None
else:
    import open_clip
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
    with torch.no_grad():
        features = model.eval().encode_image(tensors["x"], normalize=True)
        assert torch.allclose(features, tensors["features"], atol=1e-5)
    config = {key: model.visual.preprocess_cfg[key] for key in ("size", "mean", "std")}
    shape = preprocess(image).shape
    tokens = open_clip.get_tokenizer("local-dir:" + folder)(["a photo"]).shape
suite = sorted(name for name in sys.modules if name.split(".")[0] in packages)
print(json.dumps({"config": config, "shape": shape, "tokens": tokens, "suite": suite}))
"""


def load_in_a_bare_process(folder: Path, tensors: dict[str, torch.Tensor]) -> dict:
    """What ``CHECK`` reports, run with ``python -I`` from an empty folder (no repo on sys.path)."""
    save_file(tensors, str(folder.parent / "expected.safetensors"))
    script = folder.parent / "check.py"
    script.write_text(CHECK)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            str(script),
            str(folder),
            str(folder.parent / "expected.safetensors"),
            ",".join(SUITE),
        ],
        cwd=folder.parent,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["suite"] == [], "the check must not import the suite"
    return report


def test_fs_export_loads_with_timm_local_dir_at_its_training_input(tmp_path):
    module = SupervisedPretraining("test_resnet", num_classes=4).eval()
    module.record_input(TransformConfig(image_size=32, crop_pct=1.0, interpolation="bilinear"))
    card = write_card(module, None, tmp_path / "export", epochs=1, metrics={})
    folder = card.parent
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "card.json"}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = {"x": x, "logits": module(x), "features": module.features({"image": x})}
    report = load_in_a_bare_process(folder, expected)
    mean, std = NORMALIZATIONS["imagenet"]
    assert report["config"] == {
        "input_size": [3, 32, 32],  # as trained, not test_resnet's default 160
        "interpolation": "bilinear",
        "mean": list(mean),
        "std": list(std),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    assert report["shape"] == [3, 32, 32]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 4
    assert config["pretrained_cfg"]["tag"] is None, "no claim to be timm's released weights"
    load = json.loads(card.read_text())["backbone"]["load"]
    assert load == f"timm.create_model('local-dir:{folder.resolve()}', pretrained=True)"


def test_clip_export_loads_with_open_clip_local_dir_and_the_card(tmp_path):
    module = ContrastivePretraining(TINY_CLIP_NAME, TINY_CLIP).eval()
    module.record_input(TransformConfig(image_size=16, normalization="imagenet", crop_pct=1.0))
    card = write_card(module, None, tmp_path / "export", epochs=1, metrics={})
    folder = card.parent
    assert {p.name for p in folder.iterdir()} == {
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "card.json",
    }
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = module.features({"image": x})
    report = load_in_a_bare_process(folder, {"x": x, "features": expected})
    mean, std = NORMALIZATIONS["imagenet"]  # as trained, not open_clip's default
    assert report["config"] == {"size": [16, 16], "mean": list(mean), "std": list(std)}
    assert report["shape"] == [3, 16, 16] and report["tokens"] == [1, 8]

    backbone = from_card(folder)  # the suite's card: option, through the same folder
    assert (backbone.normalization, backbone.image_size, backbone.dim) == ("imagenet", 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(nn.functional.normalize(backbone(x), dim=-1), expected)


def test_adaptation_logs_its_backbones_pretraining_and_reloads_from_a_checkpoint(tmp_path):
    pretraining = SupervisedPretraining("test_resnet", num_classes=4)
    data = SimpleNamespace(
        train_spec=None,
        seed=3,
        noise_summary=lambda: {"type": "symmetric", "ratio": 0.1, "expected_rate": 0.1},
    )
    card = write_card(pretraining, data, tmp_path / "export", epochs=1, metrics={})
    module = Adaptation("lp", 4, BackboneConfig(card=str(card)), cache_dir=str(tmp_path))
    assert module.hparams_initial["backbone_pretraining"] == {
        "noise_type": "symmetric",
        "noise_ratio": 0.1,
        "seed": 3,
    }
    assert "backbone_pretraining" not in module.hparams  # logged, not an init argument

    trainer = L.Trainer(logger=False, enable_checkpointing=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "adapt.ckpt")
    checkpoint = torch.load(tmp_path / "adapt.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["backbone"]["card"] == str(card)
    reloaded = Adaptation.load_from_checkpoint(tmp_path / "adapt.ckpt", weights_only=True)
    assert reloaded.backbone.identity == module.backbone.identity
    assert reloaded.optimizer_config == module.optimizer_config


# --- an export of another run is never overwritten -----------------------------------------------
class Steps(L.LightningModule):
    """Two optimiser steps of a linear layer; counts them, exports nothing but its card."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.steps = 0

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.steps += 1
        return self.layer(batch[0]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)

    def export(self, directory: Path) -> dict[str, str]:
        return {"library": "none"}


def fit(log_dir: Path, export: ExportBackbone, ckpt_path: Path | None = None) -> Steps:
    module = Steps()
    trainer = L.Trainer(
        default_root_dir=log_dir,
        logger=False,
        max_steps=2,
        callbacks=[export],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    if ckpt_path is None:
        trainer.save_checkpoint(log_dir / "last.ckpt")
    return module


def exported_by(folder: Path) -> str:
    return json.loads((folder / "card.json").read_text())["run"]["log_dir"]


def test_another_runs_export_is_refused_before_training_unless_asked(tmp_path):
    folder = tmp_path / "export"
    fit(tmp_path / "first", ExportBackbone(dirpath=str(folder)))
    assert exported_by(folder) == str(tmp_path / "first")

    second = Steps()
    trainer = L.Trainer(default_root_dir=tmp_path / "second", logger=False, max_steps=2,
                        callbacks=[ExportBackbone(dirpath=str(folder))])  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        trainer.fit(second)
    assert second.steps == 0, "refused before training"
    assert str(refused.value) == (
        f"export.dirpath {str(folder)!r} holds the export of another run (logged in "
        f"{tmp_path / 'first'}); pass --export.overwrite=true to replace it, or another "
        "--export.dirpath"
    )
    assert exported_by(folder) == str(tmp_path / "first")

    # the same run: one that logs into the same folder, or resumes from its checkpoint
    fit(tmp_path / "first", ExportBackbone(dirpath=str(folder)))
    checkpoint = torch.load(tmp_path / "first" / "last.ckpt", weights_only=True)
    assert any("run_id" in state for state in checkpoint["callbacks"].values())
    fit(tmp_path / "resumed", ExportBackbone(dirpath=str(folder)), tmp_path / "first" / "last.ckpt")
    assert exported_by(folder) == str(tmp_path / "resumed")

    fit(tmp_path / "third", ExportBackbone(dirpath=str(folder), overwrite=True))
    assert exported_by(folder) == str(tmp_path / "third")
