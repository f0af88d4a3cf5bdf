"""The spectrum callback: exact values, 1 vs 2 real DDP ranks, degenerate features."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks.spectrum import METRIC_NAMES, spectral_metrics
from callbacks.spectrum_monitor import SpectrumMonitor
from datamodules.classification import ClassificationDataModule
from datamodules.transforms import TransformConfig
from tests.ddp_probe import Recorder

PROBE = Path(__file__).with_name("ddp_probe.py")
PROTOCOL_PROBE = Path(__file__).with_name("spectrum_probe.py")


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


def assert_logged(logged: dict[str, float], expected: dict, rel: float) -> None:
    """Every metric of METRIC_NAMES logged for the set ``probe`` as ``expected`` has it."""
    for name in METRIC_NAMES:
        assert logged[f"spectrum/probe/{name}"] == pytest.approx(expected[name], rel=rel), name


@pytest.mark.parametrize(
    ("options", "info"),
    [
        ({}, {"protocol": "paper", "normalize_rows": True, "center": "none"}),
        (
            {"protocol": "official"},
            {"protocol": "official", "normalize_rows": True, "center": "row"},
        ),
        ({"center": True}, {"protocol": "custom", "normalize_rows": True, "center": "column"}),
    ],
)
def test_logged_values_are_the_exact_spectrum(make_shards, tmp_path, options, info):
    spec = make_shards([20, 13])
    module = Recorder(tmp_path)
    monitor = SpectrumMonitor(log_plots=False, **options)
    assert monitor.protocol_info == info
    logged = validate(spec, module, monitor)
    features = all_features(spec, module)
    expected = spectral_metrics(features, info["normalize_rows"], info["center"])
    assert_logged(logged, expected, 1e-6)
    if info["protocol"] == "official":
        paper = spectral_metrics(features)
        assert abs(logged["spectrum/probe/sve"] - paper["sve"]) > 1e-3, "row-centring matters"


def test_protocol_conflicting_with_an_option_is_refused():
    with pytest.raises(ValueError, match="protocol 'official' means"):
        SpectrumMonitor(protocol="official", center="column")
    with pytest.raises(ValueError, match="center must be one of"):
        SpectrumMonitor(center="diagonal")


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
    assert logged["spectrum/probe/stable_rank"] == 1.0
    assert "spectrum/probe/alpha_req" not in logged, "undefined for one direction: not logged"
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
    # logged in float64; the float32 features of a row can differ in the last bit between
    # batchings (each rank batches other rows), which moves the metrics by about 1e-9
    for name in METRIC_NAMES:
        key = f"spectrum/probe/{name}"
        assert results[2][key] == pytest.approx(results[1][key], rel=1e-7)


@pytest.mark.ddp
def test_two_ranks_log_the_exact_official_spectrum(make_shards, tmp_path):
    """protocol official on 2 real ranks: the exact spectrum of row-centred features."""
    spec = make_shards([9, 14, 5])
    out = tmp_path / "official"
    out.mkdir()
    command = [sys.executable, str(PROTOCOL_PROBE), "--mode=spectrum", f"--spec={spec}"]
    command += [f"--out={out}", "--devices=2"]
    env = {**os.environ, "SPECTRUM_PROTOCOL": "official"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = json.loads((out / "metrics.json").read_text())
    features = all_features(spec, Recorder(tmp_path))
    assert len(features) == 28
    assert_logged(logged, spectral_metrics(features, center="row"), 1e-6)
    assert all(math.isfinite(logged[f"spectrum/probe/{name}"]) for name in METRIC_NAMES)


def test_the_plot_draws_the_first_spectrum_beside_the_current_one():
    from callbacks.spectrum_monitor import spectrum_plot

    first, current = torch.tensor([4.0, 2.0, 1.0]), torch.tensor([6.0, 1.0, 0.5])
    one = spectrum_plot([("epoch 0", first)], "val, step 0", "SVE 1.000\nLSVR 0.500")
    two = spectrum_plot(
        [("epoch 0", first), ("epoch 3", current)], "val, step 30", "SVE 1.000\nLSVR 0.500"
    )
    assert one.shape == two.shape == (360, 480, 3)
    assert str(one.dtype) == str(two.dtype) == "uint8"
    assert not (one == two).all()  # the second curve is drawn
