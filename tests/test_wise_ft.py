"""WiSE-FT: the interpolation formula, and its endpoints equal to the two models they are."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from callbacks.wise_ft import WiseFT
from datamodules.errors import ConfigError
from lightning_modules.adapt import Adaptation
from lightning_modules.backbones import BackboneConfig
from lightning_modules.base import OptimizerConfig
from lightning_modules.wise_ft import interpolate_weights
from tests.conftest import quiet_trainer
from tests.test_adapt import data_module, export_card, quickstart_metrics


def test_interpolation_is_the_official_merge():
    start = {"w": torch.tensor([0.0, 2.0]), "count": torch.tensor(3)}
    end = {"w": torch.tensor([4.0, 6.0]), "count": torch.tensor(9)}
    assert torch.equal(interpolate_weights(start, end, 0.0)["w"], start["w"])
    assert torch.equal(interpolate_weights(start, end, 1.0)["w"], end["w"])
    assert torch.equal(interpolate_weights(start, end, 0.25)["w"], torch.tensor([1.0, 3.0]))
    assert interpolate_weights(start, end, 0.25)["count"] == 9  # integers: the fine-tuned ones
    with pytest.raises(ValueError, match="differ in"):
        interpolate_weights({"w": start["w"]}, end, 0.5)


def ft_module(card) -> Adaptation:
    L.seed_everything(0)  # the same initial head for the run and for its reference
    return Adaptation("ft", 10, BackboneConfig(card=str(card)), optimizer=OptimizerConfig(lr=0.05))


def validate(module: Adaptation, data) -> dict[str, float]:
    trainer = quiet_trainer()
    trainer.validate(module, datamodule=data, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_alpha_0_is_the_start_and_alpha_1_the_fine_tuned_model(make_shards, tmp_path):
    card = export_card(tmp_path / "rn", "resnet18", {"layers": [1, 1, 1, 1]})
    spec = make_shards([24, 24])
    wise = WiseFT(alphas=[1.0, 0.0, 0.5])
    module = ft_module(card)
    trainer = quiet_trainer(
        max_epochs=2, limit_train_batches=3, num_sanity_val_steps=0, callbacks=[wise]
    )
    trainer.fit(module, datamodule=data_module(spec))
    assert sorted(wise.scores) == [0.0, 0.5, 1.0]

    fine_tuned = validate(module, data_module(spec))  # the weights left after WiSE-FT
    start = validate(ft_module(card), data_module(spec))
    for key in ("acc", "f1", "loss"):
        at = {alpha: wise.scores[alpha][f"val/{key}"] for alpha in (0.0, 1.0)}
        assert at[1.0] == pytest.approx(fine_tuned[f"val/val/{key}"], abs=1e-6)
        assert at[0.0] == pytest.approx(start[f"val/val/{key}"], abs=1e-6)
    assert start["val/val/loss"] != pytest.approx(fine_tuned["val/val/loss"])
    best = float(trainer.callback_metrics["wise_ft/best_alpha"])
    accuracy = {alpha: scores["val/acc"] for alpha, scores in wise.scores.items()}
    assert accuracy[best] == max(accuracy.values())
    assert float(trainer.callback_metrics["wise_ft/val/val/acc"]) == pytest.approx(accuracy[best])
    assert float(trainer.callback_metrics["wise_ft/alpha_0.5/val/val/acc"]) == pytest.approx(
        accuracy[0.5]
    )


def test_wise_ft_refuses_methods_other_than_ft_and_unknown_sets(make_shards, tmp_path):
    card = export_card(tmp_path / "rn", "resnet18", {"layers": [1, 1, 1, 1]})
    data = data_module(make_shards([16]))
    lp = Adaptation("lp", 10, BackboneConfig(card=str(card)), cache_dir=str(tmp_path / "c"))
    for module, callback, message in [
        (lp, WiseFT(), "needs model.method ft, not 'lp'"),
        (ft_module(card), WiseFT(selection="in1k"), "selection is 'in1k' but the validation"),
    ]:
        trainer = quiet_trainer(max_steps=1, callbacks=[callback])
        with pytest.raises(ConfigError, match=message):
            trainer.fit(module, datamodule=data)
    with pytest.raises(ConfigError, match="alphas must lie in"):
        WiseFT(alphas=[1.5])


def test_the_ft_quickstart_reports_wise_ft_in_its_card(builtin_root, tiny_fashion_mnist, tmp_path):
    card = export_card(tmp_path / "rn", "resnet18", {"layers": [1, 1, 1, 1]})
    image_size = "--data.init_args.transform.image_size=16"
    metrics = quickstart_metrics("ft", card, builtin_root, tiny_fashion_mnist, tmp_path, image_size)
    assert 0.0 <= metrics["wise_ft/best_alpha"] <= 1.0
    assert 0.0 <= metrics["wise_ft/test/test/acc"] <= 1.0
    assert {f"wise_ft/alpha_{a:g}/test/test/acc" for a in (0, 0.25, 0.5, 0.75, 1)} <= set(metrics)
