"""scripts/spectrum.py as a user runs it: its numbers are spectral_metrics of the features."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from callbacks.export import write_card
from callbacks.spectrum import METRIC_NAMES, spectral_metrics
from datamodules.formats import decode_image
from datamodules.transforms import TransformConfig
from lightning_modules.backbones import Backbone, from_card, timm_backbone
from lightning_modules.pretrain_fs import SupervisedPretraining
from tests.conftest import REPO, png_bytes


def run_spectrum(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "spectrum.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def load_script():
    """The script as a module, to run options in-process (a subprocess costs the imports)."""
    spec = importlib.util.spec_from_file_location("spectrum_script", REPO / "scripts/spectrum.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def card(tmp_path: Path) -> Path:
    """A real export of a tiny, randomly initialised FS model."""
    module = SupervisedPretraining("test_resnet", num_classes=10)
    return write_card(module, None, tmp_path / "export", epochs=0, metrics={})


def reference(
    backbone: Backbone, seeds: range, batch_size: int, **options: bool | str
) -> dict[str, float | torch.Tensor]:
    """spectral_metrics of the features of the shard images ``png_bytes(seed)``, computed in
    the script's batches (same shapes, so the same float32 features) without the pipeline."""
    transform = TransformConfig(image_size=32, normalization="imagenet", crop_pct=1.0).build(False)
    x = torch.stack([transform(decode_image(png_bytes(seed))) for seed in seeds])
    with torch.no_grad():
        features = torch.cat([backbone(part) for part in x.split(batch_size)])
    return spectral_metrics(features, **options)


def assert_matches(result: dict, expected: dict, num_samples: int) -> None:
    assert result["num_samples"] == num_samples
    for name in METRIC_NAMES:
        assert result[name] == pytest.approx(expected[name], rel=1e-6), name
    singular_values = torch.tensor(result["singular_values"], dtype=torch.float64)
    top = float(expected["singular_values"][0])
    torch.testing.assert_close(
        singular_values, expected["singular_values"], rtol=1e-6, atol=1e-6 * top
    )


def test_two_sets_match_spectral_metrics(card, make_shards, tmp_path):
    val = make_shards([12, 8], name="val")
    extra = make_shards([6], name="extra")
    out = tmp_path / "spectrum.json"
    result = run_spectrum(
        *("--card", str(card), "--shards", f"pets={val}", "--shards", extra, "--out", str(out)),
        *("--image-size", "32", "--crop-pct", "1.0", "--workers", "0", "--batch-size", "8"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    backbone = from_card(card)
    assert report["backbone"]["identity"] == backbone.identity
    assert report["spectrum"] == {"protocol": "paper", "normalize_rows": True, "center": "none"}
    assert list(report["sets"]) == ["pets", "extra"], "named, then named after its folder"
    assert_matches(report["sets"]["pets"], reference(backbone, range(20), 8), 20)
    assert_matches(report["sets"]["extra"], reference(backbone, range(6), 8), 6)
    assert "pets" in result.stdout and "stable_rank" in result.stdout
    assert "spectrum protocol paper" in result.stdout


def test_options_center_raw_rows_and_max_samples(card, make_shards, tmp_path):
    spec = make_shards([12, 8], name="val")
    out = tmp_path / "spectrum.json"
    load_script().main(
        [
            *("--card", str(card), "--shards", spec, "--shards-name", "v", "--image-size", "32"),
            *("--crop-pct", "1.0", "--workers", "0", "--batch-size", "4", "--max-samples", "15"),
            *("--center", "--no-normalize-rows", "--out", str(out)),
        ]
    )
    report = json.loads(out.read_text())
    expected = reference(from_card(card), range(15), 4, normalize_rows=False, center=True)
    assert_matches(report["sets"]["v"], expected, 15)
    assert report["spectrum"] == {"protocol": "custom", "normalize_rows": False, "center": "column"}


@pytest.mark.parametrize("protocol_options", [["--protocol", "official"], ["--center", "row"]])
def test_official_protocol_is_the_row_centred_spectrum(
    card, make_shards, tmp_path, protocol_options
):
    """By name or by its settings: rows normalised and row-centred, and spectrum.json says so."""
    spec = make_shards([12, 8], name="val")
    out = tmp_path / "spectrum.json"
    load_script().main(
        [
            *("--card", str(card), "--shards", spec, "--image-size", "32", "--crop-pct", "1.0"),
            *("--workers", "0", "--batch-size", "8", "--out", str(out), *protocol_options),
        ]
    )
    report = json.loads(out.read_text())
    assert report["spectrum"] == {"protocol": "official", "normalize_rows": True, "center": "row"}
    expected = reference(from_card(card), range(20), 8, center="row")
    assert_matches(report["sets"]["val"], expected, 20)


def test_timm_weights_source(make_shards, tmp_path):
    model = SupervisedPretraining("test_resnet", num_classes=10).model
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = tmp_path / "spectrum.json"
    spec = make_shards([5], name="val")
    load_script().main(
        [
            *("--timm", "test_resnet", "--weights", str(weights), "--shards", spec),
            *("--out", str(out), "--image-size", "32", "--workers", "0"),
        ]
    )
    report = json.loads(out.read_text())
    assert report["backbone"]["timm"] == "test_resnet"
    assert report["backbone"]["identity"] == timm_backbone("test_resnet", weights).identity
    assert report["sets"]["val"]["num_samples"] == 5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shards", "a=x.tar", "--shards", "a=y.tar"], "two shard sets are named 'a'"),
        (["--shards", "x.tar", "--shards", "y.tar", "--shards-name", "n"], "single unnamed"),
        (["--shards", "x.tar", "--pretrained", "openai"], "--pretrained goes with --open-clip"),
        (["--shards", "x.tar", "--max-samples", "0"], "must be a positive integer"),
        (["--shards", "x.tar", "--protocol", "official", "--center"], "protocol 'official' means"),
        (["--shards", "x.tar", "--protocol", "paper", "--no-normalize-rows"], "protocol 'paper'"),
        (["--shards", "x.tar", "--center", "diag"], "invalid choice: 'diag'"),
        (["--shards", "x.tar", "--protocol", "pca"], "invalid choice: 'pca'"),
    ],
)
def test_option_mistakes_exit_2(card, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(["--card", str(card), *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_shard_is_a_one_line_error(card, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(["--card", str(card), "--shards", str(tmp_path / "none-{0..1}.tar")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: 2 of 2 shards not found")
