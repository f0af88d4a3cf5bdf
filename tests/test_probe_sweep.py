"""Linear-probe weight-decay sweep: heads train as if alone, selection on a validation set."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from datamodules.embeddings import EmbeddingDataModule
from datamodules.errors import ConfigError
from lightning_modules.adapt import Adaptation
from lightning_modules.backbones import BackboneConfig
from lightning_modules.base import OptimizerConfig
from lightning_modules.probe_sweep import WeightDecaySweep


def test_each_head_trains_exactly_as_it_would_alone() -> None:
    """Summed losses and one AdamW group per head: head k's weights equal those of a single
    linear probe with weight decay k, trained on the same batches."""
    torch.manual_seed(0)
    sweep = WeightDecaySweep(6, 3, [0.0, 0.5, 5.0])
    alone = [nn.Linear(6, 3) for _ in sweep.heads]
    for single, head in zip(alone, sweep.heads, strict=True):
        single.load_state_dict(head.state_dict())
    groups = [
        {"params": group.module.parameters(), "weight_decay": group.weight_decay}
        for group in sweep.parameter_groups()
    ]
    joint = torch.optim.AdamW(groups, lr=0.05)
    singles = [
        torch.optim.AdamW(single.parameters(), lr=0.05, weight_decay=wd)
        for single, wd in zip(alone, sweep.weight_decays, strict=True)
    ]
    for _ in range(5):
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        joint.zero_grad()
        sweep.loss(x, y)[0].backward()
        joint.step()
        for single, optimizer in zip(alone, singles, strict=True):
            optimizer.zero_grad()
            nn.functional.cross_entropy(single(x), y).backward()
            optimizer.step()
    for single, head in zip(alone, sweep.heads, strict=True):
        torch.testing.assert_close(single.weight, head.weight)
    assert not torch.allclose(sweep.heads[0].weight, sweep.heads[2].weight)


def test_selection_takes_the_best_head_on_the_selection_set_and_the_first_on_ties() -> None:
    sweep = WeightDecaySweep(2, 2, [0.1, 0.2, 0.3])
    with torch.no_grad():
        for head, sign in zip(sweep.heads, (1.0, -1.0, -1.0), strict=True):
            head.weight.copy_(torch.tensor([[sign, 0.0], [-sign, 0.0]]))
            head.bias.zero_()
    for name in ("val", "test"):
        sweep.add_evaluation_set(name)
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0]])
    sweep.update("val", x, torch.tensor([1, 0, 1]))  # heads 2 and 3 right on all; 2 listed first
    sweep.update("test", x, torch.tensor([0, 1, 0]))  # head 1 right on all
    logs = sweep.compute(["val", "test"], selection_set="val")
    assert int(sweep.selected) == 1 and logs["selected_weight_decay"] == 0.2
    assert logs["val/acc"] == 1.0 and logs["test/acc"] == 0.0  # the selected head everywhere
    assert logs["test/acc_wd_0.1"] == 1.0 and logs["val/acc_wd_0.1"] == 0.0
    assert {"val/f1", "val/loss", "test/f1", "test/loss"} <= set(logs)
    assert sweep.forward(x).argmax(1).tolist() == [1, 0, 1]
    sweep.update("test", x, torch.tensor([1, 0, 1]))  # metrics were reset; no re-selection
    assert sweep.compute(["test"], selection_set=None)["test/acc"] == 1.0
    assert int(sweep.selected) == 1


def write_split(path, n: int, seed: int) -> str:
    """Four Gaussian classes in 12 dimensions: the same centres in every split, new samples."""
    centers = torch.randn(4, 12, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n) % 4
    noise = torch.randn(n, 12, generator=torch.Generator().manual_seed(seed))
    torch.save({"features": centers[labels] + 1.5 * noise, "labels": labels}, path)
    return str(path)


def embeddings(tmp_path) -> EmbeddingDataModule:
    return EmbeddingDataModule(
        train=write_split(tmp_path / "train.pt", 200, seed=1),
        val={"val": write_split(tmp_path / "val.pt", 100, seed=2)},
        test={"test": write_split(tmp_path / "test.pt", 100, seed=3)},
        num_classes=4,
        batch_size=20,
    )


def test_sweep_end_to_end_selects_on_val_and_tests_the_selected_head(tmp_path) -> None:
    """Each head has its own optimiser group; the head best on val is reported and tested."""
    module = Adaptation(
        "lp",
        4,
        BackboneConfig(),
        weight_decay_sweep=[20.0, 0.0],
        optimizer=OptimizerConfig(lr=0.05, weight_decay=1e-4),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[],
    )
    data = embeddings(tmp_path)
    trainer.fit(module, datamodule=data)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    by_head = {wd: metrics[f"val/val/acc_wd_{wd:g}"] for wd in (20.0, 0.0)}
    assert by_head[20.0] != by_head[0.0]  # the weight decays really differ
    best = max(by_head, key=by_head.get)
    assert metrics["val/selected_weight_decay"] == best
    assert metrics["val/val/acc"] == by_head[best]
    decays = {
        id(p): group["weight_decay"]
        for group in trainer.optimizers[0].param_groups
        for p in group["params"]
    }
    for head, wd in zip(module.classifier.heads, (20.0, 0.0), strict=True):
        assert decays[id(head.weight)] == wd and decays[id(head.bias)] == 0.0  # no decay on bias
    tested = trainer.test(module, datamodule=data, verbose=False)[0]
    assert tested["test/selected_weight_decay"] == best
    assert tested["test/test/acc"] == tested[f"test/test/acc_wd_{best:g}"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "nmtune", "weight_decay_sweep": [0.0, 1e-4]}, "for method lp"),
        ({"method": "lp", "weight_decay_sweep": [1e-4]}, "at least two"),
        ({"method": "lp", "weight_decay_sweep": [-1.0, 1e-4]}, "none negative"),
        (
            {"method": "lp", "weight_decay_sweep": [0.0, 1e-4], "weight_decay_selection": "dev"},
            r"'dev' but the validation sets are \['val'\]",
        ),
    ],
)
def test_bad_sweep_options_stop_before_training(tmp_path, options, message) -> None:
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=message):
        trainer.fit(Adaptation(num_classes=4, **options), datamodule=embeddings(tmp_path))
