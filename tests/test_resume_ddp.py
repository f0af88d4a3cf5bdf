"""A 2-rank DDP run (2 loader workers per rank) killed mid-epoch and resumed with
``--ckpt_path last`` ends bit-identical to an uninterrupted 2-rank run.

Slow: about 60 s on two CPU cores. Both runs are the FS quickstart shrunk to 4 steps per rank
and epoch, 2 epochs. The killed run checkpoints every step and pauses at the start of step 7;
the whole process group (both ranks and their loader workers, as a scheduler's preemption
does) then gets SIGKILL. The resume restores each rank's loader position from the checkpoint
(every rank skips the batches it trained before the kill) and the keyed augmentation draws,
so both ranks train exactly what they would have trained.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_resume import (
    ENV,
    Run,
    assert_same_weights,
    every_step_checkpoint,
    finish,
    paused_at,
    realised_rates,
    train_command,
)

EPOCHS = 2
STEPS_PER_EPOCH = 4  # epoch_samples 64 / (2 ranks x batch_size 8)
KILL_AT_STEP = STEPS_PER_EPOCH + 2
TWO_RANKS = [
    f"--trainer.max_epochs={EPOCHS}",
    "--data.init_args.epoch_samples=64",
    "--trainer.devices=2",
    "--trainer.strategy=ddp",
    "--data.init_args.num_workers=2",
    "--trainer.limit_val_batches=0",  # the tiny built-in val set is one shard
]


def start_group(command: list[str], log: Path) -> subprocess.Popen:
    """The run in its own process group, so that one killpg reaches every rank and worker."""
    with log.with_suffix(".out").open("w") as out, log.with_suffix(".err").open("w") as err:
        return subprocess.Popen(
            command, cwd=REPO, env=ENV, stdout=out, stderr=err, start_new_session=True
        )


def kill_group_when_paused(process: subprocess.Popen, marker: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (paused_at(marker) or -1) < KILL_AT_STEP and process.poll() is None:
        assert time.monotonic() < deadline, "the run never reached the kill step"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


@pytest.mark.ddp
def test_a_two_rank_run_killed_mid_epoch_resumes_bit_identical(builtin_root, tmp_path):
    def command(name: str, save_dir: Path, *extra: str) -> list[str]:
        return train_command(builtin_root, save_dir, tmp_path / f"{name}.jsonl", *TWO_RANKS, *extra)

    steps = every_step_checkpoint(tmp_path / "steps")
    reference = start_group(
        command("uninterrupted", tmp_path / "uninterrupted"), tmp_path / "uninterrupted"
    )
    killed = start_group(
        command(
            "killed",
            tmp_path / "killed",
            f"--trainer.callbacks.delay_from_step={KILL_AT_STEP}",
            "--trainer.callbacks.delay_s=600",
            *steps,
        ),
        tmp_path / "killed",
    )
    kill_group_when_paused(killed, tmp_path / "killed.paused", timeout=400)
    resumed = start_group(
        command("resumed", tmp_path / "resumed", *steps, "--ckpt_path=last"), tmp_path / "resumed"
    )
    for process in (reference, resumed):
        process.wait(timeout=400)
    runs = {
        name: finish(name, process, tmp_path, tmp_path / name)
        for name, process in (("uninterrupted", reference), ("resumed", resumed))
    }
    for run in runs.values():
        assert run.returncode == 0, f"{run.name}:\n{run.stderr[-3000:]}"
        assert "MEMBER: 2/2" in run.stderr  # really two processes
    resumed_run: Run = runs["resumed"]
    # both ranks went on with the 3rd batch of epoch 1: 2 + 4 steps per rank, 2 ranks
    assert sorted(resumed_run.column("step")) == sorted(
        2 * list(range(KILL_AT_STEP + 1, EPOCHS * STEPS_PER_EPOCH + 1))
    )
    assert sorted(map(tuple, resumed_run.batches())) == sorted(
        map(
            tuple,
            [row["keys"] for row in runs["uninterrupted"].records if row["step"] > KILL_AT_STEP],
        )
    )
    assert_same_weights(resumed_run, runs["uninterrupted"])
    assert realised_rates(resumed_run) == realised_rates(runs["uninterrupted"])[1:]
