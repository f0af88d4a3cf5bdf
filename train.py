"""Command-line entry point: ``python train.py fit --config pretrain_clip.yaml``.

A LightningCLI (subcommands fit / validate / test / predict, ``--print_config``,
``class_path``/``init_args``). A bare config name that is not an existing path is looked up
under ``configs/``. Every mistake a run can know before training (an option, a config file, a
checkpoint, the data, a folder) stops it with one ``error:`` line and exit status 2, before
Lightning starts rank processes or creates a log folder; a mistake met by one DDP rank during
training is printed once, as the last line.
"""

from __future__ import annotations

import difflib
import importlib
import itertools
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError, ArgumentParser, Namespace
from lightning import LightningDataModule, Trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.data_audit import DataAudit
from callbacks.embedding_writer import EmbeddingWriter
from callbacks.export import ExportBackbone
from callbacks.hparams_summary import ConfigText, HparamsSummary
from callbacks.run_summary import RunSummary
from callbacks.spectrum_monitor import SpectrumMonitor
from callbacks.throughput import SampleThroughput
from datamodules.base import ShardDataModule
from datamodules.builtin import BuiltinDataError
from datamodules.embeddings import EmbeddingDataModule
from datamodules.errors import ConfigError
from datamodules.pipeline import DataQualityError
from lightning_modules.base import NoisyTrainingModule
from scripts.config_files import COMPOSE_KEY, composition, find_config

CONFIG_FLAGS = ("--config", "-c")
COMPOSE_HELP = (
    "Config files merged, in order, before the file that lists them: a base per stage, then "
    "method and task fragments (e.g. [base/adapt.yaml, method/nmtune.yaml, "
    "task/imagenet_ood.yaml]). Each is looked up beside that file, then under configs/."
)
# Parse errors raise instead of printing the usage text, and option names are never guessed
# from a prefix (argparse would take --trainer.max_epoch=7 as --trainer.max_epochs).
STRICT_PARSING = {"exit_on_error": False, "allow_abbrev": False}
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc")
UNSAFE_LOADING_HELP = (
    "Let --weights_only false unpickle the --ckpt_path checkpoint: the file can then run any "
    "code on this machine with your permissions. Only for a checkpoint you made or trust; this "
    "suite's checkpoints load without it."
)
RANK_ERRORS_VARIABLE = "TRAIN_PY_RANK_ERRORS"
RANK_EXIT_WAIT_S = 10.0  # how long the launching process lets the other ranks end on their own


def resolve_config_paths(argv: list[str]) -> list[str]:
    """Replace ``--config NAME`` by ``configs/NAME`` when NAME is not a path but is there, and
    put the fragments that a file composes before it, each as its own ``--config``."""
    resolved: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        flag, eq, value = arg.partition("=")
        if eq and flag in CONFIG_FLAGS:
            resolved += [f"{flag}={path}" for path in composition(find_config(value))]
        elif arg in CONFIG_FLAGS and index + 1 < len(argv):
            index += 1
            for path in composition(find_config(argv[index])):
                resolved += [arg, path]
        else:
            resolved.append(arg)
        index += 1
    return resolved


def config_values(argv: list[str]) -> list[str]:
    """The value of every ``--config``/``-c`` in ``argv``."""
    values = []
    for index, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if eq and flag in CONFIG_FLAGS:
            values.append(value)
        elif arg in CONFIG_FLAGS and index + 1 < len(argv):
            values.append(argv[index + 1])
    return values


def check_config_file(value: str) -> None:
    """An empty, non-mapping or broken YAML file, named with its problem (jsonargparse says
    ``Unexpected config:`` and neither), or one that sets the linked ``model.num_classes``; a
    missing file is left to jsonargparse, which names it."""
    path = Path(value)
    if not path.is_file():
        return
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--config {value}: not valid YAML{where}: {problem}") from None
    if content is None:
        raise ConfigError(
            f"--config {value} is empty: a config is a YAML mapping of options (trainer:, model:, "
            "data:), e.g. configs/quickstart/pretrain_fs.yaml"
        )
    if not isinstance(content, dict):
        raise ConfigError(
            f"--config {value} holds a YAML {type(content).__name__}, not a mapping of options "
            "(trainer:, model:, data:)"
        )
    model = content.get("model")
    init_args = model.get("init_args") if isinstance(model, dict) else None
    if isinstance(init_args, dict) and "num_classes" in init_args:
        raise ConfigError(f"--config {value}: model.init_args.num_classes: {LINKED_TARGET_FIX}")


LINKED_TARGET_FIX = "it follows data.init_args.num_classes: set that one instead"


def refuse_linked_targets(argv: list[str]) -> None:
    """``model.num_classes`` follows ``data.num_classes``; jsonargparse would silently replace
    a value given for it on the command line, so that stops the run (``check_config_file``
    refuses one in a config file)."""
    for arg in argv:
        if arg.split("=", 1)[0] in ("--model.init_args.num_classes", "--model.num_classes"):
            raise ConfigError(f"{arg.split('=', 1)[0]}: {LINKED_TARGET_FIX}")


def explain(message: str, options: Iterable[str] = (), prefix: str = "--") -> str:
    """jsonargparse's multi-line parse error as one line: the option, what it expected and got,
    and the option meant by a typo. ``options`` are the parser's option names; ``prefix`` is
    put before the names of a nested class's options."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return message
    unknown = re.fullmatch(r"unrecognized arguments: (.*)", lines[0])
    if unknown:
        arguments = [
            arg for arg in unknown.group(1).split() if arg not in LightningCLI.subcommands()
        ]
        return "; ".join(unknown_argument(arg, list(options), prefix) for arg in arguments)
    if lines[0].startswith("the following arguments are required"):
        return f"{lines[0]}: give a --config (e.g. --config quickstart/pretrain_fs.yaml)"
    key = re.fullmatch(r'Parser key "([^"]+)":\s*(.*)', lines[0])
    if key is None:
        return " ".join(lines)
    option = prefix + key.group(1)
    if key.group(2):
        return f"{option}: {key.group(2)}"
    problem = next((i for i, line in enumerate(lines) if line.startswith("- Problem with")), None)
    if problem is not None:
        class_path = re.search(r"'([^']+)'", lines[problem])
        inner = list(
            itertools.takewhile(
                lambda line: not line.startswith(("- ", "Given value")), lines[problem + 1 :]
            )
        )
        nested = inner and re.match(r'Parser key "|unrecognized arguments:|Option \'', inner[0])
        if class_path and nested:
            not_accepted = re.fullmatch(r"Option '([^']+)' is not accepted", inner[0])
            if not_accepted:  # an unknown key of the class, given on the command line
                inner = [f"unrecognized arguments: --{not_accepted.group(1)}"]
            nested_options = class_options(class_path.group(1))
            return explain("\n".join(inner), nested_options, f"{option}.init_args.")
        where = f"{class_path.group(1)}: " if class_path else ""
        return f"{option}: {where}{' '.join(inner)}"
    got = re.fullmatch(r"Expected a (.+)\. Got value: (.*)", " ".join(lines[1:]))
    if got:
        return f"{option}: expected {describe_type(got.group(1))}, got {got.group(2)!r}"
    expected = [
        describe_type(match.group(1))
        for line in lines
        if (match := re.fullmatch(r"- Expected a (.+)", line)) and "NoneType" not in line
    ]
    given = next(
        (line.removeprefix("Given value: ") for line in lines if line.startswith("Given value: ")),
        "",
    )
    if expected:
        return f"{option}: expected {' or '.join(expected)}, got {given!r}"
    return f"{option}: {' '.join(lines[1:])}"


def unknown_argument(argument: str, options: list[str], prefix: str) -> str:
    """One unrecognised command-line word, with the option it most likely meant."""
    if not argument.startswith("-"):
        return f"unexpected argument {argument!r} (an option's value needs its option before it)"
    name, _, value = argument.partition("=")
    full = prefix + name.lstrip("-")
    if name in options:
        return f"{full}: {value!r} is not a valid value"
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.75)
    if not close:
        return f"{full}: no such option (--help lists them)"
    abbreviated = " (options are never abbreviated)" if close[0].startswith(name) else ""
    return f"{full}: no such option; did you mean {prefix}{close[0].lstrip('-')}?{abbreviated}"


def class_options(class_path: str) -> list[str]:
    """The option names jsonargparse gives ``class_path``'s arguments ([] if it cannot load)."""
    module, _, name = class_path.rpartition(".")
    try:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    return [name for action in parser._actions for name in action.option_strings]


def describe_type(kind: str) -> str:
    """``<class 'int'>`` -> ``int``; ``typing.Literal['a', 'b']`` -> ``one of a, b``."""
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", kind)
    if literal:
        return "one of " + literal.group(1).replace("'", "")
    return re.sub(r"<class '([\w.]+)'>", r"\1", kind)


def unsafe_loading(arguments: Namespace | dict) -> bool:
    """``--weights_only false`` with its opt-in (refused without it)."""
    return arguments.get("weights_only") is False and bool(
        arguments.get("allow_unsafe_checkpoint_loading")
    )


def check_checkpoint_options(arguments: Namespace | dict) -> None:
    """``--weights_only false`` only with its named opt-in, and a ``--ckpt_path`` file that loads
    with weights only, checked before Lightning reads it."""
    if arguments.get("weights_only") is False and not unsafe_loading(arguments):
        raise ConfigError(
            "--weights_only false would unpickle the checkpoint, which can run any code it holds; "
            "refused. Add --allow_unsafe_checkpoint_loading true to take that risk with a "
            "checkpoint you trust"
        )
    ckpt_path = arguments.get("ckpt_path") or ""
    lightning_finds_it = ckpt_path in LIGHTNING_CKPT_NAMES or ckpt_path.startswith("registry")
    remote = "://" in ckpt_path  # fit loads it with weights_only=True (check_before_running)
    if ckpt_path and not (lightning_finds_it or remote or unsafe_loading(arguments)):
        check_checkpoint(ckpt_path)


def check_checkpoint(path: str) -> None:
    """Load ``path`` as Lightning will, weights only, with its tensors memory-mapped (not read):
    a missing, broken or code-carrying checkpoint is one line before anything starts."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"--ckpt_path {path}: no such file; give a checkpoint file, or `last` to resume the "
            "newest last.ckpt of this run"
        )
    try:
        checkpoint = torch.load(
            file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file)
        )
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # not a pickle of known objects at all
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
            reason = detail.group(1) if detail else first_line(err)
            raise ConfigError(
                f"--ckpt_path {path}: not a readable PyTorch checkpoint ({reason})"
            ) from None
        raise ConfigError(
            f"--ckpt_path {path}: refused: it holds Python objects ({unsafe_globals(file)}) that "
            "only unpickling, which can run code from the file, could build; this suite's "
            "checkpoints hold tensors and plain values. For a checkpoint you trust: "
            "--weights_only false --allow_unsafe_checkpoint_loading true"
        ) from None
    except Exception as err:  # any failure to read the user's file is the file's problem
        raise ConfigError(
            f"--ckpt_path {path}: not a readable PyTorch checkpoint ({first_line(err)})"
        ) from None
    keys = ("state_dict", "pytorch-lightning_version")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in keys):
        raise ConfigError(
            f"--ckpt_path {path}: not a Lightning checkpoint (it lacks {' or '.join(keys)}); "
            "--ckpt_path resumes or evaluates a run of this suite, weights alone cannot"
        )


def unsafe_globals(file: Path) -> str:
    """The classes and functions a checkpoint's pickle names beyond torch's safe ones."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except Exception:  # not a zip checkpoint: the names cannot be listed without unpickling
        names = []
    return ", ".join(names[:3]) or "objects beyond tensors and plain values"


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def choose_precision(trainer: Namespace) -> None:
    """``precision: null`` is chosen here, at run time: bf16-mixed where the run will use a CUDA
    GPU that has bf16, else 32-true, so the paper configs train in bf16 and still run on a CPU."""
    if trainer.get("precision") is not None:
        return
    gpu = trainer.get("accelerator") in (None, "auto", "gpu", "cuda")
    bf16 = gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    trainer.precision = "bf16-mixed" if bf16 else "32-true"


def missing_card(config: Namespace, mistake: str) -> ConfigError | None:
    """The model's failure to find its backbone card, named with the option that sets it (the
    model loads the card while it is built, where the option is not known); its other mistakes
    keep their own message."""
    card = config.get("model.init_args.backbone.card")
    if card is None:
        return None
    path = Path(card).expanduser()
    if path.is_file() or (path / "card.json").is_file() or str(path) not in mistake:
        return None
    return ConfigError(
        f"--model.init_args.backbone.card: no backbone card at {card}; pre-train first "
        "(`python train.py fit --config pretrain_fs.yaml` exports "
        "runs/pretrain_fs/export/card.json) or give the card.json of an exported run"
    )


def checkpoint_misfit(err: BaseException, ckpt_path: str | None) -> ConfigError | None:
    """Lightning's strict load of a checkpoint written for another model, as one line (it can
    only be known once the model is set up, inside fit)."""
    text = str(err)
    if not ckpt_path or not isinstance(err, RuntimeError) or "in loading state_dict" not in text:
        return None
    reasons = [line.strip() for line in text.splitlines()[1:] if line.strip()]
    first = reasons[0] if reasons else first_line(err)
    shown = first if len(first) <= 160 else first[:160] + "..."
    return ConfigError(
        f"--ckpt_path {ckpt_path} was written for another model ({len(reasons)} kinds of "
        f"mismatch; {shown}); give a checkpoint of this config's model"
    )


def unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot be created and written (None when it can), probed with a nameless
    temporary file in its nearest existing ancestor: nothing is left behind."""
    existing = folder.expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return f"{existing} is not writable ({err.strerror or err})"
    return None


def is_rank_process(trainer: Trainer) -> bool:
    """A process that a launcher (Lightning's own for DDP, torchrun, SLURM) started as a rank."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return environment is not None and environment.creates_processes_externally


class HeldLogs(logging.Handler):
    """Start-up lines (Lightning's seed, devices and tips; open_clip's "no pretrained weights"
    through the root logger), held until the checks before training pass: a mistake is then
    the only line printed."""

    loggers = ("lightning.pytorch", "lightning.fabric", "")

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.saved: dict[str, tuple[list[logging.Handler], bool]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @contextmanager
    def holding(self) -> Iterator[HeldLogs]:
        for name in self.loggers:
            logger = logging.getLogger(name)
            self.saved[name] = (logger.handlers[:], logger.propagate)
            logger.handlers, logger.propagate = [self], False
        try:
            yield self
        finally:
            self.restore()

    def restore(self) -> None:
        for name, (handlers, propagate) in self.saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        self.saved = {}

    def show(self) -> None:
        """Stop holding, and print what was held."""
        self.restore()
        for record in self.records:
            logging.getLogger(record.name).handle(record)
        self.records = []


@dataclass
class RankErrors:
    """A folder the rank processes of one DDP launch share: Lightning starts the other ranks
    from this process, and they inherit its path in ``$TRAIN_PY_RANK_ERRORS``. A rank that stops
    on a mistake writes it there and exits quietly; the launching process lets the others end,
    then prints the first mistake once, as the last line (not a gloo traceback about a peer)."""

    folder: Path
    rank_process: bool

    def exit_quietly_if_explained(self, err: BaseException, rank: int) -> None:
        """In a rank process: record a mistake and exit, or exit because another rank did."""
        mistake = user_mistake(err)
        if mistake is not None:
            (self.folder / f"rank{rank}").write_text(mistake)
            sys.exit(2)
        if self.first() is not None:  # this rank failed because another one stopped
            sys.exit(1)

    def first(self) -> str | None:
        records = sorted(self.folder.glob("rank*"), key=lambda path: path.stat().st_mtime_ns)
        return records[0].read_text() if records else None

    def stop_rank_processes(self, trainer: Trainer, at_once: bool) -> None:
        """Let the other ranks end by themselves (one that met a mistake exits), then kill the
        rest: a rank waiting in a collective for this process would wait for its timeout."""
        deadline = time.monotonic() + (0.0 if at_once else RANK_EXIT_WAIT_S)
        for process in getattr(trainer.strategy.launcher, "procs", []):
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def rank_errors() -> Iterator[RankErrors]:
    """The launch's shared error folder: inherited in a rank process, else made (and removed)."""
    inherited = os.environ.get(RANK_ERRORS_VARIABLE)
    if inherited:
        yield RankErrors(Path(inherited), rank_process=True)
        return
    folder = Path(tempfile.mkdtemp(prefix="train-py-errors-"))
    os.environ[RANK_ERRORS_VARIABLE] = str(folder)
    try:
        yield RankErrors(folder, rank_process=False)
    finally:
        os.environ.pop(RANK_ERRORS_VARIABLE, None)
        shutil.rmtree(folder, ignore_errors=True)


def unborn_folders(trainer: Trainer) -> list[Path]:
    """This run's log folder and the folders above it that do not exist yet, deepest first."""
    log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
    if not log_dir:
        return []
    return [path for path in (Path(log_dir), *Path(log_dir).parents) if not path.exists()]


def remove_unstarted_run(folders: list[Path]) -> None:
    """Remove the log folder a run that never trained created; folders above it only if empty
    (another run may have started in them meanwhile)."""
    if not folders or not folders[0].is_dir() or any(folders[0].rglob("*.ckpt")):
        return
    shutil.rmtree(folders[0], ignore_errors=True)
    for parent in folders[1:]:
        try:
            parent.rmdir()
        except OSError:
            return


class SuiteCLI(LightningCLI):
    """LightningCLI with the callbacks every run needs registered as config sections, and every
    check that can run before training run there."""

    def __init__(
        self, *args: Any, rank_errors: RankErrors, held_logs: HeldLogs, **kwargs: Any
    ) -> None:
        self.rank_errors = rank_errors
        self.held_logs = held_logs
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(DataAudit, "data_audit")
        parser.add_lightning_class_args(ExportBackbone, "export")
        parser.add_lightning_class_args(SpectrumMonitor, "spectrum")
        parser.add_lightning_class_args(RunSummary, "summary")
        parser.add_lightning_class_args(EmbeddingWriter, "embed")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(SampleThroughput, "throughput")
        parser.add_lightning_class_args(HparamsSummary, "hparams_summary")
        parser.add_argument(
            f"--{COMPOSE_KEY}", type=list[str] | None, default=None, help=COMPOSE_HELP
        )
        # one number of classes: the data's, passed on to the model (a CLIP pair has none)
        parser.link_arguments(
            "data.init_args.num_classes", "model.init_args.num_classes", apply_on="parse"
        )
        parser.add_argument(
            "--allow_unsafe_checkpoint_loading", type=bool, default=False, help=UNSAFE_LOADING_HELP
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse with one line per mistake (no usage text), then check the checkpoint options
        before Lightning reads ``--ckpt_path``'s hyperparameters."""
        argv = [str(arg) for arg in args or []]
        for value in config_values(argv):
            check_config_file(value)
        refuse_linked_targets(argv)
        try:
            self.config = parser.parse_args(argv)
        except ArgumentError as err:
            subcommand = next((arg for arg in argv if arg in self.subcommands()), None)
            options = parser if subcommand is None else self._subcommand_parsers[subcommand]
            names = [name for action in options._actions for name in action.option_strings]
            raise ConfigError(explain(str(err), names)) from None
        if self.config.get("subcommand"):
            check_checkpoint_options(self.config[self.config.subcommand])

    def _parse_ckpt_path(self) -> None:
        """Lightning reads ``--ckpt_path``'s hyperparameters with ``weights_only=True``: a
        checkpoint loaded with the unsafe opt-in may not pass, and keeps the config's instead."""
        try:
            super()._parse_ckpt_path()
        except pickle.UnpicklingError:
            if not unsafe_loading(self.config[self.config.subcommand]):
                raise

    def before_instantiate_classes(self) -> None:
        trainer = self.subcommand_config().trainer
        choose_precision(trainer)
        logger = trainer.logger
        if isinstance(logger, Namespace) and logger.class_path.endswith(".TensorBoardLogger"):
            # no placeholder hp_metric at the start: HparamsSummary writes the real results
            logger.init_args.default_hp_metric = False

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            named = missing_card(self.subcommand_config(), user_mistake(err) or "")
            if named is None:
                raise
            raise named from None

    def subcommand_config(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        try:
            return super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as err:  # e.g. a GPU asked for on a
            raise ConfigError(f"trainer: {first_line(err)}") from None  # machine without one

    def before_fit(self) -> None:
        """``--ckpt_path last`` finds the newest ``last.ckpt`` of this run's earlier versions
        (Lightning would look in the new version's empty folder and silently start over)."""
        arguments = self.config_init["fit"]
        if arguments.get("ckpt_path") == "last":
            arguments["ckpt_path"] = str(find_last_checkpoint(self.trainer))
        if not self.trainer.loggers:  # Lightning's monitor refuses to run without a logger
            self.trainer.callbacks = [
                cb for cb in self.trainer.callbacks if not isinstance(cb, LearningRateMonitor)
            ]
        self.check_before_running("fit")
        if arguments.get("ckpt_path"):
            self.continue_log_folder(Path(arguments["ckpt_path"]))

    def continue_log_folder(self, checkpoint: Path) -> None:
        """A resumed run logs on in the TensorBoard folder of the run it resumes (recorded in
        the checkpoint by ``ExportBackbone``), not in a new ``version_N``; events the killed run
        wrote after the checkpoint's step are purged (``purge_step``), so the curves go on
        without doubled steps. Only when the config leaves ``version`` unset and the folder
        sits where this logger logs."""
        logger = self.subcommand_config().trainer.logger
        current = self.trainer.logger
        if not isinstance(current, TensorBoardLogger) or not isinstance(logger, Namespace):
            return
        options = logger.init_args.as_dict()
        if options.get("version") is not None:
            return
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # an unsafe opt-in checkpoint or an old format: a new folder
            return
        log_dir = ((state.get("callbacks") or {}).get(ExportBackbone.__qualname__) or {}).get(
            "log_dir"
        )
        if not log_dir or Path(log_dir).parent != Path(current.root_dir).resolve():
            return
        self.trainer.logger = TensorBoardLogger(
            **{**options, "version": Path(log_dir).name, "purge_step": state["global_step"]}
        )

    def before_validate(self) -> None:
        self.check_before_running("validate")

    def before_test(self) -> None:
        self.check_before_running("test")

    def before_predict(self) -> None:
        self.check_before_running("predict")

    def check_before_running(self, stage: str) -> None:
        """The checks that need the trainer, before it starts rank processes or a log folder;
        then Lightning's held start-up lines are printed."""
        arguments = self.config_init[stage]
        check_checkpoint_options(arguments)
        if arguments.get("weights_only", False) is None:  # not torch's default, which can change
            arguments["weights_only"] = True
        for option, folder in self.written_folders(stage):
            if problem := unwritable(folder):
                raise ConfigError(f"{option} {folder}: {problem}; choose a writable folder")
        data = self.datamodule
        if isinstance(data, ShardDataModule | EmbeddingDataModule) and not (
            is_rank_process(self.trainer)  # built-in data being written by rank 0
            and getattr(data, "builtin", None) is not None
        ):
            data.check_before_training(
                stage,
                self.trainer.num_devices * self.trainer.num_nodes,
                streams_training=not getattr(self.model, "cache_features", False),
                evaluates=stage != "fit" or self.trainer.limit_val_batches != 0,
            )
        self.held_logs.show()

    def written_folders(self, stage: str) -> list[tuple[str, Path]]:
        """The folders this run writes into, each with the option that sets it."""
        trainer = self.trainer
        folders = [
            ("--trainer.logger.init_args.save_dir", Path(logger.save_dir))
            for logger in trainer.loggers
            if getattr(logger, "save_dir", None)
        ]
        if not trainer.loggers:
            folders.append(("--trainer.default_root_dir", Path(trainer.default_root_dir)))
        if stage == "fit":
            folders += [
                ("the dirpath of a trainer.callbacks ModelCheckpoint", Path(callback.dirpath))
                for callback in trainer.checkpoint_callbacks
                if callback.dirpath
            ]
            folders += [
                ("--export.dirpath", Path(callback.dirpath))
                for callback in trainer.callbacks
                if isinstance(callback, ExportBackbone) and callback.enabled and callback.dirpath
            ]
        return folders

    def fit(self, **kwargs: Any) -> None:
        self.run("fit", kwargs)

    def validate(self, **kwargs: Any) -> None:
        self.run("validate", kwargs)

    def test(self, **kwargs: Any) -> None:
        self.run("test", kwargs)

    def predict(self, **kwargs: Any) -> None:
        self.run("predict", kwargs)

    def run(self, stage: str, kwargs: dict[str, Any]) -> None:
        """Run the trainer's ``stage``; when it fails, print one error for all ranks (see
        :class:`RankErrors`) and remove the log folder of a fit that never trained a step."""
        trainer = self.trainer
        new_folders = [] if self.rank_errors.rank_process else unborn_folders(trainer)
        try:
            getattr(trainer, stage)(**kwargs)
        except BaseException as raised:
            err = checkpoint_misfit(raised, kwargs.get("ckpt_path")) or raised
            if self.rank_errors.rank_process:
                self.rank_errors.exit_quietly_if_explained(err, trainer.global_rank)
                raise
            own_mistake = user_mistake(err)
            self.rank_errors.stop_rank_processes(trainer, at_once=own_mistake is not None)
            if stage == "fit" and trainer.global_step == 0:
                remove_unstarted_run(new_folders)
            other_rank = None if own_mistake else self.rank_errors.first()
            if other_rank is not None:
                raise ConfigError(other_rank) from None
            if err is not raised:
                raise err from None
            raise


def quiet_library_chatter() -> None:
    """Drop what is not about the run: Lightning's "💡 Tip" adverts for its cloud products, and
    its warning that an IterableDataset with ``__len__`` may be miscounted across workers (the
    suite's loaders give every worker its own shards and a fixed batch count per rank, see
    ``datamodules/pipeline.py``, so the length is exact), and the one that a mid-epoch resume's
    loader is not resumable (the suite's streaming loader leaves out the batches trained before,
    see ``EpochLoader``; Lightning only knows loaders that carry a ``state_dict``), and the one
    that modules are in eval mode when training starts (a frozen backbone stays in eval mode on
    purpose: its BatchNorm statistics must not move, see ``lightning_modules/backbones.py``)."""
    for handler in logging.getLogger("lightning.pytorch").handlers:
        handler.addFilter(lambda record: not record.getMessage().startswith("💡 Tip"))
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start")


def main(argv: list[str] | None = None) -> None:
    quiet_library_chatter()
    with exit_on_user_mistake(), rank_errors() as errors, HeldLogs().holding() as held:
        args = resolve_config_paths(sys.argv[1:] if argv is None else argv)
        try:
            build_cli(args, errors, held)
        except SIGTERMException:  # Lightning ends the step in flight and exits 0; say so
            print("stopped by SIGTERM; resume with --ckpt_path last", file=sys.stderr)
            sys.exit(128 + signal.SIGTERM)


def build_cli(args: list[str], errors: RankErrors, held: HeldLogs, **kwargs: Any) -> SuiteCLI:
    """The suite's CLI on resolved ``args`` (``kwargs``: e.g. ``run=False`` to only build the
    trainer, model and data)."""
    parser_kwargs: dict[str, Any] = {
        **STRICT_PARSING,
        **{name: dict(STRICT_PARSING) for name in LightningCLI.subcommands()},
    }
    return SuiteCLI(
        NoisyTrainingModule,
        LightningDataModule,  # shards (ShardDataModule) or embeddings files
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=ConfigText,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=parser_kwargs,
        args=args,
        rank_errors=errors,
        held_logs=held,
        **kwargs,
    )


def find_last_checkpoint(trainer: Trainer) -> Path:
    """The newest ``last.ckpt`` of the checkpoint callbacks' folders; a callback without a
    folder saves into ``<logger run>/version_N/checkpoints``, so every version is searched."""
    folders = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if cb.dirpath is not None]
    if any(cb.dirpath is None for cb in trainer.checkpoint_callbacks):
        if trainer.logger is not None:
            run = Path(trainer.logger.save_dir or ".") / (trainer.logger.name or "")
            folders += sorted(run.glob("version_*/checkpoints")) or [run / "version_*/checkpoints"]
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
        if isinstance(seen, ArgumentError):  # e.g. a checkpoint's hyperparameters
            return explain(str(seen))
        if isinstance(seen, pickle.UnpicklingError):  # a remote --ckpt_path, read in fit
            found = re.search(r"GLOBAL (\S+)", str(seen))
            what = found.group(1) if found else "Python objects beyond tensors and plain values"
            return f"checkpoint refused: it holds {what}, which only unpickling could build"
        seen = seen.__cause__ or seen.__context__
    return None


if __name__ == "__main__":
    main()
