"""Benchmark tooling: `benchmarks.run_all` (one JSON for all) and the adaptation subsets."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_all(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.run_all", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_runs_each_benchmark_and_records_failures(builtin_root: Path, tmp_path: Path) -> None:
    """A benchmark that works lands with its ratios; one that fails is recorded with its log,
    does not stop the others, and makes the exit status 1."""
    out = tmp_path / "results" / "all.json"
    tiny = f"--root {builtin_root} --batches 2 --batch-size 16 --repeats 5 --num-workers 0"
    done = run_all(
        "--only", "data_throughput", "spectrum_cost",
        "--args", f"data_throughput={tiny}", "spectrum_cost=--no-such-option",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    combined = json.loads(out.read_text())
    assert combined["benchmark"] == "all"
    assert list(combined["benchmarks"]) == ["data_throughput", "spectrum_cost"]
    ok, failed = combined["benchmarks"]["data_throughput"], combined["benchmarks"]["spectrum_cost"]
    assert ok["status"] == "ok" and ok["returncode"] == 0
    assert {"noise_cost", "pipeline_over_decode"} <= set(ok["ratios"])
    assert ok["result"]["benchmark"] == "data_throughput"
    # every candidate's 5 interleaved repeats; every ratio of medians with its per-round range
    assert {len(c["values"]) for c in ok["result"]["candidates"].values()} == {5}
    assert set(ok["result"]["ratio_spread"]) == set(ok["ratios"])
    assert (out.parent / "data_throughput.json").is_file()
    assert failed["status"] == "failed" and failed["returncode"] != 0
    assert "--no-such-option" in failed["log_tail"]
    assert Path(failed["log"]).is_file()


def test_bad_args_name_the_benchmarks() -> None:
    done = run_all("--args", "nonsense=--fast")
    assert done.returncode != 0
    assert "adaptation_speed" in done.stderr and "'nonsense=--fast'" in done.stderr
    assert "Traceback" not in done.stderr


def test_adaptation_speed_subsets_copy_the_first_samples_byte_for_byte(make_shards, tmp_path):
    """``--train-samples N``: the first N samples, whole, spread over one shard per reader."""
    from benchmarks.adaptation_speed import first_samples

    spec = make_shards([5, 7])

    def samples(urls: list[str]) -> dict[str, dict[str, bytes]]:
        found: dict[str, dict[str, bytes]] = {}
        for url in urls:
            with tarfile.open(url) as tar:
                for member in tar:
                    key, ext = member.name.split(".", 1)
                    found.setdefault(key, {})[ext] = tar.extractfile(member).read()
        return found

    subset = first_samples(spec, 8, tmp_path / "subset", "train", 3)
    assert subset == f"{tmp_path / 'subset'}/train-{{0000..0002}}.tar|8"
    shards = sorted((tmp_path / "subset").glob("train-*.tar"))
    assert [len(samples([str(s)])) for s in shards] == [3, 3, 2]
    original = samples(sorted(str(p) for p in (tmp_path / "train").glob("*.tar")))
    first = dict(list(original.items())[:8])
    assert samples([str(s) for s in shards]) == first


def test_adaptation_speed_subset_larger_than_the_split_is_a_clear_error(make_shards, tmp_path):
    from benchmarks.adaptation_speed import first_samples

    with pytest.raises(SystemExit, match=r"has 12 samples, not the 20 asked for"):
        first_samples(make_shards([5, 7]), 20, tmp_path / "subset", "train", 2)


def test_spectrum_cost_times_the_monitor_inside_the_run(builtin_root: Path, tmp_path: Path) -> None:
    """The in-run figure is the monitor's own: its hooks' time on the loop and its plots' CPU
    on the painter thread, both non-zero and a fraction of the epoch they ran in."""
    from benchmarks import common, spectrum_cost

    model = common.quickstart_model("pretrain_fs")
    data = common.quickstart_data(
        "pretrain_fs", builtin_root=str(builtin_root), batch_size=32, num_workers=0
    )
    run = spectrum_cost.validate_once(model, data, "with_plots", 2, str(tmp_path))
    assert run["rows"] == [32, 32]  # limit_val_batches=2
    assert 0 < run["hook_s"] < run["seconds"]
    assert run["plot_cpu_s"] > 0  # the plot was drawn by the timed monitor's _draw
    assert run["hook_fraction"] == pytest.approx(run["hook_s"] / (run["seconds"] - run["hook_s"]))
    assert list(tmp_path.rglob("events.out.tfevents.*"))
    without = spectrum_cost.validate_once(model, data, "without", 2, str(tmp_path))
    assert without["hook_s"] == without["plot_cpu_s"] == 0.0
