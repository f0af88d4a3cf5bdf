"""A quickstart run killed mid-training (a real signal) and resumed with ``--ckpt_path``.

Slow: about 70 s on two idle CPU cores, 110 s on busy ones; six ``train.py`` processes, all
in one module-scoped fixture. Two runs of the FS quickstart, shrunk to 4 steps per epoch and 3
epochs, with a second ModelCheckpoint that saves every step, pause at the start of step 7 until
the test signals them: "killed" gets SIGKILL, "terminated" SIGTERM; an "uninterrupted" run of
the same command trains beside them. At that moment they have
finished epoch 0 (the quickstart's ModelCheckpoint wrote ``last.ckpt`` at its end, global step
4) and two steps of epoch 1 (the every-step checkpoint holds global step 6). Three resumes of
the killed run then run side by side:

* ``mid_epoch``: the same command plus ``--ckpt_path last``; ``last`` is the every-step
  checkpoint (its folder is an explicit ``dirpath``), so the run restarts inside epoch 1.
* ``epoch_end``: the same command plus ``--ckpt_path <copy of the epoch-end last.ckpt>``.
* ``documented``: what the quickstart tells a user: the quickstart's own callbacks, the same
  ``save_dir``, ``--ckpt_path last``.

Every run records the (key, observed label, clean label, is_noisy) of each step it trained
(``tests/resume_recorder.py``). What an uninterrupted run trains in each epoch is read
directly from the data module the CLI built (its saved ``config.yaml``), with the epoch set as
the trainer sets it, and the noisy labels are checked against ``SymmetricLabelNoise`` itself.

What is restored: the model, optimizer, LR scheduler, global step, epoch and the batch count
inside the epoch (Lightning), and the loader's position (``EpochLoader`` is stateful: the epoch's
stream leaves out the k batches trained before the kill). Resuming from an epoch-end checkpoint
or from one taken k steps into an epoch therefore trains exactly what the uninterrupted run
trains from there on, and ends with bit-identical weights.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from datamodules.noise import SymmetricLabelNoise
from datamodules.transforms import TransformConfig
from tests.conftest import REPO, scalars
from tests.test_cli_pretrain_fs import quick_args

STEPS_PER_EPOCH = 4  # epoch_samples 32 / batch_size 8
EPOCHS = 3
KILL_AT_STEP = STEPS_PER_EPOCH + 2  # two steps into epoch 1
NOISE = SymmetricLabelNoise(0.2, 10, seed=0)  # the quickstart's data.noise_ratio and data.seed
# One thread per process: on a small, busy machine torch's thread pool makes a 0.3 s step take 5 s.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@dataclass
class Run:
    name: str
    returncode: int
    records: list[dict]
    stderr: str
    save_dir: Path

    def column(self, field: str) -> list:
        return [row[field] for row in self.records]

    def batches(self) -> list[list[str]]:
        return self.column("keys")


def train_command(builtin_root: Path, save_dir: Path, records: Path, *extra: str) -> list[str]:
    """The FS quickstart shrunk to 4 steps per epoch, recording every step to ``records``."""
    return [
        sys.executable,
        str(REPO / "train.py"),
        *quick_args(builtin_root, save_dir),
        "--data.init_args.epoch_samples=32",
        "--data.init_args.batch_size=8",
        "--data.init_args.transform.image_size=16",
        f"--trainer.max_epochs={EPOCHS}",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_model_summary=false",
        "--data.init_args.num_workers=2",  # the keyed augmentation must not depend on workers
        "--trainer.callbacks+=tests.resume_recorder.BatchRecorder",
        f"--trainer.callbacks.path={records}",
        *extra,
    ]


def every_step_checkpoint(dirpath: Path) -> list[str]:
    return [
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={dirpath}",
        "--trainer.callbacks.every_n_train_steps=1",
        "--trainer.callbacks.save_top_k=0",
        "--trainer.callbacks.save_last=true",
    ]


def start(command: list[str], log: Path) -> subprocess.Popen:
    with log.with_suffix(".out").open("w") as out, log.with_suffix(".err").open("w") as err:
        return subprocess.Popen(command, cwd=REPO, env=ENV, stdout=out, stderr=err)


def finish(name: str, process: subprocess.Popen, tmp: Path, save_dir: Path) -> Run:
    records = tmp / f"{name}.jsonl"
    lines = records.read_text().splitlines() if records.exists() else []
    return Run(
        name,
        process.returncode,
        [json.loads(line) for line in lines],
        (tmp / f"{name}.err").read_text(),
        save_dir,
    )


def global_step(checkpoint: Path) -> int | None:
    """The checkpoint's global step; None while it is missing or half written."""
    try:
        return torch.load(checkpoint, weights_only=True, map_location="cpu")["global_step"]
    except (OSError, RuntimeError, EOFError, KeyError):
        return None


def paused_at(marker: Path) -> int | None:
    """The global step at which the recorder paused its run; None before it paused."""
    try:
        return int(marker.read_text())
    except (OSError, ValueError):
        return None


def signal_at_step(
    targets: list[tuple[subprocess.Popen, Path, signal.Signals]], step: int, timeout: float
) -> None:
    """Send each process its signal once the recorder paused it at ``step`` (its marker file
    says so, written after the checkpoint of that step). A process that has not paused by the
    timeout is killed."""
    deadline = time.monotonic() + timeout
    waiting = list(targets)
    while waiting and time.monotonic() < deadline:
        for target in list(waiting):
            process, marker, sig = target
            if process.poll() is not None:
                waiting.remove(target)
            elif (paused_at(marker) or -1) >= step:
                process.send_signal(sig)
                waiting.remove(target)
        time.sleep(0.05)
    for process, _, _ in waiting:
        process.kill()
    for process, _, _ in targets:
        process.wait(timeout=120)


def wait_all(processes: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def runs(builtin_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    tmp = tmp_path_factory.mktemp("resume")

    # slow: ~25 s. Two runs side by side, paused by the recorder from step KILL_AT_STEP + 1 on,
    # so the signal lands between step KILL_AT_STEP (checkpointed) and the next one, whatever
    # the machine's speed: "killed" gets SIGKILL, "terminated" SIGTERM.
    first = {
        "uninterrupted": start(
            train_command(builtin_root, tmp / "uninterrupted", tmp / "uninterrupted.jsonl"),
            tmp / "uninterrupted",
        )
    }
    for name in ("killed", "terminated"):
        command = train_command(
            builtin_root,
            tmp / name,
            tmp / f"{name}.jsonl",
            f"--trainer.callbacks.delay_from_step={KILL_AT_STEP}",
            "--trainer.callbacks.delay_s=600",
            *every_step_checkpoint(tmp / f"{name}_steps"),
        )
        first[name] = start(command, tmp / name)
    signal_at_step(
        [
            (first["killed"], tmp / "killed.paused", signal.SIGKILL),
            (first["terminated"], tmp / "terminated.paused", signal.SIGTERM),
        ],
        KILL_AT_STEP,
        timeout=300,
    )
    # copies: the resumes below write last.ckpt files again
    for quickstart_last in (tmp / "killed").rglob("last.ckpt"):  # the quickstart's callback
        shutil.copy(quickstart_last, tmp / "epoch_end.ckpt")
    shutil.copy(tmp / "killed_steps" / "last.ckpt", tmp / "mid_epoch.ckpt")

    wait_all([first["uninterrupted"]], timeout=400)
    # slow: ~30 s, three resumes of the killed run side by side.
    resumes = {
        "mid_epoch": (
            tmp / "mid_epoch",
            [*every_step_checkpoint(tmp / "killed_steps"), "--ckpt_path=last"],
        ),
        "epoch_end": (tmp / "epoch_end", [f"--ckpt_path={tmp / 'epoch_end.ckpt'}"]),
        "documented": (tmp / "killed", ["--ckpt_path=last"]),
    }
    resumed = {
        name: start(train_command(builtin_root, save, tmp / f"{name}.jsonl", *extra), tmp / name)
        for name, (save, extra) in resumes.items()
    }
    wait_all(list(resumed.values()), timeout=400)
    save_dirs = {name: save for name, (save, _) in resumes.items()}
    return {
        name: finish(name, process, tmp, save_dirs.get(name, tmp / name))
        for name, process in {**first, **resumed}.items()
    }


@pytest.fixture(scope="module")
def uninterrupted(runs: dict[str, Run]) -> dict[int, list[list[str]]]:
    """Epoch -> the key batches an uninterrupted run trains, from the data module the CLI built."""
    saved = next(runs["killed"].save_dir.rglob("config.yaml"))  # LightningCLI saved it
    config = yaml.safe_load(saved.read_text())
    module_name, class_name = config["data"]["class_path"].rsplit(".", 1)
    init_args = dict(config["data"]["init_args"])
    init_args["transform"] = TransformConfig(**init_args["transform"])
    data = getattr(importlib.import_module(module_name), class_name)(**init_args)
    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()
    batches = {}
    for epoch in range(EPOCHS):
        loader.epoch_source = lambda epoch=epoch: epoch  # what the trainer's current_epoch says
        batches[epoch] = [list(batch["key"]) for batch in loader]
        assert len(batches[epoch]) == STEPS_PER_EPOCH
    return batches


def assert_finished(run: Run) -> None:
    assert run.returncode == 0, f"{run.name} exited {run.returncode}:\n{run.stderr[-3000:]}"
    assert run.records, f"{run.name} trained no step:\n{run.stderr[-3000:]}"


def assert_same_noisy_labels(*runs: Run) -> None:
    """Every key trained, in any run, has the label the (seed, key) noise gives it."""
    observed: dict[str, set[int]] = {}
    flipped = 0
    for run in runs:
        for row in run.records:
            for key, label, clean, noisy in zip(
                row["keys"], row["labels"], row["clean"], row["noisy"], strict=True
            ):
                assert (label, bool(noisy)) == NOISE(key, clean), (run.name, key)
                observed.setdefault(key, set()).add(label)
                flipped += bool(noisy)
    assert all(len(labels) == 1 for labels in observed.values())
    assert flipped > 0  # the noise is on


def assert_continues_uninterrupted_run(
    run: Run, uninterrupted: dict[int, list[list[str]]], epoch: int
) -> None:
    """The resume replays, from the start of ``epoch``, exactly what an uninterrupted run trains."""
    expected = [batch for e in range(epoch, EPOCHS) for batch in uninterrupted[e]]
    assert run.column("epoch") == [e for e in range(epoch, EPOCHS) for _ in range(STEPS_PER_EPOCH)]
    assert run.column("step") == list(
        range(epoch * STEPS_PER_EPOCH + 1, EPOCHS * STEPS_PER_EPOCH + 1)
    )
    assert run.batches() == expected


def test_the_killed_run_stopped_two_steps_into_epoch_1(runs, uninterrupted):
    killed = runs["killed"]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert killed.column("step") == list(range(1, KILL_AT_STEP + 1))
    assert killed.column("epoch") == [0] * STEPS_PER_EPOCH + [1] * (KILL_AT_STEP - STEPS_PER_EPOCH)
    assert killed.batches() == uninterrupted[0] + uninterrupted[1][: KILL_AT_STEP - STEPS_PER_EPOCH]
    assert_same_noisy_labels(killed)
    epoch_end = killed.save_dir.parent / "epoch_end.ckpt"
    assert epoch_end.exists(), (
        f"the quickstart's ModelCheckpoint wrote no last.ckpt in {killed.save_dir}"
    )
    assert global_step(epoch_end) == STEPS_PER_EPOCH
    assert global_step(killed.save_dir.parent / "mid_epoch.ckpt") == KILL_AT_STEP
    # each epoch reads its own (seed, epoch) shard order: the three epochs differ
    assert len({tuple(map(tuple, batches)) for batches in uninterrupted.values()}) == EPOCHS


def final_weights(run: Run) -> dict[str, torch.Tensor]:
    """What the run exported when fit ended (every tensor of the timm model)."""
    return load_file(str(run.save_dir / "export" / "model.safetensors"))


def assert_same_weights(run: Run, reference: Run) -> None:
    ours, theirs = final_weights(run), final_weights(reference)
    assert ours.keys() == theirs.keys()
    different = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not different, f"{run.name}: {len(different)} tensors differ, e.g. {different[:3]}"


def realised_rates(run: Run) -> list[float]:
    return scalars(next(run.save_dir.rglob("version_*")))["noise/realised_rate"]


def test_the_uninterrupted_run_trains_what_its_data_module_gives(runs, uninterrupted):
    run = runs["uninterrupted"]
    assert_finished(run)
    assert_continues_uninterrupted_run(run, uninterrupted, epoch=0)


def test_resume_from_a_mid_epoch_checkpoint_goes_on_where_the_run_stopped(runs, uninterrupted):
    """Lightning restores the step and the batch count inside epoch 1 (2 of 4 done), and the
    loader its position: epoch 1 goes on with its 3rd batch, and the run ends with the weights
    of the uninterrupted run, bit for bit, and the same realised noise rate of epoch 1."""
    resumed, killed = runs["mid_epoch"], runs["killed"]
    assert_finished(resumed)
    done_in_epoch = KILL_AT_STEP - STEPS_PER_EPOCH
    left_in_epoch = STEPS_PER_EPOCH - done_in_epoch
    assert resumed.column("epoch") == [1] * left_in_epoch + [2] * STEPS_PER_EPOCH  # no epoch 0
    assert resumed.column("step") == list(range(KILL_AT_STEP + 1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert resumed.column("batch_idx")[0] == done_in_epoch
    assert resumed.batches() == uninterrupted[1][done_in_epoch:] + uninterrupted[2]
    assert killed.batches() + resumed.batches() == runs["uninterrupted"].batches()
    assert "dataloader is not resumable" not in " ".join(resumed.stderr.split())
    assert_same_weights(resumed, runs["uninterrupted"])
    # the resumed epoch's audit covers the batches trained before the kill too
    assert realised_rates(resumed) == realised_rates(runs["uninterrupted"])[1:]
    assert_same_noisy_labels(killed, resumed)


def test_resume_from_an_epoch_end_checkpoint_file_replays_the_interrupted_epoch(
    runs, uninterrupted
):
    resumed, killed = runs["epoch_end"], runs["killed"]
    assert_finished(resumed)
    assert_continues_uninterrupted_run(resumed, uninterrupted, epoch=1)
    assert_same_weights(resumed, runs["uninterrupted"])
    assert_same_noisy_labels(killed, resumed)


def test_the_documented_ckpt_path_last_resumes_the_killed_quickstart(runs, uninterrupted):
    """``python train.py fit --config quickstart/pretrain_fs.yaml --ckpt_path last`` after a
    kill: the quickstart's ModelCheckpoint saves ``last.ckpt`` at epoch ends, so the run goes
    on from the start of the epoch it was killed in, logging on in the killed run's folder."""
    resumed, killed = runs["documented"], runs["killed"]
    assert_finished(resumed)
    assert_continues_uninterrupted_run(resumed, uninterrupted, epoch=1)
    assert_same_noisy_labels(killed, resumed)
    # it logs on in the killed run's folder: one curve per tag, each epoch once
    folders = sorted((resumed.save_dir / "quickstart_pretrain_fs").glob("version_*"))
    assert [folder.name for folder in folders] == ["version_0"]
    assert realised_rates(resumed) == realised_rates(runs["uninterrupted"])


def test_sigterm_finishes_the_step_in_flight_then_exits_with_status_143(runs, uninterrupted):
    """Lightning's SIGTERM handler only sets a flag: the step in flight runs to its end (and its
    checkpoint is written), then fit() leaves with ``SIGTERMException``; train.py turns it into
    exit status 143 (128 + SIGTERM) with a line saying how to resume, and exports nothing."""
    run = runs["terminated"]
    assert run.returncode == 143, run.stderr[-3000:]
    assert "stopped by SIGTERM; resume with --ckpt_path last" in run.stderr
    assert "Received SIGTERM" in run.stderr
    assert run.column("step") == list(range(1, KILL_AT_STEP + 2))
    assert (
        run.batches() == uninterrupted[0] + uninterrupted[1][: KILL_AT_STEP + 1 - STEPS_PER_EPOCH]
    )
    steps = run.save_dir.parent / "terminated_steps" / "last.ckpt"
    assert global_step(steps) == KILL_AT_STEP + 1  # nothing trained is lost
    assert not (run.save_dir / "export" / "card.json").exists()
    assert "`Trainer.fit` stopped" not in run.stderr


def processes_running(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker`` (forked loader workers keep their
    parent's command line)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode(errors="replace")
            state = (cmdline.parent / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if marker in text and state != "Z":
            found.append(int(cmdline.parent.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_sigkill_takes_the_loader_workers_with_it(builtin_root, tmp_path):
    """Linux kills each loader worker with its parent (``die_with_parent``): nothing keeps
    reading shards after a SIGKILL (PyTorch's own watchdog took up to ~10 s)."""
    records = tmp_path / "orphans.jsonl"
    process = start(
        train_command(
            builtin_root,
            tmp_path,
            records,
            "--trainer.callbacks.delay_from_step=1",
            "--trainer.callbacks.delay_s=600",
            "--data.init_args.num_workers=2",
            # 32 batches: neither worker can finish its share (and exit) before the pause
            "--data.init_args.epoch_samples=256",
        ),
        tmp_path / "orphans",
    )
    deadline = time.monotonic() + 300
    while paused_at(records.with_suffix(".paused")) is None and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(processes_running(str(records))) >= 3  # the run and its two workers
    process.kill()
    process.wait(timeout=60)
    deadline = time.monotonic() + 2.0
    while processes_running(str(records)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_running(str(records)) == []
