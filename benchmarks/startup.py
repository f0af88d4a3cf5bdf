"""Start-up: how long ``train.py`` takes to its first training step and to print ``--help``,
against a plain PyTorch loop and the bare imports, each a fresh Python process.

Interleaved, on the built-in Fashion-MNIST shards (the FS quickstart's model, batch and 32-px
transform):

* ``train_first_step``: ``train.py fit --config quickstart/pretrain_fs.yaml`` stopped after one
  step (no validation, checkpoint, export or progress bar): the wall time of the process;
* ``plain_first_step``: the same step in a plain loop: timm's model, webdataset reading the same
  shards, timm's transform, AdamW, one step;
* ``lightning_first_step``: that plain loop's step run by a bare ``L.Trainer`` (a four-line
  LightningModule, no CLI, no suite): what Lightning itself adds, so that the suite's own share
  (``train_first_step`` minus this) is seen apart from it;
* ``train_help``: ``train.py --help``;
* ``import_lightning``: ``import lightning`` alone, the floor under any LightningCLI start.

Targets (issue: fast start): the first step within 1.5 s of the plain loop, ``--help`` under 3 s;
also reported, the suite's own gap (against the bare Trainer) against the same 1.5 s.

    python -m benchmarks.startup                  # 5 repeats
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import common
from datamodules.builtin import prepare_fashion_mnist

NAME = "startup"
REPO = Path(__file__).resolve().parents[1]
FIRST_STEP_GAP_S = 1.5
HELP_S = 3.0
PLAIN_SETUP = """
import sys, torch, timm, webdataset as wds
from timm.data import create_transform
transform = create_transform(32, is_training=True, scale=(0.6, 1.0), color_jitter=0.0)
model = timm.create_model("resnet18", num_classes=10, layers=[1, 1, 1, 1])
data = (wds.WebDataset(sys.argv[1], shardshuffle=False).decode("pil")
        .to_tuple("png", "cls").map_tuple(transform, int).batched(128))
"""
PLAIN_LOOP = (
    PLAIN_SETUP
    + """
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
images, labels = next(iter(data))
loss = torch.nn.functional.cross_entropy(model(images), torch.as_tensor(labels))
loss.backward()
optimizer.step()
"""
)
LIGHTNING_LOOP = (
    PLAIN_SETUP
    + """
import lightning as L
class Classifier(L.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model
    def training_step(self, batch, index):
        images, labels = batch
        return torch.nn.functional.cross_entropy(self.model(images), torch.as_tensor(labels))
    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=2e-3, weight_decay=0.05)
trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
trainer.fit(Classifier(model), torch.utils.data.DataLoader(data, batch_size=None))
"""
)


def process(*command: str) -> None:
    """Run ``command`` from the repository root; stop the benchmark if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed:\n{result.stderr[-2000:]}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    urls = prepare_fashion_mnist(args.root)["classification"]["train"].split("|")[0]  # no |N
    out = Path(args.root) / "startup_runs"
    train = [sys.executable, str(REPO / "train.py")]
    candidates = {
        "train_first_step": lambda: process(
            *train,
            "fit",
            "--config=quickstart/pretrain_fs.yaml",
            f"--data.init_args.builtin_root={args.root}",
            "--trainer.max_steps=1",
            "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks=[]",
            f"--trainer.logger.init_args.save_dir={out}",
            "--export.enabled=false",
        ),
        "plain_first_step": lambda: process(sys.executable, "-c", PLAIN_LOOP, urls),
        "lightning_first_step": lambda: process(sys.executable, "-c", LIGHTNING_LOOP, urls),
        "train_help": lambda: process(*train, "--help"),
        "import_lightning": lambda: process(sys.executable, "-c", "import lightning"),
    }
    times = common.interleaved(candidates, args.repeats, warmup=1)
    gap = times["train_first_step"].median - times["plain_first_step"].median
    suite_gap = times["train_first_step"].median - times["lightning_first_step"].median
    return {
        "config": vars(args),
        "candidates": times,
        "ratios": {
            "first_step_gap_s": gap,
            "suite_gap_s": suite_gap,
            "lightning_gap_s": times["lightning_first_step"].median
            - times["plain_first_step"].median,
            "train_over_plain": common.ratio(times["train_first_step"], times["plain_first_step"]),
            "help_s": times["train_help"].median,
            "import_lightning_s": times["import_lightning"].median,
        },
        "target": {
            "first_step_gap_below_s": FIRST_STEP_GAP_S,
            "met_first_step": gap < FIRST_STEP_GAP_S,
            "met_first_step_over_lightning": suite_gap < FIRST_STEP_GAP_S,
            "help_below_s": HELP_S,
            "met_help": times["train_help"].median < HELP_S,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = common.arguments(__doc__)
    parser.add_argument("--root", default="data", help="folder of the built-in shards")
    common.publish(NAME, parser.parse_args(argv), run)


if __name__ == "__main__":
    main()
