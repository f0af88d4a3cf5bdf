"""train.py as a user runs it: the FS quickstart, TensorBoard scalars, export, config mistakes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import timm
import torch
import yaml

import train
from callbacks.spectrum_monitor import SpectrumMonitor
from datamodules.base import auto_workers, usable_cpus
from lightning_modules.pretrain_fs import SupervisedPretraining
from tests.conftest import REPO, run_train, scalars

QUICKSTART = "quickstart/pretrain_fs.yaml"


def quick_args(builtin_root: Path, save_dir: Path, *extra: str) -> list[str]:
    """The quickstart config, shrunk to a few steps on the tiny built-in shards."""
    return [
        "fit",
        "--config",
        QUICKSTART,
        f"--data.init_args.builtin_root={builtin_root}",
        "--data.init_args.epoch_samples=256",
        "--data.init_args.batch_size=32",
        "--trainer.max_epochs=2",
        "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        f"--export.dirpath={save_dir / 'export'}",
        *extra,
    ]


def test_config_names_resolve_under_configs(tmp_path):
    assert train.resolve_config_paths(["fit", "--config", QUICKSTART])[2] == str(
        REPO / "configs" / QUICKSTART
    )
    assert train.resolve_config_paths([f"--config={QUICKSTART}"]) == [
        f"--config={REPO / 'configs' / QUICKSTART}"
    ]
    local = tmp_path / "mine.yaml"
    local.write_text("{}")
    assert train.resolve_config_paths(["-c", str(local)]) == ["-c", str(local)]


def test_quickstart_trains_logs_to_tensorboard_and_exports(builtin_root, tmp_path, capsys):
    result = run_train(*quick_args(builtin_root, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "quickstart_pretrain_fs" / "version_0"
    logged = scalars(run_dir)
    for tag in (
        "train/loss_step",
        "train/lr/model",
        "train/acc_observed",
        "train/acc_clean",
        "train/memorised",
        "train/device/samples_per_sec",
        "train/data_wait_ms",
        "train/data_wait_share",
        "noise/realised_rate",
        "data/skipped",
        "val/val/acc",
        "val/val/acc_top5",
    ):
        assert tag in logged, f"{tag} missing from {sorted(logged)}"
    assert len(logged["noise/realised_rate"]) == 2  # one value per epoch
    assert 0.1 < logged["noise/realised_rate"][-1] < 0.3  # nominal 0.2 on 256 samples
    assert (run_dir / "config.yaml").is_file()

    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())  # TensorBoard's hparams
    assert hparams["model_kwargs"] == {"layers": [1, 1, 1, 1]} and hparams["optimizer"]["lr"]

    card = json.loads((tmp_path / "export" / "card.json").read_text())
    assert card["data"]["noise"] == {"type": "symmetric", "ratio": 0.2, "expected_rate": 0.2}
    assert card["data"]["loader_workers"] == auto_workers(usable_cpus(), 1, 1, 5)  # auto
    assert card["backbone"]["library"] == "timm" and "val/val/acc" in card["metrics"]

    # the run ends with its results, its folders and the TensorBoard command; no chatter
    summary = result.stdout[result.stdout.index("fit done after 2 epochs") :]
    assert re.search(r"val/val\s+\d\.\d{4}\s+\d\.\d{4}\s+\d\.\d{4}", summary), summary
    assert f"logs:   {run_dir.resolve()}" in summary
    assert f"view:   tensorboard --logdir {tmp_path.resolve()}" in summary
    assert f"export: {(tmp_path / 'export').resolve()}" in summary
    output = result.stdout + result.stderr
    for chatter in ("💡 Tip", "ambiguous collection", "`IterableDataset` has `__len__`"):
        assert chatter not in output, chatter
    monitor = SpectrumMonitor()
    assert card.get("spectrum") == getattr(monitor, "protocol_info", None)
    export = f"local-dir:{tmp_path / 'export'}"
    exported = timm.create_model(export, pretrained=True, num_classes=0).eval()
    assert timm.data.resolve_model_data_config(exported)["input_size"] == (3, 32, 32)
    # the checkpoint describes the module: no architecture to repeat
    module = SupervisedPretraining.load_from_checkpoint(
        run_dir / "checkpoints" / "last.ckpt", weights_only=True
    ).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = module.features({"image": images})
        assert torch.allclose(exported(images), expected, atol=1e-5)

    # a second run into the same export folder stops before training, in one line
    again = [
        *quick_args(builtin_root, tmp_path / "second"),
        f"--export.dirpath={tmp_path / 'export'}",
    ]
    with pytest.raises(SystemExit) as stop:
        train.main(again)
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: export.dirpath '{tmp_path / 'export'}' holds the export"), last
    assert "--export.overwrite=true" in last
    assert not list((tmp_path / "second").rglob("*.ckpt"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--model.init_args.model_name=resnet_does_not_exist", "is not a timm model"),
        ("--data.init_args.noise_ratio=1.5", r"noise_ratio must be in \[0, 1\)"),
        (
            "--data.init_args.train_shards=/nowhere/train-{0000..0003}.tar",
            "4 of 4 shards not found",
        ),
        (
            "--model.init_args.num_classes=7",
            "--model.init_args.num_classes: it follows data.init_args.num_classes",
        ),
        ("--data.init_args.num_classes=7", "declares 10 classes"),
    ],
)
def test_config_mistakes_stop_before_training_with_one_line(
    builtin_root, tmp_path, capsys, override, message
):
    with pytest.raises(SystemExit) as stop:
        train.main(quick_args(builtin_root, tmp_path, override))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "error: " in err and "Traceback" not in err
    assert re.search(message, err), err
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained


def test_a_mistake_in_a_subprocess_prints_one_line(builtin_root, tmp_path):
    result = run_train(*quick_args(builtin_root, tmp_path, "--data.init_args.noise_ratio=-0.1"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: data.noise_ratio")
