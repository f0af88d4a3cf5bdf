"""A callback the resume test adds to ``train.py`` on its command line: what each step trained on.

One JSON line per training batch, written and flushed at ``on_train_batch_end`` (after the
optimizer step), so a run killed with SIGKILL keeps the line of every step it finished::

    {"epoch": 1, "step": 6, "batch_idx": 1, "keys": [...], "labels": [...],
     "clean": [...], "noisy": [...], "time": 1712345678.9}

``delay_s`` pauses at the start of every batch from global step ``delay_from_step`` on, after
the checkpoint of the previous step was written, until the time is up or the process receives
SIGTERM. On entering the pause it writes the global step to ``<path>.paused``: the test signals
the process only then, so the signal lands at the same point of the loop on every machine
(a signal sent as soon as the checkpoint appears can still reach Lightning's end-of-step check
and stop the run one step earlier).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L


class BatchRecorder(L.Callback):
    def __init__(self, path: str, delay_s: float = 0.0, delay_from_step: int = 0) -> None:
        self.path = Path(path)
        self.delay_s = delay_s
        self.delay_from_step = delay_from_step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.delay_s or trainer.global_step < self.delay_from_step:
            return
        self.path.with_suffix(".paused").write_text(str(trainer.global_step))
        end = time.monotonic() + self.delay_s
        while time.monotonic() < end and not trainer.received_sigterm:  # SIGTERM ends the pause
            time.sleep(0.05)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
    ) -> None:
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "batch_idx": batch_idx,
            "keys": list(batch["key"]),
            "labels": batch["label"].tolist(),
            "clean": batch["clean_label"].tolist(),
            "noisy": batch["is_noisy"].tolist(),
            "time": time.time(),
        }
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
