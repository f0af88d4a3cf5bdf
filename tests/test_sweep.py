"""scripts/sweep.py as a user runs it: a micro sweep end to end, resume, rerun, failures; and the
report's averaging rule on hand-made records."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts.claims import CLAIM_COLUMNS
from scripts.report import COLUMNS, averages, build_rows, noise_kind
from tests.conftest import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sweep_config(folder: Path, builtin_root: Path, idx: Path, **changes) -> Path:
    """A two-ratio, one-method (LP), one-task (ID) sweep of the quickstarts, shrunk to seconds."""
    data = [f"--data.init_args.builtin_root={builtin_root}", "--data.init_args.num_workers=0"]
    config = {
        "out": str(folder / "out"),
        "seeds": [0, 1],
        "pretrain": {
            "config": "quickstart/pretrain_fs.yaml",
            "ratios": [0.0, 0.1],
            "overrides": [
                *data,
                "--data.init_args.epoch_samples=64",
                "--data.init_args.batch_size=32",
                "--trainer.max_epochs=1",
                "--trainer.limit_val_batches=1",
            ],
        },
        "adapt": {
            "overrides": [
                *data,
                f"--data.init_args.builtin_source={idx}",
                "--trainer.max_epochs=1",
                "--trainer.num_sanity_val_steps=0",
                "--trainer.enable_checkpointing=false",
            ],
            "runs": [{"config": "quickstart/lp_id.yaml"}],
        },
    }
    for section, values in changes.items():
        if isinstance(config.get(section), dict):
            config[section] |= values
        else:
            config[section] = values
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "sweep.py"), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def read_summary(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open() as handle:
        return list(csv.DictReader(handle))


def results(out: Path) -> dict[str, int]:
    """result.json of every run -> its modification time (ns)."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("result.json")}


@pytest.fixture(scope="module")
def micro(builtin_root, tiny_fashion_mnist, tmp_path_factory) -> tuple[Path, Path, str]:
    """The micro sweep, run once: (its config, its output folder, its stdout)."""
    folder = tmp_path_factory.mktemp("sweep")
    config = sweep_config(folder, builtin_root, tiny_fashion_mnist)
    result = run_sweep(config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return config, folder / "out", result.stdout


def test_micro_sweep_runs_everything_and_writes_the_report(micro):
    _, out, stdout = micro
    assert "plan: 8 runs, 0 done, 8 to run" in stdout
    for seed in (0, 1):
        for run in ("pretrain_fs/ratio_0.00", "pretrain_fs/ratio_0.10"):
            assert (out / f"seed_{seed}" / run / "export" / "card.json").is_file()
        for run in ("adapt/ratio_0.00/lp_id", "adapt/ratio_0.10/lp_id"):
            folder = out / f"seed_{seed}" / run
            for name in ("result.json", "log.txt", "config.yaml", "export/card.json"):
                assert (folder / name).is_file(), f"{folder}/{name}"
            command = (folder / "log.txt").read_text().splitlines()[0]
            assert "train.py fit --config" in command
            assert f"--seed_everything={seed} --data.init_args.seed={seed}" in command

    rows = read_summary(out)
    assert set(COLUMNS) <= set(rows[0])
    # one row per adaptation run, seed and evaluation set (fmnist_heldout logs `val`, `test`)
    assert sorted((r["seed"], r["noise_ratio"], r["test_set"]) for r in rows) == [
        (seed, ratio, name)
        for seed in ("0", "1")
        for ratio in ("0.0", "0.1")
        for name in ("test", "val")
    ]
    for row in rows:
        assert (row["pretrain"], row["method"], row["task"], row["kind"], row["status"]) == (
            "pretrain_fs",
            "lp",
            "fmnist_heldout",
            "id",
            "ok",
        )
        assert row["in_average"] == str(row["test_set"] == "test")
        assert 0 <= float(row["acc"]) <= 1 and float(row["sve"]) > 0
        assert Path(row["log"]) == Path(row["run_dir"]) / "log.txt"
    assert {r["realised_noise_rate"] for r in rows if r["noise_ratio"] == "0.0"} == {"0.0"}
    realised = {r["seed"]: r["realised_noise_rate"] for r in rows if r["noise_ratio"] == "0.1"}
    assert all(float(rate) > 0 for rate in realised.values())
    # the seed decides which samples are noisy: another seed, another noisy set
    cards = [out / f"seed_{s}/pretrain_fs/ratio_0.10/export/card.json" for s in (0, 1)]
    seeds = [json.loads(card.read_text())["data"]["seed"] for card in cards]
    assert seeds == [0, 1]

    # every table cell is the mean of the two seeds' values ± the t half-width, by hand
    tests = {
        (r["seed"], r["noise_ratio"]): float(r["acc"]) * 100
        for r in rows
        if r["test_set"] == "test"
    }
    a, b = tests[("0", "0.1")], tests[("1", "0.1")]
    half = 12.706204736174707 * abs(a - b) / 2  # t_{0.975, 1} * s / sqrt(2), s = |a - b| / sqrt 2
    summary = (out / "summary.md").read_text()
    assert "## ID accuracy (%)" in summary and "| method | 0 % | 10 % |" in summary
    assert f"{(a + b) / 2:.1f} ± {half:.1f} |" in summary
    assert "mean over n = 2 seeds (0, 1)" in summary
    assert "| lp |" in summary and "## Runs that did not succeed" not in summary
    for figure in ("accuracy.png", "spectrum.png"):
        assert (out / figure).read_bytes()[:8] == PNG_MAGIC
    with (out / "claims.csv").open() as handle:
        claims = list(csv.DictReader(handle))
    assert list(claims[0]) == CLAIM_COLUMNS
    assert {c["verdict"] for c in claims} <= {"reproduced", "contradicted", "inconclusive"}
    assert all(c["n"] == "2" for c in claims)
    # two ratios: no slope, no heavy ratio, no NMTune: listed as not testable
    assert "Not testable by this sweep" in (out / "claims.md").read_text()
    page = (out / "index.html").read_text()
    assert '<img src="accuracy.png"' in page and "<h2>The paper&#x27;s claims" in page
    assert "<table>" in page and "id_slight_noise_helps" in page


def test_the_report_command_rebuilds_the_report_from_the_run_folders(micro, tmp_path):
    _, out, _ = micro
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "report.py"), str(out), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("summary.csv", "claims.csv", "effects.csv", "correlations.csv"):
        assert (tmp_path / name).read_text() == (out / name).read_text(), name
    empty = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "report.py"), str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert empty.returncode == 2
    assert empty.stderr.startswith("error: no result.json or failed.json under")


def test_a_second_invocation_runs_nothing(micro):
    config, out, _ = micro
    before = results(out)
    result = run_sweep(config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plan: 8 runs, 8 done, 0 to run" in result.stdout
    assert results(out) == before


def test_deleting_one_result_reruns_only_that_run(micro):
    config, out, _ = micro
    (out / "seed_1/adapt/ratio_0.10/lp_id/result.json").unlink()
    before = results(out)
    result = run_sweep(config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plan: 8 runs, 7 done, 1 to run" in result.stdout
    assert "to run: seed_1/adapt/ratio_0.10/lp_id" in result.stdout
    after = results(out)
    assert {k: after[k] for k in before} == before
    assert "seed_1/adapt/ratio_0.10/lp_id/result.json" in after


def test_failed_runs_are_reported_and_the_others_complete(
    micro, builtin_root, tiny_fashion_mnist, tmp_path
):
    _, done, _ = micro
    shutil.copytree(done, tmp_path / "out")  # reuse the finished runs
    (tmp_path / "out/seed_0/adapt/ratio_0.00/lp_id/result.json").unlink()  # one good run to do
    broken = {
        "config": "quickstart/lp_id.yaml",
        "name": "lp_broken",
        "method": "lp_broken",
        "overrides": ["--model.init_args.optimizer.lr=not-a-number"],
    }
    config = sweep_config(
        tmp_path,
        builtin_root,
        tiny_fashion_mnist,
        seeds=[0],
        pretrain={"ratios": [0.0, 0.1, 1.5]},  # 1.5: the pre-training refuses the ratio
        adapt={"runs": [{"config": "quickstart/lp_id.yaml"}, broken]},
    )
    result = run_sweep(config, "--jobs", 2)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "plan: 9 runs, 3 done, 6 to run" in result.stdout

    out = tmp_path / "out"
    rows = read_summary(out)
    status = {(r["noise_ratio"], r["method"]): r["status"] for r in rows}
    assert status == {
        ("0.0", "lp"): "ok",
        ("0.1", "lp"): "ok",
        ("1.5", "lp"): "skipped",
        ("0.0", "lp_broken"): "failed",
        ("0.1", "lp_broken"): "failed",
        ("1.5", "lp_broken"): "skipped",
    }
    pretrain_log = out / "seed_0/pretrain_fs/ratio_1.50/log.txt"
    assert "noise_ratio must be in [0, 1)" in pretrain_log.read_text()
    for row in rows:
        if row["status"] == "failed":
            assert Path(row["log"]) == Path(row["run_dir"]) / "log.txt"
            assert "optimizer.lr" in Path(row["log"]).read_text()
        if row["status"] == "skipped":
            assert Path(row["log"]) == pretrain_log
    assert (out / "seed_0/adapt/ratio_0.00/lp_id/result.json").is_file()

    summary = (out / "summary.md").read_text()
    assert "## Runs that did not succeed" in summary
    assert "--model.init_args.optimizer.lr: expected float, got 'not-a-number'" in summary
    assert "error: data.noise_ratio must be in [0, 1), got 1.5" in summary
    assert "its pre-training did not succeed" in summary
    assert f"`{out / 'seed_0/adapt/ratio_0.10/lp_broken/log.txt'}`" in summary
    assert f"`{pretrain_log}`" in summary
    assert "| lp_broken | – | – | – |" in summary  # no average from failed runs


def test_the_sweep_adapts_on_the_embeddings_of_each_backbone(
    micro, builtin_root, tiny_fashion_mnist, tmp_path
):
    """An ``embed`` entry: one ``train.py predict`` per backbone writes its embedding files,
    then NMTune trains on them (the black-box path), reported as any other method."""
    _, done, _ = micro
    shutil.copytree(done / "seed_0", tmp_path / "out" / "seed_0")  # the backbones, done
    black_box = {
        "config": "quickstart/nmtune_embeddings.yaml",
        "embed": "quickstart/lp_id.yaml",
        "name": "nmtune_embeddings",
        "kind": "id",
        "task": "fmnist_heldout",
        "overrides": ["--trainer.max_epochs=2"],
    }
    config = sweep_config(
        tmp_path, builtin_root, tiny_fashion_mnist, seeds=[0], adapt={"runs": [black_box]}
    )
    result = run_sweep(config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "plan: 6 runs, 2 done, 4 to run" in result.stdout

    out = tmp_path / "out"
    for ratio in ("0.00", "0.10"):
        embedded = out / f"seed_0/embed/ratio_{ratio}/lp_id"
        assert {p.name for p in embedded.glob("*.pt")} == {"train.pt", "val-val.pt", "test-test.pt"}
        command = (embedded / "log.txt").read_text().splitlines()[0]
        card = out / f"seed_0/pretrain_fs/ratio_{ratio}/export/card.json"
        assert " predict --config " in command and f"backbone.card={card}" in command
        adapted = out / f"seed_0/adapt/ratio_{ratio}/nmtune_embeddings/log.txt"
        command = adapted.read_text().splitlines()[0]
        assert f"--data.init_args.directory={embedded}" in command
        assert "builtin_root" not in command  # the common image overrides stay with predict
    rows = read_summary(out)
    assert {(row["method"], row["test_set"], row["status"]) for row in rows} == {
        ("nmtune", "val", "ok"),
        ("nmtune", "test", "ok"),
    }
    assert all(0 <= float(row["acc"]) <= 100 for row in rows)


def test_one_ratio_launched_by_hand_is_adopted_and_the_rest_of_it_runs(
    builtin_root, tiny_fashion_mnist, tmp_path
):
    """The cluster path: print one ratio's and seed's commands, launch its pre-training by hand
    (as under srun), then `--ratio --seed` runs only what that ratio and seed still need."""
    config = sweep_config(tmp_path, builtin_root, tiny_fashion_mnist)
    out = tmp_path / "out"
    printed = run_sweep(config, "--ratio", "0.1", "--seed", "1", "--print-commands")
    assert printed.returncode == 0, printed.stderr[-3000:]
    lines = printed.stdout.splitlines()
    assert lines[0::2] == ["# seed_1/pretrain_fs/ratio_0.10", "# seed_1/adapt/ratio_0.10/lp_id"]
    assert "seed_0" not in printed.stdout
    assert "--data.init_args.noise_ratio=0.1" in lines[1] and "ratio_0.00" not in printed.stdout
    assert not out.exists()  # printing runs nothing

    by_hand = subprocess.run(
        shlex.split(lines[1]), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert by_hand.returncode == 0, by_hand.stderr[-3000:]
    result = run_sweep(config, "--ratio", "0.1", "--seed", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "adopted (launched outside the sweep): seed_1/pretrain_fs/ratio_0.10" in result.stdout
    assert "plan: 2 runs, 1 done, 1 to run" in result.stdout
    assert set(results(out)) == {
        "seed_1/pretrain_fs/ratio_0.10/result.json",
        "seed_1/adapt/ratio_0.10/lp_id/result.json",
    }
    assert not (out / "seed_1/pretrain_fs/ratio_0.10/log.txt").exists()
    rows = [r for r in read_summary(out) if r["seed"] == "1"]
    status = {(r["noise_ratio"], r["test_set"]): r["status"] for r in rows}
    assert status[("0.1", "test")] == "ok" and status[("0.0", "")] == "missing"

    unknown = run_sweep(config, "--ratio", "0.7")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "error: --ratio 0.7 is not in pretrain.ratios [0.0, 0.1]"
    unknown = run_sweep(config, "--seed", "5")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "error: --seed 5 is not in seeds [0, 1]"


def test_the_clip_variant_swaps_captions_and_adapts_with_clip_normalisation(tmp_path):
    """configs/quickstart/sweep_clip.yaml: CLIP pre-training at each ratio through the caption
    swap option, then the same adaptations with the CLIP normalisation."""
    result = run_sweep(
        REPO / "configs/quickstart/sweep_clip.yaml", "--out", tmp_path, "--print-commands"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    commands = dict(zip(*[iter(result.stdout.splitlines())] * 2, strict=True))
    ratios = ["0.00", "0.05", "0.10", "0.20", "0.30"]
    assert [label for label in commands if "/pretrain" in label] == [
        f"# seed_0/pretrain_clip/ratio_{r}" for r in ratios
    ]
    pretraining = commands["# seed_0/pretrain_clip/ratio_0.20"]
    assert "quickstart/pretrain_clip.yaml" in pretraining
    assert "--data.init_args.caption_noise_ratio=0.2 " in pretraining
    adaptations = [command for label, command in commands.items() if "adapt/" in label]
    assert len(adaptations) == 8 * len(ratios)
    assert all("--data.init_args.transform.normalization=clip" in c for c in adaptations)
    zeroshot = [c for label, c in commands.items() if "/zeroshot_" in label]
    assert len(zeroshot) == 2 * len(ratios)  # nothing trains: validate, not fit
    assert all(" validate --config " in c and "zeroshot_ood.yaml" in c for c in zeroshot)
    assert all(" fit --config " in c for c in adaptations if c not in zeroshot)


def test_config_mistakes_stop_before_any_run(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "out": str(tmp_path / "out"),
                "pretrain": {"config": "quickstart/pretrain_fs.yaml", "ratios": [0.0]},
                "adapt": {"runs": [{"config": "quickstart/ft.yaml"}]},
            }
        )
    )
    result = run_sweep(config)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: adapt.runs[0].kind must be id or ood (not derivable from ft.yaml)"
    )
    assert not (tmp_path / "out").exists()


def record(method: str, kind: str, task: str, ratio: float, accs: dict, status: str = "ok"):
    """A status record as the runner writes it, with the given per-set accuracies."""
    return {
        "pretrain": "fs",
        "noise_ratio": ratio,
        "method": method,
        "task": task,
        "kind": kind,
        "exclude_sets": ["val", "clean"],
        "status": status,
        "run_dir": "r",
        "log": "r/log.txt",
        "metrics": {f"val/{name}/acc": acc for name, acc in accs.items()},
    }


def test_averages_follow_the_paper_rule():
    adapt = [
        # ID: two tasks; the mean of task means, validation sets left out
        record("lp", "id", "a", 0.0, {"val": 0.0, "test": 0.8}),
        record("lp", "id", "b", 0.0, {"val": 0.0, "test": 0.4}),
        # OOD: the shifted sets only, not `val` nor the in-distribution `clean`
        record("lp", "ood", "s", 0.0, {"val": 1.0, "clean": 1.0, "rotate": 0.2, "blur": 0.6}),
        # a failed run empties its cell instead of averaging over fewer tasks
        record("lp", "id", "a", 0.1, {"test": 0.9}),
        record("lp", "id", "b", 0.1, {}, status="failed"),
    ]
    rows = build_rows([], adapt)
    assert averages(rows, "id", "acc") == {"lp": {0.0: {0: pytest.approx(0.6)}, 0.1: {0: None}}}
    assert averages(rows, "ood", "acc") == {"lp": {0.0: {0: pytest.approx(0.4)}}}


def test_a_wise_ft_run_adds_a_method_row_at_its_selected_alpha():
    """The WiSE-FT callback's ``wise_ft/<kind>/<set>/acc`` (best alpha on validation) becomes the
    method ``ft+wise_ft``, averaged by the same rule; its per-alpha keys are not sets."""
    run = record("ft", "id", "a", 0.0, {"val": 0.5, "test": 0.6})
    run["metrics"] |= {
        "wise_ft/best_alpha": 0.5,
        "wise_ft/val/val/acc": 0.7,
        "wise_ft/test/test/acc": 0.65,
        "wise_ft/alpha_0.5/val/val/acc": 0.7,
    }
    rows = build_rows([], [run])
    assert [(row["method"], row["test_set"]) for row in rows] == [
        ("ft", "val"),
        ("ft", "test"),
        ("ft+wise_ft", "val"),
        ("ft+wise_ft", "test"),
    ]
    assert averages(rows, "id", "acc") == {
        "ft": {0.0: {0: pytest.approx(0.6)}},
        "ft+wise_ft": {0.0: {0: pytest.approx(0.65)}},
    }


def test_the_report_names_the_kind_of_noise():
    assert noise_kind([{"noise": {"type": "caption_swap", "ratio": 0.1}}]) == "caption"
    assert noise_kind([{"noise": {"type": "symmetric", "ratio": 0.1}}, {"noise": None}]) == "label"


def test_the_noisy_downstream_preset_adds_the_official_label_noise(tmp_path):
    """configs/quickstart/sweep_noisy_downstream.yaml (the paper's Fig. 9): every adaptation
    trains on noisy labels in the official convention, each method row at its own ratio."""
    result = run_sweep(
        REPO / "configs/quickstart/sweep_noisy_downstream.yaml", "--out", tmp_path,
        "--print-commands",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    commands = dict(zip(*[iter(result.stdout.splitlines())] * 2, strict=True))
    adaptations = {label: c for label, c in commands.items() if "adapt/" in label}
    assert len(adaptations) == 4 * 5
    for label, command in adaptations.items():
        ratio = "0.2" if label.endswith("dn20") else "0.4"
        assert f"--data.init_args.noise_ratio={ratio} " in command + " "
        assert "--data.init_args.noise_exact_count=true" in command
        assert "--data.init_args.noise_include_true_class=true" in command
