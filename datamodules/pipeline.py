"""The one webdataset pipeline every DataModule uses.

Per data-loader worker, one pass reads::

    shards (epoch-seeded order, split by rank then worker; or weighted resampling)
      -> tar members grouped by key, per shard (tar_file_iterator)
      -> format.check: fields, label parsing, label noise        (skips counted)
      -> format.per_shard: caption swaps inside one shard
      -> shuffle buffer seeded by (seed, epoch, rank, worker)    (training only)
      -> format.finish: decode, transform, tokenize              (skips counted; training
                                                                  draws seeded by (seed,
                                                                  epoch, key))
      -> batches (collate) carrying the skip counts since the previous batch

Training streams give every rank exactly ``batches_per_rank`` batches per epoch (workers cycle
over their shards when they run short), so DDP ranks never wait on one another. Evaluation
streams read each sample exactly once across ranks and workers.

A run resumed k batches into an epoch (``EpochLoader`` asks the trainer) reads that
epoch's stream again but leaves out its first k batches: each worker drops, after the shuffle
and before decoding, the samples of the batches it had delivered (the loader takes batches from
the workers in turn), counting their noise for the epoch's audit. The stream then goes on
exactly as uninterrupted, as long as none of the dropped samples would have failed to decode
(such a sample is only found by decoding it; it would shift the rest of that worker's epoch).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import multiprocessing
import os
import random
import signal
import sys
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from datamodules.formats import Sample, SkipSample, collate
from datamodules.keyed_random import SavedGenerators, seed_for_sample
from datamodules.shards import ShardSpec, ShardSpecError, recorded_sample_count

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
SKIP_REASONS = (
    "read_error",
    "missing_key",
    "decode_error",
    "bad_label",
    "label_out_of_range",
    "duplicate_key",
)


class DataQualityError(RuntimeError):
    """Too many samples were skipped: the shards, not the code, need fixing."""


class TrainedBeforeResume:
    """The samples a worker leaves out of a resumed epoch, counted but not decoded."""

    def __init__(self, samples: int) -> None:
        self.remaining = samples
        self.taken = 0
        self.noisy = 0

    def take(self, sample: Sample) -> None:
        self.remaining -= 1
        self.taken += 1
        self.noisy += bool(sample.get("is_noisy", False))

    def counts(self) -> torch.Tensor:
        """``[noisy, seen]`` of the left-out samples, for the epoch's noise audit."""
        return torch.tensor([self.noisy, self.taken])


class SampleFormat(Protocol):
    def check(self, raw: Sample) -> Sample: ...
    def per_shard(self, samples: Iterator[Sample]) -> Iterator[Sample]: ...
    def finish(self, sample: Sample) -> Sample: ...


class SkipLedger:
    """Counts read and skipped samples of one worker pass; stops a mostly-broken stream.

    The check is ``skipped > max_fraction * seen``, made once ``min_samples`` were seen and at
    the end of the pass, so a stream of nothing but skips fails fast instead of spinning.
    """

    def __init__(self, max_fraction: float, where: str, min_samples: int = 100) -> None:
        self.max_fraction = max_fraction
        self.where = where
        self.min_samples = min_samples
        self.seen = 0
        self.by_reason: Counter[str] = Counter()
        self.by_shard: dict[str, Counter[str]] = {}
        self._reported = torch.zeros(len(SKIP_REASONS), dtype=torch.long)

    @property
    def skipped(self) -> int:
        return sum(self.by_reason.values())

    def read(self) -> None:
        self.seen += 1

    def skip(self, url: str, reason: str, detail: str) -> None:
        self.by_reason[reason] += 1
        shard = self.by_shard.setdefault(url, Counter())
        shard[reason] += 1
        if shard.total() <= 3:
            log.warning("skipped a sample of %s (%s): %s", url, reason, detail)
        self.check()

    def check(self, final: bool = False) -> None:
        if self.skipped <= self.max_fraction * self.seen:
            return
        if not final and self.seen < self.min_samples:
            return
        worst = sorted(self.by_shard.items(), key=lambda item: -item[1].total())[:5]
        shards = "; ".join(f"{url} ({dict(counts)})" for url, counts in worst)
        raise DataQualityError(
            f"{self.skipped} of {self.seen} samples skipped ({self.skipped / self.seen:.1%} > "
            f"max_skip_fraction {self.max_fraction:.1%}) in {self.where}. Shards with skips: "
            f"{shards}. Repair or drop these shards, or raise data max_skip_fraction."
        )

    def delta(self) -> torch.Tensor:
        """Skip counts per reason (order of SKIP_REASONS) since the previous call."""
        total = torch.tensor([self.by_reason[r] for r in SKIP_REASONS], dtype=torch.long)
        delta, self._reported = total - self._reported, total
        return delta


def check_enough_shards(spec: ShardSpec, world_size: int, num_workers: int) -> None:
    """A shuffled pass gives each rank's workers disjoint shards: every reader needs one."""
    readers = world_size * max(1, num_workers)
    if len(spec.urls) < readers:
        raise ShardSpecError(
            f"data.train_shards: {len(spec.urls)} shards cannot feed {world_size} ranks x "
            f"{max(1, num_workers)} workers = {readers} readers ({spec.spec}); write more, "
            "smaller shards, lower data.num_workers, or set data.resample: true"
        )


def read_shard(url: str, ledger: SkipLedger) -> Iterator[Sample]:
    """Raw samples of one tar: members grouped by key inside this tar only.

    Grouping per tar keeps a key split across two tars (a LAION quirk) from merging into one
    sample; each half is then skipped as incomplete. A tar that cannot be read to its end counts
    one ``read_error``, keeps the samples read before the cut, and the pass goes on.
    """
    current: Sample | None = None
    try:
        with gopen(url) as stream:
            for member in tar_file_iterator(stream):
                key, suffix = base_plus_ext(member["fname"])
                if key is None:
                    continue
                if current is None or key != current["__key__"]:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__url__": url}
                current[suffix.lower()] = member["data"]
        if current is not None:
            yield current
    except (tarfile.TarError, OSError, EOFError) as err:
        ledger.read()
        ledger.skip(url, "read_error", f"{type(err).__name__}: {err}")
        if current is not None:
            yield current  # members read before the cut; the format check judges completeness


class ShardStream(IterableDataset):
    """Batches from shards for one rank; see the module docstring for the stages."""

    def __init__(
        self,
        spec: ShardSpec,
        sample_format: SampleFormat,
        batch_size: int,
        *,
        training: bool,
        batches_per_rank: int | None = None,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        resample: bool = False,
        rank: int = 0,
        world_size: int = 1,
        max_skip_fraction: float = 0.01,
    ) -> None:
        if training and (batches_per_rank is None or batches_per_rank < 1):
            raise ValueError(f"a training stream needs batches_per_rank >= 1: {spec.spec}")
        self.spec = spec
        self.format = sample_format
        self.batch_size = batch_size
        self.training = training
        self.batches_per_rank = batches_per_rank
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.resample = resample
        self.rank = rank
        self.world_size = world_size
        self.max_skip_fraction = max_skip_fraction
        self.epoch = 0
        self.resume_batches = 0  # batches of this rank already trained in the epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shard order; call before each epoch (the loader does)."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.batches_per_rank is None:
            raise TypeError("an evaluation stream reads its shards once and has no fixed length")
        return self.batches_per_rank

    def evaluation_batches(self, num_workers: int) -> int | None:
        """Batches one pass of this rank's evaluation stream gives with ``num_workers`` readers
        (each batching its own shards), from the sample counts recorded beside the shards;
        skipped samples can only make it fewer. None when a shard has no recorded count."""
        urls = self.spec.urls[self.rank :: self.world_size]
        total = 0
        for worker in range(num_workers):
            counts = [recorded_sample_count(url) for url in urls[worker::num_workers]]
            if None in counts:
                return None
            total += -(-sum(counts) // self.batch_size)  # type: ignore[arg-type]
        return total

    def check_enough_shards(self, num_workers: int) -> None:
        """Fail early when some training worker would receive no shard at all."""
        if self.training and not self.resample:
            check_enough_shards(self.spec, self.world_size, num_workers)

    def shard_urls(self, worker: int, num_workers: int) -> Iterator[str]:
        """This worker's shards for one pass of the current epoch (endless when resampling)."""
        if self.resample:
            rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}")
            sources = self.spec.sources
            weights = [s.weight for s in sources]
            while True:
                yield rng.choice(rng.choices(sources, weights)[0].urls)
        urls = self.spec.urls
        if self.training:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(urls)
        yield from urls[self.rank :: self.world_size][worker::num_workers]

    def worker_samples(
        self,
        worker: int,
        num_workers: int,
        ledger: SkipLedger,
        trained: TrainedBeforeResume | None = None,
        generators: SavedGenerators | None = None,
    ) -> Iterator[Sample]:
        """Finished samples of one pass (evaluation), or of pass after pass (training), less
        the ``trained`` ones of a resumed epoch.

        Each training pass is shuffled on its own, so a worker whose shards hold exactly its
        quota yields every sample once; a worker that runs short starts its shards again.
        """
        for pass_index in itertools.count():
            samples = self.checked_samples(self.shard_urls(worker, num_workers), ledger)
            if self.training:
                rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}/{pass_index}")
                initial = min(self.shuffle_buffer, 100)
                samples = wds.shuffle(self.shuffle_buffer, initial=initial, rng=rng)(samples)
            produced = -(trained.taken if trained else 0)
            for sample in self.finished_samples(samples, ledger, trained, generators):
                produced += 1
                yield sample
            produced += trained.taken if trained else 0
            if not self.training:
                return
            if produced == 0:
                raise DataQualityError(f"no usable sample in a full pass over {ledger.where}")

    def checked_samples(self, urls: Iterator[str], ledger: SkipLedger) -> Iterator[Sample]:
        """Raw samples -> checked, noised samples; a key seen twice in one pass is skipped
        (per shard when resampling, where a shard may rightly be drawn twice)."""
        seen_keys: set[str] = set()
        for url in urls:
            if self.resample:
                seen_keys = set()
            yield from self.format.per_shard(self._check_shard(url, ledger, seen_keys))

    def _check_shard(self, url: str, ledger: SkipLedger, seen_keys: set[str]) -> Iterator[Sample]:
        for raw in read_shard(url, ledger):
            ledger.read()
            key = raw["__key__"]
            if key in seen_keys:
                ledger.skip(url, "duplicate_key", key)
                continue
            seen_keys.add(key)
            try:
                sample = self.format.check(raw)
            except SkipSample as skip:
                ledger.skip(url, skip.reason, f"{key}: {skip}")
                continue
            sample["__url__"] = url
            yield sample

    def finished_samples(
        self,
        samples: Iterator[Sample],
        ledger: SkipLedger,
        trained: TrainedBeforeResume | None = None,
        generators: SavedGenerators | None = None,
    ) -> Iterator[Sample]:
        """Decoded and transformed samples; in training, each one's augmentation drawn from
        (seed, epoch, key) alone, with ``generators`` (the main process's) put aside first."""
        for sample in samples:
            url = sample.pop("__url__")
            if trained is not None and trained.remaining > 0:
                trained.take(sample)  # not decoded: cheap
                continue
            if self.training:
                if generators is not None:
                    generators.put_aside()
                seed_for_sample(self.seed, sample["__key__"], f"augment/{self.epoch}")
            try:
                finished = self.format.finish(sample)
            except SkipSample as skip:
                ledger.skip(url, skip.reason, f"{sample['__key__']}: {skip}")
                continue
            yield finished
        if generators is not None:
            generators.give_back()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        # the loader takes batch i from worker i % num_workers, starting with worker 0: after a
        # resume at batch k, worker 0 plays the part that worker k % num_workers had
        worker = (worker + self.resume_batches) % num_workers
        where = f"rank {self.rank} worker {worker} epoch {self.epoch} of {self.spec.spec}"
        ledger = SkipLedger(self.max_skip_fraction, where)
        # this worker's share of the batches trained before a resume
        done = self.resume_batches // num_workers + (worker < self.resume_batches % num_workers)
        trained = TrainedBeforeResume(done * self.batch_size) if self.training and done else None
        # the main process's generators, put aside while a batch's samples draw their
        # augmentation and given back at its collation, before the training step sees them
        generators = SavedGenerators() if self.training and info is None else None
        samples = self.worker_samples(worker, num_workers, ledger, trained, generators)

        reported = False

        def collate_with_skips(batch: list[Sample]) -> dict[str, Any]:
            nonlocal reported
            if generators is not None:
                generators.give_back()
            collated = {**collate(batch), "skipped": ledger.delta()}
            if trained is not None and not reported:  # the worker's first batch after a resume
                collated["trained_before_resume"] = trained.counts()
                reported = True
            return collated

        batches = wds.batched(self.batch_size, collation_fn=collate_with_skips, partial=True)(
            samples
        )
        if self.training:
            assert self.batches_per_rank is not None
            quota = self.batches_per_rank // num_workers + (
                worker < self.batches_per_rank % num_workers
            )
            batches = itertools.islice(batches, quota - done)
        yield from batches
        ledger.check(final=True)


def die_with_parent(worker_id: int) -> None:
    """Ask Linux to SIGKILL this loader worker as soon as its parent dies. PyTorch's own
    watchdog notices a dead parent only every few seconds, so a SIGKILLed run left its workers
    reading shards for up to ~10 s; elsewhere the watchdog remains the only guard."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        parent = multiprocessing.parent_process()
        if parent is not None and os.getppid() != parent.pid:  # it died before the request
            os._exit(1)


class EpochLoader(DataLoader):
    """A DataLoader that tells its :class:`ShardStream` the epoch before every pass.

    Lightning calls ``set_epoch`` only on samplers, and creates the first epoch's iterator
    before ``on_train_epoch_start``; when resuming it even creates it before the checkpoint's
    epoch is restored (to estimate the stepping batches), then trains the restored epoch from
    that iterator. So ``epoch_source`` (the trainer's current epoch) is asked at the first
    ``next()``, which is right on the first epoch, later epochs and resume. Workers are not
    persistent so that each pass starts from the epoch just set. ``trained_source`` (the
    trainer's batch count of the epoch, which a resumed run restores) is asked then too, so a
    run resumed inside an epoch leaves out the batches it trained before. (Lightning's own
    ``state_dict``/``load_state_dict`` protocol for loaders would not do: it loads the state
    only into a loader built after the checkpoint is restored, and the learning-rate schedule's
    ``estimated_stepping_batches`` builds it before.)
    """

    def __init__(
        self,
        dataset: ShardStream,
        num_workers: int,
        epoch_source: Callable[[], int] | None = None,
        trained_source: Callable[[], int] | None = None,
    ) -> None:
        dataset.check_enough_shards(num_workers)
        super().__init__(
            dataset, batch_size=None, num_workers=num_workers, worker_init_fn=die_with_parent
        )
        self.epoch_source = epoch_source
        self.trained_source = trained_source

    def __len__(self) -> int:
        """Training: the fixed batches per rank. Evaluation: the batches the recorded shard
        sizes give (progress bars show a total and an ETA); no length when they are unknown."""
        if self.dataset.training:
            return len(self.dataset)
        batches = self.dataset.evaluation_batches(max(1, self.num_workers))
        if batches is None:
            raise TypeError("the evaluation shards record no sample counts")
        return batches

    def __iter__(self):  # type: ignore[override]
        if self.epoch_source is not None:
            self.dataset.set_epoch(self.epoch_source())
        # a run resumed inside the epoch: the batches it trained before (0 otherwise)
        self.dataset.resume_batches = 0 if self.trained_source is None else self.trained_source()
        yield from super().__iter__()


class PredictionBatches:
    """An evaluation loader's batches, in a wrapper that Lightning's predict loop leaves as it
    is: that loop rebuilds every ``DataLoader`` with a sampler to record batch indices, which a
    streaming :class:`EpochLoader` (a ``batch_size=None`` view of a sharded stream) cannot be."""

    def __init__(self, loader: EpochLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.loader)
