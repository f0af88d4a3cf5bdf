"""The spectrum callback: exact values, 1 vs 2 real DDP ranks, degenerate features."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks.spectrum import spectral_metrics
from callbacks.spectrum_monitor import SpectrumMonitor
from datamodules.classification import ClassificationDataModule
from datamodules.transforms import TransformConfig
from tests.ddp_probe import Recorder

PROBE = Path(__file__).with_name("ddp_probe.py")


def validate(spec: str, module: L.LightningModule, monitor: SpectrumMonitor) -> dict[str, float]:
    data = ClassificationDataModule(
        num_classes=10,
        val_shards={"probe": spec},
        batch_size=8,
        num_workers=0,
        transform=TransformConfig(image_size=8, crop_pct=1.0),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(module, datamodule=data)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def all_features(spec: str, module: Recorder) -> torch.Tensor:
    data = ClassificationDataModule(
        num_classes=10,
        val_shards={"probe": spec},
        batch_size=8,
        num_workers=0,
        transform=TransformConfig(image_size=8, crop_pct=1.0),
    )
    data.setup("validate")
    with torch.no_grad():
        return torch.cat([module.features(b) for b in data.val_dataloader()[0]])


def test_logged_values_are_the_exact_spectrum(make_shards, tmp_path):
    spec = make_shards([20, 13])
    module = Recorder(tmp_path)
    logged = validate(spec, module, SpectrumMonitor(log_plots=False))
    expected = spectral_metrics(all_features(spec, module))
    assert logged["spectrum/probe/sve"] == pytest.approx(expected["sve"], rel=1e-6)
    assert logged["spectrum/probe/lsvr"] == pytest.approx(expected["lsvr"], rel=1e-6)


def test_max_samples_limits_the_rows(make_shards, tmp_path):
    spec = make_shards([20, 13])
    module = Recorder(tmp_path)
    logged = validate(spec, module, SpectrumMonitor(max_samples=10, log_plots=False))
    expected = spectral_metrics(all_features(spec, module)[:10])
    assert logged["spectrum/probe/sve"] == pytest.approx(expected["sve"], rel=1e-6)


class Broken(Recorder):
    def __init__(self, out: Path, value: float) -> None:
        super().__init__(out)
        self.value = value

    def features(self, batch):
        return torch.full((len(batch["key"]), self.feature_dim), self.value)


def test_nan_features_raise_naming_the_dataloader(make_shards, tmp_path):
    with pytest.raises(ValueError, match=r"spectrum of val set 'probe': .*NaN"):
        validate(make_shards([4]), Broken(tmp_path, float("nan")), SpectrumMonitor())


def test_zero_features_warn_instead_of_crashing(make_shards, tmp_path):
    with pytest.warns(UserWarning, match="all zero"):
        logged = validate(make_shards([4]), Broken(tmp_path, 0.0), SpectrumMonitor())
    assert "spectrum/probe/sve" not in logged


def test_one_sample_and_more_dimensions_than_samples(make_shards, tmp_path):
    logged = validate(make_shards([1]), Recorder(tmp_path), SpectrumMonitor(log_plots=False))
    assert logged["spectrum/probe/sve"] == 0.0 and logged["spectrum/probe/lsvr"] == 0.0
    logged = validate(make_shards([5], name="five"), Recorder(tmp_path), SpectrumMonitor())
    assert 0 < logged["spectrum/probe/sve"] <= torch.log(torch.tensor(5.0)) + 1e-9


@pytest.mark.ddp
def test_two_ranks_log_the_single_process_values(make_shards, tmp_path):
    spec = make_shards([9, 14, 5])  # unequal shards: ranks hold different row counts
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"ranks{devices}"
        out.mkdir()
        command = [
            sys.executable,
            str(PROBE),
            "--mode=spectrum",
            f"--spec={spec}",
            f"--out={out}",
            f"--devices={devices}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        results[devices] = json.loads((out / "metrics.json").read_text())
    for name in ("spectrum/probe/sve", "spectrum/probe/lsvr"):
        assert results[2][name] == pytest.approx(results[1][name], rel=1e-9)
