"""Real 2-process DDP (gloo) over the DataModule: same noise as 1 rank, no hang, equal steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("ddp_probe.py")


def run_probe(spec: str, out: Path, devices: int, **options: int) -> dict[int, dict]:
    out.mkdir()
    extra = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]
    command = [
        sys.executable,
        str(PROBE),
        "--spec",
        spec,
        "--out",
        str(out),
        f"--devices={devices}",
    ]
    result = subprocess.run(command + extra, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return {r: json.loads((out / f"rank{r}.json").read_text()) for r in range(devices)}


@pytest.mark.ddp
def test_one_and_two_ranks_see_the_same_noisy_labels(make_shards, tmp_path):
    spec = make_shards([20, 20, 20, 20])
    single = run_probe(spec, tmp_path / "one", devices=1, num_workers=2)
    double = run_probe(spec, tmp_path / "two", devices=2, num_workers=2)
    labels_1 = {key: (label, noisy) for rows in single[0].values() for key, label, noisy in rows}
    labels_2 = {
        key: (label, noisy)
        for rank in double.values()
        for rows in rank.values()
        for key, label, noisy in rows
    }
    assert len(labels_1) == 80 and set(labels_2) == set(labels_1)
    assert labels_2 == labels_1
    for epoch in ("0", "1"):  # each rank reads its own half of the shards
        keys = [set(k for k, *_ in double[r][epoch]) for r in (0, 1)]
        assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 80


@pytest.mark.ddp
def test_odd_unequal_shards_finish_with_equal_batch_counts(make_shards, tmp_path):
    spec = make_shards([3, 30, 7, 11, 1])  # 52 samples; rank 0 gets 11, rank 1 gets 41
    ranks = run_probe(spec, tmp_path / "odd", devices=2, num_workers=1, epochs=2)
    for epoch in ("0", "1"):
        counts = [len(ranks[r][epoch]) for r in (0, 1)]
        assert counts == [52 // (2 * 4) * 4] * 2, counts
