"""Honest statistics for the lab notebook: per-seed summaries, paired differences, verdicts.

Every function takes the engine's results as they come: one row per epoch per run, with the
run's configuration in its columns (see :func:`rebel.train.run`). A *setting* is the set of
configuration columns other than ``seed``; the seed is the replicate unit. Runs with the same
seed share the initial weights, the data order and the dropout masks, so two settings can be
compared seed by seed (:func:`paired_difference`).

The rules the book follows, and this module enforces:

- an interval is a t-interval over seeds; one run has no interval (``nan``), never a made-up
  one;
- a group that holds two runs with the same seed means the grouping missed a column that
  varies, and is an error rather than a silent average over different settings;
- a claim is *supported* only when its interval says so (:func:`verdict_difference`,
  :func:`verdict_equivalence`); anything from fewer than two seeds is *inconclusive*.

    >>> from rebel import analysis
    >>> analysis.summarize(frame, "test_acc", by=["rebel_frac"])  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

# Columns the engine writes for every run: its configuration, then the per-epoch metrics.
CONFIG_COLUMNS = (
    "dataset",
    "model",
    "train_subset",
    "augment",
    "epochs",
    "batch_size",
    "seed",
    "lr",
    "weight_decay",
    "rebel_frac",
    "rebel_frac_end",
    "anneal",
    "mask",
    "flip",
    "perturbation",
    "grad_noise",
    "grad_noise_decay",
    "device",
    "eval_batch_size",
    "label",
)
METRIC_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc", "seconds")
RUN_KEY = "run_key"
REPLICATE = "seed"
STATUS_OK = "ok"
STATUS_DIVERGED = "diverged"

DEFAULT_BY = ("rebel_frac",)
DEFAULT_CONFIDENCE = 0.95

VERDICT_SUPPORTED = "supported"
VERDICT_NOT_SUPPORTED = "not supported"
VERDICT_INCONCLUSIVE = "inconclusive"
VERDICTS = (VERDICT_SUPPORTED, VERDICT_NOT_SUPPORTED, VERDICT_INCONCLUSIVE)

# A difference needs at least two pairs before its spread, and so its interval, exists.
MIN_REPLICATES_FOR_INTERVAL = 2


# ---------------------------------------------------------------------------------------------
# Input checks and grouping


def _as_list(by: str | Iterable[str]) -> list[str]:
    return [by] if isinstance(by, str) else list(by)


def require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise KeyError(
            f"{what} needs column(s) {missing}, which the frame lacks; "
            f"it has: {', '.join(map(str, frame.columns))}"
        )


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")


def _check_fraction(p: float, name: str = "p") -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {p!r}")


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds, so messages read "0" not "np.int64(0)"."""
    return value.item() if isinstance(value, np.generic) else value


def _groups(frame: pd.DataFrame, by: list[str]):
    """Iterate ``(key_dict, group)`` over the settings in ``by``; ``None`` values form a group."""
    if not by:
        yield {}, frame
        return
    for key, group in frame.groupby(by, dropna=False, sort=True):
        yield dict(zip(by, map(_plain, key), strict=True)), group


def check_one_run_per_seed(runs: pd.DataFrame, by: list[str], what: str) -> None:
    """Raise when a setting holds two runs with the same seed.

    That happens when a configuration column outside ``by`` varies (say ``mask`` while grouping
    by ``rebel_frac``): averaging such runs would mix two settings and count each seed twice.
    """
    for key, group in _groups(runs, by):
        duplicated = group[REPLICATE][group[REPLICATE].duplicated()]
        if duplicated.empty:
            continue
        raise ValueError(
            f"{what}: setting {key or '(all runs)'} has several runs with seed "
            f"{_plain(duplicated.iloc[0])!r}; {_what_varies(group, by, 'add them to `by`')}"
        )


def _what_varies(runs: pd.DataFrame, fixed: Iterable[str], remedy: str) -> str:
    """Say which configuration columns, besides ``fixed`` and the seed, vary in ``runs``."""
    fixed = {*fixed, REPLICATE}
    varying = [
        column
        for column in CONFIG_COLUMNS
        if column in runs.columns
        and column not in fixed
        and runs[column].nunique(dropna=False) > 1
    ]
    if not varying:
        return "no configuration column differs, so the same run may be in the frame twice"
    return f"column(s) {varying} vary; {remedy} or filter the frame first"


def select(frame: pd.DataFrame, where: Mapping[str, Any]) -> pd.DataFrame:
    """Rows whose columns equal the values in ``where``.

    ``None`` matches missing values; floats match to 1e-12 so that a fraction computed as
    ``0.1 + 0.2`` finds the runs stored with ``0.3``.
    """
    require_columns(frame, where, "select")
    keep = pd.Series(True, index=frame.index)
    for column, value in where.items():
        values = frame[column]
        if value is None:
            keep &= values.isna()
        elif isinstance(value, float) and pd.api.types.is_numeric_dtype(values):
            keep &= np.isclose(values.astype(float), value, rtol=0.0, atol=1e-12)
        else:
            keep &= values == value
    return frame[keep]


# ---------------------------------------------------------------------------------------------
# Per-run reductions


def final_epoch(frame: pd.DataFrame) -> pd.DataFrame:
    """The last row of each run (by ``run_key``), with every column kept.

    For a diverged run that is the epoch it diverged in, so ``status`` says ``diverged`` and
    the run still counts: dropping it would flatter the setting that diverged.
    """
    require_columns(frame, (RUN_KEY, "epoch"), "final_epoch")
    repeated = frame.duplicated([RUN_KEY, "epoch"])
    if repeated.any():
        first = frame.loc[repeated, [RUN_KEY, "epoch"]].iloc[0].to_dict()
        raise ValueError(
            f"run {first[RUN_KEY]!r} has epoch {first['epoch']} more than once; "
            "was the same run concatenated twice?"
        )
    ordered = frame.sort_values([RUN_KEY, "epoch"], kind="stable")
    return ordered.groupby(RUN_KEY, sort=False).tail(1).reset_index(drop=True)


def _per_run(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: per-epoch frames are reduced to their final epoch, others pass."""
    return final_epoch(frame) if "epoch" in frame.columns else frame


# ---------------------------------------------------------------------------------------------
# Means and intervals


def mean_ci(
    values: Iterable[float], confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float, float, int]:
    """Mean and two-sided t-interval over replicates: ``(mean, low, high, n)``.

    ``NaN`` entries are missing measurements and are left out; ``n`` counts what remains.
    Infinite values (the loss of a diverged run) are kept, so the mean says so.
    With one value the interval is ``(nan, nan)``: one run says nothing about the spread
    between runs. With none, everything is ``nan`` and ``n`` is 0.
    """
    _check_confidence(confidence)
    array = np.asarray(values if hasattr(values, "__array__") else list(values), dtype=float)
    array = array[~np.isnan(array)]
    n = int(array.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(array.mean())
    if n < MIN_REPLICATES_FOR_INTERVAL:
        return mean, math.nan, math.nan, n
    half_width = _t_half_width(array, confidence)
    return mean, mean - half_width, mean + half_width, n


def _t_half_width(array: np.ndarray, confidence: float) -> float:
    n = array.size
    standard_error = array.std(ddof=1) / math.sqrt(n)
    return float(stats.t.ppf(0.5 + confidence / 2, df=n - 1) * standard_error)


def summarize(
    frame: pd.DataFrame,
    metric: str = "test_acc",
    by: Sequence[str] = DEFAULT_BY,
    confidence: float = DEFAULT_CONFIDENCE,
) -> pd.DataFrame:
    """Final-epoch ``metric`` per setting, as a mean over seeds with a t-interval.

    Columns: ``by...``, ``mean``, ``ci_low``, ``ci_high``, ``n_seeds`` (runs with a measured
    value), ``n_diverged`` (runs whose last epoch diverged; their final value is included as
    measured, which for a loss is usually not finite).
    """
    by = _as_list(by)
    runs = _per_run(frame)
    require_columns(runs, (*by, metric, REPLICATE), "summarize")
    check_one_run_per_seed(runs, by, "summarize")
    rows = []
    for key, group in _groups(runs, by):
        mean, low, high, n = mean_ci(group[metric], confidence)
        diverged = int((group["status"] == STATUS_DIVERGED).sum()) if "status" in group else 0
        rows.append(
            {
                **key,
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "n_seeds": n,
                "n_diverged": diverged,
            }
        )
    return pd.DataFrame(rows, columns=[*by, "mean", "ci_low", "ci_high", "n_seeds", "n_diverged"])


# ---------------------------------------------------------------------------------------------
# Test-set noise of a single run


def binomial_se(acc, n_test: int):
    """Standard error of an accuracy measured on ``n_test`` images: sqrt(a (1 - a) / n).

    This is the noise from which images happen to be in the test set, for one fixed model. The
    log's 99.24 % vs 99.15 % on 10,000 images differ by 0.09 points, about one such error.
    """
    if not isinstance(n_test, (int, np.integer)) or n_test < 1:
        raise ValueError(f"n_test must be a positive number of images, got {n_test!r}")
    acc = np.asarray(acc, dtype=float)
    if np.any((acc < 0) | (acc > 1)):
        raise ValueError(f"accuracy must be a fraction in [0, 1], got {acc!r}")
    se = np.sqrt(acc * (1.0 - acc) / n_test)
    return float(se) if se.ndim == 0 else se


def single_run_difference(
    acc_a: float, acc_b: float, n_test: int, confidence: float = DEFAULT_CONFIDENCE
) -> dict[str, float]:
    """Compare two single runs' accuracies with the test set's binomial noise.

    Returns ``mean`` (``acc_a - acc_b``), ``se`` (sqrt(se_a^2 + se_b^2)), ``z`` (mean / se), a
    normal interval ``ci_low``/``ci_high`` and ``n`` = 1.

    A yardstick, not a test. It ignores seed-to-seed variance (another seed would move both
    numbers), which is usually the larger part of the uncertainty of "does p change accuracy";
    it also treats the two measurements as independent although both models saw the same
    images. So a small ``z`` shows the difference is within test-set noise alone; a large one
    does not show it would survive another seed. :func:`verdict_difference` calls any ``n`` = 1
    result inconclusive for that reason.
    """
    _check_confidence(confidence)
    se = math.hypot(binomial_se(acc_a, n_test), binomial_se(acc_b, n_test))
    difference = acc_a - acc_b
    z = difference / se if se > 0 else math.copysign(math.inf, difference)
    half_width = stats.norm.ppf(0.5 + confidence / 2) * se
    return {
        "mean": difference,
        "se": se,
        "z": z,
        "ci_low": difference - half_width,
        "ci_high": difference + half_width,
        "n": 1,
    }


# ---------------------------------------------------------------------------------------------
# Convergence speed


def epochs_to_threshold_per_run(
    frame: pd.DataFrame, thresholds: Iterable[float], metric: str = "test_acc"
) -> pd.DataFrame:
    """For each run and threshold, the first epoch whose ``metric`` is at least the threshold.

    One row per run and threshold: the run's configuration columns, ``run_key``, ``threshold``,
    ``epoch_reached`` (``NaN`` when the run never got there), ``epochs_run`` (how many epochs
    the run has, so "not reached" can be read as "not within ``epochs_run`` epochs") and
    ``status`` (of the last epoch). There is no ``epoch`` column, so the result can be passed
    to :func:`paired_difference` directly (``metric="epoch_reached"``).
    """
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("thresholds is empty; give at least one, e.g. [0.97, 0.98]")
    require_columns(frame, (RUN_KEY, "epoch", metric), "epochs_to_threshold")
    last = final_epoch(frame).set_index(RUN_KEY, drop=False)
    config = [c for c in CONFIG_COLUMNS if c in frame.columns]
    rows = []
    for run_key, run in frame.sort_values([RUN_KEY, "epoch"]).groupby(RUN_KEY, sort=True):
        info = last.loc[run_key]
        for threshold in thresholds:
            reached = run.loc[run[metric] >= threshold, "epoch"]
            rows.append(
                {
                    **{c: info[c] for c in config},
                    RUN_KEY: info[RUN_KEY],
                    "threshold": threshold,
                    "epoch_reached": float(reached.iloc[0]) if len(reached) else math.nan,
                    "epochs_run": int(run["epoch"].max()),
                    "status": info.get("status", STATUS_OK),
                }
            )
    return pd.DataFrame(rows)


def epochs_to_threshold(
    frame: pd.DataFrame,
    thresholds: Iterable[float],
    metric: str = "test_acc",
    by: Sequence[str] = DEFAULT_BY,
    confidence: float = DEFAULT_CONFIDENCE,
) -> pd.DataFrame:
    """Epochs needed to reach each threshold, per setting, over seeds.

    Columns: ``by...``, ``threshold``, ``seeds`` and ``epochs`` (tuples, in seed order, ``NaN``
    for a seed that did not reach it), ``n_seeds``, ``n_reached``, ``max_epochs`` (the longest
    run of the setting), then ``median``, ``mean``, ``ci_low``, ``ci_high`` over the seeds that
    reached the threshold.

    The summary over reached seeds is biased towards fast runs when some seeds did not reach
    the threshold (the slow ones are censored, not absent); ``n_reached`` is there to say so,
    and :func:`format_threshold_table` prints it.
    """
    by = _as_list(by)
    per_run = epochs_to_threshold_per_run(frame, thresholds, metric)
    require_columns(per_run, (*by, REPLICATE), "epochs_to_threshold")
    check_one_run_per_seed(per_run.drop_duplicates(RUN_KEY), by, "epochs_to_threshold")
    rows = []
    for key, group in _groups(per_run, [*by, "threshold"]):
        group = group.sort_values(REPLICATE)
        epochs = group["epoch_reached"].to_numpy(float)
        reached = epochs[~np.isnan(epochs)]
        mean, low, high, n_reached = mean_ci(reached, confidence)
        rows.append(
            {
                **key,
                "seeds": tuple(group[REPLICATE].tolist()),
                "epochs": tuple(epochs.tolist()),
                "n_seeds": len(group),
                "n_reached": n_reached,
                "max_epochs": int(group["epochs_run"].max()),
                "median": float(np.median(reached)) if n_reached else math.nan,
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows)


def format_threshold(threshold: float) -> str:
    """A threshold given as a fraction, as a column title: 0.97 -> "97 %", 0.975 -> "97.5 %"."""
    # Rounding first hides the binary representation error of e.g. 0.975 * 100.
    return f"{round(threshold * 100, 6):g} %"


def format_threshold_entry(row: Mapping[str, Any], digits: int = 1) -> str:
    """One cell of :func:`format_threshold_table` from a row of :func:`epochs_to_threshold`.

    "4" for one seed; "4.3 [3.8, 4.9]" for the mean and interval over several seeds; a seed
    count of those that did not get there is appended, e.g. "5.0 [4.1, 5.9]; not reached
    (1/4 seeds)", and a setting where none did reads "not reached" or "not reached (3/3 seeds)".
    """
    n_seeds, n_reached = int(row["n_seeds"]), int(row["n_reached"])
    missing = n_seeds - n_reached
    if n_reached == 0:
        return "not reached" if n_seeds == 1 else f"not reached ({n_seeds}/{n_seeds} seeds)"
    if n_reached == 1:
        text = f"{row['mean']:g}"
    else:
        low, high = row["ci_low"], row["ci_high"]
        text = f"{row['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
    if missing:
        text += f"; not reached ({missing}/{n_seeds} seeds)"
    return text


def format_threshold_table(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """A readable grid from :func:`epochs_to_threshold`: rows are settings, columns thresholds.

    The settings (every column before ``threshold``) become the index; column titles read
    "97 %", "97.5 %".
    """
    require_columns(table, ("threshold", "n_seeds", "n_reached", "mean"), "format_threshold")
    by = list(table.columns[: table.columns.get_loc("threshold")])
    cells = table.assign(
        column=table["threshold"].map(format_threshold),
        cell=[format_threshold_entry(row, digits) for _, row in table.iterrows()],
    )
    order = [format_threshold(t) for t in sorted(table["threshold"].unique())]
    grid = cells.pivot(index=by, columns="column", values="cell")
    grid = grid[order]
    grid.columns.name = "threshold"
    return grid


# ---------------------------------------------------------------------------------------------
# Paired comparisons and verdicts


def paired_difference(
    frame: pd.DataFrame,
    metric: str,
    treatment: Mapping[str, Any],
    baseline: Mapping[str, Any],
    pair_on: str = REPLICATE,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Any]:
    """Mean of ``treatment - baseline`` over runs paired by seed, with a t-interval.

    ``treatment`` and ``baseline`` are column -> value filters (see :func:`select`) that must
    pick at most one run per seed each. Per-epoch frames are reduced to each run's final
    epoch; a frame without an ``epoch`` column is taken as one row per run (e.g. from
    :func:`smoothness_per_run` or :func:`epochs_to_threshold_per_run`).

    Pairing is valid because the engine gives runs with the same seed the same initial weights,
    data order and dropout masks, so the seed's luck cancels in the difference.

    Returns ``mean``, ``ci_low``, ``ci_high``, ``n`` (pairs used), ``p_value`` (two-sided
    paired t-test; ``nan`` below two pairs or when every difference is equal), ``sd``,
    ``differences`` (a Series indexed by seed), ``unpaired`` (seeds in only one arm) and
    ``n_dropped`` (pairs left out because a value was ``NaN``, e.g. a threshold not reached).
    """
    runs = _per_run(frame)
    require_columns(runs, (metric, pair_on), "paired_difference")
    arms = {}
    for name, where in (("treatment", treatment), ("baseline", baseline)):
        chosen = select(runs, where)
        if chosen.empty:
            raise ValueError(f"the {name} filter {dict(where)} matches no run")
        repeated = chosen[pair_on][chosen[pair_on].duplicated()]
        if not repeated.empty:
            advice = _what_varies(chosen, where, "add them to it")
            raise ValueError(
                f"the {name} filter {dict(where)} matches several runs with "
                f"{pair_on}={_plain(repeated.iloc[0])!r}; {advice}"
            )
        arms[name] = chosen.set_index(pair_on)[metric].astype(float)
    common = arms["treatment"].index.intersection(arms["baseline"].index).sort_values()
    unpaired = sorted(arms["treatment"].index.symmetric_difference(arms["baseline"].index))
    differences = arms["treatment"].loc[common] - arms["baseline"].loc[common]
    n_dropped = int(differences.isna().sum())
    differences = differences.dropna()
    if differences.empty:
        raise ValueError(
            f"no {pair_on} has a measured {metric!r} in both arms "
            f"(treatment {dict(treatment)}, baseline {dict(baseline)})"
        )
    mean, low, high, n = mean_ci(differences, confidence)
    sd = float(differences.std(ddof=1)) if n >= MIN_REPLICATES_FOR_INTERVAL else math.nan
    if n >= MIN_REPLICATES_FOR_INTERVAL and sd > 0:
        t_statistic = mean / (sd / math.sqrt(n))
        p_value = float(2 * stats.t.sf(abs(t_statistic), df=n - 1))
    else:
        p_value = math.nan
    return {
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "p_value": p_value,
        "sd": sd,
        "differences": differences,
        "unpaired": unpaired,
        "n_dropped": n_dropped,
    }


def _interval(diff: Mapping[str, Any]) -> tuple[float, float] | None:
    """The interval of ``diff``, or None when it cannot back a verdict (fewer than two runs)."""
    low, high, n = float(diff["ci_low"]), float(diff["ci_high"]), int(diff["n"])
    if n < MIN_REPLICATES_FOR_INTERVAL or math.isnan(low) or math.isnan(high):
        return None
    return low, high


def verdict_difference(diff: Mapping[str, Any], direction: str, min_effect: float = 0.0) -> str:
    """Judge a claim that the difference is above (``"greater"``) or below (``"less"``) zero.

    With ``min_effect`` = m >= 0 the claim is "the difference exceeds m in that direction":

    - *supported* when every value in the interval does (``ci_low > m``, or ``ci_high < -m``);
    - *not supported* when none does (``ci_high <= m``, or ``ci_low >= -m``): the data rule
      out an effect of the claimed size and sign;
    - *inconclusive* when the interval straddles m, and always for fewer than two runs.

    ``diff`` is any mapping with ``ci_low``, ``ci_high`` and ``n``, e.g. from
    :func:`paired_difference`.
    """
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    if min_effect < 0:
        raise ValueError(f"min_effect is a size and must be >= 0, got {min_effect!r}")
    interval = _interval(diff)
    if interval is None:
        return VERDICT_INCONCLUSIVE
    # Mirror a claim of "less" onto "greater" so that one rule serves both.
    low, high = interval if direction == "greater" else (-interval[1], -interval[0])
    if low > min_effect:
        return VERDICT_SUPPORTED
    if high <= min_effect:
        return VERDICT_NOT_SUPPORTED
    return VERDICT_INCONCLUSIVE


def verdict_equivalence(diff: Mapping[str, Any], margin: float) -> str:
    """Judge a claim of "no difference" against an equivalence ``margin`` > 0.

    - *supported* when the whole interval lies within ``[-margin, margin]``;
    - *not supported* when the whole interval lies outside it (``ci_low > margin`` or
      ``ci_high < -margin``);
    - *inconclusive* otherwise, and always for fewer than two runs.

    With the usual 95 % interval this is stricter than a two-one-sided-tests check at 5 %,
    which uses a 90 % interval. The margin is the reader's statement of what difference does
    not matter; choose it before looking at the result and print it next to the verdict.
    """
    if not margin > 0:
        raise ValueError(f"margin must be positive, got {margin!r}")
    interval = _interval(diff)
    if interval is None:
        return VERDICT_INCONCLUSIVE
    low, high = interval
    if -margin <= low and high <= margin:
        return VERDICT_SUPPORTED
    if low > margin or high < -margin:
        return VERDICT_NOT_SUPPORTED
    return VERDICT_INCONCLUSIVE


# ---------------------------------------------------------------------------------------------
# Smoothness of curves


def smoothness_per_run(
    frame: pd.DataFrame, metric: str = "test_loss", from_epoch: int = 1
) -> pd.DataFrame:
    """Epoch-to-epoch roughness of ``metric`` for each run: std of its first differences.

    A curve that falls steadily has nearly equal steps and a small value; a curve that jumps
    up and down has a large one. Higher means *less* smooth. Only epochs with status ``ok``
    from ``from_epoch`` on are used; the first epochs' large drops dominate the measure, so a
    chapter about late-training wobble may start later. Fewer than three epochs give ``NaN``
    (two steps are the least a spread needs).

    One row per run: configuration columns, ``run_key``, ``status`` and ``roughness``.
    """
    if from_epoch < 1:
        raise ValueError(f"from_epoch counts from 1, got {from_epoch!r}")
    require_columns(frame, (RUN_KEY, "epoch", metric), "smoothness")
    last = final_epoch(frame).set_index(RUN_KEY)
    config = [c for c in CONFIG_COLUMNS if c in frame.columns]
    used = frame[frame["epoch"] >= from_epoch]
    if "status" in used.columns:
        used = used[used["status"] == STATUS_OK]
    rows = []
    for run_key in last.index:
        values = used.loc[used[RUN_KEY] == run_key].sort_values("epoch")[metric].to_numpy(float)
        steps = np.diff(values)
        roughness = float(steps.std(ddof=1)) if steps.size >= 2 else math.nan
        info = last.loc[run_key]
        rows.append(
            {
                **{c: info[c] for c in config},
                RUN_KEY: run_key,
                "status": info.get("status", STATUS_OK),
                "roughness": roughness,
            }
        )
    return pd.DataFrame(rows)


def smoothness(
    frame: pd.DataFrame,
    metric: str = "test_loss",
    by: Sequence[str] = DEFAULT_BY,
    from_epoch: int = 1,
    confidence: float = DEFAULT_CONFIDENCE,
) -> pd.DataFrame:
    """Roughness of ``metric`` (see :func:`smoothness_per_run`) per setting, over seeds.

    Columns as :func:`summarize`: ``by...``, ``mean``, ``ci_low``, ``ci_high``, ``n_seeds``,
    ``n_diverged``; higher ``mean`` means a less smooth curve.
    """
    per_run = smoothness_per_run(frame, metric, from_epoch)
    return summarize(per_run, "roughness", by, confidence)


# ---------------------------------------------------------------------------------------------
# Formatting for the book


def format_pct(x: float, digits: int = 2) -> str:
    """A fraction as a percentage: 0.9887 -> "98.87 %"; ``NaN`` -> "n/a"."""
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x * 100:.{digits}f} %"


def format_ci(
    mean: float,
    low: float,
    high: float,
    scale: float = 100,
    unit: str = " %",
    digits: int = 2,
    signed: bool = False,
) -> str:
    """A mean and its interval: "98.87 % [98.80, 98.94]", or "98.87 % (1 run)" without one.

    ``scale`` multiplies every number (100 turns fractions into percent); ``signed`` prints a
    leading "+" on positive values, for differences.
    """
    if mean is None or math.isnan(mean):
        return "n/a"
    sign = "+" if signed else ""
    text = f"{mean * scale:{sign}.{digits}f}{unit}"
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{text} (1 run)"
    return f"{text} [{low * scale:{sign}.{digits}f}, {high * scale:{sign}.{digits}f}]"


CLAIM_COLUMNS = ("chapter", "claim", "evidence", "effect", "ci_low", "ci_high", "n", "verdict")
_REQUIRED_CLAIM_KEYS = ("chapter", "claim", "verdict")


def claims_table(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The ledger of claims and verdicts, one row per claim.

    Each row needs ``chapter``, ``claim`` and ``verdict`` (one of :data:`VERDICTS`);
    ``evidence`` (text), ``effect``, ``ci_low``, ``ci_high`` and ``n`` may be left out and are
    then empty. Extra keys (e.g. the claim's ``id``) are kept as columns after these.
    """
    rows = [dict(row) for row in rows]
    for index, row in enumerate(rows):
        missing = [key for key in _REQUIRED_CLAIM_KEYS if key not in row]
        if missing:
            raise KeyError(f"claim row {index} lacks {missing}: {row}")
        if row["verdict"] not in VERDICTS:
            raise ValueError(
                f"claim row {index} has verdict {row['verdict']!r}; use one of {VERDICTS}"
            )
    table = pd.DataFrame(rows)
    for column in CLAIM_COLUMNS:
        if column not in table.columns:
            table[column] = "" if column == "evidence" else math.nan
    extra = [c for c in table.columns if c not in CLAIM_COLUMNS]
    return table[[*CLAIM_COLUMNS, *extra]]


# ---------------------------------------------------------------------------------------------
# Moments of the perturbations ("is it just noise?")
#
# Each perturbation multiplies an element's update by a random factor m, drawn afresh per
# element and step. Its mean scales the expected update (an effective learning-rate change);
# its variance is the noise added on top.


def sign_flip_moments(p: float) -> tuple[float, float]:
    """Mean and variance of the rebel multiplier: -1 with probability p, else +1.

    Mean 1 - 2p, variance 4p(1 - p). At p = 0.5 the expected update is zero.
    """
    _check_fraction(p)
    return 1.0 - 2.0 * p, 4.0 * p * (1.0 - p)


def dropout_moments(p: float) -> tuple[float, float]:
    """Mean and variance of an update-dropout multiplier: 0 with probability p, else 1.

    Mean 1 - p, variance p(1 - p); no rescaling by 1 / (1 - p).
    """
    _check_fraction(p)
    return 1.0 - p, p * (1.0 - p)


def lr_matched_scale(p: float) -> float:
    """Learning-rate factor that gives plain AdamW the rebels' expected update: 1 - 2p.

    A rebel run at learning rate lr moves, on average, like plain AdamW at lr * (1 - 2p); the
    difference between the two is then the noise alone.
    """
    return sign_flip_moments(p)[0]
