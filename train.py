"""Command-line entry point: ``python train.py fit --config pretrain_clip.yaml``.

A LightningCLI (subcommands fit / validate / test / predict, ``--print_config``,
``class_path``/``init_args``). A bare config name that is not an existing path is looked up
under ``configs/``. Mistakes in the config or the data stop the run with one readable line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

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

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(DataAudit, "data_audit")
        parser.add_lightning_class_args(ExportBackbone, "export")
        parser.add_lightning_class_args(SpectrumMonitor, "spectrum")


def main(argv: list[str] | None = None) -> None:
    args = resolve_config_paths(sys.argv[1:] if argv is None else argv)
    try:
        SuiteCLI(
            NoisyTrainingModule,
            ShardDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
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
