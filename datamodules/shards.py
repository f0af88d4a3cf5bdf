"""Shard specifications: brace expansion, ``::`` sources, ``|N`` counts, sample-count lookup.

A spec is what users already write for timm and open_clip::

    /data/in1k/imagenet-train-{0000..1023}.tar            # counts from _info.json beside it
    /data/in1k/imagenet-train-{0000..1023}.tar|1281167    # count given inline
    /data/yfcc/{00000..01000}.tar::/data/cc12m/{0000..1100}.tar   # two sources

Sample counts come, in this order, from ``|N``, from timm's ``_info.json``/``info.json``
(``splits.<name>.filenames`` and ``shard_lengths``), from webdataset's ``sizes.json``, from
img2dataset's ``<shard>_stats.json`` (``successes``), and finally from scanning local tars.

URLs that webdataset would open by running a program (``pipe:``, and ``http``, ``s3``, ``gs``...
which it opens through curl or a cloud CLI) are refused unless the user allows commands.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import braceexpand
from webdataset.tariterators import base_plus_ext

from datamodules.errors import ConfigError

INFO_FILES = ("_info.json", "info.json")
README_DATA = "see README.md, section 'Data: shards'"


class ShardSpecError(ConfigError):
    """A shard specification that cannot be used; the message names the spec and the fix."""


@dataclass(frozen=True)
class ShardSource:
    """One ``::``-separated part of a spec: its expanded URLs, sample count and weight."""

    urls: tuple[str, ...]
    num_samples: int | None
    weight: float = 1.0


@dataclass(frozen=True)
class ShardSpec:
    """A parsed specification: one or more sources."""

    spec: str
    sources: tuple[ShardSource, ...]

    @property
    def urls(self) -> list[str]:
        return [url for source in self.sources for url in source.urls]

    @property
    def num_samples(self) -> int | None:
        counts = [source.num_samples for source in self.sources]
        return None if any(c is None for c in counts) else sum(counts)  # type: ignore[misc]


def is_local(url: str) -> bool:
    """True when webdataset opens ``url`` as a plain file (no subprocess)."""
    return urlparse(url).scheme in ("", "file") and url != "-"


def local_path(url: str) -> Path:
    return Path(urlparse(url).path if url.startswith("file:") else url)


def parse_shards(
    spec: str,
    weights: Sequence[float] | None = None,
    allow_commands: bool = False,
    count_samples: bool = True,
) -> ShardSpec:
    """Parse ``spec`` into sources, check local shards exist and find sample counts."""
    if not spec or not spec.strip():
        raise ShardSpecError(f"empty shard specification ({README_DATA})")
    parts = [part.strip() for part in spec.split("::") if part.strip()]
    if weights is not None and len(weights) != len(parts):
        raise ShardSpecError(
            f"{len(weights)} source weights given for {len(parts)} shard sources in {spec!r}; "
            "give one weight per '::'-separated source"
        )
    expanded = []
    for part in parts:
        pattern, _, count = part.partition("|")
        try:
            inline_count = int(count) if count else None
        except ValueError:
            raise ShardSpecError(
                f"sample count after '|' must be an integer in {part!r}, e.g. 'x-{{0..9}}.tar|5000'"
            ) from None
        expanded.append((part, tuple(braceexpand.braceexpand(pattern.strip())), inline_count))
    _check_urls([url for _, urls, _ in expanded for url in urls], allow_commands)  # all sources
    sources = []
    for index, (part, urls, num_samples) in enumerate(expanded):
        if num_samples is None and count_samples:
            num_samples = _lookup_count(urls)
        weight = 1.0 if weights is None else float(weights[index])
        if weight <= 0:
            raise ShardSpecError(f"source weights must be positive, got {weight} for {part!r}")
        sources.append(ShardSource(urls, num_samples, weight))
    return ShardSpec(spec, tuple(sources))


def _check_urls(urls: Sequence[str], allow_commands: bool) -> None:
    commands = [url for url in urls if not is_local(url)]
    if commands and not allow_commands:
        raise ShardSpecError(
            f"shard URL {commands[0]!r} would make webdataset run a command (pipe:, curl, gsutil, "
            "aws...). Set `allow_shard_commands: true` in the data config if you trust it."
        )
    missing = [url for url in urls if is_local(url) and not local_path(url).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise ShardSpecError(
            f"{len(missing)} of {len(urls)} shards not found: {shown}. Write shards with "
            f"`python scripts/write_shards.py` or fix the path ({README_DATA})"
        )


def _lookup_count(urls: Sequence[str]) -> int | None:
    total = 0
    for url in urls:
        count = shard_sample_count(url)
        if count is None:
            return None
        total += count
    return total


def shard_sample_count(url: str) -> int | None:
    """Samples in one shard from metadata beside it, else by scanning it (local only)."""
    known = recorded_sample_count(url)
    if known is not None or not is_local(url):
        return known
    return count_tar_samples(local_path(url))


def recorded_sample_count(url: str) -> int | None:
    """Samples in one local shard as the metadata beside it records them (``_info.json``,
    ``sizes.json``, img2dataset's ``_stats.json``); None without reading the shard."""
    if not is_local(url):
        return None
    path = local_path(url)
    lengths = _metadata_lengths(str(path.parent))
    if path.name in lengths:
        return lengths[path.name]
    stats = path.with_name(path.name.removesuffix(".tar") + "_stats.json")
    if stats.is_file():
        successes = read_json(stats).get("successes")
        if isinstance(successes, int):
            return successes
    return None


@cache
def _metadata_lengths(directory: str) -> dict[str, int]:
    """Per-file sample counts from timm ``_info.json`` or webdataset ``sizes.json``."""
    lengths: dict[str, int] = {}
    folder = Path(directory)
    for name in INFO_FILES:
        info_path = folder / name
        if info_path.is_file():
            splits = read_json(info_path).get("splits", {})
            for split in splits.values() if isinstance(splits, dict) else splits:
                names = [Path(f).name for f in split.get("filenames", [])]
                lengths.update(zip(names, split.get("shard_lengths", []), strict=False))
    sizes = folder / "sizes.json"
    if sizes.is_file():
        lengths.update({Path(k).name: int(v) for k, v in read_json(sizes).items()})
    return lengths


def count_tar_samples(path: Path) -> int | None:
    """Distinct sample keys in a local tar (headers only), None when it cannot be read."""
    try:
        with tarfile.open(path) as tar:
            keys = {base_plus_ext(m.name)[0] for m in tar if m.isreg() and "." in m.name}
    except (tarfile.TarError, OSError, EOFError):
        return None
    keys.discard(None)
    return len(keys)


def read_info(urls: Sequence[str]) -> dict:
    """The ``_info.json`` beside the first local shard ({} when there is none)."""
    local = [url for url in urls if is_local(url)]
    if not local:
        return {}
    folder = local_path(local[0]).parent
    for name in INFO_FILES:
        if (folder / name).is_file():
            return read_json(folder / name)
    return {}


def read_json(path: Path) -> dict:
    """A metadata file beside the shards; a broken one names itself instead of a traceback."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardSpecError(f"{path} cannot be read as JSON ({err}); fix or delete it") from None
    if not isinstance(data, dict):
        raise ShardSpecError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data
