"""The console commands of pyproject.toml: each names a callable ``main``, and an installed one
runs from any folder without path tricks."""

from __future__ import annotations

import importlib
import shutil
import subprocess

import tomllib

from tests.conftest import REPO

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_command_points_at_a_main_function():
    assert set(SCRIPTS) == {
        "nmt-train",
        "nmt-sweep",
        "nmt-report",
        "nmt-spectrum",
        "nmt-write-shards",
    }
    for target in SCRIPTS.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_an_installed_command_runs_outside_the_checkout(tmp_path):
    command = shutil.which("nmt-sweep")
    assert command, "pip install -e . installs the console commands"
    result = subprocess.run(
        [command, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: nmt-sweep")
