"""Configs as the user interface: entry files composed of fragments, linked options, mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import train
from scripts.config_files import CONFIG_DIR, composed_config, composition

FRAGMENT_FOLDERS = {"base", "method", "task"}
ENTRIES = sorted(
    str(path.relative_to(CONFIG_DIR))
    for path in CONFIG_DIR.rglob("*.yaml")
    if not FRAGMENT_FOLDERS & set(path.relative_to(CONFIG_DIR).parts[:-1])
    and "adapt" not in yaml.safe_load(path.read_text())  # sweep configs
    and path.name != "nmtune_official.yaml"  # an overlay on an NMTune config
)


def printed(capsys: pytest.CaptureFixture, *args: str) -> dict:
    """The config that ``train.py <args> --print_config`` prints, as a mapping."""
    with pytest.raises(SystemExit) as stop:
        train.main([*args, "--print_config"])
    out, err = capsys.readouterr()
    assert stop.value.code in (0, None), err
    return yaml.safe_load(out)


def fails_with(capsys: pytest.CaptureFixture, *args: str) -> str:
    with pytest.raises(SystemExit) as stop:
        train.main(list(args))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_an_entry_config_is_its_fragments_given_on_the_command_line(capsys):
    """`--config nmtune_ood.yaml` is `--config base/adapt.yaml --config method/nmtune.yaml
    --config task/imagenet_ood.yaml` plus the entry's own run name."""
    entry = printed(capsys, "fit", "--config", "nmtune_ood.yaml")
    by_hand = printed(
        capsys,
        "fit",
        *("--config", "base/adapt.yaml"),
        *("--config", "method/nmtune.yaml"),
        *("--config", "task/imagenet_ood.yaml"),
        "--trainer.logger.init_args.name=nmtune_ood",
    )
    assert entry.pop("compose") == [
        "base/adapt.yaml",
        "method/nmtune.yaml",
        "task/imagenet_ood.yaml",
    ]
    assert by_hand.pop("compose") is None
    assert entry == by_hand
    model, data = entry["model"]["init_args"], entry["data"]["init_args"]
    # each fragment contributed: the base's optimiser, the method's lr, the task's shards
    assert (model["method"], model["optimizer"]["lr"], model["optimizer"]["weight_decay"]) == (
        "nmtune",
        0.001,
        0.0001,
    )
    assert data["num_classes"] == 1000 and "in1k_sketch" in data["test_shards"]
    assert entry["trainer"]["logger"]["init_args"]["name"] == "nmtune_ood"


@pytest.mark.parametrize("entry", ENTRIES)
def test_every_entry_config_parses_and_the_sweep_reads_the_same_values(capsys, entry):
    subcommand = "validate" if "zeroshot" in entry else "fit"
    config = printed(capsys, subcommand, "--config", entry)
    merged = composed_config(entry)  # what scripts/sweep.py reads, without jsonargparse
    for section in ("model", "data"):
        assert config[section]["class_path"] == merged[section]["class_path"]
        for name, value in merged[section].get("init_args", {}).items():
            if not isinstance(value, dict):
                assert config[section]["init_args"][name] == value, (section, name)
    prefix = "quickstart_" if entry.startswith("quickstart/") else ""
    assert config["trainer"]["logger"]["init_args"]["name"] == prefix + Path(entry).stem


def test_an_override_after_a_composed_config_wins(capsys):
    config = printed(
        capsys, "fit", "--config", "quickstart/lp_id.yaml", "--model.init_args.optimizer.lr=0.5"
    )
    assert config["model"]["init_args"]["optimizer"]["lr"] == 0.5


def test_the_model_takes_its_number_of_classes_from_the_data(tmp_path):
    """Linked: one value, the data's; the model is built with it."""
    args = train.resolve_config_paths(
        [
            "--config",
            "quickstart/pretrain_fs.yaml",
            "--data.init_args.num_classes=7",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    with train.rank_errors() as errors, train.HeldLogs().holding() as held:
        cli = train.build_cli(args, errors, held, run=False)
    assert cli.datamodule.num_classes == cli.model.num_classes == 7
    assert cli.model.model.get_classifier().out_features == 7


def test_setting_the_linked_number_of_classes_on_the_model_is_refused(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text(
        "compose: [quickstart/lp_id.yaml]\nmodel:\n  init_args:\n    num_classes: 5\n"
    )
    line = fails_with(capsys, "fit", "--config", str(config))
    assert line == (
        f"error: --config {config}: model.init_args.num_classes: it follows "
        "data.init_args.num_classes: set that one instead"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("compose: [method/nowhere.yaml]\n", "compose lists 'method/nowhere.yaml', which is"),
        ("compose: base/adapt.yaml\n", "compose must be a list of config files"),
        ("compose: [mine.yaml]\n", "compose includes itself through 'mine.yaml'"),
    ],
)
def test_a_broken_composition_stops_with_one_line(tmp_path, capsys, content, message):
    config = tmp_path / "mine.yaml"
    config.write_text(content)
    assert message in fails_with(capsys, "fit", "--config", str(config))


def test_a_fragment_beside_the_file_comes_before_the_suites(tmp_path):
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "nmtune.yaml").write_text("model:\n  init_args:\n    method: mlp\n")
    entry = tmp_path / "mine.yaml"
    entry.write_text("compose: [base/adapt.yaml, method/nmtune.yaml]\n")
    assert composition(str(entry)) == [
        str(CONFIG_DIR / "base" / "adapt.yaml"),
        str(tmp_path / "method" / "nmtune.yaml"),
        str(entry),
    ]
