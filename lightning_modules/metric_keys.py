"""Every metric tag the suite logs, declared once: the modules and callbacks build their tags
here, and the report, the run summary and the tests parse them here.

Layout (TensorBoard groups tags by their first part):

====================================  ===========================================================
``val/<set>/<metric>``                a validation set (``data.val_shards``)
``test/<set>/<metric>``               a test set (``data.test_shards``), also when it is scored
                                      in the validation loop (``test_in_validation``)
``test/mean/<metric>``                mean over the test sets (less ``data.mean_excludes``): the
                                      run's value in the report's ID / OOD averages
``spectrum/<set>/<metric>``           SVE, LSVR, ... of the features of a set
``train/...``, ``noise/...``,         training loss and accuracies, the realised label noise,
``data/...``                          seen and skipped samples
====================================  ===========================================================

Metrics of an evaluation set: ``acc`` (top-1 accuracy, the one accuracy name everywhere),
``acc_top5``, ``f1`` (macro F1), ``loss`` (cross-entropy); a CLIP model's image-text sets add
``image_to_text_R@k`` and ``text_to_image_R@k``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

EVALUATION_KINDS = ("val", "test")
ACCURACY = "acc"
TOP5 = "acc_top5"
F1 = "f1"
LOSS = "loss"
MEAN_SET = "mean"  # test/mean/<metric>
SPECTRUM = "spectrum"
PAPER_SPECTRUM = ("sve", "lsvr")  # the paper's two spectrum metrics; the rest stay in TensorBoard


def evaluation_tag(kind: str, set_name: str, metric: str) -> str:
    """``<kind>/<set>/<metric>``, kind ``val`` or ``test``."""
    return f"{kind}/{set_name}/{metric}"


def spectrum_tag(set_name: str, metric: str) -> str:
    return f"{SPECTRUM}/{set_name}/{metric}"


def parse_spectrum_tag(tag: str) -> tuple[str, str] | None:
    """``(set, metric)`` of a spectrum tag; None for any other tag."""
    parts = tag.split("/")
    if len(parts) == 3 and parts[0] == SPECTRUM:
        return parts[1], parts[2]
    return None


def parse_evaluation_tag(tag: str) -> tuple[str, str, str] | None:
    """``(kind, set, metric)`` of an evaluation tag; None for any other tag."""
    parts = tag.split("/")
    if len(parts) == 3 and parts[0] in EVALUATION_KINDS:
        return parts[0], parts[1], parts[2]
    return None


def evaluation_sets(tags: Iterable[str], metric: str = ACCURACY) -> list[str]:
    """The sets with ``metric`` among ``tags``, in order (the mean left out)."""
    sets = []
    for tag in tags:
        parsed = parse_evaluation_tag(tag)
        if parsed and parsed[2] == metric and parsed[1] != MEAN_SET and parsed[1] not in sets:
            sets.append(parsed[1])
    return sets


def set_metric(metrics: Mapping[str, float], set_name: str, metric: str) -> float | None:
    """A set's metric whichever kind logged it (``test/`` now, ``val/`` in runs older than
    the split of the two)."""
    for kind in ("test", "val"):
        value = metrics.get(evaluation_tag(kind, set_name, metric))
        if value is not None:
            return value
    return None
