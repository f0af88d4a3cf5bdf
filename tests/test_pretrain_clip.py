"""CLIP pre-training: the quickstart through train.py, exact DDP loss and retrieval, export."""

from __future__ import annotations

import io
import json
import re
import socket
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.distributed as dist
import yaml
from PIL import Image

import train
from datamodules.errors import ConfigError
from datamodules.image_text import ImageTextDataModule
from datamodules.transforms import TransformConfig
from datamodules.writer import write_split
from lightning_modules.base import OptimizerConfig
from lightning_modules.pretrain_clip import (
    ContrastivePretraining,
    create_open_clip_model,
    make_clip_loss,
)
from lightning_modules.retrieval import RetrievalRecall, retrieval_recall
from tests.conftest import REPO, run_train, scalars

QUICKSTART = "quickstart/pretrain_clip.yaml"
TINY = yaml.safe_load((REPO / "configs" / QUICKSTART).read_text())["model"]["init_args"]
CLASSES = ["cat", "dog", "bird"]
RECALLS = [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5)]


def quick_args(builtin_root: Path, save_dir: Path, *extra: str) -> list[str]:
    """The quickstart config, shrunk to 3 steps and 2 validation batches per set."""
    return [
        "fit",
        "--config",
        QUICKSTART,
        f"--data.init_args.builtin_root={builtin_root}",
        "--data.init_args.epoch_samples=96",
        "--data.init_args.batch_size=32",
        "--data.init_args.eval_batch_size=32",
        "--trainer.max_epochs=1",
        "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        f"--export.dirpath={save_dir / 'export'}",
        *extra,
    ]


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_sets(folder: Path, sizes: list[int]) -> tuple[str, str]:
    """Image-text shards (captions repeat every 3 samples) and labelled shards with class names
    of ``sizes`` samples per shard; returns both specs."""
    specs = []
    for layout in ("image_text", "classification"):
        samples = []
        for index in range(sum(sizes)):
            sample = {"__key__": f"{layout}-{index:04d}", "png": png(index)}
            if layout == "image_text":
                sample["txt"] = f"a photo of a {CLASSES[index % 3]}."
            else:
                sample["cls"] = str(index % 3)
            samples.append(sample)
        info = {"num_classes": 3, "class_names": CLASSES} if layout == "classification" else {}
        shards = [samples[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(len(sizes))]
        summaries = [
            write_split(shard, folder / layout / f"part{i}", "val", len(shard), info=info)
            for i, shard in enumerate(shards)
        ]
        specs.append(
            "::".join(s.spec(folder / layout / f"part{i}") for i, s in enumerate(summaries))
        )
    return specs[0], specs[1]


# --- train.py as a user runs it ----------------------------------------------------------------
def test_quickstart_trains_logs_recall_and_zeroshot_and_exports(builtin_root, tmp_path):
    result = run_train(*quick_args(builtin_root, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "quickstart_pretrain_clip" / "version_0"
    logged = scalars(run_dir)
    recalls = [f"val/val/{name}" for name in RECALLS]
    for tag in ("train/loss_step", "train/logit_scale", "noise/realised_rate", *recalls):
        assert tag in logged, f"{tag} missing from {sorted(logged)}"
    assert len(logged["train/loss_step"]) == 3
    assert all(0 < scale <= 100 for scale in logged["train/logit_scale"])
    assert all(0 <= logged[tag][-1] <= 1 for tag in recalls)
    # the default zero-shot set: the built-in classification val split, prompts from class names
    assert 0 <= logged["val/zeroshot/acc"][-1] <= 1

    # the checkpoint rebuilds the module (the inline model config included), then its weights
    module = ContrastivePretraining.load_from_checkpoint(
        run_dir / "checkpoints" / "last.ckpt", weights_only=True
    ).eval()
    assert (module.model_name, module.model_config) == (TINY["model_name"], TINY["model_config"])
    assert yaml.safe_load((run_dir / "hparams.yaml").read_text())["model_name"] == "tiny-clip-vit"
    card = json.loads((tmp_path / "export" / "card.json").read_text())
    assert card["backbone"]["library"] == "open_clip"
    assert (tmp_path / "export" / card["backbone"]["weights"]).is_file()
    assert card["data"]["noise"] == {"type": "caption_swap", "ratio": 0.2, "expected_rate": 0.2}
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'export'}")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = module.features({"image": images})
        assert torch.allclose(model.eval().encode_image(images, normalize=True), expected)


def test_unknown_model_name_stops_before_training_with_one_line(builtin_root, tmp_path):
    result = run_train(
        *quick_args(
            builtin_root,
            tmp_path,
            "--model.init_args.model_name=ViT-Q-99",
            "--model.init_args.model_config=null",
        )
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model.model_name 'ViT-Q-99' is not an open_clip model"), last
    assert "ViT-B-16" in last  # a few real names to pick from
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--data.init_args.context_length=77", "data.context_length is 77 but model"),
        ("--data.init_args.transform.image_size=28", "data.transform.image_size is 28"),
        ("--model.init_args.model_name=ViT-B-16", "already an open_clip model with another"),
    ],
)
def test_model_and_data_mismatches_stop_with_one_line(
    builtin_root, tmp_path, capsys, override, message
):
    with pytest.raises(SystemExit) as stop:
        train.main(quick_args(builtin_root, tmp_path, override))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(message, err), err


# --- DDP: loss, gradients and retrieval are those of one process on the global batch ----------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 32, 32, generator=generator)
    tokens = torch.randint(1, 49408, (8, 32), generator=generator)
    return images, tokens


def clip_loss_and_grads(rank: int, world_size: int) -> tuple[torch.Tensor, dict]:
    """The tiny quickstart CLIP (same seeded init everywhere) on this rank's share of the batch,
    in float64 so that the different summation orders agree to ~1e-12."""
    torch.manual_seed(0)
    model = create_open_clip_model("tiny-clip-vit", TINY["model_config"]).double()
    images, tokens = (part.chunk(world_size)[rank] for part in global_batch())
    out = model(images.double(), tokens)
    loss = make_clip_loss(rank, world_size)(
        out["image_features"], out["text_features"], out["logit_scale"]
    )
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def ddp_rank(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    loss, grads = clip_loss_and_grads(rank, world_size)
    for grad in grads.values():  # what DDP does to gradients
        dist.all_reduce(grad)
        grad /= world_size
    torch.save({"loss": loss, "grads": grads}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.ddp
def test_clip_loss_and_gradients_under_two_process_ddp_equal_one_process(tmp_path):
    torch.multiprocessing.spawn(ddp_rank, args=(2, free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    loss, grads = clip_loss_and_grads(0, 1)
    assert torch.allclose(torch.stack([r["loss"] for r in ranks]).mean(), loss, rtol=1e-12)
    for result in ranks:
        for name, grad in grads.items():
            assert torch.allclose(result["grads"][name], grad, rtol=1e-9, atol=1e-12), name


@pytest.mark.ddp
def test_validation_metrics_under_two_ranks_equal_one_rank(builtin_root, tmp_path):
    """Uneven shards give the ranks different sample counts; recall and zero-shot accuracy are
    computed over the whole set, so they match one process exactly."""
    pairs, labelled = write_sets(tmp_path / "data", [30, 11, 25])  # rank 0: 55, rank 1: 11
    metrics = {}
    for devices, strategy in ((1, "auto"), (2, "ddp")):
        save_dir = tmp_path / f"devices{devices}"
        args = [
            "validate",
            *quick_args(builtin_root, save_dir)[1:],
            f"--trainer.devices={devices}",
            f"--trainer.strategy={strategy}",
            "--trainer.limit_val_batches=null",
            f"--data.init_args.val_shards={pairs}",
            f"--data.init_args.zeroshot_shards={labelled}",
            "--data.init_args.num_workers=0",
        ]
        if devices == 1:
            train.main(args)  # in this process: saves a Python start
        else:
            result = run_train(*args)
            assert result.returncode == 0, result.stderr[-3000:]
            assert "MEMBER: 2/2" in result.stderr  # really two processes
        metrics[devices] = scalars(save_dir / "quickstart_pretrain_clip" / "version_0")
    expected = [f"val/val/{name}" for name in RECALLS] + ["val/zeroshot/acc"]
    assert set(expected) <= set(metrics[1]), sorted(metrics[1])
    for tag in expected:
        assert metrics[2][tag] == pytest.approx(metrics[1][tag], abs=1e-6), tag


def retrieval_pairs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    image = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=1)
    text = torch.nn.functional.normalize(image + torch.randn(6, 8, generator=generator), dim=1)
    return image, text, torch.randint(1, 50, (6, 4), generator=generator)


def retrieval_rank(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    metric = RetrievalRecall(embed_dim=8, context_length=4)
    if rank == 0:  # rank 1 sees no pair at all
        image, text, tokens = retrieval_pairs()
        metric.update(image[:4], text[:4], tokens[:4])
        metric.update(image[4:], text[4:], tokens[4:])
    torch.save(metric.compute(), Path(out_dir) / f"recall{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.ddp
def test_retrieval_metric_gathers_every_rank_even_one_without_pairs(tmp_path):
    torch.multiprocessing.spawn(retrieval_rank, args=(2, free_port(), str(tmp_path)), nprocs=2)
    expected = retrieval_recall(*retrieval_pairs())
    for rank in range(2):
        recall = torch.load(tmp_path / f"recall{rank}.pt", weights_only=True)
        assert recall == pytest.approx(expected), rank


# --- pieces ----------------------------------------------------------------------------------
def test_recall_counts_copies_of_a_caption_as_one_answer():
    embeddings = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    # captions: A, A (a copy), B, C; texts of B and C are swapped, so images 2 and 3 miss at @1
    tokens = torch.tensor([[1, 2], [1, 2], [3, 4], [5, 6]])
    shared = torch.nn.functional.normalize(embeddings[0] + embeddings[1], dim=0)
    text = torch.stack([shared, shared, embeddings[3], embeddings[2]])
    recall = retrieval_recall(embeddings, text, tokens)
    assert {name: float(value) for name, value in recall.items()} == {
        "image_to_text_R@1": 0.5,
        "image_to_text_R@5": 1.0,
        "text_to_image_R@1": 0.5,
        "text_to_image_R@5": 1.0,
    }


def test_export_loads_with_open_clip_and_gives_the_same_features(tmp_path):
    module = ContrastivePretraining(
        TINY["model_name"], TINY["model_config"], optimizer=OptimizerConfig()
    ).eval()
    card = module.export(tmp_path)
    assert card["load"] == f"open_clip.create_model_and_transforms('local-dir:{tmp_path}')"
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = module.features({"image": images})
        assert torch.allclose(model.eval().encode_image(images, normalize=True), expected)
    assert preprocess(Image.new("RGB", (28, 28))).shape == (3, 32, 32)


def test_zeroshot_sets_follow_the_image_text_val_sets(tmp_path):
    pairs, labelled = write_sets(tmp_path, [8])
    data = ImageTextDataModule(
        train_shards=pairs,
        val_shards=pairs,
        test_shards=pairs,
        zeroshot_shards={"animals": labelled},
        context_length=32,
        batch_size=4,
        num_workers=0,
        transform=TransformConfig(image_size=32, crop_pct=1.0),
    )
    data.setup("fit")
    assert data.eval_names("val") == ["val", "animals"] and data.zeroshot_names == ["animals"]
    assert data.eval_names("test") == ["test"]
    assert data.zeroshot_classes == {"animals": CLASSES}  # from the shards' _info.json
    pairs_loader, labelled_loader = data.val_dataloader()
    assert next(iter(pairs_loader))["text"].shape == (4, 32)
    batch = next(iter(labelled_loader))
    assert batch["label"].tolist() == [0, 1, 2, 0] and not batch["is_noisy"].any()

    data.zeroshot_shards = {"val": labelled}
    with pytest.raises(ConfigError, match="distinct names"):
        data.setup("fit")
    (tmp_path / "classification" / "part0" / "_info.json").write_text("{}")
    data.zeroshot_shards = labelled
    with pytest.raises(ConfigError, match=r"data\.zeroshot_class_names"):
        data.setup("fit")
