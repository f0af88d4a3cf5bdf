"""Write samples into webdataset shards with timm's ``_info.json`` and webdataset's
``sizes.json`` beside them.

Used by the built-in datasets and by ``scripts/write_shards.py`` (image folders and CSVs), so
every shard this suite writes can be read back by timm, open_clip (``open_clip_train`` counts
samples from ``sizes.json``) and webdataset as well.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm import tqdm

# Every member's modification time, an integer: webdataset stamps each file with a float
# ``time.time()``, which makes tarfile write a PAX header before every file, doubling the headers
# a reader parses (48 against 100 us a Fashion-MNIST sample in webdataset's tar iterator,
# benchmarks/tar_headers.py) and the shards' size. Fixed, so that the same samples give the
# same bytes.
MEMBER_MTIME = 0
WRITER_VERSION = 2  # 2: no PAX headers; built-in data written by version 1 is rewritten


@dataclass
class WriteSummary:
    """What a writer produced: per-shard counts, and what it skipped and why."""

    split: str
    filenames: list[str] = field(default_factory=list)
    shard_lengths: list[int] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(self.shard_lengths)

    def spec(self, folder: str | Path) -> str:
        return range_spec(folder, self.filenames, self.num_samples)

    def describe(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.items()) or "none"
        return (
            f"{self.split}: wrote {self.num_samples} samples in {len(self.filenames)} shards; "
            f"skipped: {skipped}"
        )


def range_spec(folder: str | Path, filenames: list[str], num_samples: int) -> str:
    """A brace spec with its count for consecutive shards: ``DIR/train-{0000..0009}.tar|50000``."""
    if not filenames:
        return ""
    stem = filenames[0].rsplit("-", 1)[0]
    lo, hi = (name.rsplit("-", 1)[1].removesuffix(".tar") for name in (filenames[0], filenames[-1]))
    return f"{Path(folder).resolve()}/{stem}-{{{lo}..{hi}}}.tar|{num_samples}"


def write_split(
    samples: Iterable[dict[str, Any] | tuple[str, str]],
    out_dir: str | Path,
    split: str,
    samples_per_shard: int = 5000,
    total: int | None = None,
    info: dict[str, Any] | None = None,
    what: str | None = None,
) -> WriteSummary:
    """Write ``samples`` (webdataset dicts, or ``(reason, detail)`` tuples for skipped inputs)
    into ``out_dir/{split}-NNNN.tar`` and record the split in ``_info.json`` and ``sizes.json``;
    the progress bar says ``writing <what> <split>`` (e.g. the dataset and its layout)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = WriteSummary(split)
    writer: wds.TarWriter | None = None
    label = f"writing {what} {split}" if what else f"writing {split}"
    for sample in tqdm(samples, total=total, desc=label, unit="sample"):
        if isinstance(sample, tuple):
            reason, _ = sample
            summary.skipped[reason] = summary.skipped.get(reason, 0) + 1
            continue
        if writer is None or summary.shard_lengths[-1] >= samples_per_shard:
            if writer is not None:
                writer.close()
            name = f"{split}-{len(summary.filenames):04d}.tar"
            writer = wds.TarWriter(str(out_dir / name), mtime=MEMBER_MTIME)
            summary.filenames.append(name)
            summary.shard_lengths.append(0)
        writer.write(sample)
        summary.shard_lengths[-1] += 1
    if writer is not None:
        writer.close()
    update_info(out_dir, summary, info or {})
    return summary


def update_info(out_dir: Path, summary: WriteSummary, info: dict[str, Any]) -> None:
    """Merge one split into ``_info.json`` (timm's layout: splits.<name>.filenames/lengths) and
    rewrite ``sizes.json`` (webdataset's ``{shard file: samples}``, every split) from it, so both
    count the same shards, and a rewritten split leaves no stale entry."""
    path = out_dir / "_info.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update(info)
    current.setdefault("splits", {})[summary.split] = {
        "name": summary.split,
        "num_samples": summary.num_samples,
        "filenames": summary.filenames,
        "shard_lengths": summary.shard_lengths,
    }
    path.write_text(json.dumps(current, indent=2))
    sizes = {
        name: length
        for split in current["splits"].values()
        for name, length in zip(
            split.get("filenames", []), split.get("shard_lengths", []), strict=False
        )
    }
    (out_dir / "sizes.json").write_text(json.dumps(sizes, indent=2))
