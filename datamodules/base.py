"""What every shard-backed DataModule shares: shard specs, built-in data, loaders, checks."""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

import lightning as L
import torch

from datamodules.builtin import BuiltinDataError, builtin_dataset, prepare_builtin
from datamodules.errors import ConfigError
from datamodules.evaluation import EvaluationKinds, validation_sets
from datamodules.pipeline import EpochLoader, SampleFormat, ShardStream, check_enough_shards
from datamodules.shards import ShardSpec, ShardSpecError, parse_shards
from datamodules.transforms import TransformConfig

Shards = str | dict[str, str] | None


class ShardDataModule(EvaluationKinds, L.LightningDataModule):
    """Reads webdataset shards through the one pipeline of :mod:`datamodules.pipeline`.

    Args:
        train_shards: Training shard spec, e.g. ``/data/in1k/train-{0000..1023}.tar`` (``|N``
            gives the sample count; several sources are joined with ``::``).
        val_shards: Validation shards: one spec, or ``{name: spec}`` for several sets, each
            evaluated and logged under its name.
        test_shards: Test shards, same form as ``val_shards``.
        builtin: Use built-in real data instead of shards, written once under
            ``builtin_root`` by ``prepare_data`` (see :mod:`datamodules.builtin`); shard options
            given explicitly win. ``fashion_mnist`` (pre-training; both layouts), and the
            classification-only downstream suites ``fmnist_heldout``, ``digits``,
            ``lfw_faces`` (in-domain) and ``fmnist_shift`` (out-of-domain: test sets
            ``clean``, ``rotate``, ``invert``, ``gaussian_blur``, ``gaussian_noise``,
            ``contrast``).
        builtin_root: Folder for the built-in shards.
        builtin_source: Folder with the Fashion-MNIST idx files of the built-in data (default:
            Debian's ``dataset-fashion-mnist`` path or ``$FASHION_MNIST_DIR``).
        batch_size: Samples per batch on each rank.
        eval_batch_size: Batch size for validation and test (default: ``batch_size``).
        num_workers: Data-loader worker processes per rank, or ``auto``: the CPUs this process
            may use, shared by the ranks of the node, less one for the rank itself; none when
            that leaves fewer than two, and no more than the training shards can feed.
        transform: Image transform options (timm ``create_transform``).
        seed: Seed of the noise and of the shard and sample shuffles (independent of the model
            seed, so the same noisy dataset can train differently seeded models).
        shuffle_buffer: Samples held for the training shuffle in each worker.
        resample: Draw training shards with replacement (weighted by ``source_weights``)
            instead of a shuffled pass; needed when shards < ranks x workers.
        source_weights: One weight per ``::`` source; only with ``resample``.
        epoch_samples: Training samples per epoch over all ranks (default: the shards' count).
        max_skip_fraction: Stop with an error naming the shards when more than this fraction of
            the samples read is skipped (undecodable, missing key, bad label, duplicate key).
        allow_shard_commands: Allow shard URLs that make webdataset run a command (``pipe:``,
            ``http(s)`` through curl, ``gs``/``s3`` through their CLIs). Off: only local files.
        test_in_validation: Also evaluate the test sets at every validation epoch, each logged
            under its own name as ``test/<set>/...``, so one ``fit`` reports the held-out or
            shifted test sets (the adaptation configs do this; ``train.py test`` evaluates them
            on their own).
        mean_excludes: Test sets left out of ``test/mean/<metric>`` (the in-distribution copy
            of an OOD suite, as the report's default ``exclude_sets``).
    """

    layout: ClassVar[str]

    def __init__(
        self,
        train_shards: str | None = None,
        val_shards: Shards = None,
        test_shards: Shards = None,
        builtin: str | None = None,
        builtin_root: str = "data",
        builtin_source: str | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int | Literal["auto"] = "auto",
        transform: TransformConfig = TransformConfig(),
        seed: int = 0,
        shuffle_buffer: int = 1000,
        resample: bool = False,
        source_weights: list[float] | None = None,
        epoch_samples: int | None = None,
        max_skip_fraction: float = 0.01,
        allow_shard_commands: bool = False,
        test_in_validation: bool = False,
        mean_excludes: list[str] | None = None,
    ) -> None:
        super().__init__()
        _require(batch_size >= 1, "batch_size", batch_size, "a positive integer")
        _require(
            num_workers == "auto" or (isinstance(num_workers, int) and num_workers >= 0),
            "num_workers",
            num_workers,
            "0 or more, or auto",
        )
        _require(0 <= max_skip_fraction < 1, "max_skip_fraction", max_skip_fraction, "in [0, 1)")
        _require(shuffle_buffer >= 1, "shuffle_buffer", shuffle_buffer, "a positive integer")
        _require(
            source_weights is None or resample,
            "source_weights",
            source_weights,
            "used only with resample: true (a shuffled pass reads every shard once)",
        )
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.test_shards = test_shards
        layouts = builtin_dataset(builtin).layouts if builtin is not None else ()
        if builtin is not None and self.layout not in layouts:
            raise ConfigError(
                f"data.builtin: {builtin!r} has no {self.layout} layout, only "
                f"{', '.join(layouts)}; pick a built-in dataset for this data module"
            )
        self.builtin = builtin
        self.builtin_root = builtin_root
        self.builtin_source = builtin_source
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.loader_workers = 0 if num_workers == "auto" else num_workers  # resolved in setup
        self.transform = transform
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.resample = resample
        self.source_weights = source_weights
        self.epoch_samples = epoch_samples
        self.max_skip_fraction = max_skip_fraction
        self.allow_shard_commands = allow_shard_commands
        self.test_in_validation = test_in_validation
        self.mean_excludes = tuple(["clean"] if mean_excludes is None else mean_excludes)
        self.tests_in_validation: set[str] = set()
        self.train_spec: ShardSpec | None = None
        self.eval_specs: dict[str, dict[str, ShardSpec]] = {"val": {}, "test": {}}
        self._parsed: dict[tuple[str, str, tuple[float, ...] | None], ShardSpec] = {}
        self._planned_world_size: int | None = None

    # --- subclass interface -------------------------------------------------------------------
    def sample_format(self, training: bool, uint8: bool = False) -> SampleFormat:
        """The format that turns raw samples into training (noisy) or evaluation samples;
        ``uint8``: images left unnormalised (see ``TransformConfig.normalize_on_device``)."""
        raise NotImplementedError

    def noise_summary(self) -> dict[str, Any]:
        """Nominal noise settings, logged beside the realised rate."""
        raise NotImplementedError

    def check_shards(self, spec: ShardSpec) -> None:
        """Subclasses compare shard metadata with their options (e.g. num_classes)."""

    # --- Lightning hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.builtin is not None:
            self._prepare_builtin()

    def setup(self, stage: str | None = None) -> None:
        builtin = self._builtin_specs()
        train = self.train_shards or builtin.get("train")
        val = self.val_shards if self.val_shards is not None else builtin.get("val")
        test = self.test_shards if self.test_shards is not None else builtin.get("test")
        if stage in (None, "fit"):
            if not train:
                raise ShardSpecError(
                    "data.train_shards is not set: give a shard spec, or a `builtin` data set"
                )
            self.train_spec = self._parse(train, "train_shards", self.source_weights)
            self.batches_per_rank()  # fail now, not at the first epoch
        elif stage == "predict" and train:  # embedded like the evaluation sets
            self.train_spec = self._parse(train, "train_shards", self.source_weights)
        self.eval_specs["test"] = self._parse_named(test, "test_shards")
        self.eval_specs["val"], self.tests_in_validation = validation_sets(
            self._parse_named(val, "val_shards"), self.eval_specs["test"], self.test_in_validation
        )
        if self.num_workers == "auto":
            _, world = self._rank_world()
            node_ranks = world if self.trainer is None else self.trainer.num_devices
            streamed = self.train_spec is not None and not self.resample
            shards = len(self.train_spec.urls) if streamed else None  # type: ignore[union-attr]
            self.loader_workers = auto_workers(usable_cpus(), node_ranks, world, shards)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Finish uint8 training images on the device they were moved to, batch-wise: the
        crops' resize and flip (``augment_on_device``), then the normalisation."""
        images = batch.get("image") if isinstance(batch, dict) else None
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            return batch
        batch["image"] = self.transform.finish_batch(images, batch.pop("augment", None))
        return batch

    def train_dataloader(self) -> EpochLoader:
        assert self.train_spec is not None, "setup('fit') must run first"
        uint8 = self.transform.uint8_training_batches  # the trainer's stream only: it finishes
        stream = self._stream(self.train_spec, training=True, uint8=uint8)
        return EpochLoader(
            stream,
            self.loader_workers,
            epoch_source=self._current_epoch,
            trained_source=self._trained_in_epoch,
        )

    def val_dataloader(self) -> list[EpochLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[EpochLoader]:
        return self._eval_loaders("test")

    def check_before_training(
        self, stage: str, world_size: int, streams_training: bool = True, evaluates: bool = True
    ) -> None:
        """Run ``setup(stage)`` as ``world_size`` ranks will, before any of them exists: a data
        mistake then stops the run before Lightning starts rank processes or a log folder.
        ``streams_training`` is false for a model that trains on cached features: its training
        shards are then read once, like an evaluation set, and need not feed every reader.
        ``evaluates`` is false when ``fit`` runs no validation (``limit_val_batches: 0``)."""
        self._planned_world_size = world_size
        try:
            self.setup(stage)
            if stage == "fit" and streams_training and not self.resample:
                assert self.train_spec is not None
                check_enough_shards(self.train_spec, world_size, self.loader_workers)
            if evaluates:
                self._check_evaluation_shards("test" if stage == "test" else "val", world_size)
        finally:
            self._planned_world_size = None

    def _check_evaluation_shards(self, split: str, world_size: int) -> None:
        """Ranks split an evaluation set by shards, and Lightning stops a run in which one rank
        has no batch of a set (a traceback, after start-up): say so first, in one line."""
        for name, spec in self.eval_specs[split].items():
            if len(spec.urls) < world_size:
                raise ShardSpecError(
                    f"evaluation set {name!r}: {len(spec.urls)} shard(s) cannot give each of "
                    f"{world_size} ranks one ({spec.spec}); write it as at least {world_size} "
                    "shards (scripts/write_shards.py --samples-per-shard) or run on fewer devices"
                )

    # --- helpers ------------------------------------------------------------------------------
    def eval_names(self, split: str = "val") -> list[str]:
        """Names of the evaluation sets, in the order of the dataloaders."""
        return list(self.eval_specs[split])

    def batches_per_rank(self) -> int:
        """Training batches every rank steps per epoch: samples // (world_size x batch_size)."""
        assert self.train_spec is not None
        samples = self.epoch_samples or self.train_spec.num_samples
        if samples is None:
            raise ShardSpecError(
                f"the number of training samples in {self.train_spec.spec!r} is unknown: add "
                "'|N' to the spec, an _info.json beside the shards, or set data.epoch_samples"
            )
        _, world = self._rank_world()
        batches = samples // (world * self.batch_size)
        if batches < 1:
            raise ShardSpecError(
                f"{samples} training samples cannot fill one batch of {self.batch_size} on each of "
                f"{world} ranks; lower data.batch_size or add data"
            )
        return batches

    def _builtin_specs(self) -> dict[str, str | dict[str, str]]:
        if self.builtin is None:
            return {}
        return self._prepare_builtin()[self.layout]

    def _prepare_builtin(self) -> dict[str, dict[str, str | dict[str, str]]]:
        """Write the built-in shards once; a folder that cannot take them is the user's to fix."""
        assert self.builtin is not None
        try:
            return prepare_builtin(self.builtin, self.builtin_root, self.builtin_source)
        except BuiltinDataError:  # the source files are missing: its own message says where
            raise
        except OSError as err:
            raise ConfigError(
                f"data.builtin_root: cannot write the built-in {self.builtin!r} shards into "
                f"{self.builtin_root} ({err.strerror or err}); point it at a writable folder"
            ) from None

    def _parse(self, spec: str, option: str, weights: list[float] | None = None) -> ShardSpec:
        """Parsed once per spec: the check before training and Lightning's setup share it (a spec
        without counts is counted by reading every tar's headers)."""
        memo = (spec, option, None if weights is None else tuple(weights))
        if memo not in self._parsed:
            try:
                parsed = parse_shards(spec, weights, self.allow_shard_commands)
            except ShardSpecError as err:
                raise ShardSpecError(f"data.{option}: {err}") from None
            self.check_shards(parsed)
            self._parsed[memo] = parsed
        return self._parsed[memo]

    def _parse_named(self, shards: Shards, option: str) -> dict[str, ShardSpec]:
        if not shards:
            return {}
        named = {option.removesuffix("_shards"): shards} if isinstance(shards, str) else shards
        return {name: self._parse(spec, f"{option}.{name}") for name, spec in named.items()}

    def _stream(self, spec: ShardSpec, training: bool, uint8: bool = False) -> ShardStream:
        rank, world = self._rank_world()
        return ShardStream(
            spec,
            self.sample_format(training, uint8=uint8),
            self.batch_size if training else self.eval_batch_size,
            training=training,
            batches_per_rank=self.batches_per_rank() if training else None,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer,
            resample=self.resample and training,
            rank=rank,
            world_size=world,
            max_skip_fraction=self.max_skip_fraction,
        )

    def _eval_loaders(self, split: str) -> list[EpochLoader]:
        return [
            EpochLoader(self._stream(spec, training=False), self.loader_workers)
            for spec in self.eval_specs[split].values()
        ]

    def _rank_world(self) -> tuple[int, int]:
        if self._planned_world_size is not None:
            return 0, self._planned_world_size
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _current_epoch(self) -> int:
        return 0 if self.trainer is None else self.trainer.current_epoch

    def _trained_in_epoch(self) -> int:
        """Batches of the current epoch this rank has trained: 0 at an epoch's start, k in a
        run resumed k batches into it (Lightning restores the count before the first batch)."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.completed


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a Slurm allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def auto_workers(cpus: int, node_ranks: int, world_size: int, train_shards: int | None) -> int:
    """``data.num_workers: auto``: the node's CPUs shared by its ranks, less one for the rank's
    own process; 0 when that leaves fewer than two, where the main process reads faster than it
    feeds one worker (the FS quickstart on 2 cores: 1,045 img/s with 0 workers, 974 with 1, 940
    with 2); never more than the training shards can feed (each reader needs a shard)."""
    workers = cpus // max(1, node_ranks) - 1
    if workers < 2:
        return 0
    if train_shards is not None:
        workers = min(workers, train_shards // world_size)
    return workers


def _require(ok: bool, option: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"data.{option} must be {expected}, got {value!r}")
