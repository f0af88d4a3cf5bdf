"""``python -m benchmarks.run_all``: every benchmark in its own process, one combined JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    tiny = f"--root {builtin_root} --batches 2 --batch-size 16 --repeats 1 --num-workers 0"
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
    assert (out.parent / "data_throughput.json").is_file()
    assert failed["status"] == "failed" and failed["returncode"] != 0
    assert "--no-such-option" in failed["log_tail"]
    assert Path(failed["log"]).is_file()


def test_bad_args_name_the_benchmarks() -> None:
    done = run_all("--args", "nonsense=--fast")
    assert done.returncode != 0
    assert "adaptation_speed" in done.stderr and "'nonsense=--fast'" in done.stderr
    assert "Traceback" not in done.stderr
