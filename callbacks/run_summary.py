"""The end of a run in the terminal: its final metrics per set, where its logs and export are,
and the command that opens them in TensorBoard."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lightning as L

from callbacks.export import ExportBackbone
from lightning_modules.metric_keys import PAPER_SPECTRUM, parse_evaluation_tag, parse_spectrum_tag


def results_table(metrics: Mapping[str, float]) -> str:
    """``<split>/<set>/<metric>`` scalars as one row per evaluation set and one column per
    metric, with the set's ``spectrum/<set>/{sve,lsvr}`` beside it. The weight-decay sweep's
    per-head accuracies (``acc_wd_*``) are left to TensorBoard. Empty when nothing matches."""
    rows: dict[str, dict[str, float]] = {}
    spectrum: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if (evaluation := parse_evaluation_tag(key)) is not None:
            kind, name, metric = evaluation
            if "_wd_" not in metric:
                rows.setdefault(f"{kind}/{name}", {})[metric] = float(value)
        elif (spectral := parse_spectrum_tag(key)) is not None and spectral[1] in PAPER_SPECTRUM:
            spectrum.setdefault(spectral[0], {})[spectral[1]] = float(value)
    for row, values in rows.items():
        values.update(spectrum.get(row.split("/", 1)[1], {}))
    if not rows:
        return ""
    columns = list(dict.fromkeys(metric for values in rows.values() for metric in values))
    width = max(len("set"), *(len(row) for row in rows))
    lines = ["  ".join([f"{'set':<{width}}", *(f"{c:>10}" for c in columns)])]
    for row, values in rows.items():
        cells = (f"{values[c]:>10.4f}" if c in values else f"{'':>10}" for c in columns)
        lines.append("  ".join([f"{row:<{width}}", *cells]))
    return "\n".join(lines)


class RunSummary(L.Callback):
    """After ``fit``, ``validate`` and ``test``, rank 0 prints the final metrics per set, the log
    folder, the export folder and the ``tensorboard --logdir`` line.

    Args:
        enabled: Turn the summary off (e.g. when a script parses the output).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(trainer, "fit")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._print(trainer, "validate")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(trainer, "test")

    def _print(self, trainer: L.Trainer, stage: str) -> None:
        if not self.enabled:
            return
        log_dir = trainer.log_dir  # every rank: it is a broadcast
        if not trainer.is_global_zero:
            return
        table = results_table(trainer.callback_metrics)
        lines = [f"{stage} done after {trainer.current_epoch} epochs, {trainer.global_step} steps"]
        lines += ["  " + line for line in table.splitlines()] or ["  (no evaluation metrics)"]
        if trainer.logger is not None and log_dir:
            lines.append(f"logs:   {Path(log_dir).resolve()}")
            root = Path(trainer.logger.save_dir or log_dir).resolve()
            lines.append(f"view:   tensorboard --logdir {root}")
        exports = [
            cb.exported
            for cb in trainer.callbacks
            if isinstance(cb, ExportBackbone) and cb.exported
        ]
        lines += [f"export: {folder}" for folder in exports if stage in ("fit", "validate")]
        print("\n".join(lines), flush=True)
