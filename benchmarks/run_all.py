"""Every benchmark of the suite in one command, one JSON to follow performance over time.

Each benchmark runs in its own process (``python -m benchmarks.<name> --out <file>``), one after
the other so they never compete for the CPUs, with its default sizes unless ``--args`` says
otherwise. A benchmark that fails is recorded as failed with the tail of its log and the others
still run; the exit status is 1 when any failed. The combined file holds, per benchmark, its
status, wall time, headline ``ratios`` and ``target``, plus its full result under ``result``.

Run from the repository root::

    python -m benchmarks.run_all                              # all of them, default sizes
    python -m benchmarks.run_all --only data_throughput spectrum_cost
    python -m benchmarks.run_all --args adaptation_speed="--epochs 5 --skip regularizer"

Writes ``benchmarks/results/all.json`` (``--out``) and the per-benchmark files beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, machine_info, write_results

NAME = "all"
BENCHMARKS = (
    "data_throughput",
    "spectrum_cost",
    "pretrain_throughput",
    "adaptation_speed",
    "augmentation_seeding",
    "loader_per_core",
    "tar_headers",
)
LOG_TAIL_CHARS = 4000


def run_one(name: str, extra: list[str], out_dir: Path) -> dict[str, Any]:
    """Run ``benchmarks.<name>`` in a subprocess; its status, wall time, log tail and result."""
    result_path = out_dir / f"{name}.json"
    log_path = out_dir / f"{name}.log"
    command = [sys.executable, "-m", f"benchmarks.{name}", "--out", str(result_path), *extra]
    print(f"[{name}] {shlex.join(command[1:])}", flush=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        returncode = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    entry: dict[str, Any] = {
        "status": "ok" if returncode == 0 and result_path.is_file() else "failed",
        "returncode": returncode,
        "wall_s": round(time.perf_counter() - start, 1),
        "command": shlex.join(command[1:]),
        "log": str(log_path),
    }
    if entry["status"] == "ok":
        result = json.loads(result_path.read_text())
        entry.update(ratios=result.get("ratios"), target=result.get("target"), result=result)
    else:
        entry["log_tail"] = log_path.read_text()[-LOG_TAIL_CHARS:]
    print(f"[{name}] {entry['status']} in {entry['wall_s']} s", flush=True)
    return entry


def parse_extra(pairs: list[str]) -> dict[str, list[str]]:
    """``name="--flag value ..."`` pairs into per-benchmark argument lists."""
    extra: dict[str, list[str]] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in BENCHMARKS:
            raise SystemExit(
                f'error: --args expects NAME="ARGS" with NAME one of {", ".join(BENCHMARKS)}; '
                f"got {pair!r}"
            )
        extra[name] = shlex.split(text)
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    parser.add_argument(
        "--args",
        nargs="+",
        default=[],
        metavar='NAME="ARGS"',
        help='extra arguments for one benchmark, e.g. spectrum_cost="--repeats 7"',
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / f"{NAME}.json"))
    args = parser.parse_args(argv)
    extra = parse_extra(args.args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {
        name: run_one(name, extra.get(name, []), out.parent) for name in args.only or BENCHMARKS
    }
    path = write_results(NAME, {"machine": machine_info(), "benchmarks": results}, out)
    print()
    for name, entry in results.items():
        ratios = entry.get("ratios") or {}
        shown = " ".join(
            f"{key}={value:.3g}" for key, value in ratios.items() if isinstance(value, float)
        )
        print(f"{name:22s} {entry['status']:7s} {entry['wall_s']:8.1f} s  {shown}")
    print(f"wrote {path}")
    return int(any(entry["status"] != "ok" for entry in results.values()))


if __name__ == "__main__":
    sys.exit(main())
