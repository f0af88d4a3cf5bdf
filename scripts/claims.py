"""The paper's testable claims, each with a verdict; paired method effects; and which label-free
metric of a backbone predicts its transfer.

Every test reduces each seed to one number (a difference or a slope, computed from that seed's
ID or OOD averages of ``scripts/results.py``), then takes the 95 % Student-t interval of that
number over seeds (``scripts/evidence.py``: the seed is the replicate unit). The verdict is
``reproduced`` when the interval excludes 0 on the side the paper states, ``contradicted`` when
it excludes 0 on the other side, ``inconclusive`` otherwise (and always with one seed).
Accuracies are in percentage points (pp) here. The claims (paper: ICLR 2024 NMTune, the
excerpt's section and figure in brackets):

* ``id_slight_noise_helps`` [Fig. 1, 3; sec. 3 "slight noise (up to 5% or 10%) in the
  pre-training leads to better results"]: per seed, ID accuracy at the slight ratio minus at 0 %,
  for each method whose noise effect the paper describes (LP; LoRA and FT, Fig. 4). The slight
  ratio is whichever of 5 % and 10 % has the higher mean over seeds (a selection on the same
  data: it makes the test lenient, never strict). Expected > 0.
* ``id_heavy_noise_hurts`` [Fig. 1, 3: "then decreases with more noise"]: ID accuracy at the
  heaviest ratio (>= 20 %; the paper's 30 %) minus at the slight ratio. Expected < 0.
* ``ood_falls_with_noise`` [Fig. 1, 3: "the robustness performance constantly decreases"]: the
  least-squares slope of OOD accuracy over all ratios, in pp per +10 % noise. Expected < 0.
* ``id_sve_rises_with_slight_noise`` [Fig. 5, sec. 3 "SVE first slightly improves as the noise
  ratio increases to 5% or 10%"]: LP's ID SVE (the frozen backbone's features) at the slight
  ratio minus at 0 %. Expected > 0.
* ``ood_lsvr_rises_with_noise`` [sec. 3 text: "LSVR monotonically increases as pre-training
  noise increases"]: the slope of LP's OOD LSVR over the ratios, per +10 % noise. Expected > 0.
  The Fig. 5 caption says "the LSVR drops"; by Definition 2.2, LSVR = -log(sigma_1 / sum sigma),
  the text's mechanism ("allocates more singular value to the tail") is an increase, so the test
  follows the text. A slope tests the trend, not strict monotonicity.
* ``nmtune_beats_lp`` / ``nmtune_beats_mlp`` on ID and on OOD [Fig. 7, Table 1]: per seed, the
  mean over ratios of NMTune's minus the other method's accuracy. Expected > 0.
* ``mlp_lsvr_above_lp`` [sec. 4: "MLP tuning usually imposes larger LSVR compared to LP"]: OOD
  LSVR of MLP minus LP, mean over ratios. Expected > 0.
* ``nmtune_lsvr_below_mlp`` [sec. 4: the SVD term "directly encourages the model to have a
  larger maximum singular value"]: OOD LSVR of NMTune minus MLP, mean over ratios. Expected < 0.

A claim whose methods, kinds or ratios the sweep lacks is listed as not testable, with why.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.evidence import Correlation, bootstrap_spearman, slope, t_interval, verdict
from scripts.results import PERCENT, SPECTRAL, PerSeed, averages, write_csv

SLIGHT = (0.05, 0.1)
HEAVY_AT_LEAST = 0.2
NOISE_EFFECT_METHODS = ("lp", "lora", "ft")
CLAIM_COLUMNS = [
    "claim",
    "method",
    "metric",
    "expected",
    "observed",
    "ci_low",
    "ci_high",
    "n",
    "verdict",
]

PerRatio = dict[float, dict[int, float | None]]  # ratio -> seed -> value
Statistic = Callable[[PerRatio], dict[int, float]]  # seed -> the claim's number


class NotTestable(ValueError):
    """The sweep lacks what a claim needs; the message says what."""


def complete(values: PerRatio) -> PerRatio:
    """The table without the seeds that miss a value at some ratio (a run that did not
    succeed): a claim then rests on fewer seeds, which its ``n`` shows, never on fewer ratios."""
    broken = {seed for by_seed in values.values() for seed, v in by_seed.items() if v is None}
    return {
        r: {seed: v for seed, v in by_seed.items() if seed not in broken}
        for r, by_seed in values.items()
    }


def seeds_of(values: PerRatio) -> list[int]:
    """The seeds present at every ratio."""
    sets = [set(s) for s in values.values()]
    return sorted(set.intersection(*sets)) if sets else []


def slight_ratio(values: PerRatio) -> float:
    """The slight-noise ratio (5 % or 10 %) with the higher mean over seeds."""
    present = [r for r in values if any(abs(r - s) < 1e-9 for s in SLIGHT)]
    if not present:
        raise NotTestable("needs a 5 % or 10 % ratio")
    return max(present, key=lambda r: statistics.fmean(values[r].values()))


def clean_ratio(values: PerRatio) -> float:
    if 0.0 not in values:
        raise NotTestable("needs the 0 % ratio")
    return 0.0


def heavy_ratio(values: PerRatio) -> float:
    heavy = [r for r in values if r >= HEAVY_AT_LEAST]
    if not heavy:
        raise NotTestable(f"needs a ratio of {HEAVY_AT_LEAST:.0%} or more")
    return max(heavy)


def difference(
    first: Callable[[PerRatio], float], second: Callable[[PerRatio], float]
) -> Statistic:
    """Per seed: the value at ratio ``first(values)`` minus the value at ``second(values)``."""

    def statistic(values: PerRatio) -> dict[int, float]:
        a, b = first(values), second(values)
        return {seed: values[a][seed] - values[b][seed] for seed in seeds_of(values)}

    return statistic


def trend(values: PerRatio) -> dict[int, float]:
    """Per seed: the least-squares slope over the ratios, per +10 % noise."""
    if len(values) < 3:
        raise NotTestable("needs three or more ratios for a slope")
    ratios = sorted(values)
    return {
        seed: slope(ratios, [values[r][seed] for r in ratios]) * 0.1 for seed in seeds_of(values)
    }


def method_gap(values: PerRatio, other: PerRatio) -> dict[int, float]:
    """Per seed: the mean over the shared ratios of ``values - other``."""
    ratios = sorted(set(values) & set(other))
    if not ratios:
        raise NotTestable("the two methods share no completed ratio")
    seeds = sorted(set(seeds_of({r: values[r] for r in ratios})) & set(seeds_of(other)))
    return {
        seed: statistics.fmean(values[r][seed] - other[r][seed] for r in ratios) for seed in seeds
    }


@dataclass(frozen=True)
class Claim:
    """One claim of the paper as a test on the sweep's averages."""

    name: str
    kind: str
    metric: str
    methods: tuple[str, ...]  # one method (noise effect) or (method, baseline) (a gap)
    expected_sign: int
    statistic: Statistic | None = None  # for a one-method claim
    unit: str = ""

    def per_seed(self, table: PerSeed) -> dict[int, float]:
        missing = [m for m in self.methods if m not in table]
        if missing:
            raise NotTestable(f"needs {self.kind.upper()} runs of method {missing[0]}")
        values = [complete(table[m]) for m in self.methods]
        if not all(seeds_of(v) for v in values):
            raise NotTestable("no seed has every run it needs")
        if len(values) == 2:
            return method_gap(*values)
        assert self.statistic is not None
        return self.statistic(values[0])


def paper_claim_list(methods: set[str]) -> list[Claim]:
    """The claims the report tests, the noise-effect ones for each method the paper uses."""
    claims = []
    for method in [m for m in NOISE_EFFECT_METHODS if m in methods] or ["lp"]:
        claims += [
            Claim(
                "id_slight_noise_helps",
                "id",
                "acc",
                (method,),
                1,
                difference(slight_ratio, clean_ratio),
                "pp, slight minus 0 %",
            ),
            Claim(
                "id_heavy_noise_hurts",
                "id",
                "acc",
                (method,),
                -1,
                difference(heavy_ratio, slight_ratio),
                "pp, heaviest minus slight",
            ),
            Claim("ood_falls_with_noise", "ood", "acc", (method,), -1, trend, "pp per +10 %"),
        ]
    claims += [
        Claim(
            "id_sve_rises_with_slight_noise",
            "id",
            "sve",
            ("lp",),
            1,
            difference(slight_ratio, clean_ratio),
            "slight minus 0 %",
        ),
        Claim("ood_lsvr_rises_with_noise", "ood", "lsvr", ("lp",), 1, trend, "per +10 %"),
    ]
    for kind in ("id", "ood"):
        for baseline in ("lp", "mlp"):
            claims.append(
                Claim(f"nmtune_beats_{baseline}", kind, "acc", ("nmtune", baseline), 1, unit="pp")
            )
    claims += [
        Claim("mlp_lsvr_above_lp", "ood", "lsvr", ("mlp", "lp"), 1),
        Claim("nmtune_lsvr_below_mlp", "ood", "lsvr", ("nmtune", "mlp"), -1),
    ]
    return claims


def evaluate(claim: Claim, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The claim's row of ``claims.csv``; ``verdict`` is ``not testable`` (with ``reason``) when
    the sweep lacks what it needs."""
    scale = 100.0 if claim.metric in PERCENT else 1.0
    row: dict[str, Any] = {
        "claim": claim.name,
        "method": " - ".join(claim.methods),
        "metric": f"{claim.kind.upper()} {claim.metric}"
        + (f" ({claim.unit})" if claim.unit else ""),
        "expected": "> 0" if claim.expected_sign > 0 else "< 0",
    }
    try:
        per_seed = claim.per_seed(averages(rows, claim.kind, claim.metric))
        if not per_seed:
            raise NotTestable("no seed has every run it needs")
    except NotTestable as reason:
        return row | {"verdict": "not testable", "reason": str(reason)}
    estimate = t_interval([v * scale for v in per_seed.values()])
    return row | {
        "observed": estimate.mean,
        "ci_low": estimate.low,
        "ci_high": estimate.high,
        "n": estimate.n,
        "verdict": verdict(estimate, claim.expected_sign),
    }


def paper_claims(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every claim of :func:`paper_claim_list` evaluated on the report's rows."""
    methods = {row["method"] for row in rows}
    return [evaluate(claim, rows) for claim in paper_claim_list(methods)]


def paired_effects(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NMTune minus LP and minus MLP, on the ID and OOD averages of accuracy and F1: per ratio
    (the difference of each seed's runs at that ratio) and over all ratios (each seed's mean
    over ratios), each with its interval over seeds. Fractions, as in ``summary.csv``."""
    effects = []
    for kind in ("id", "ood"):
        for metric in PERCENT:
            table = averages(rows, kind, metric)
            if "nmtune" not in table:
                continue
            for baseline in ("lp", "mlp"):
                if baseline not in table:
                    continue
                ours, theirs = complete(table["nmtune"]), complete(table[baseline])
                shared = sorted(set(ours) & set(theirs))
                units: list[tuple[Any, dict[int, float]]] = [
                    (r, method_gap({r: ours[r]}, {r: theirs[r]})) for r in shared
                ]
                if len(shared) > 1:
                    units.append(("all", method_gap(ours, theirs)))
                for ratio, per_seed in units:
                    if not per_seed:
                        continue
                    estimate = t_interval(list(per_seed.values()))
                    effects.append(
                        {
                            "effect": f"nmtune - {baseline}",
                            "kind": kind,
                            "metric": metric,
                            "noise_ratio": ratio,
                            "mean": estimate.mean,
                            "ci_low": estimate.low,
                            "ci_high": estimate.high,
                            "n": estimate.n,
                        }
                    )
    return effects


CORRELATION_COLUMNS = ["kind", "metric", "accuracy_of", "rho", "ci_low", "ci_high", "n"]


def correlations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Which label-free metric of a backbone predicts its transfer: for each kind, each
    spectral metric of the frozen backbone (LP's features, averaged like the tables) and each
    method's accuracy, Spearman's rho across the backbones of the sweep (one unit per seed and
    ratio) with a 95 % percentile bootstrap interval. Backbones of one seed share an init and a
    data order, so with few seeds the interval is optimistic."""
    found = []
    for kind in ("id", "ood"):
        accuracy = averages(rows, kind, "acc")
        for metric in SPECTRAL:
            backbone = averages(rows, kind, metric).get("lp", {})
            for method, table in accuracy.items():
                pairs = [
                    (value, table[ratio][seed])
                    for ratio, seeds in backbone.items()
                    for seed, value in seeds.items()
                    if value is not None and table.get(ratio, {}).get(seed) is not None
                ]
                if not pairs:
                    continue
                result: Correlation = bootstrap_spearman(*map(list, zip(*pairs, strict=True)))
                found.append(
                    {
                        "kind": kind,
                        "metric": metric,
                        "accuracy_of": method,
                        "rho": result.rho,
                        "ci_low": result.low,
                        "ci_high": result.high,
                        "n": result.n,
                    }
                )
    return found


def format_number(value: float | None, digits: int = 3, scale: float = 1.0) -> str:
    return "–" if value is None else f"{value * scale:+.{digits}f}"


def interval_text(
    low: float | None, high: float | None, digits: int = 3, scale: float = 1.0
) -> str:
    """``[low, high]`` with signs, or ``–`` when there is no interval."""
    if low is None or high is None:
        return "–"
    return f"[{format_number(low, digits, scale)}, {format_number(high, digits, scale)}]"


def claims_markdown(claims: list[dict[str, Any]], seeds: int) -> str:
    """``claims.md``: the verdict table, then the claims the sweep cannot test."""
    lines = [
        "# The paper's claims on this sweep",
        "",
        f"Each number: mean over n seeds (this sweep: {seeds}) of a per-seed difference or "
        "slope; 95 % Student-t interval over seeds. `reproduced`/`contradicted`: the interval "
        "excludes 0 on the paper's side/the other side; `inconclusive`: it includes 0 (or "
        "n < 2). Definitions: the docstring of `scripts/claims.py`.",
        "",
        "| claim | method | metric | expected | observed | 95 % CI | n | verdict |",
        "| --- | --- | --- | :---: | ---: | --- | ---: | --- |",
    ]
    untestable = []
    for claim in claims:
        if claim["verdict"] == "not testable":
            untestable.append(claim)
            continue
        interval = interval_text(claim["ci_low"], claim["ci_high"])
        lines.append(
            f"| {claim['claim']} | {claim['method']} | {claim['metric']} | {claim['expected']} | "
            f"{format_number(claim['observed'])} | {interval} | {claim['n']} | "
            f"**{claim['verdict']}** |"
        )
    if untestable:
        lines += ["", "Not testable by this sweep:", ""]
        lines += [f"- `{c['claim']}` ({c['method']}): {c['reason']}" for c in untestable]
    return "\n".join(lines) + "\n"


def write_claims(rows: list[dict[str, Any]], out: Path, seeds: int) -> list[Path]:
    """``claims.csv`` and ``claims.md`` into ``out``."""
    claims = paper_claims(rows)
    csv_path = write_csv(
        [c for c in claims if c["verdict"] != "not testable"],
        out / "claims.csv",
        CLAIM_COLUMNS,
    )
    (out / "claims.md").write_text(claims_markdown(claims, seeds))
    return [csv_path, out / "claims.md"]
