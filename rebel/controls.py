"""Is it just noise? Rebels against controls that share their mean, their noise, or neither.

With a resampled mask, a rebel multiplies an element's AdamW update by s, with s = -1 with
probability p and +1 otherwise: mean 1 - 2p, variance 4p(1 - p). The controls separate the
two parts (each is a ``perturbation`` of :class:`rebel.RebelAdamW` at the same ``rebel_frac``):

- ``scale``: every update multiplied by exactly 1 - 2p. This is AdamW with its learning rate
  scaled by 1 - 2p (weight decay is part of the update, so it scales too): the mean alone.
- ``gaussian``: multiplier drawn from Normal(1 - 2p, 4p(1 - p)): the same mean and variance as
  the sign flip, without its two-point structure.
- ``zero``: update dropout, the multiplier is 0 with probability p: noise of another kind.
- additive annealed gradient noise (``grad_noise``), the classic noise-injection baseline.

Comparisons are paired by seed, with t-intervals, and Holm-adjusted p-values across the
family of comparisons made on one dataset, since with dozens of comparisons some intervals
exclude zero by chance alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rebel import analysis

PERTURBATION_NAMES = {
    "sign": "rebels (sign flip)",
    "scale": "learning rate × (1 − 2p)",
    "gaussian": "Gaussian, same mean and variance",
    "zero": "update dropout",
}
CONTROLS = ("scale", "gaussian", "zero")
# Two settings count as equivalent when the interval of their paired difference lies within
# half a percentage point of test accuracy (the margin the claims ledger uses too).
EQUIVALENCE_MARGIN = 0.005


def with_shared_baseline(frame: pd.DataFrame, perturbations: list[str]) -> pd.DataFrame:
    """Copy the p = 0 runs under every perturbation, so each curve starts at plain AdamW.

    At p = 0 every perturbation is the identity, so the chapter trains that point once.
    """
    base = frame[(frame["rebel_frac"] == 0) & (frame["grad_noise"] == 0)]
    others = frame[(frame["rebel_frac"] > 0) & (frame["grad_noise"] == 0)]
    # Each copy is its own "run" for plotting: give it a distinct key.
    copies = [
        base.assign(perturbation=name, run_key=base["run_key"] + f":{name}")
        for name in perturbations
    ]
    return pd.concat([*copies, others], ignore_index=True)


def holm(p_values: pd.Series) -> pd.Series:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN)."""
    valid = p_values.dropna().sort_values()
    m = len(valid)
    adjusted = (valid * np.arange(m, 0, -1)).cummax().clip(upper=1.0)
    return adjusted.reindex(p_values.index)


def comparisons(frame: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """Rebels at each p > 0 against plain AdamW and against each control at the same p.

    One row per (p, comparison): paired mean difference (rebels minus the other), interval,
    number of seeds, raw and Holm-adjusted p-value.
    """
    rows = []
    noise_free = frame[frame["grad_noise"] == 0]
    fracs = sorted(p for p in noise_free["rebel_frac"].unique() if p > 0)
    rebels = {"perturbation": "sign"}
    for p in fracs:
        against = [("plain AdamW (p = 0)", {"rebel_frac": 0.0, "perturbation": "sign"})]
        against += [
            (PERTURBATION_NAMES[c], {"rebel_frac": p, "perturbation": c})
            for c in CONTROLS
            if ((noise_free["perturbation"] == c) & (noise_free["rebel_frac"] == p)).any()
        ]
        for name, baseline in against:
            diff = analysis.paired_difference(
                noise_free, metric, {**rebels, "rebel_frac": p}, baseline
            )
            rows.append(
                {
                    "rebel_frac": p,
                    "rebels minus": name,
                    "mean": diff["mean"],
                    "ci_low": diff["ci_low"],
                    "ci_high": diff["ci_high"],
                    "n": diff["n"],
                    "p_value": diff["p_value"],
                }
            )
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = holm(table["p_value"])
    return table


def grad_noise_comparisons(frame: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """Each gradient-noise level against plain AdamW, paired by seed."""
    rows = []
    for eta in sorted(e for e in frame["grad_noise"].unique() if e > 0):
        diff = analysis.paired_difference(
            frame,
            metric,
            {"grad_noise": eta, "rebel_frac": 0.0},
            {"grad_noise": 0.0, "rebel_frac": 0.0, "perturbation": "sign"},
        )
        rows.append(
            {
                "grad_noise": eta,
                "mean": diff["mean"],
                "ci_low": diff["ci_low"],
                "ci_high": diff["ci_high"],
                "n": diff["n"],
                "p_value": diff["p_value"],
            }
        )
    return pd.DataFrame(rows)


def comparison_table(table: pd.DataFrame) -> pd.DataFrame:
    """A readable version of :func:`comparisons` (differences in percentage points)."""
    shown = pd.DataFrame(
        {
            "rebel fraction": table["rebel_frac"].map(lambda p: f"{p:.0%}"),
            "rebels minus": table["rebels minus"],
            "difference in test accuracy (pts)": [
                analysis.format_ci(r.mean, r.ci_low, r.ci_high, unit="", signed=True)
                for r in table.itertuples()
            ],
            "seeds": table["n"],
            "p (Holm)": table["p_holm"].map(lambda v: "n/a" if pd.isna(v) else f"{v:.3f}"),
        }
    )
    return shown.set_index(["rebel fraction", "rebels minus"])


def answer(table: pd.DataFrame, dataset: str, margin: float = EQUIVALENCE_MARGIN) -> dict:
    """Counts behind the chapter's answer for one dataset, from :func:`comparisons`."""

    def count(name: str, direction: str) -> tuple[int, int]:
        rows = table[table["rebels minus"] == name]
        if direction == "better":
            hits = (rows["ci_low"] > 0) & (rows["p_holm"] < 0.05)
        elif direction == "worse":
            hits = (rows["ci_high"] < 0) & (rows["p_holm"] < 0.05)
        else:
            hits = (rows["ci_low"] >= -margin) & (rows["ci_high"] <= margin) & (rows["n"] >= 2)
        return int(hits.sum()), len(rows)

    result = {"dataset": dataset}
    for key, name in (
        ("plain", "plain AdamW (p = 0)"),
        ("scale", PERTURBATION_NAMES["scale"]),
        ("gaussian", PERTURBATION_NAMES["gaussian"]),
        ("zero", PERTURBATION_NAMES["zero"]),
    ):
        result[f"better_than_{key}"], result[f"n_{key}"] = count(name, "better")
        result[f"worse_than_{key}"], _ = count(name, "worse")
        result[f"equivalent_to_{key}"], _ = count(name, "equivalent")
    result["margin"] = margin
    return result


def answer_markdown(result: dict) -> str:
    def line(key: str, what: str) -> str:
        better, worse, n = (
            result[f"better_than_{key}"],
            result[f"worse_than_{key}"],
            result[f"n_{key}"],
        )
        same = result[f"equivalent_to_{key}"]
        return (
            f"- Against {what}: rebels are clearly better at {better} of {n} fractions, "
            f"clearly worse at {worse}, and equivalent (interval within "
            f"±{result['margin'] * 100:.1f} pts) at {same}."
        )

    return "\n".join(
        [
            f"On **{result['dataset']}**:",
            line("plain", "plain AdamW"),
            line("scale", "AdamW with the learning rate scaled by 1 − 2p (the mean effect)"),
            line("gaussian", "Gaussian noise with the same mean and variance"),
            line("zero", "update dropout at the same rate"),
            "",
            "*Clearly* means the 95 % interval excludes zero and the Holm-adjusted p-value is "
            "below 0.05.",
        ]
    )


def grad_noise_table(table: pd.DataFrame) -> pd.DataFrame:
    """A readable version of :func:`grad_noise_comparisons`."""
    shown = pd.DataFrame(
        {
            "gradient noise η": table["grad_noise"].map(lambda e: f"{e:g}"),
            "minus plain AdamW (pts)": [
                analysis.format_ci(r.mean, r.ci_low, r.ci_high, unit="", signed=True)
                for r in table.itertuples()
            ],
            "seeds": table["n"],
        }
    )
    return shown.set_index("gradient noise η")


def check_just_noise(frame: pd.DataFrame, margin: float = EQUIVALENCE_MARGIN) -> tuple[str, str]:
    """Verdict and evidence for the log's closing claim, over every dataset in ``frame``.

    The claim has two parts: rebels help generalisation, and they do so only as noise.

    - *not supported* when rebels clearly beat plain AdamW at no fraction on any dataset and
      are clearly worse at some (there is no benefit to explain), or when somewhere they
      clearly beat both the learning-rate-matched and the noise-matched control (the sign
      structure itself would matter);
    - *supported* when they clearly beat plain AdamW somewhere and are equivalent (within
      ``margin``) to the noise-matched control at every fraction;
    - *inconclusive* otherwise.
    """
    evidence, helps, hurts, beats_both, all_equivalent = [], False, False, False, True
    for dataset, rows in frame.groupby("dataset"):
        table = comparisons(rows)
        result = answer(table, dataset, margin)
        helps |= result["better_than_plain"] > 0
        hurts |= result["worse_than_plain"] > 0
        better = {}
        for name in ("scale", "gaussian"):
            chosen = table[table["rebels minus"] == PERTURBATION_NAMES[name]]
            better[name] = set(
                chosen[(chosen["ci_low"] > 0) & (chosen["p_holm"] < 0.05)].rebel_frac
            )
        beats_both |= bool(better["scale"] & better["gaussian"])
        all_equivalent &= result["equivalent_to_gaussian"] == result["n_gaussian"]
        evidence.append(
            f"{dataset}: rebels clearly beat plain AdamW at {result['better_than_plain']} of "
            f"{result['n_plain']} fractions and are clearly worse at "
            f"{result['worse_than_plain']}; they are equivalent (±{margin * 100:.1f} pts) to "
            f"AdamW at learning rate × (1 − 2p) at {result['equivalent_to_scale']} and to the "
            f"Gaussian control at {result['equivalent_to_gaussian']} of {result['n_scale']}, "
            f"and clearly beat them at {result['better_than_scale']} and "
            f"{result['better_than_gaussian']}"
        )
    if (hurts and not helps) or beats_both:
        verdict = analysis.VERDICT_NOT_SUPPORTED
    elif helps and all_equivalent:
        verdict = analysis.VERDICT_SUPPORTED
    else:
        verdict = analysis.VERDICT_INCONCLUSIVE
    return verdict, "; ".join(evidence)
