"""Write the trained model as a hub-style folder with a JSON card when ``fit`` ends.

A pre-training export is what timm or open_clip load with one string and what uploads to the
Hugging Face Hub as it is (``config.json`` + ``model.safetensors`` for timm,
``open_clip_config.json`` + ``open_clip_model.safetensors`` for open_clip); ``card.json`` beside
the weights is the run's metadata (noise, seed, data, epochs, metrics, spectrum protocol, run).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import lightning as L

from callbacks.spectrum_monitor import SpectrumMonitor
from datamodules.errors import ConfigError

CARD = "card.json"


def card_path(path: str | Path) -> Path:
    """``card.json`` itself, or the one in the export folder ``path``."""
    path = Path(path).expanduser()
    return path / CARD if path.is_dir() else path


def read_card(path: str | Path) -> dict[str, Any]:
    """The card of an export (the file or its folder); missing, it stops the run naming it."""
    path = card_path(path)
    if not path.is_file():
        raise ConfigError(
            f"card {str(path)!r} not found: pass the card.json a training run exported "
            "(<log_dir>/export/card.json) or its folder"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError(f"{path} is not a card of this suite: {err}") from err


def card_pretraining(path: str | Path) -> dict[str, Any]:
    """The noise and data seed an exported backbone was pre-trained with (empty when the card
    does not say), for the hyperparameters of the runs that adapt it."""
    data = read_card(path).get("data") or {}
    noise = data.get("noise") or {}
    summary = {"noise_type": noise.get("type"), "noise_ratio": noise.get("ratio")}
    summary["seed"] = data.get("seed")
    return {key: value for key, value in summary.items() if value is not None}


def write_card(
    module: Any,
    datamodule: Any,
    directory: Path,
    epochs: int,
    metrics: dict[str, Any],
    *,
    run: dict[str, str] | None = None,
    spectrum: dict[str, Any] | None = None,
) -> Path:
    """Export ``module`` into ``directory`` with ``card.json`` describing the run."""
    directory.mkdir(parents=True, exist_ok=True)
    card: dict[str, Any] = {"backbone": module.export(directory), "epochs": epochs}
    if datamodule is not None:
        card["data"] = {
            "train_shards": getattr(datamodule.train_spec, "spec", None),
            "seed": datamodule.seed,
            "noise": datamodule.noise_summary(),
            # which samples share a batch depends on the readers (ranks x workers): give this
            # number as data.num_workers to retrace the run on another machine
            "loader_workers": getattr(datamodule, "loader_workers", None),
        }
        if (subset := getattr(datamodule, "subset_info", None)) is not None:
            card["data"]["subset"] = subset
    card["metrics"] = {
        name: float(value)
        for name, value in metrics.items()
        if getattr(value, "numel", lambda: 1)() == 1
    }
    if spectrum is not None:
        card["spectrum"] = spectrum
    if run is not None:
        card["run"] = run
    path = directory / CARD
    path.write_text(json.dumps(card, indent=2))
    return path


def exports_after_validate(trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
    """A ``validate`` run of a model with nothing to train (``training_free``, the zero-shot
    head): its results are final, so it is exported (and summarised) as a ``fit`` is."""
    return trainer.state.fn == "validate" and getattr(pl_module, "training_free", False)


class ExportBackbone(L.Callback):
    """At the end of ``fit``, rank 0 writes ``<log_dir>/export/`` (weights, configs, card); a
    model with nothing to train (``training_free``, the zero-shot head) at the end of
    ``validate``.

    An export of another run in the folder is never replaced silently: ``fit`` stops before
    training unless ``overwrite``. The same run is the one that logs into the same folder, or
    one resumed from its checkpoints (they carry the run's id).

    Args:
        enabled: Turn the export off.
        dirpath: Where to write (default: ``export`` inside the run's log folder).
        overwrite: Replace an export that another run wrote there.
    """

    def __init__(self, enabled: bool = True, dirpath: str | None = None, overwrite: bool = False):
        self.enabled = enabled
        self.dirpath = dirpath
        self.overwrite = overwrite
        self.run_id = uuid.uuid4().hex
        self.log_dir: str | None = None  # the run's log folder, once fit starts
        self.exported: Path | None = None  # the folder, once written (rank 0)

    def state_dict(self) -> dict[str, Any]:
        """The run's id, and its log folder, where a resume goes on logging (train.py)."""
        return {"run_id": self.run_id, "log_dir": self.log_dir}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.run_id = state_dict["run_id"]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_dir = str(Path(trainer.log_dir or ".").resolve())  # every rank: a broadcast
        if self.enabled:
            self._folder_and_run(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            self._export(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and exports_after_validate(trainer, pl_module):
            self._folder_and_run(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and exports_after_validate(trainer, pl_module):
            self._export(trainer, pl_module)

    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        directory, run = self._folder_and_run(trainer)  # another may have exported meanwhile
        if not trainer.is_global_zero:
            return
        spectrum = [cb for cb in trainer.callbacks if isinstance(cb, SpectrumMonitor)]
        path = write_card(
            pl_module,
            trainer.datamodule,
            directory,
            trainer.current_epoch,
            trainer.callback_metrics,
            run=run,
            spectrum=getattr(spectrum[0], "protocol_info", None) if spectrum else None,
        )
        self.exported = path.parent
        print(f"exported: {path.parent}")

    def _folder_and_run(self, trainer: L.Trainer) -> tuple[Path, dict[str, str]]:
        """The export folder and this run's card entry; a ConfigError on every rank if the
        folder holds another run's export."""
        # every rank: trainer.log_dir is a broadcast, so rank 0 alone would wait for the others
        run = {"id": self.run_id, "log_dir": str(Path(trainer.log_dir or ".").resolve())}
        directory = Path(self.dirpath or Path(run["log_dir"]) / "export")
        problem = None
        if trainer.is_global_zero and not self.overwrite and card_path(directory).is_file():
            earlier = json.loads(card_path(directory).read_text()).get("run") or {}
            if earlier.get("id") != run["id"] and earlier.get("log_dir") != run["log_dir"]:
                problem = (
                    f"export.dirpath {str(directory)!r} holds the export of another run "
                    f"(logged in {earlier.get('log_dir', 'an unknown folder')}); pass "
                    "--export.overwrite=true to replace it, or another --export.dirpath"
                )
        problem = trainer.strategy.broadcast(problem, src=0)
        if problem:
            raise ConfigError(problem)
        return directory, run
