"""Train or validate a linear probe under real multi-process DDP (gloo); record what ranks saw.

Run by the DDP tests as a user runs a script: Lightning's DDP launcher starts the other ranks
by re-running this file. ``fit``: each rank writes ``rank<R>.json`` with, per epoch, the
(key, observed label, is_noisy) of every sample it trained on. ``spectrum``: validation with
the SpectrumMonitor; rank 0 writes the logged metrics to ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L
import torch
import torch.nn.functional as F

from callbacks.spectrum_monitor import SpectrumMonitor
from datamodules.classification import ClassificationDataModule
from datamodules.transforms import TransformConfig


class Recorder(L.LightningModule):
    feature_dim = 16

    def __init__(self, out: Path) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same weights in every run and on every rank
        self.project = torch.nn.Linear(3 * 8 * 8, self.feature_dim)
        self.head = torch.nn.Linear(self.feature_dim, 10)
        self.out = out
        self.seen: dict[int, list] = {}

    def features(self, batch):
        return torch.tanh(self.project(batch["image"].flatten(1)))

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return {"features": self.features(batch)}

    def training_step(self, batch, batch_idx):
        rows = zip(batch["key"], batch["label"].tolist(), batch["is_noisy"].tolist(), strict=True)
        self.seen.setdefault(self.current_epoch, []).extend(rows)
        return F.cross_entropy(self.head(self.features(batch)), batch["label"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self) -> None:
        path = self.out / f"rank{self.global_rank}.json"
        path.write_text(json.dumps({str(epoch): rows for epoch, rows in self.seen.items()}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["fit", "spectrum"], default="fit")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--epoch-samples", type=int, default=None)
    args = parser.parse_args()
    data = ClassificationDataModule(
        num_classes=10,
        label_noise="symmetric",
        noise_ratio=0.3,
        train_shards=args.spec,
        val_shards={"probe": args.spec},
        batch_size=4,
        num_workers=args.num_workers,
        epoch_samples=args.epoch_samples,
        shuffle_buffer=8,
        transform=TransformConfig(image_size=8, crop_pct=1.0),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SpectrumMonitor(log_plots=False)],
        limit_val_batches=0 if args.mode == "fit" else None,
    )
    module = Recorder(args.out)
    if args.mode == "fit":
        trainer.fit(module, datamodule=data)
        return
    trainer.validate(module, datamodule=data)
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (args.out / "metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main()
