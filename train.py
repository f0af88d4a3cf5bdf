"""Command-line entry point: ``python train.py fit --config pretrain_clip.yaml``.

A LightningCLI (subcommands fit / validate / test / predict, ``--print_config``,
``class_path``/``init_args``). A bare config name that is not an existing path is looked up
under ``configs/``. Mistakes in the config or the data stop the run with one readable line.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.data_audit import DataAudit
from callbacks.export import ExportBackbone
from callbacks.spectrum_monitor import SpectrumMonitor
from datamodules.base import ShardDataModule
from datamodules.builtin import BuiltinDataError
from datamodules.errors import ConfigError
from datamodules.pipeline import DataQualityError
from lightning_modules.base import NoisyTrainingModule

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_FLAGS = ("--config", "-c")


def resolve_config_paths(argv: list[str]) -> list[str]:
    """Replace ``--config NAME`` by ``configs/NAME`` when NAME is not a path but is there."""
    resolved = list(argv)
    for index, arg in enumerate(resolved):
        flag, eq, value = arg.partition("=")
        if eq and flag in CONFIG_FLAGS:
            resolved[index] = f"{flag}={_find_config(value)}"
        elif arg in CONFIG_FLAGS and index + 1 < len(resolved):
            resolved[index + 1] = _find_config(resolved[index + 1])
    return resolved


def _find_config(value: str) -> str:
    if Path(value).exists() or not (CONFIG_DIR / value).is_file():
        return value
    return str(CONFIG_DIR / value)


class SuiteCLI(LightningCLI):
    """LightningCLI with the callbacks every run needs registered as config sections."""

    def before_fit(self) -> None:
        """``--ckpt_path last`` finds the newest ``last.ckpt`` of this run's earlier versions
        (Lightning would look in the new version's empty folder and silently start over)."""
        arguments = self.config_init[self.subcommand]
        if arguments.get("ckpt_path") == "last":
            arguments["ckpt_path"] = str(find_last_checkpoint(self.trainer))

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(DataAudit, "data_audit")
        parser.add_lightning_class_args(ExportBackbone, "export")
        parser.add_lightning_class_args(SpectrumMonitor, "spectrum")


def main(argv: list[str] | None = None) -> None:
    args = resolve_config_paths(sys.argv[1:] if argv is None else argv)
    with exit_on_user_mistake():
        try:
            SuiteCLI(
                NoisyTrainingModule,
                ShardDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_kwargs={"overwrite": True},
                args=args,
            )
        except SIGTERMException:  # Lightning ends the step in flight and exits 0; say so
            print("stopped by SIGTERM; resume with --ckpt_path last", file=sys.stderr)
            sys.exit(128 + signal.SIGTERM)


def find_last_checkpoint(trainer: Trainer) -> Path:
    """The newest ``last.ckpt`` of the checkpoint callbacks' folders; a callback without a
    folder saves into ``<logger run>/version_N/checkpoints``, so every version is searched."""
    folders = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if cb.dirpath is not None]
    if any(cb.dirpath is None for cb in trainer.checkpoint_callbacks):
        if trainer.logger is not None:
            run = Path(trainer.logger.save_dir or ".") / (trainer.logger.name or "")
            folders += sorted(run.glob("version_*/checkpoints"))
        else:
            folders.append(Path(trainer.default_root_dir) / "checkpoints")
    found = [path for folder in folders if (path := folder / "last.ckpt").is_file()]
    if not found:
        searched = ", ".join(str(f) for f in folders) or "(no checkpoint folder)"
        raise ConfigError(f"--ckpt_path last: no last.ckpt in {searched}; nothing to resume")
    return max(found, key=lambda path: path.stat().st_mtime)


@contextmanager
def exit_on_user_mistake() -> Iterator[None]:
    """A config or data mistake raised inside ends the program with one ``error:`` line and
    exit status 2; anything else propagates with its traceback."""
    try:
        yield
    except Exception as err:
        mistake = user_mistake(err)
        if mistake is None:
            raise
        print(f"error: {mistake}", file=sys.stderr)
        sys.exit(2)


def user_mistake(err: BaseException) -> str | None:
    """The message of a config or data mistake, also when a library wrapped it (jsonargparse
    re-raises init errors as ValueError; a DataLoader re-raises worker errors with a traceback)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (ConfigError, DataQualityError, BuiltinDataError)):
            text = str(seen).strip()
            if "Traceback" in text:  # re-raised from a data-loader worker: keep the message
                text = text.splitlines()[-1].split(f"{type(seen).__name__}: ", 1)[-1]
            return text
        seen = seen.__cause__ or seen.__context__
    return None


if __name__ == "__main__":
    main()
