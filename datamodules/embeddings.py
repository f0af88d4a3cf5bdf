"""Precomputed embeddings as a DataModule: the black-box case (e.g. text-embedding-ada-002).

One file per split, ``.pt`` (torch.save of a dict, loaded with ``weights_only=True``) or
``.npz``, holding ``features`` (N x D floats), ``labels`` (N ints) and optionally ``keys``
(N strings; default ``<split>-<row>``). Keys drive the label noise, as for shards. A folder that
``train.py predict`` wrote (``train.pt``, ``val-<set>.pt``, ``test-<set>.pt``) names its sets
itself (``directory``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.classification import make_label_noise, noise_summary
from datamodules.errors import ConfigError
from datamodules.evaluation import EvaluationKinds, validation_sets
from datamodules.features import EvaluationFeatures, FeatureRows, training_features
from datamodules.subset import TrainingSubset


def load_embeddings(path: str, option: str) -> FeatureRows:
    """Read one split file; the error names the option and what is wrong."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"data.{option}: embeddings file not found: {file}")
    if file.suffix == ".npz":
        data = dict(np.load(file, allow_pickle=False))
    else:
        data = torch.load(file, weights_only=True)
    missing = {"features", "labels"} - set(data)
    if missing:
        raise ConfigError(f"data.{option}: {file} lacks {sorted(missing)} (has {sorted(data)})")
    features = torch.as_tensor(np.asarray(data["features"]), dtype=torch.float32)
    labels = torch.as_tensor(np.asarray(data["labels"]), dtype=torch.long)
    if features.ndim != 2 or labels.shape != (len(features),):
        raise ConfigError(
            f"data.{option}: {file} needs features N x D and labels N, got "
            f"{tuple(features.shape)} and {tuple(labels.shape)}"
        )
    keys = [str(k) for k in data["keys"]] if "keys" in data else None
    keys = keys or [f"{file.stem}-{row}" for row in range(len(features))]
    return FeatureRows(features, keys, labels)


class EmbeddingDataModule(EvaluationKinds, L.LightningDataModule):
    """Train and evaluate heads on embedding files instead of images.

    Args:
        train: Training embeddings file.
        val: Validation file, or ``{name: file}`` for several sets.
        test: Test file(s), same form as ``val``.
        directory: Instead of ``train``/``val``/``test``: a folder as ``train.py predict
            --embed.dirpath`` writes it, ``train.pt`` and one ``val-<set>.pt`` or
            ``test-<set>.pt`` per evaluation set.
        test_in_validation: Evaluate the test sets at every validation epoch too (as the image
            DataModule's option; a test set named like a validation set is ``test_<name>``).
        mean_excludes: Test sets left out of ``test/mean/<metric>``.
        num_classes: Classes of the task; labels must lie in ``[0, num_classes)``.
        label_noise: ``none``, ``symmetric`` or ``asymmetric`` noise on training labels.
        noise_ratio: Probability that a training label is corrupted.
        noise_include_true_class: Symmetric noise over all classes (official code).
        noise_transitions: ``cifar10`` or a JSON file, for asymmetric noise.
        noise_exact_count: Symmetric noise on exactly ``ceil(noise_ratio * N)`` training rows
            (the official ``sample_noise_data``'s count).
        seed: Seed of the label noise and of the training subset.
        train_fraction: Train on this fraction of the rows (see ``datamodules/subset.py``).
        shots_per_class: Train on k rows per class.
        batch_size: Rows per training batch on each rank.
        eval_batch_size: Rows per evaluation batch (default ``batch_size``).
    """

    def __init__(
        self,
        train: str | None = None,
        val: str | dict[str, str] | None = None,
        test: str | dict[str, str] | None = None,
        directory: str | None = None,
        test_in_validation: bool = False,
        mean_excludes: list[str] | None = None,
        num_classes: int = 10,
        label_noise: Literal["none", "symmetric", "asymmetric"] = "none",
        noise_ratio: float = 0.0,
        noise_include_true_class: bool = False,
        noise_transitions: str | None = None,
        noise_exact_count: bool = False,
        seed: int = 0,
        train_fraction: float = 1.0,
        shots_per_class: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if directory is not None:
            if train or val or test:
                raise ConfigError(
                    "data.directory names every set itself: leave data.train, data.val and "
                    "data.test empty (or drop data.directory)"
                )
            self.files = predicted_files(directory)
        elif not train:
            raise ConfigError(
                "data.train is empty: give the training embeddings file, or data.directory "
                "(a folder train.py predict wrote)"
            )
        else:
            self.files = {
                "train": {"train": train},
                "val": _named(val, "val"),
                "test": _named(test, "test"),
            }
        self.files["val"], self.tests_in_validation = validation_sets(
            self.files["val"], self.files["test"], test_in_validation
        )
        self.mean_excludes = tuple(["clean"] if mean_excludes is None else mean_excludes)
        self.num_classes = num_classes
        self.seed = seed
        self.noise = make_label_noise(
            label_noise,
            noise_ratio,
            num_classes,
            seed,
            noise_include_true_class,
            noise_transitions,
            noise_exact_count,
        )
        self.noise_exact_count = noise_exact_count
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.rows: dict[str, dict[str, FeatureRows]] = {}
        self.train_spec = None
        self.subset = TrainingSubset(train_fraction, shots_per_class, seed)
        self.subset_info: dict[str, Any] | None = None

    @property
    def embedding_dim(self) -> int:
        return self.rows["train"]["train"].features.shape[1]

    def eval_names(self, split: str = "val") -> list[str]:
        return list(self.files[split])

    def noise_summary(self) -> dict[str, Any]:
        return noise_summary(self.noise, self.noise_exact_count)

    def check_before_training(
        self, stage: str, world_size: int, streams_training: bool = True, evaluates: bool = True
    ) -> None:
        """Read and check every file before the run starts (``train.py`` calls this first);
        rows, not shards, are split across ranks, so the other arguments change nothing."""
        self.setup(stage)

    def setup(self, stage: str | None = None) -> None:
        if self.rows:  # read and checked already (train.py checks before the run starts)
            return
        self.rows = {
            split: {name: load_embeddings(path, f"{split}.{name}") for name, path in named.items()}
            for split, named in self.files.items()
        }
        dim = self.embedding_dim
        train_classes = set(self.rows["train"]["train"].clean_labels.tolist())
        for split, named in self.rows.items():
            for name, rows in named.items():
                if rows.features.shape[1] != dim:
                    raise ConfigError(
                        f"data.{split}.{name}: embeddings have dimension {rows.features.shape[1]}, "
                        f"the training embeddings {dim}; all splits must come from one model"
                    )
                labels = rows.clean_labels
                if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                    raise ConfigError(
                        f"data.{split}.{name}: labels span [{int(labels.min())}, "
                        f"{int(labels.max())}] but num_classes is {self.num_classes}"
                    )
                unseen = set(labels.tolist()) - train_classes
                if unseen:
                    raise ConfigError(
                        f"data.{split}.{name}: classes {sorted(unseen)[:10]} never occur in the "
                        "training embeddings, so no head can learn them"
                    )

    def train_dataloader(self) -> DataLoader:
        rows, self.subset_info = training_features(
            [self.rows["train"]["train"]], self.noise, self.subset, self.noise_exact_count
        )
        return DataLoader(rows, self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        rank, world = (
            (0, 1) if self.trainer is None else (self.trainer.global_rank, self.trainer.world_size)
        )
        loaders = []
        for rows in self.rows[split].values():
            share = FeatureRows(
                rows.features[rank::world], rows.keys[rank::world], rows.clean_labels[rank::world]
            )
            loaders.append(DataLoader(EvaluationFeatures(share), self.eval_batch_size))
        return loaders


def predicted_files(directory: str) -> dict[str, dict[str, str]]:
    """The sets of a folder that ``train.py predict`` wrote: ``train.pt``, ``val-<set>.pt``
    and ``test-<set>.pt`` (see ``callbacks/embedding_writer.py``)."""
    folder = Path(directory)
    if not (folder / "train.pt").is_file():
        raise ConfigError(
            f"data.directory: {folder} holds no train.pt; write it with python train.py predict "
            f"--config <image config> --embed.dirpath {folder}"
        )
    files: dict[str, dict[str, str]] = {"train": {"train": str(folder / "train.pt")}}
    for split in ("val", "test"):
        files[split] = {
            path.stem.removeprefix(f"{split}-"): str(path)
            for path in sorted(folder.glob(f"{split}-*.pt"))
        }
    return files


def _named(files: str | dict[str, str] | None, default: str) -> dict[str, str]:
    if not files:
        return {}
    return {default: files} if isinstance(files, str) else dict(files)
