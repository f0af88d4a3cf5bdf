"""Write the trained backbone and a JSON card when ``fit`` ends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L


def write_card(
    module: Any, datamodule: Any, directory: Path, epochs: int, metrics: dict[str, Any]
) -> Path:
    """Export ``module``'s backbone into ``directory`` with ``card.json`` describing the run."""
    directory.mkdir(parents=True, exist_ok=True)
    card = {"backbone": module.export(directory), "epochs": epochs}
    if datamodule is not None:
        card["data"] = {
            "train_shards": getattr(datamodule.train_spec, "spec", None),
            "seed": datamodule.seed,
            "noise": datamodule.noise_summary(),
        }
    card["metrics"] = {
        name: float(value)
        for name, value in metrics.items()
        if getattr(value, "numel", lambda: 1)() == 1
    }
    path = directory / "card.json"
    path.write_text(json.dumps(card, indent=2))
    return path


class ExportBackbone(L.Callback):
    """At the end of ``fit``, rank 0 writes ``<log_dir>/export/`` (weights + ``card.json``).

    Args:
        enabled: Turn the export off.
        dirpath: Where to write (default: ``export`` inside the run's log folder).
    """

    def __init__(self, enabled: bool = True, dirpath: str | None = None) -> None:
        self.enabled = enabled
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        # every rank: trainer.log_dir is a broadcast, so rank 0 alone would wait for the others
        directory = Path(self.dirpath or Path(trainer.log_dir or ".") / "export")
        if not trainer.is_global_zero:
            return
        path = write_card(
            pl_module,
            trainer.datamodule,
            directory,
            trainer.current_epoch,
            trainer.callback_metrics,
        )
        print(f"exported backbone: {path}")
