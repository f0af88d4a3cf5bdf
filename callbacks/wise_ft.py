"""WiSE-FT after fine-tuning: score the weight-space interpolations between the starting and the
fine-tuned model on every validation set, pick alpha on one of them.

The official ``src/wise_ft.py`` evaluates ``theta_alpha = (1 - alpha) theta_0 + alpha theta_1``
over the whole classifier (backbone and head) for each ``--alpha`` and reports every one; it
chooses none. Here each alpha's accuracy, macro F1 and loss are logged (TensorBoard tag
``wise_ft/<set>/<metric>_vs_alpha``, step = 100 x alpha), and the alpha with the best accuracy
on ``selection`` is recorded with its metrics (``wise_ft/best_alpha``,
``wise_ft/<val or test>/<set>/<metric>``) in the trainer's metrics, so the export card and the
sweep's report carry them. The fine-tuned weights (alpha 1) stay the model that is exported.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from datamodules.errors import ConfigError
from lightning_modules import metric_keys
from lightning_modules.wise_ft import interpolate_weights

DEFAULT_ALPHAS = tuple(round(0.1 * step, 1) for step in range(11))


class WiseFT(L.Callback):
    """Weight-space ensembles of ``method: ft`` with its starting weights.

    The starting weights (backbone and head as fine-tuning begins, e.g. the zero-shot head with
    ``model.zeroshot.init_head``) are kept on the CPU and in checkpoints, so a resumed run
    interpolates from the same start; that doubles the checkpoint size.

    Args:
        alphas: Interpolation weights of the fine-tuned model (0: the start, 1: fine-tuned);
            the official default is ``[0.5]``, the WiSE-FT paper's figures 0 to 1 by 0.1.
        selection: The validation set (a ``data.val_shards`` name) whose accuracy picks alpha;
            on a tie the smaller alpha wins.
    """

    def __init__(self, alphas: list[float] | None = None, selection: str = "val") -> None:
        self.alphas = sorted(float(a) for a in (DEFAULT_ALPHAS if alphas is None else alphas))
        if not self.alphas or not all(0.0 <= a <= 1.0 for a in self.alphas):
            raise ConfigError(f"WiseFT alphas must lie in [0, 1], got {alphas}")
        self.selection = selection
        self.start: dict[str, torch.Tensor] | None = None
        self.scores: dict[float, dict[str, float]] = {}  # alpha -> <set>/<metric>, after fit

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start = state_dict["start"]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if getattr(pl_module, "method", None) != "ft":
            raise ConfigError(
                "the WiseFT callback interpolates a fully fine-tuned model with its start: it "
                f"needs model.method ft, not {getattr(pl_module, 'method', type(pl_module))!r}"
            )
        names = trainer.datamodule.eval_names("val")
        if self.selection not in names:
            raise ConfigError(
                f"WiseFT selection is {self.selection!r} but the validation sets are {names}: "
                "name one of them"
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.start is None:  # a resumed run brought the start from its checkpoint
            self.start = _cpu_copy(pl_module.state_dict())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.start is not None
        fine_tuned = _cpu_copy(pl_module.state_dict())
        for alpha in self.alphas:
            pl_module.load_state_dict(interpolate_weights(self.start, fine_tuned, alpha))
            self.scores[alpha] = score_validation_sets(trainer, pl_module)
        pl_module.load_state_dict(fine_tuned)
        best = max(self.alphas, key=lambda a: (self.scores[a][f"{self.selection}/acc"], -a))
        self._log(trainer, pl_module, self.scores, best)

    def _log(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        scores: dict[float, dict[str, float]],
        best: float,
    ) -> None:
        results = {"wise_ft/best_alpha": best}
        results |= {f"wise_ft/{tag}": v for tag, v in pl_module.tagged("val", scores[best]).items()}
        results |= {
            f"wise_ft/alpha_{alpha:g}/{tag}": value
            for alpha, values in scores.items()
            for tag, value in pl_module.tagged("val", values).items()
            if tag.endswith(f"/{metric_keys.ACCURACY}")
        }
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in results.items()})
        if trainer.logger is None or not trainer.is_global_zero:
            return
        for alpha, values in scores.items():
            curves = {f"wise_ft/{key}_vs_alpha": value for key, value in values.items()}
            trainer.logger.log_metrics(curves, step=round(100 * alpha))
        trainer.logger.log_metrics({"wise_ft/best_alpha": best}, step=trainer.global_step)


def score_validation_sets(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
    """``<set>/<metric>`` of the model as it is on every validation set, over all of each set
    (every rank reads its part; the classifier's torchmetrics sync the ranks)."""
    datamodule = trainer.datamodule
    names = datamodule.eval_names("val")
    was_training = pl_module.training
    pl_module.eval()
    with torch.no_grad():
        for name, loader in zip(names, datamodule.val_dataloader(), strict=True):
            for batch in loader:
                pl_module.evaluate(trainer.strategy.batch_to_device(batch), "val", name)
    pl_module.train(was_training)
    return pl_module.classifier.compute(names, None)


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}
