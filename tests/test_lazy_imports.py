"""A run imports the heavy optional libraries only on the paths that use them (issue: fast
start): an FS pre-training or an adaptation of a timm backbone loads neither open_clip nor peft,
nor scikit-learn or scikit-image, which only the report and the built-in suites need."""

from __future__ import annotations

import json
import subprocess
import sys

import open_clip.constants

from datamodules.transforms import NORMALIZATIONS
from tests.conftest import REPO

OPTIONAL = ("open_clip", "peft", "sklearn", "skimage")


def test_the_fs_and_adaptation_paths_import_no_optional_library():
    code = (
        "import json, sys\n"
        "import train, datamodules.classification, lightning_modules.pretrain_fs\n"
        "import lightning_modules.adapt\n"
        f"print(json.dumps([m for m in {OPTIONAL!r} if m in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_the_clip_normalisation_written_out_is_open_clips():
    mean, std = NORMALIZATIONS["clip"]
    assert (mean, std) == (
        tuple(open_clip.constants.OPENAI_DATASET_MEAN),
        tuple(open_clip.constants.OPENAI_DATASET_STD),
    )
