"""The research log's claims, each checked against a chapter's results.

Every check turns a sentence of the log into a measured effect with an interval over paired
seeds and a verdict by the rules in :data:`RULES`. The chapters show their own checks; the
TL;DR collects all of them into one ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from rebel import analysis, logdata

# "Nearly identical" in the log: final test accuracies within half a percentage point. The log
# itself calls a 0.3-point gap "nearly identical", and half a point is several binomial
# standard errors on 10,000 test images at MNIST accuracies.
SAME_MARGIN = 0.005
# "Similar test loss" in the log: the two runs ended 0.04 nats apart; a margin of 0.05 nats.
LOSS_MARGIN = 0.05
# A run has "collapsed" when its final test accuracy is below this (chance is 10 %).
COLLAPSE_ACC = 0.5
# "Training loss rises": the last epoch's training loss above the run's lowest by this factor.
RISE_FACTOR = 1.05

RULES = f"""
- **Differences** (one setting better, slower, worse than another) are measured between runs
  that share a seed, so the two runs start from the same weights and see the same data in the
  same order. The effect is the mean paired difference, with a 95 % t-interval over seeds.
  A claim is *supported* when the whole interval lies on the claimed side of zero, *not
  supported* when the whole interval lies on the other side, and *inconclusive* otherwise,
  which includes every comparison made from a single seed.
- **Sameness** ("nearly identical", "no slowdown") is checked as equivalence: *supported* when
  the interval lies within ±{SAME_MARGIN * 100:.1f} percentage points of test accuracy (or the
  stated margin), *not supported* when it lies entirely outside, else *inconclusive*.
- **Thresholds** ("collapses", "never reaches") are checked on every seed: *supported* when
  all seeds agree with the claim, *not supported* when none do, *inconclusive* when they
  split. A collapsed run ends below {COLLAPSE_ACC:.0%} test accuracy; a rising training loss
  ends at least {RISE_FACTOR - 1:.0%} above its lowest epoch.
- Epochs to a threshold that a run never reached count as one epoch past the end of the run
  (a lower bound), and the evidence says how many runs did not reach it.
"""


# --- per-run values ------------------------------------------------------------------------


def _select(frame: pd.DataFrame, **filters) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for column, value in filters.items():
        mask &= (frame[column] == value).to_numpy()
    return frame[mask]


def per_seed(frame: pd.DataFrame, value: Callable[[pd.DataFrame], float], **filters) -> pd.Series:
    """One number per seed from the epoch rows of each matching run."""
    rows = _select(frame, **filters)
    return rows.groupby("seed").apply(value, include_groups=False).astype(float)


def final(metric: str) -> Callable[[pd.DataFrame], float]:
    return lambda run: float(run.sort_values("epoch")[metric].iloc[-1])


def first_epoch_reaching(threshold: float, metric: str = "test_acc"):
    """The first epoch at which ``metric`` reached ``threshold``; past-the-end if never."""

    def value(run: pd.DataFrame) -> float:
        reached = run[run[metric] >= threshold]
        if len(reached):
            return float(reached["epoch"].min())
        return float(run["epoch"].max() + 1)

    return value


def reached(threshold: float, metric: str = "test_acc"):
    return lambda run: float((run[metric] >= threshold).any())


def mean_train_loss(run: pd.DataFrame) -> float:
    return float(run["train_loss"].mean())


def loss_roughness(run: pd.DataFrame) -> float:
    """Standard deviation of the epoch-to-epoch changes of the test loss."""
    return float(run.sort_values("epoch")["test_loss"].diff().dropna().std())


def paired(treatment: pd.Series, baseline: pd.Series) -> dict:
    """Mean paired difference treatment - baseline over shared seeds, with a 95 % interval."""
    both = pd.concat({"t": treatment, "b": baseline}, axis=1).dropna()
    mean, low, high, n = analysis.mean_ci((both["t"] - both["b"]).to_numpy())
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": n}


# --- verdicts ------------------------------------------------------------------------------


def all_seeds_verdict(flags: pd.Series) -> str:
    if len(flags) == 0:
        return "inconclusive"
    if flags.all():
        return "supported"
    return "not supported" if not flags.any() else "inconclusive"


def _claim_text(claim_id: str) -> str:
    for claim in logdata.LOG_CLAIMS:
        if claim["id"] == claim_id:
            return claim["claim"]
    raise KeyError(f"no claim {claim_id!r} in rebel.logdata.LOG_CLAIMS")


def _row(claim_id, chapter, evidence, verdict, diff=None, unit="pts", scale=100.0) -> dict:
    diff = diff or {"mean": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": 0}
    return {
        "id": claim_id,
        "chapter": chapter,
        "claim": _claim_text(claim_id),
        "evidence": evidence,
        "effect": diff["mean"] * scale,
        "ci_low": diff["ci_low"] * scale,
        "ci_high": diff["ci_high"] * scale,
        "unit": unit,
        "n": diff["n"],
        "verdict": verdict,
    }


def _loss_row(
    claim_id: str, chapter: str, what: str, diff: dict, margin: float, margin_text: str
) -> dict:
    """A claim that a loss did not change: equivalence of ``diff`` (nats) within ``margin``."""
    return _row(
        claim_id,
        chapter,
        f"{what}: " + _fmt(diff, scale=1.0, unit=" nats") + f"; margin ±{margin_text}",
        analysis.verdict_equivalence(diff, margin),
        diff,
        unit="nats",
        scale=1.0,
    )


def _slower_row(claim_id: str, chapter: str, what: str, diff: dict, note: str) -> dict:
    """A claim that rebels need more epochs to a threshold: ``diff`` greater than zero."""
    return _row(
        claim_id,
        chapter,
        f"{what}: " + _fmt(diff, scale=1.0, unit=" epochs") + note,
        analysis.verdict_difference(diff, "greater"),
        diff,
        unit="epochs",
        scale=1.0,
    )


def _fmt(diff: dict, scale=100.0, unit=" pts") -> str:
    if diff["n"] >= 2 and np.isfinite(diff["ci_low"]):
        return (
            f"{diff['mean'] * scale:+.2f}{unit} [{diff['ci_low'] * scale:+.2f}, "
            f"{diff['ci_high'] * scale:+.2f}] over {diff['n']} seeds"
        )
    return f"{diff['mean'] * scale:+.2f}{unit} from {diff['n']} seed(s): no interval"


def _largest(frame: pd.DataFrame, **filters) -> float:
    return float(_select(frame, **filters)["rebel_frac"].max())


# --- the chapters --------------------------------------------------------------------------


def check_v1(frame: pd.DataFrame) -> list[dict]:
    chapter = "v1_random_mask"
    top = _largest(frame)
    base_acc = per_seed(frame, final("test_acc"), rebel_frac=0.0)
    top_acc = per_seed(frame, final("test_acc"), rebel_frac=top)
    diff = paired(top_acc, base_acc)
    rows = [
        _row(
            "v1-trains-at-20",
            chapter,
            f"final test accuracy, p = {top:.0%} minus p = 0: {_fmt(diff)}; "
            f"equivalence margin ±{SAME_MARGIN * 100:.1f} pts",
            analysis.verdict_equivalence(diff, SAME_MARGIN),
            diff,
        ),
        _row(
            "v1-20-best",
            chapter,
            f"final test accuracy, p = {top:.0%} minus p = 0: {_fmt(diff)}",
            analysis.verdict_difference(diff, "greater"),
            diff,
        ),
    ]
    rough_base = per_seed(frame, loss_roughness, rebel_frac=0.0)
    rough_rebel = (
        _select(frame, **{})
        .query("rebel_frac > 0")
        .groupby("seed")
        .apply(
            lambda rows: rows.groupby("rebel_frac").apply(loss_roughness).mean(),
            include_groups=False,
        )
        .astype(float)
    )
    rough = paired(rough_rebel, rough_base)
    rows.append(
        _row(
            "v1-smoother-test-loss",
            chapter,
            "std of epoch-to-epoch test-loss changes, rebels (mean over p > 0) minus p = 0: "
            + _fmt(rough, scale=1.0, unit=" nats"),
            analysis.verdict_difference(rough, "less"),
            rough,
            unit="nats",
            scale=1.0,
        )
    )
    base_loss = per_seed(frame, mean_train_loss, rebel_frac=0.0)
    top_loss = per_seed(frame, mean_train_loss, rebel_frac=top)
    loss_diff = paired(top_loss, base_loss)
    margin = 0.1 * float(base_loss.mean())
    rows.append(
        _loss_row(
            "v1-no-slowdown",
            chapter,
            f"training loss averaged over epochs, p = {top:.0%} minus p = 0",
            loss_diff,
            margin,
            f"{margin:.3f} nats (10 % of the baseline's)",
        )
    )
    return rows


def _epochs_diff(frame, threshold, p, **filters) -> tuple[dict, str]:
    base = per_seed(frame, first_epoch_reaching(threshold), rebel_frac=0.0, **filters)
    treat = per_seed(frame, first_epoch_reaching(threshold), rebel_frac=p, **filters)
    missed = int(
        (1 - per_seed(frame, reached(threshold), rebel_frac=p, **filters)).sum()
        + (1 - per_seed(frame, reached(threshold), rebel_frac=0.0, **filters)).sum()
    )
    note = f"; {missed} run(s) never reached it" if missed else ""
    return paired(treat, base), note


def check_v2(frame: pd.DataFrame, thresholds: list[float]) -> list[dict]:
    chapter = "v2_tinycnn"
    top = _largest(frame)
    highest = max(thresholds)
    rows = []

    slow, note = _epochs_diff(frame, highest, top)
    base_epochs = per_seed(frame, first_epoch_reaching(highest), rebel_frac=0.0)
    rows.append(
        _row(
            "v2-30-too-slow",
            chapter,
            f"epochs to {highest:.1%} test accuracy, p = {top:.0%} minus p = 0: "
            + _fmt(slow, scale=1.0, unit=" epochs")
            + f" (baseline {base_epochs.mean():.1f} epochs){note}",
            analysis.verdict_difference(slow, "greater"),
            slow,
            unit="epochs",
            scale=1.0,
        )
    )
    acc = {
        p: per_seed(frame, final("test_acc"), rebel_frac=p) for p in frame["rebel_frac"].unique()
    }
    means = {p: float(v.mean()) for p, v in acc.items()}
    best = max(means, key=means.get)
    five = paired(acc.get(0.05, pd.Series(dtype=float)), acc[0.0])
    rows.append(
        _row(
            "v2-5-sweet-spot",
            chapter,
            f"best mean final test accuracy at p = {best:.0%}; p = 5 % minus p = 0: " + _fmt(five),
            analysis.verdict_difference(five, "greater"),
            five,
        )
    )
    worse = paired(acc[top], acc[0.0])
    rows.append(
        _row(
            "v2-30-worse-final",
            chapter,
            f"final test accuracy, p = {top:.0%} minus p = 0: {_fmt(worse)}",
            analysis.verdict_difference(worse, "less"),
            worse,
        )
    )
    sweet = [p for p in (0.05, 0.1) if p in acc]
    best_sweet = max(sweet, key=means.get) if sweet else None
    if best_sweet is not None:
        gain = paired(acc[best_sweet], acc[0.0])
        in_range = best in sweet
        rows.append(
            _row(
                "v2-best-between-5-and-10",
                chapter,
                f"highest mean final test accuracy at p = {best:.0%}; the better of 5 and 10 % "
                f"(p = {best_sweet:.0%}) minus p = 0: {_fmt(gain)}",
                analysis.verdict_difference(gain, "greater")
                if in_range
                else analysis.VERDICT_NOT_SUPPORTED,
                gain,
            )
        )
    alike = {p: paired(acc[p], acc[0.0]) for p in (0.05, 0.1) if p in acc}
    verdicts = [analysis.verdict_equivalence(d, SAME_MARGIN) for d in alike.values()]
    verdict = (
        "supported"
        if verdicts and all(v == "supported" for v in verdicts)
        else "not supported"
        if "not supported" in verdicts
        else "inconclusive"
    )
    rows.append(
        _row(
            "v2-0-10-alike",
            chapter,
            "final test accuracy minus p = 0: "
            + "; ".join(f"p = {p:.0%}: {_fmt(d)}" for p, d in alike.items())
            + f"; margin ±{SAME_MARGIN * 100:.1f} pts",
            verdict,
            alike.get(0.1, alike.get(0.05)),
        )
    )
    if 0.2 in acc:
        middle = sorted(thresholds)[len(thresholds) // 2]
        slower, note = _epochs_diff(frame, middle, 0.2)
        rows.append(
            _slower_row(
                "v2-20-slightly-slower",
                chapter,
                f"epochs to {middle:.1%} test accuracy, p = 20 % minus p = 0",
                slower,
                note,
            )
        )
    train_gap = paired(
        per_seed(frame, final("train_acc"), rebel_frac=top),
        per_seed(frame, final("train_acc"), rebel_frac=0.0),
    )
    rows.append(
        _row(
            "v2-train-gap",
            chapter,
            f"final training accuracy, p = {top:.0%} minus p = 0: {_fmt(train_gap)}",
            analysis.verdict_difference(train_gap, "less"),
            train_gap,
        )
    )
    return rows


def check_v3(frame: pd.DataFrame) -> list[dict]:
    chapter = "v3_fixed_mask"
    fracs = sorted(p for p in frame["rebel_frac"].unique() if p > 0)
    top, low = fracs[-1], fracs[0]
    gap = {
        p: paired(
            per_seed(frame, final("test_acc"), rebel_frac=p, mask="fixed"),
            per_seed(frame, final("test_acc"), rebel_frac=p, mask="resample"),
        )
        for p in fracs
    }
    worse_with_p = paired(
        per_seed(frame, final("test_acc"), rebel_frac=top, mask="fixed")
        - per_seed(frame, final("test_acc"), rebel_frac=top, mask="resample"),
        per_seed(frame, final("test_acc"), rebel_frac=low, mask="fixed")
        - per_seed(frame, final("test_acc"), rebel_frac=low, mask="resample"),
    )
    rows = [
        _row(
            "v3-fixed-worse-with-p",
            chapter,
            "fixed minus random final test accuracy: "
            + "; ".join(f"p = {p:.0%}: {_fmt(d)}" for p, d in gap.items())
            + f". Change of that gap from p = {low:.0%} to {top:.0%}: {_fmt(worse_with_p)}",
            analysis.verdict_difference(worse_with_p, "less"),
            worse_with_p,
        )
    ]
    below = [analysis.verdict_difference(d, "less") for d in gap.values()]
    rows.append(
        _row(
            "v3-randomness-essential",
            chapter,
            f"fixed mask worse than a resampled one (interval below zero) at "
            f"{below.count(analysis.VERDICT_SUPPORTED)} of {len(below)} fractions",
            analysis.VERDICT_SUPPORTED
            if below and all(v == analysis.VERDICT_SUPPORTED for v in below)
            else analysis.VERDICT_NOT_SUPPORTED
            if all(v == analysis.VERDICT_NOT_SUPPORTED for v in below)
            else analysis.VERDICT_INCONCLUSIVE,
            gap[top],
        )
    )
    top_fixed = per_seed(frame, final("test_acc"), rebel_frac=top, mask="fixed")
    rows.append(
        _row(
            "v3-30-collapses",
            chapter,
            f"final test accuracy with a fixed mask at p = {top:.0%}, per seed: "
            + ", ".join(f"{v:.1%}" for v in top_fixed)
            + f" (collapse: below {COLLAPSE_ACC:.0%})",
            all_seeds_verdict(top_fixed < COLLAPSE_ACC),
        )
    )

    def rises(run: pd.DataFrame) -> float:
        losses = run.sort_values("epoch")["train_loss"]
        return float(losses.iloc[-1] > RISE_FACTOR * losses.min())

    rising = per_seed(frame, rises, rebel_frac=top, mask="fixed")
    rows.append(
        _row(
            "v3-loss-rises",
            chapter,
            f"runs with a fixed mask at p = {top:.0%} whose last training loss is "
            f"{RISE_FACTOR - 1:.0%} above their lowest: {int(rising.sum())} of {len(rising)}",
            all_seeds_verdict(rising.astype(bool)),
        )
    )
    ten = 0.1 if 0.1 in fracs else low
    decline = paired(
        per_seed(frame, final("test_acc"), rebel_frac=ten, mask="fixed"),
        per_seed(
            frame,
            lambda run: float(run.sort_values("epoch")["test_acc"].iloc[0]),
            rebel_frac=ten,
            mask="fixed",
        ),
    )
    rows.append(
        _row(
            "v3-10-declines",
            chapter,
            f"fixed mask at p = {ten:.0%}: final minus first-epoch test accuracy: "
            + _fmt(decline),
            analysis.verdict_difference(decline, "less"),
            decline,
        )
    )
    return rows


def check_v4(frame: pd.DataFrame, thresholds: list[float]) -> list[dict]:
    chapter = "v4_cifar10"
    top = _largest(frame)
    diff = paired(
        per_seed(frame, final("test_acc"), rebel_frac=top),
        per_seed(frame, final("test_acc"), rebel_frac=0.0),
    )
    rows = [
        _row(
            "v4-nearly-identical",
            chapter,
            f"final test accuracy, p = {top:.0%} minus p = 0: {_fmt(diff)}; margin "
            f"±{SAME_MARGIN * 100:.1f} pts",
            analysis.verdict_equivalence(diff, SAME_MARGIN),
            diff,
        )
    ]
    seventy = sorted(thresholds)[-2] if len(thresholds) > 1 else thresholds[0]
    slower, note = _epochs_diff(frame, seventy, top)
    rows.append(
        _slower_row(
            "v4-5-slower-to-70",
            chapter,
            f"epochs to {seventy:.0%} test accuracy, p = {top:.0%} minus p = 0",
            slower,
            note,
        )
    )
    highest = max(thresholds)
    never = frame.groupby("run_key").apply(
        lambda run: not (run["test_acc"] >= highest).any(), include_groups=False
    )
    rows.append(
        _row(
            "v4-none-reach-75",
            chapter,
            f"runs that never reached {highest:.0%} test accuracy: {int(never.sum())} of "
            f"{len(never)}",
            all_seeds_verdict(never.astype(bool)),
        )
    )
    fits = paired(
        per_seed(frame, final("train_acc"), rebel_frac=top),
        per_seed(frame, final("train_acc"), rebel_frac=0.0),
    )
    rows.append(
        _row(
            "v4-0-trains-better",
            chapter,
            f"final training accuracy, p = {top:.0%} minus p = 0: {_fmt(fits)}",
            analysis.verdict_difference(fits, "less"),
            fits,
        )
    )
    loss = paired(
        per_seed(frame, final("test_loss"), rebel_frac=top),
        per_seed(frame, final("test_loss"), rebel_frac=0.0),
    )
    rows.append(
        _loss_row(
            "v4-test-loss-similar",
            chapter,
            f"final test loss, p = {top:.0%} minus p = 0",
            loss,
            LOSS_MARGIN,
            f"{LOSS_MARGIN} nats",
        )
    )
    return rows


def check_noise(frame: pd.DataFrame) -> list[dict]:
    from rebel.controls import check_just_noise

    verdict, evidence = check_just_noise(frame)
    return [_row("tldr-just-noise", "noise_controls", evidence, verdict)]


def check(chapter: str, frame: pd.DataFrame, thresholds: list[float] | None = None) -> list[dict]:
    """The claim rows for one chapter's results."""
    if chapter == "v1_random_mask":
        return check_v1(frame)
    if chapter == "v2_tinycnn":
        return check_v2(frame, thresholds or [0.97, 0.975, 0.98, 0.985])
    if chapter == "v3_fixed_mask":
        return check_v3(frame)
    if chapter == "v4_cifar10":
        return check_v4(frame, thresholds or [0.5, 0.6, 0.7, 0.75])
    if chapter == "noise_controls":
        return check_noise(frame)
    raise ValueError(f"no claims to check for chapter {chapter!r}")


def ledger(chapters: list[str], results_dir: str | Path = "results") -> pd.DataFrame:
    """Every chapter's claim rows from its stored results, as one table."""
    from rebel.book import notebook_defaults
    from rebel.report import load_chapter

    rows = []
    for chapter in chapters:
        frame = load_chapter(chapter, results_dir)
        thresholds = frame.attrs["rebel"]["parameters"].get(
            "thresholds", notebook_defaults(chapter).get("thresholds")
        )
        rows.extend(check(chapter, frame, thresholds))
    # Claims no chapter checks are listed too, so the ledger covers the whole log.
    checked = {row["id"] for row in rows}
    for claim in logdata.LOG_CLAIMS:
        if claim["id"] not in checked:
            rows.append(
                {
                    "id": claim["id"],
                    "chapter": claim["chapter"],
                    "claim": claim["claim"],
                    "evidence": f"no check in this book yet (a check would be: {claim['test']})",
                    "verdict": "not tested",
                }
            )
    return pd.DataFrame(rows)
