"""Fault injection through train.py: a user's mistake stops the run with one line, no traceback.

Every mistake a run can know before training (an option, a config file, a checkpoint, the data,
a folder) ends ``python train.py`` with exit status 2 and a single ``error:`` line on stderr,
leaves no ``version_N`` folder behind, and a checkpoint whose unpickling would create a marker
file never creates it. The single-process mistakes run as train.py scripts inside one
interpreter (``runpy``, stderr captured per run at the file-descriptor level, so Lightning's
own log lines count too): the ~5 s of imports are paid once, not once per mistake. A data
error on one of two real DDP ranks (gloo) runs as its own process tree.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from jsonargparse import Namespace

import train
from datamodules.errors import ConfigError
from datamodules.pipeline import ShardStream
from datamodules.shards import parse_shards
from tests.conftest import REPO, classification_samples, write_tar
from tests.test_cli_pretrain_fs import quick_args

TRAIN = REPO / "train.py"
PAPER_DATA = Path("/data")  # where the paper configs look for their shards
# Runs each case as `python train.py ARGS` would, one after the other in this interpreter.
DRIVER = """
import json, os, runpy, sys, tempfile, traceback
train, cases_file, results_file = sys.argv[1:]
sys.path.insert(0, os.path.dirname(train))
results = {}
for name, (cwd, args) in json.loads(open(cases_file).read()).items():
    os.chdir(cwd)
    sys.argv = [train, *args]
    with tempfile.TemporaryFile(mode="w+") as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            runpy.run_path(train, run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        results[name] = [code, captured.read()]
open(results_file, "w").write(json.dumps(results))
"""


class Payload:
    """Unpickling this creates ``path``: proof that a checkpoint's code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return open, (str(self.path), "w")


@dataclass
class Outcome:
    code: int
    stderr: str


@dataclass
class Case:
    args: list[str]
    message: str  # a regex the error line must match after "error: "
    cwd: Path = REPO


def run_cases(cases: dict[str, Case], folder: Path) -> dict[str, Outcome]:
    """Run every case as ``python train.py ARGS`` inside one interpreter (see DRIVER)."""
    cases_file, results_file = folder / "cases.json", folder / "results.json"
    cases_file.write_text(json.dumps({n: [str(c.cwd), c.args] for n, c in cases.items()}))
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(TRAIN), str(cases_file), str(results_file)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {n: Outcome(*o) for n, o in json.loads(results_file.read_text()).items()}


def read_only_folder(tmp: Path) -> Path:
    """A folder this process cannot create files in: mode 0o555, or for root (whom modes do not
    stop) sysfs, where no process may create a file."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def write_shards(folder: Path, count: int, samples: int = 10) -> str:
    folder.mkdir(parents=True)
    for index in range(count):
        name = f"train{index}"
        write_tar(folder / f"train-{index:04d}.tar", classification_samples(name, samples))
    return f"{folder}/train-{{0000..{count - 1:04d}}}.tar"


def other_checkpoint(folder: Path) -> Path:
    """A clean Lightning checkpoint whose weights fit another model than the quickstart's."""
    path = folder / "other.ckpt"
    state = {"model.fc.weight": torch.zeros(3, 512), "model.fc.bias": torch.zeros(3)}
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.6.0", "loops": {}}, path)
    return path


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file a malicious checkpoint would create; no test may ever see it."""
    return tmp_path_factory.mktemp("payload") / "payload_ran"


@pytest.fixture(scope="module")
def evil_checkpoint(marker: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("evil") / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload(marker)}}, path)
    return path


CASES = {
    "abbreviated option": r"--trainer\.max_epoch: no such option; did you mean "
    r"--trainer\.max_epochs\? \(options are never abbreviated\)",
    "typo in a data option": r"--data\.init_args\.batch_sise: no such option; did you mean "
    r"--data\.init_args\.batch_size\?",
    "value of the wrong type": r"--trainer\.max_epochs: expected int, got 'seven'",
    "empty config": r"--config \S+empty\.yaml is empty: a config is a YAML mapping",
    "unsafe loading without its opt-in": r"--weights_only false would unpickle the checkpoint, "
    r"which can run any code it holds; refused\. Add --allow_unsafe_checkpoint_loading true",
    "malicious checkpoint": r"--ckpt_path \S+evil\.ckpt: refused: it holds Python objects "
    r"\(io\.open\)",
    "malicious last.ckpt": r"--ckpt_path \S+last\.ckpt: refused",
    "read-only log folder": r"--trainer\.logger\.init_args\.save_dir \S+: \S+ is not writable",
    "read-only export folder": r"--export\.dirpath \S+: \S+ is not writable",
    "fewer shards than readers": r"data\.train_shards: 3 shards cannot feed 1 ranks x 4 workers "
    r"= 4 readers",
    "evaluation set with fewer shards than ranks": r"evaluation set 'val': 1 shard\(s\) cannot "
    r"give each of 2 ranks one",
    "broken _info.json": r"data\.train_shards: \S+_info\.json cannot be read as JSON",
    "missing noise_transitions file": r"data\.noise_transitions: label-noise transitions file "
    r"not found",
    "augmentation with no batch-wise version": r"data\.transform\.augment_on_device: timm's "
    r"ColorJitter step has no batch-wise version; set color_jitter: 0",
    "invalid strategy name": r"trainer: You selected an invalid strategy name: `strategy='ddpp'`",
    "checkpoint of another model": r"--ckpt_path \S+other\.ckpt was written for another model",
    "embeddings config without its files": r"data\.directory: \S+none holds no train\.pt; "
    r"write it with python train\.py predict",
    "paper FS config without data": r"data\.train_shards: 1024 of 1024 shards not found",
    "paper CLIP config without data": r"data\.train_shards: 2776 of 2776 shards not found",
    "paper NMTune config without a card": r"--model\.init_args\.backbone\.card: no backbone "
    r"card at runs/pretrain_fs/export/card\.json",
}
# Known only once Lightning has set the model up: the error is the last line, after its own.
IN_FIT = {"checkpoint of another model"}
PAPER_CONFIGS = {  # each started in an empty folder, where no runs/ may appear
    "paper FS config without data": "pretrain_fs.yaml",
    "paper CLIP config without data": "pretrain_clip.yaml",
    "paper NMTune config without a card": "nmtune_ood.yaml",
}


@pytest.fixture(scope="module")
def outcomes(
    builtin_root: Path, evil_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Case, Outcome]]:
    tmp = tmp_path_factory.mktemp("faults")
    read_only = read_only_folder(tmp)
    empty = tmp / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    evil_run = tmp / "evil_run" / "quickstart_pretrain_fs" / "version_0" / "checkpoints"
    evil_run.mkdir(parents=True)
    (evil_run / "last.ckpt").write_bytes(evil_checkpoint.read_bytes())
    broken = write_shards(tmp / "broken", 2)
    (tmp / "broken" / "_info.json").write_text("{not json")

    def quick(name: str, *extra: str) -> list[str]:
        return quick_args(builtin_root, tmp / "runs" / name, *extra)

    args = {
        "abbreviated option": quick("abbrev", "--trainer.max_epoch=7"),
        "typo in a data option": quick("typo", "--data.init_args.batch_sise=32"),
        "value of the wrong type": quick("type", "--trainer.max_epochs=seven"),
        "empty config": ["fit", "--config", str(empty)],
        "unsafe loading without its opt-in": quick(
            "unsafe", f"--ckpt_path={evil_checkpoint}", "--weights_only=false"
        ),
        "malicious checkpoint": quick("evil", f"--ckpt_path={evil_checkpoint}"),
        "malicious last.ckpt": [*quick_args(builtin_root, tmp / "evil_run"), "--ckpt_path=last"],
        "read-only log folder": quick_args(builtin_root, read_only / "runs"),
        "read-only export folder": quick("export", f"--export.dirpath={read_only / 'export'}"),
        "fewer shards than readers": quick(
            "shards",
            f"--data.init_args.train_shards={write_shards(tmp / 'three', 3)}",
            "--data.init_args.num_workers=4",
        ),
        "evaluation set with fewer shards than ranks": quick(
            "eval_shards", "--trainer.devices=2", "--trainer.strategy=ddp"
        ),
        "broken _info.json": quick("info", f"--data.init_args.train_shards={broken}"),
        "embeddings config without its files": [
            "fit",
            "--config=quickstart/nmtune_embeddings.yaml",
            f"--data.init_args.directory={tmp / 'none'}",
            f"--trainer.logger.init_args.save_dir={tmp / 'runs' / 'embeddings'}",
        ],
        "missing noise_transitions file": quick(
            "transitions",
            "--data.init_args.label_noise=asymmetric",
            f"--data.init_args.noise_transitions={tmp / 'nowhere.json'}",
        ),
        "augmentation with no batch-wise version": quick(
            "augment",
            "--data.init_args.transform.color_jitter=0.4",
            "--data.init_args.transform.augment_on_device=true",
        ),
        "invalid strategy name": quick("strategy", "--trainer.strategy=ddpp"),
        "checkpoint of another model": quick("other", f"--ckpt_path={other_checkpoint(tmp)}"),
    }
    cases = {name: Case(arguments, CASES[name]) for name, arguments in args.items()}
    for name, config in PAPER_CONFIGS.items():
        if not PAPER_DATA.exists():  # else they would find their data and train
            (tmp / "cwd" / config).mkdir(parents=True)
            cases[name] = Case(["fit", "--config", config], CASES[name], tmp / "cwd" / config)
    results = run_cases(cases, tmp)
    return {name: (case, results[name]) for name, case in cases.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_a_mistake_stops_the_run_with_one_line(outcomes, marker, name):
    if name not in outcomes:
        pytest.skip(f"{PAPER_DATA} exists: the paper configs would train")
    case, outcome = outcomes[name]
    lines = outcome.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert outcome.code == 2, outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    assert errors == lines[-1:] if name in IN_FIT else errors == lines, outcome.stderr[-3000:]
    assert re.match(case.message, errors[0].removeprefix("error: ")), errors[0]
    if name in PAPER_CONFIGS:
        assert not (case.cwd / "runs").exists(), sorted(case.cwd.rglob("*"))
    assert not marker.exists(), "a checkpoint's pickled payload ran"


def test_no_version_folder_is_left_by_a_run_that_never_started(outcomes):
    started = [
        path
        for case, _ in outcomes.values()
        for arg in case.args
        if arg.startswith("--trainer.logger.init_args.save_dir=")
        for path in Path(arg.split("=", 1)[1]).glob("*/version_*")
        if "evil_run" not in str(path)  # holds the planted last.ckpt
    ]
    assert not started


def test_the_unsafe_opt_in_passes_the_gate_without_loading(evil_checkpoint, marker):
    """With the opt-in the checkpoint is left to Lightning (which would unpickle it): the gate
    neither refuses nor reads it; without it, the same options are refused."""
    options = {"ckpt_path": str(evil_checkpoint), "weights_only": False}
    with pytest.raises(ConfigError, match="--allow_unsafe_checkpoint_loading true"):
        train.check_checkpoint_options(options)
    train.check_checkpoint_options({**options, "allow_unsafe_checkpoint_loading": True})
    assert not marker.exists()


def test_a_file_that_is_no_lightning_checkpoint_is_named_as_such(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match=r"garbage\.ckpt: not a readable PyTorch checkpoint"):
        train.check_checkpoint(str(garbage))
    with pytest.raises(ConfigError, match=r"nowhere\.ckpt: no such file"):
        train.check_checkpoint(str(tmp_path / "nowhere.ckpt"))
    weights = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)  # weights alone, e.g. timm's
    with pytest.raises(ConfigError, match=r"weights\.pt: not a Lightning checkpoint"):
        train.check_checkpoint(str(weights))


def test_broken_and_non_mapping_configs_name_the_file_and_the_problem(tmp_path):
    broken, listed = tmp_path / "broken.yaml", tmp_path / "list.yaml"
    broken.write_text("trainer:\n  max_epochs: [1\n")
    listed.write_text("- fit\n- model\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML at line 3, column 1"):
        train.check_config_file(str(broken))
    with pytest.raises(ConfigError, match=r"list\.yaml holds a YAML list, not a mapping"):
        train.check_config_file(str(listed))


def test_a_file_in_the_way_of_a_folder_is_unwritable(tmp_path):
    (tmp_path / "a_file").write_text("")
    assert (
        train.unwritable(tmp_path / "a_file" / "runs")
        == f"{tmp_path / 'a_file'} is a file, not a folder"
    )
    assert train.unwritable(tmp_path / "new" / "runs") is None
    assert not (tmp_path / "new").exists()  # the probe creates nothing


def test_precision_null_is_chosen_at_run_time():
    bf16_gpu = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    for accelerator, expected in (
        ("cpu", "32-true"),
        ("auto", "bf16-mixed" if bf16_gpu else "32-true"),
    ):
        trainer = Namespace(accelerator=accelerator, precision=None)
        train.choose_precision(trainer)
        assert trainer.precision == expected, accelerator
    chosen = Namespace(accelerator="auto", precision="16-mixed")
    train.choose_precision(chosen)
    assert chosen.precision == "16-mixed"  # an explicit precision is kept


def test_jsonargparse_union_errors_become_one_line():
    message = (
        'Parser key "trainer.precision":\n  Does not validate against any of the Union subtypes\n'
        "  Subtypes: [typing.Literal['bf16-mixed', '32-true'], <class 'NoneType'>]\n  Errors:\n"
        "    - Expected a typing.Literal['bf16-mixed', '32-true']\n"
        "    - Expected a <class 'NoneType'>\n  Given value type: <class 'str'>\n"
        "  Given value: bf17"
    )
    assert train.explain(message) == (
        "--trainer.precision: expected one of bf16-mixed, 32-true, got 'bf17'"
    )


@pytest.mark.ddp
def test_a_data_error_on_one_ddp_rank_is_printed_once_at_the_end(builtin_root, tmp_path):
    """Two gloo ranks; the first shard rank 1 reads is undecodable. Rank 1 stops on the data
    error; rank 0, whose next collective then fails, prints rank 1's error as the last line."""
    spec = write_shards(tmp_path / "shards", 4, samples=150)
    rank1 = ShardStream(
        parse_shards(spec), None, 8, training=True, batches_per_rank=1, rank=1, world_size=2
    )
    first_of_rank1 = Path(next(rank1.shard_urls(0, 1)))
    samples = classification_samples("bad", 150)
    for sample in samples:
        sample["png"] = b"not an image"
    write_tar(first_of_rank1, samples)
    result = subprocess.run(
        [
            sys.executable,
            str(TRAIN),
            *quick_args(builtin_root, tmp_path / "runs"),
            f"--data.init_args.train_shards={spec}",
            "--data.init_args.num_workers=0",
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
            "--trainer.max_epochs=1",
            "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0",
            "--export.enabled=false",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]
    assert re.match(r"error: \d+ of \d+ samples skipped .* in rank 1 worker 0", errors[0])
    assert not list((tmp_path / "runs").glob("*/version_*"))  # it never trained a step
