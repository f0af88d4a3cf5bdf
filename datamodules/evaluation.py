"""Which loop scores an evaluation set, and under which tag kind it is logged.

A DataModule names its validation and test sets; with ``test_in_validation`` the validation
loop scores the test sets too (so one ``fit`` reports them), and they are still logged as
``test/<set>/...`` (``lightning_modules/metric_keys.py``).
"""

from __future__ import annotations

from typing import TypeVar

Source = TypeVar("Source")


def validation_sets(
    val: dict[str, Source], test: dict[str, Source], test_in_validation: bool
) -> tuple[dict[str, Source], set[str]]:
    """The sets of the validation loop, and the names among them that are test sets: the
    validation sets, then with ``test_in_validation`` every test set (``test_<name>`` when a
    validation set has its name)."""
    merged = dict(val)
    tests = set()
    if test_in_validation:
        for name, source in test.items():
            named = name if name not in merged else f"test_{name}"
            merged[named] = source
            tests.add(named)
    return merged, tests


class EvaluationKinds:
    """Mixed into the DataModules: ``evaluation_kind`` tells a module whether a set of a loop
    is logged as ``val`` or ``test``; ``mean_excludes`` leaves sets out of ``test/mean``."""

    tests_in_validation: set[str]
    mean_excludes: tuple[str, ...]

    def evaluation_kind(self, split: str, name: str) -> str:
        """``test`` for a test set, also one scored in the validation loop; else ``val``."""
        return "test" if split == "test" or name in self.tests_in_validation else "val"

    def mean_sets(self, split: str, names: list[str]) -> list[str]:
        """The test sets of ``names`` that ``test/mean`` averages."""
        return [
            name
            for name in names
            if self.evaluation_kind(split, name) == "test" and name not in self.mean_excludes
        ]
