"""Adaptation: each method trains only its parameters; feature cache; embeddings; errors."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file, save_file

from callbacks.export import write_card
from callbacks.spectrum_monitor import SpectrumMonitor
from datamodules.classification import ClassificationDataModule
from datamodules.embeddings import EmbeddingDataModule
from datamodules.errors import ConfigError
from datamodules.transforms import TransformConfig
from lightning_modules.adapt import Adaptation, NMTuneConfig
from lightning_modules.backbones import BackboneConfig
from lightning_modules.base import OptimizerConfig
from lightning_modules.pretrain_fs import SupervisedPretraining
from tests.conftest import run_train

TINY_VIT = {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


def export_card(folder: Path, model_name: str, model_kwargs: dict) -> Path:
    """A backbone exported as the pre-training runs export it."""
    torch.manual_seed(0)
    module = SupervisedPretraining(model_name, 10, model_kwargs=model_kwargs)
    return write_card(module, None, folder, epochs=0, metrics={})


@pytest.fixture(scope="module")
def resnet_card(tmp_path_factory) -> Path:
    return export_card(tmp_path_factory.mktemp("rn"), "resnet18", {"layers": [1, 1, 1, 1]})


@pytest.fixture(scope="module")
def vit_card(tmp_path_factory) -> Path:
    return export_card(tmp_path_factory.mktemp("vit"), "vit_tiny_patch16_224", TINY_VIT)


def data_module(spec: str, image_size: int = 16, **options) -> ClassificationDataModule:
    return ClassificationDataModule(
        num_classes=10,
        train_shards=spec,
        val_shards={"val": spec},
        batch_size=8,
        num_workers=0,
        transform=TransformConfig(image_size=image_size, crop_pct=1.0),
        **options,
    )


def fit(module: Adaptation, data, epochs: int = 1, batches: int = 3) -> dict[str, float]:
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=batches,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=2,
        callbacks=[SpectrumMonitor(log_plots=False)],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def changed(before: dict, module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.state_dict().items() if not torch.equal(before[n], p)}


@pytest.mark.parametrize(
    ("method", "card", "trained"),
    [
        ("lp", "resnet_card", {"classifier"}),
        ("mlp", "resnet_card", {"classifier", "transform"}),
        ("nmtune", "resnet_card", {"classifier", "transform"}),
        ("lora", "vit_card", {"classifier", "lora_"}),
        ("ft", "resnet_card", {"classifier", "backbone"}),
    ],
)
def test_each_method_trains_only_its_parameters(
    method, card, trained, make_shards, tmp_path, request
):
    module = Adaptation(
        method,
        10,
        BackboneConfig(card=str(request.getfixturevalue(card))),
        cache_dir=str(tmp_path / "cache"),
        optimizer=OptimizerConfig(lr=0.01, weight_decay=0.0),
    )
    before = {n: p.clone() for n, p in module.state_dict().items()}
    metrics = fit(module, data_module(make_shards([24, 24])))
    moved = changed(before, module)
    groups = {"lora_" if "lora_" in n else n.split(".")[0] for n in moved if "running_" not in n}
    groups.discard("num_batches_tracked")
    assert groups == trained, moved
    for name in ("val/val/acc", "val/val/f1", "spectrum/val/sve", "spectrum/val/lsvr"):
        assert name in metrics
    if method == "nmtune":
        assert "train/reg_covariance" in metrics and "train/reg_total" in metrics


def test_feature_cache_is_reused_and_rebuilt_when_inputs_change(resnet_card, make_shards, tmp_path):
    spec = make_shards([16, 16])
    cache = tmp_path / "cache"

    def run(card: Path, image_size: int) -> set[Path]:
        fit(
            Adaptation("lp", 10, BackboneConfig(card=str(card)), cache_dir=str(cache)),
            data_module(spec, image_size),
            batches=1,
        )
        return {p.parent for p in cache.rglob("part-0-of-1.pt")}

    first = run(resnet_card, 16)
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.pt")}
    assert run(resnet_card, 16) == first  # nothing changed: same folders
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.pt")} == stamps  # not rewritten
    resized = run(resnet_card, 24) - first
    # train and val are the same shards here and share one entry, extracted once
    assert len(first) == 1 and len(resized) == 1  # a new transform: extracted again
    other = export_card(tmp_path / "other", "resnet18", {"layers": [1, 1, 1, 1]})
    weights = json.loads(other.read_text())["backbone"]["weights"]
    tensors = load_file(other.parent / weights)
    tensors = {k: v + 0.01 if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, other.parent / weights)
    assert len(run(other, 16) - first - resized) == 1  # new weights: new features


def write_embeddings(path: Path, n: int, dim: int, classes: int, seed: int = 0) -> str:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centers = torch.randn(classes, dim, generator=generator) * 3
    features = centers[labels] + torch.randn(n, dim, generator=generator)
    torch.save({"features": features, "labels": labels}, path)
    return str(path)


def test_black_box_embeddings_end_to_end(tmp_path):
    data = EmbeddingDataModule(
        train=write_embeddings(tmp_path / "train.pt", 200, 12, 4),
        val={"val": write_embeddings(tmp_path / "val.pt", 40, 12, 4, seed=0)},
        num_classes=4,
        label_noise="symmetric",
        noise_ratio=0.2,
        batch_size=32,
    )
    module = Adaptation(
        "nmtune",
        4,
        BackboneConfig(),
        nmtune=NMTuneConfig(mlp_ratio=2),
        optimizer=OptimizerConfig(lr=0.01, weight_decay=1e-4),
    )
    metrics = fit(module, data, epochs=10, batches=6)
    assert metrics["val/val/acc"] > 0.9 and "spectrum/val/sve" in metrics


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"train": (200, 12, 4), "val": (40, 8, 4)}, "dimension 8, the training embeddings 12"),
        ({"train": (200, 12, 4), "val": (40, 12, 6)}, r"labels span \[0, 5\] but num_classes is 4"),
        ({"train": (200, 12, 3), "val": (40, 12, 4)}, r"classes \[3\] never occur"),
    ],
)
def test_bad_embeddings_stop_before_training(tmp_path, files, message):
    paths = {
        split: write_embeddings(tmp_path / f"{split}.pt", *shape) for split, shape in files.items()
    }
    data = EmbeddingDataModule(train=paths["train"], val=paths["val"], num_classes=4)
    with pytest.raises(ConfigError, match=message):
        data.setup("fit")


def test_a_predicted_folder_names_its_sets(tmp_path):
    """``data.directory``: the files ``train.py predict`` writes, each set by its name; with
    ``test_in_validation`` the test sets join the validation pass."""
    for name in ("train", "val-val", "test-test", "test-gaussian_noise"):
        write_embeddings(tmp_path / f"{name}.pt", 40, 12, 4)
    data = EmbeddingDataModule(directory=str(tmp_path), num_classes=4, test_in_validation=True)
    assert data.eval_names("val") == ["val", "gaussian_noise", "test"]
    assert data.eval_names("test") == ["gaussian_noise", "test"]
    data.setup("fit")
    assert data.embedding_dim == 12
    with pytest.raises(ConfigError, match=r"leave data\.train, data\.val and data\.test empty"):
        EmbeddingDataModule(train="x.pt", directory=str(tmp_path))
    with pytest.raises(ConfigError, match=r"holds no train\.pt; write it with python train\.py"):
        EmbeddingDataModule(directory=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"data\.train is empty"):
        EmbeddingDataModule()


def test_unknown_method_is_a_one_line_error(tmp_path):
    result = run_train(
        "fit",
        "--config",
        "quickstart/nmtune_ood.yaml",
        "--model.init_args.method=linear",
    )
    assert result.returncode == 2 and "method" in result.stderr.splitlines()[-1]


def test_fine_tuning_gives_the_backbone_its_own_learning_rate(resnet_card, make_shards, tmp_path):
    module = Adaptation(
        "ft",
        10,
        BackboneConfig(card=str(resnet_card)),
        backbone_lr_scale=0.1,
        optimizer=OptimizerConfig(lr=0.01, weight_decay=0.05),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data_module(make_shards([16])))
    backbone = {id(p) for p in module.backbone.parameters()}
    rates = {}
    for group in trainer.optimizers[0].param_groups:
        part = "backbone" if id(group["params"][0]) in backbone else "head"
        assert all((id(p) in backbone) == (part == "backbone") for p in group["params"])
        rates.setdefault(part, set()).add((group["initial_lr"], group["weight_decay"] > 0))
    assert rates == {
        "head": {(0.01, True), (0.01, False)},
        "backbone": {(0.001, True), (0.001, False)},
    }


def cached_parts(cache: Path, world: int) -> dict[str, list[dict]]:
    """Every cached entry folder -> its parts for ``world`` ranks, in rank order."""
    return {
        folder.name: [
            torch.load(folder / f"part-{rank}-of-{world}.pt", weights_only=True)
            for rank in range(world)
        ]
        for folder in cache.iterdir()
        if (folder / f"part-0-of-{world}.pt").is_file()
    }


@pytest.mark.ddp
def test_two_ranks_extract_disjoint_parts_that_match_one_process(
    resnet_card, make_shards, tmp_path
):
    """Under real 2-process DDP each rank extracts its own shards once; together the parts hold
    every sample once, with the features one process extracts."""
    spec = make_shards([30, 11, 25])  # odd shard count, unequal sizes: unequal parts
    for devices in (1, 2):
        result = run_train(
            "fit",
            "--config=quickstart/lp_id.yaml",
            f"--trainer.devices={devices}",
            f"--trainer.strategy={'ddp' if devices == 2 else 'auto'}",
            "--trainer.max_epochs=1",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            f"--model.init_args.backbone.card={resnet_card}",
            f"--model.init_args.cache_dir={tmp_path / 'cache'}",
            "--data.init_args.builtin=null",
            f"--data.init_args.train_shards={spec}",
            f"--data.init_args.val_shards={spec}",
            "--data.init_args.test_in_validation=false",
            "--data.init_args.batch_size=8",
            "--data.init_args.num_workers=0",
            "--data.init_args.transform.image_size=16",
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr  # really two processes
    single, double = cached_parts(tmp_path / "cache", 1), cached_parts(tmp_path / "cache", 2)
    assert set(single) == set(double) and len(single) == 1  # train and val: the same shards
    (entry,) = single
    whole = single[entry][0]
    by_key = dict(zip(whole["keys"], whole["features"], strict=True))
    assert len(by_key) == 66
    rank_keys = [set(part["keys"]) for part in double[entry]]
    assert not rank_keys[0] & rank_keys[1] and rank_keys[0] | rank_keys[1] == set(by_key)
    assert all(rank_keys) and len(rank_keys[0]) != len(rank_keys[1])
    for part in double[entry]:
        expected = torch.stack([by_key[key] for key in part["keys"]])
        torch.testing.assert_close(part["features"], expected, rtol=1e-5, atol=1e-5)


OOD_SETS = ("clean", "gaussian_blur", "gaussian_noise", "rotate", "contrast", "invert")


def quickstart_metrics(
    config: str, card: Path, builtin_root: Path, source: Path, tmp_path: Path, *extra: str
) -> dict[str, float]:
    """Fit ``quickstart/<config>.yaml`` for 2 steps on the tiny built-in suites from ``card``;
    the metrics of the card it exports."""
    result = run_train(
        "fit",
        f"--config=quickstart/{config}.yaml",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_checkpointing=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--model.init_args.backbone.card={card}",
        f"--model.init_args.cache_dir={tmp_path / 'cache'}",
        f"--data.init_args.builtin_root={builtin_root}",
        f"--data.init_args.builtin_source={source}",
        "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=16",
        *extra,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (card_path,) = tmp_path.glob("*/version_0/export/card.json")
    return json.loads(card_path.read_text())["metrics"]


@pytest.mark.parametrize(
    ("config", "card", "sets", "extra"),
    [
        ("nmtune_ood", "resnet_card", OOD_SETS, []),
        ("mlp_id", "resnet_card", ("val", "test"), []),
        ("lora", "vit_card", ("val", "test"), ["--data.init_args.transform.image_size=16"]),
        ("ft", "resnet_card", ("val", "test"), []),
    ],
)
def test_quickstart_adaptations_run_through_train_py(
    config, card, sets, extra, builtin_root, tiny_fashion_mnist, tmp_path, request
):
    """The quickstart configs as a user runs them (on the tiny built-in suites): every
    evaluation set gets accuracy, macro F1 and its spectrum metric in the exported card."""
    backbone = request.getfixturevalue(card)
    source = tiny_fashion_mnist
    metrics = quickstart_metrics(config, backbone, builtin_root, source, tmp_path, *extra)
    spectrum = "lsvr" if config.endswith("ood") else "sve"
    for name in sets:
        kind = "val" if name == "val" else "test"  # test sets keep test/ in validation
        for key in (f"{kind}/{name}/acc", f"{kind}/{name}/f1", f"spectrum/{name}/{spectrum}"):
            assert 0 <= metrics[key] < float("inf"), key


def test_a_training_subset_is_recorded_and_refused_where_training_streams(
    resnet_card, builtin_root, tiny_fashion_mnist, tmp_path
):
    """``shots_per_class`` on cached features trains on k per class and writes it in the card,
    and the official exact-count noise then flips exactly half of those 20 labels; FT streams
    its training images, so a subset stops it before training, in one line."""
    common = [
        "--trainer.max_epochs=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_checkpointing=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--model.init_args.backbone.card={resnet_card}",
        f"--model.init_args.cache_dir={tmp_path / 'cache'}",
        f"--data.init_args.builtin_root={builtin_root}",
        f"--data.init_args.builtin_source={tiny_fashion_mnist}",
        "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=4",
    ]
    exact_noise = [
        "--data.init_args.label_noise=symmetric",
        "--data.init_args.noise_ratio=0.5",
        "--data.init_args.noise_exact_count=true",
    ]
    result = run_train(
        "fit",
        "--config=quickstart/lp_id.yaml",
        "--data.init_args.shots_per_class=2",
        *exact_noise,
        *common,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (card_path,) = tmp_path.glob("*/version_0/export/card.json")
    card = json.loads(card_path.read_text())
    subset = card["data"]["subset"]
    assert subset["shots_per_class"] == 2 and subset["kept"] == 2 * 10 < subset["of"]
    assert card["data"]["noise"]["exact_count"] is True
    assert (
        card["metrics"]["noise/realised_rate"] == 0.5 and card["metrics"]["data/seen_samples"] == 20
    )

    refused = run_train(
        "fit", "--config=quickstart/ft.yaml", "--data.init_args.train_fraction=0.5", *common
    )
    assert refused.returncode == 2
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: data.train_fraction and data.shots_per_class choose from the whole training set"
        )
    )


def test_embed_with_train_py_predict_then_adapt_on_the_files(
    resnet_card, builtin_root, tiny_fashion_mnist, tmp_path
):
    """The black-box path from the command line: ``predict`` writes every set's embeddings
    with the card's backbone, then NMTune trains on the files through ``train.py fit``."""
    embeddings = tmp_path / "embeddings"
    common = [
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--data.init_args.builtin_root={builtin_root}",
        f"--data.init_args.builtin_source={tiny_fashion_mnist}",
        "--data.init_args.num_workers=0",
    ]
    embedded = run_train(
        "predict",
        "--config=quickstart/nmtune_id.yaml",
        f"--model.init_args.backbone.card={resnet_card}",
        f"--embed.dirpath={embeddings}",
        *common,
    )
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    files = {path.name: torch.load(path, weights_only=True) for path in embeddings.glob("*.pt")}
    assert set(files) == {"train.pt", "val-val.pt", "test-test.pt"}
    train = files["train.pt"]
    assert train["features"].shape[1] == 512 and len(train["keys"]) == len(set(train["keys"]))
    assert len(train["labels"]) == len(train["features"]) and set(train["labels"].tolist()) <= set(
        range(10)
    )
    assert f"use: data.init_args.directory: {embeddings.resolve()}" in embedded.stdout
    assert f"data.init_args.train: {(embeddings / 'train.pt').resolve()}" in embedded.stdout

    adapted = run_train(
        "fit",
        "--config=quickstart/nmtune_embeddings.yaml",
        "--trainer.max_epochs=2",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--data.init_args.directory={embeddings}",
    )
    assert adapted.returncode == 0, adapted.stderr[-3000:]
    (card_path,) = tmp_path.glob("quickstart_nmtune_embeddings/version_0/export/card.json")
    metrics = json.loads(card_path.read_text())["metrics"]
    for key in ("val/val/acc", "test/test/acc", "test/mean/acc", "spectrum/test/sve"):
        assert 0 <= metrics[key] < float("inf"), key


def test_two_ranks_embed_every_sample_once_as_one_process_does(resnet_card, make_shards, tmp_path):
    """``train.py predict`` under real 2-process DDP: each rank embeds its own shards, rank 0
    merges them, and the files hold every sample once with the features of one process."""
    spec = make_shards([30, 11, 25])
    written = {}
    for devices in (1, 2):
        folder = tmp_path / f"embeddings_{devices}"
        result = run_train(
            "predict",
            "--config=quickstart/lp_id.yaml",
            f"--trainer.devices={devices}",
            f"--trainer.strategy={'ddp' if devices == 2 else 'auto'}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            f"--model.init_args.backbone.card={resnet_card}",
            "--data.init_args.builtin=null",
            f"--data.init_args.train_shards={spec}",
            f'--data.init_args.test_shards={{"test": "{spec}"}}',
            "--data.init_args.batch_size=8",
            "--data.init_args.num_workers=0",
            "--data.init_args.transform.image_size=16",
            f"--embed.dirpath={folder}",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        written[devices] = {p.name: torch.load(p, weights_only=True) for p in folder.glob("*.pt")}
    assert "MEMBER: 2/2" in result.stderr
    assert set(written[1]) == set(written[2]) == {"train.pt", "test-test.pt"}
    for name, single in written[1].items():
        double = written[2][name]
        assert len(single["keys"]) == len(set(double["keys"])) == len(double["keys"]) == 66
        by_key = dict(zip(single["keys"], single["features"], strict=True))
        expected = torch.stack([by_key[key] for key in double["keys"]])
        torch.testing.assert_close(double["features"], expected, rtol=1e-5, atol=1e-5)
