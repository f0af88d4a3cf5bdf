"""What a user sees in TensorBoard, read through TensorBoard's own data API (the HTTP endpoints
its web app calls) on the logs of a real quickstart run."""

from __future__ import annotations

import io
import json
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from tensorboard import program

from tests.test_adapt import export_card, quickstart_metrics


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TensorBoardAPI:
    """A TensorBoard server on ``logdir`` in this process, and its data endpoints."""

    def __init__(self, logdir: Path) -> None:
        board = program.TensorBoard()
        board.configure(
            argv=[None, "--logdir", str(logdir), "--port", str(free_port()), "--load_fast=false"]
        )
        self.url = board.launch()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def wait_for(self, path: str, ready: Any, timeout: float = 90) -> Any:
        """Poll ``path`` until ``ready(answer)``: the server loads the logs in the background."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.get(path)
            if ready(answer) or time.monotonic() > deadline:
                return answer
            time.sleep(1)


@pytest.fixture(scope="module")
def board(builtin_root, tiny_fashion_mnist, tmp_path_factory) -> tuple[TensorBoardAPI, dict]:
    """The OOD linear-probe quickstart, 2 steps, and a TensorBoard on its logs."""
    tmp = tmp_path_factory.mktemp("tensorboard")
    card = export_card(tmp / "backbone", "resnet18", {"layers": [1, 1, 1, 1]})
    logs = tmp / "logs"
    metrics = quickstart_metrics("lp_ood", card, builtin_root, tiny_fashion_mnist, logs)
    return TensorBoardAPI(logs), metrics


def test_the_scalar_tags_follow_the_layout(board):
    api, _ = board
    runs = api.wait_for("data/plugin/scalars/tags", lambda answer: answer)
    (tags,) = [set(run_tags) for run_tags in runs.values()]
    shifted = ("clean", "rotate", "invert", "gaussian_blur", "gaussian_noise", "contrast")
    expected = {"val/val/acc", "test/mean/acc", "test/mean/f1", "data/skipped"}
    expected |= {f"test/{name}/{metric}" for name in shifted for metric in ("acc", "f1", "loss")}
    expected |= {f"spectrum/{name}/lsvr" for name in shifted}
    assert expected <= tags, sorted(expected - tags)
    assert not {tag for tag in tags if tag.startswith("val/") and tag.split("/")[1] in shifted}
    assert "hp_metric" not in tags  # no placeholder
    assert not {tag for tag in tags if tag.startswith("data/skipped_")}  # nothing was skipped


def test_the_hparams_tab_compares_runs_by_their_setting_and_final_results(board):
    api, metrics = board
    api.wait_for("data/plugin/scalars/tags", lambda answer: answer)
    experiment = api.post("data/plugin/hparams/experiment", {"experimentName": ""})
    names = {info["name"] for info in experiment["hparamInfos"]}
    assert {"method", "backbone", "noise_type", "lr", "seed", "max_epochs"} <= names
    shown = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {"test/mean/acc", "test/gaussian_noise/acc", "spectrum/gaussian_noise/lsvr"} <= shown
    groups = api.post(
        "data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE"],
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 10,
        },
    )
    (group,) = groups["sessionGroups"]
    assert group["hparams"]["method"] == "lp"
    values = {v["name"]["tag"]: v["value"] for v in group["sessions"][0]["metricValues"]}
    assert values["test/mean/acc"] == pytest.approx(metrics["test/mean/acc"], abs=1e-6)


def test_the_resolved_config_is_in_the_text_tab(board):
    api, _ = board
    runs = api.wait_for("data/plugin/text/tags", lambda answer: answer)
    ((run, tags),) = runs.items()
    assert tags == ["config/text_summary"]
    query = urllib.parse.urlencode({"run": run, "tag": tags[0]})
    (entry,) = api.get(f"data/plugin/text/text?{query}")
    assert "class_path: lightning_modules.adapt.Adaptation" in entry["text"]  # the YAML, as code


def test_the_spectrum_image_sits_at_the_step_of_its_scalars(board):
    api, _ = board
    runs = api.wait_for("data/plugin/images/tags", lambda answer: answer)
    ((run, tags),) = runs.items()
    assert "spectrum/gaussian_noise/plot" in tags
    query = urllib.parse.urlencode({"run": run, "tag": "spectrum/gaussian_noise/plot"})
    (image,) = api.get(f"data/plugin/images/images?{query}")
    query = urllib.parse.urlencode({"run": run, "tag": "spectrum/gaussian_noise/lsvr"})
    ((_, scalar_step, _),) = api.get(f"data/plugin/scalars/scalars?{query}")
    assert image["step"] == scalar_step
    with urllib.request.urlopen(
        api.url + "data/plugin/images/individualImage?" + image["query"]
    ) as png:
        assert Image.open(io.BytesIO(png.read())).size == (480, 360)  # a card's size, no shrinking
    histograms = api.get("data/plugin/histograms/tags")
    assert not any(histograms.values())  # off by default
