"""The end-of-run table: one row per evaluation set, the set's SVE and LSVR beside it."""

from __future__ import annotations

from callbacks.run_summary import results_table


def test_rows_are_sets_and_columns_are_metrics_with_the_spectrum_joined() -> None:
    table = results_table(
        {
            "train/loss": 0.3,
            "val/val/acc": 0.81234,
            "val/val/f1": 0.8,
            "val/val/acc_wd_0.001": 0.7,  # a swept head: TensorBoard only
            "test/gaussian_noise/acc": 0.5,
            "spectrum/val/sve": 3.25,
            "spectrum/val/erank": 9.0,  # not one of the paper's two
            "spectrum/gaussian_noise/lsvr": 0.125,
            "noise/realised_rate": 0.2,
        }
    ).splitlines()
    assert table[0].split() == ["set", "acc", "f1", "sve", "lsvr"]
    assert table[1].split() == ["val/val", "0.8123", "0.8000", "3.2500"]
    assert table[2].split() == ["test/gaussian_noise", "0.5000", "0.1250"]
    assert table[2].index("0.1250") == table[0].index("lsvr") + len("lsvr") - len("0.1250")


def test_no_evaluation_metric_gives_no_table() -> None:
    assert results_table({"train/loss": 1.0, "spectrum/val/sve": 2.0}) == ""
