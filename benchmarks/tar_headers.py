"""What a PAX header before every tar member costs a reader, and what the suite's writer saves.

webdataset's ``TarWriter`` stamps each member with a float ``time.time()``, for which Python's
``tarfile`` writes a PAX header before every file; the suite's writer
(``datamodules/writer.py``) gives a fixed integer time instead. The same ``--samples`` built-in
Fashion-MNIST samples (a 28x28 PNG and a label each) are written both ways into memory, then read
by webdataset's own tar iterator (``tar_file_iterator``, what every shard reader here runs),
interleaved: ``pax`` (webdataset's default) and ``plain`` (the suite's). Reported: microseconds
a sample, bytes, and the ratio ``plain / pax`` of the read times.

    python -m benchmarks.tar_headers            # 5 repeats of 5,000 samples
"""

from __future__ import annotations

import argparse
import io
from itertools import islice
from typing import Any

import webdataset as wds
from webdataset.tariterators import tar_file_iterator

from benchmarks import common
from datamodules.builtin import prepare_builtin
from datamodules.pipeline import SkipLedger, read_shard
from datamodules.shards import parse_shards
from datamodules.writer import MEMBER_MTIME

NAME = "tar_headers"
WRITERS = {"pax": {}, "plain": {"mtime": MEMBER_MTIME}}


def shard_bytes(samples: list[dict[str, Any]], **writer_options: Any) -> bytes:
    buffer = io.BytesIO()
    writer = wds.TarWriter(buffer, **writer_options)
    for sample in samples:
        writer.write(sample)
    writer.tarstream.close()  # close() would close the buffer too
    return buffer.getvalue()


def run(args: argparse.Namespace) -> dict[str, Any]:
    specs = prepare_builtin("fashion_mnist", args.root)["classification"]
    first_shard = parse_shards(str(specs["train"])).urls[0]
    ledger = SkipLedger(1.0, "benchmark")
    samples = list(islice(read_shard(first_shard, ledger), args.samples))
    shards = {name: shard_bytes(samples, **options) for name, options in WRITERS.items()}

    def read(data: bytes) -> float:
        count, seconds = common.timed(lambda: sum(1 for _ in tar_file_iterator(io.BytesIO(data))))
        return seconds / (count / 2) * 1e6  # two members a sample

    times = common.interleaved(
        {name: (lambda data=data: read(data)) for name, data in shards.items()},
        args.repeats,
        unit="us/sample",
    )
    return {
        "config": {**vars(args), "shard": first_shard},
        "bytes": {name: len(data) for name, data in shards.items()},
        "candidates": times,
        "ratios": {"plain_over_pax": common.ratio(times["plain"], times["pax"])},
        "target": {"plain_faster": times["plain"].median < times["pax"].median},
    }


def main(argv: list[str] | None = None) -> None:
    parser = common.arguments(__doc__, samples=5000)  # samples in each shard
    common.publish(NAME, parser.parse_args(argv), run)


if __name__ == "__main__":
    main()
