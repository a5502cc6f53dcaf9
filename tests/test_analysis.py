"""Tests for rebel.analysis, rebel.logdata and rebel.plots.

Every results frame here is SYNTHETIC: built with numpy in the engine's layout (one row per
epoch per run) so that each expected number can be worked out by hand. None of it is a
training result.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from rebel import analysis, logdata, plots  # noqa: E402

LOG_PATH = Path(__file__).resolve().parents[1] / ".." / "shared" / "research-log.md"

# Configuration shared by every synthetic run unless a test overrides it.
BASE_CONFIG = {
    "dataset": "synthetic-mnist",
    "model": "TinyCNN",
    "train_subset": None,
    "augment": False,
    "epochs": 4,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 1e-2,
    "rebel_frac": 0.0,
    "rebel_frac_end": None,
    "anneal": "linear",
    "mask": "resample",
    "flip": "update",
    "perturbation": "sign",
    "grad_noise": 0.0,
    "grad_noise_decay": 0.55,
    "device": "cpu",
    "eval_batch_size": 1000,
    "label": "",
}


def synthetic_run(seed: int, test_acc, status=None, **config) -> pd.DataFrame:
    """One SYNTHETIC run: the given test-accuracy curve, other metrics derived from it."""
    test_acc = np.asarray(test_acc, dtype=float)
    epochs = np.arange(1, len(test_acc) + 1)
    settings = {**BASE_CONFIG, **config, "seed": seed}
    key = "-".join(f"{settings[k]}" for k in ("rebel_frac", "mask", "label", "seed"))
    return pd.DataFrame(
        {
            **{name: [value] * len(epochs) for name, value in settings.items()},
            "epoch": epochs,
            "train_loss": 1.0 / epochs,
            "train_acc": test_acc - 0.01,
            "test_loss": 1.0 - test_acc,
            "test_acc": test_acc,
            "seconds": 1.0,
            "status": status or ["ok"] * len(epochs),
            "run_key": key,
        }
    )


def synthetic_sweep(fracs=(0.0, 0.1), seeds=(0, 1, 2), epochs=4, **config) -> pd.DataFrame:
    """SYNTHETIC sweep: accuracy rises with the epoch, shifts with seed and rebel fraction."""
    runs = []
    for frac in fracs:
        for seed in seeds:
            curve = 0.90 + 0.02 * np.arange(epochs) + 0.001 * seed - 0.01 * frac
            runs.append(synthetic_run(seed, curve, rebel_frac=frac, **config))
    return pd.concat(runs, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# mean_ci, final_epoch, summarize


def test_mean_ci_matches_hand_computed_t_interval():
    mean, low, high, n = analysis.mean_ci([1.0, 2.0, 3.0])
    # sd = 1, so the half-width is t_{0.975, 2} / sqrt(3) = 4.30265 / 1.73205.
    assert (mean, n) == (2.0, 3)
    assert high - mean == pytest.approx(2.4841, abs=1e-4)
    assert mean - low == pytest.approx(2.4841, abs=1e-4)


def test_mean_ci_one_value_has_no_interval_and_nan_is_dropped():
    mean, low, high, n = analysis.mean_ci([0.5, math.nan])
    assert (mean, n) == (0.5, 1)
    assert math.isnan(low) and math.isnan(high)
    assert analysis.mean_ci([])[3] == 0


def test_mean_ci_rejects_a_confidence_outside_zero_one():
    with pytest.raises(ValueError, match="confidence"):
        analysis.mean_ci([1.0, 2.0], confidence=95)


def test_final_epoch_keeps_the_diverged_row():
    ok = synthetic_run(0, [0.5, 0.6, 0.7])
    diverged = synthetic_run(1, [0.5, 0.1], status=["ok", "diverged"])
    last = analysis.final_epoch(pd.concat([ok, diverged]))
    assert last.set_index("seed")["epoch"].to_dict() == {0: 3, 1: 2}
    assert last.set_index("seed")["status"].to_dict() == {0: "ok", 1: "diverged"}


def test_final_epoch_rejects_a_run_counted_twice():
    run = synthetic_run(0, [0.5, 0.6])
    with pytest.raises(ValueError, match="more than once"):
        analysis.final_epoch(pd.concat([run, run]))


def test_summarize_gives_mean_and_interval_over_seeds():
    summary = analysis.summarize(synthetic_sweep(), "test_acc").set_index("rebel_frac")
    # Final accuracy is 0.96 + 0.001 * seed - 0.01 * p: seeds 0, 1, 2 average to + 0.001.
    assert summary.loc[0.0, "mean"] == pytest.approx(0.961)
    assert summary.loc[0.1, "mean"] == pytest.approx(0.960)
    half_width = stats.t.ppf(0.975, 2) * 0.001 / math.sqrt(3)
    assert summary.loc[0.0, "ci_high"] - 0.961 == pytest.approx(half_width)
    assert summary["n_seeds"].tolist() == [3, 3]
    assert summary["n_diverged"].tolist() == [0, 0]


def test_summarize_refuses_to_average_over_a_column_that_varies():
    frame = pd.concat([synthetic_sweep(mask="resample"), synthetic_sweep(mask="fixed")])
    with pytest.raises(ValueError, match="mask"):
        analysis.summarize(frame, "test_acc", by=["rebel_frac"])
    assert len(analysis.summarize(frame, "test_acc", by=["rebel_frac", "mask"])) == 4


# ---------------------------------------------------------------------------------------------
# Test-set noise


def test_binomial_se_of_the_logs_baseline():
    # sqrt(0.9915 * 0.0085 / 10000)
    assert analysis.binomial_se(0.9915, 10_000) == pytest.approx(0.000918, abs=1e-6)
    with pytest.raises(ValueError, match="fraction"):
        analysis.binomial_se(99.15, 10_000)


def test_single_run_difference_of_the_logs_v1_gap():
    result = analysis.single_run_difference(0.9924, 0.9915, 10_000)
    se = math.sqrt(0.9924 * 0.0076 / 1e4 + 0.9915 * 0.0085 / 1e4)
    assert result["mean"] == pytest.approx(0.0009)
    assert result["z"] == pytest.approx(0.0009 / se)
    assert result["z"] < 1  # within test-set noise alone
    assert analysis.verdict_difference(result, "greater") == "inconclusive"


# ---------------------------------------------------------------------------------------------
# Epochs to threshold


def threshold_frame() -> pd.DataFrame:
    """SYNTHETIC curves, p = 0: seed 0 reaches 0.97 at epoch 3, seed 1 at epoch 2, seed 2 at
    epoch 4; only seed 0 reaches 0.98 (epoch 4). One single-seed run at p = 0.3."""
    return pd.concat(
        [
            synthetic_run(0, [0.90, 0.96, 0.97, 0.98]),
            synthetic_run(1, [0.90, 0.975, 0.97, 0.975]),
            synthetic_run(2, [0.90, 0.93, 0.95, 0.97]),
            synthetic_run(0, [0.80, 0.90, 0.95, 0.97], rebel_frac=0.3),
        ],
        ignore_index=True,
    )


def test_epochs_to_threshold_per_run_finds_the_first_epoch_at_or_above():
    per_run = analysis.epochs_to_threshold_per_run(threshold_frame(), [0.97, 0.98])
    base = per_run[per_run["rebel_frac"] == 0.0].set_index(["seed", "threshold"])
    assert base["epoch_reached"].loc[(0, 0.97)] == 3
    assert base["epoch_reached"].loc[(1, 0.97)] == 2
    assert base["epoch_reached"].loc[(0, 0.98)] == 4
    assert math.isnan(base["epoch_reached"].loc[(1, 0.98)])
    assert (per_run["epochs_run"] == 4).all()


def test_epochs_to_threshold_aggregates_over_seeds_that_reached():
    table = analysis.epochs_to_threshold(threshold_frame(), [0.97, 0.98])
    row = table.set_index(["rebel_frac", "threshold"]).loc[(0.0, 0.97)]
    assert row["epochs"] == (3.0, 2.0, 4.0)
    assert (row["n_seeds"], row["n_reached"], row["median"], row["mean"]) == (3, 3, 3.0, 3.0)
    # sd of (3, 2, 4) is 1.
    assert row["ci_high"] - 3.0 == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3))
    row = table.set_index(["rebel_frac", "threshold"]).loc[(0.0, 0.98)]
    assert (row["n_reached"], row["mean"]) == (1, 4.0)


def test_format_threshold_table_renders_each_case():
    table = analysis.epochs_to_threshold(threshold_frame(), [0.97, 0.975, 0.98])
    grid = analysis.format_threshold_table(table)
    assert list(grid.columns) == ["97 %", "97.5 %", "98 %"]
    assert grid.loc[0.0, "97 %"] == "3.0 [0.5, 5.5]"
    assert grid.loc[0.0, "98 %"] == "4; not reached (2/3 seeds)"
    assert grid.loc[0.3, "97 %"] == "4"
    assert grid.loc[0.3, "98 %"] == "not reached"


def test_format_threshold_entry_when_no_seed_reached():
    row = {"n_seeds": 3, "n_reached": 0, "mean": math.nan}
    assert analysis.format_threshold_entry(row) == "not reached (3/3 seeds)"


# ---------------------------------------------------------------------------------------------
# Paired differences and verdicts


def test_paired_difference_is_the_mean_of_per_seed_differences():
    rng = np.random.default_rng(0)  # SYNTHETIC noise per seed
    runs = []
    for seed in range(4):
        base = 0.95 + rng.normal(0, 0.01)
        runs.append(synthetic_run(seed, [0.9, base], rebel_frac=0.0))
        runs.append(synthetic_run(seed, [0.9, base + 0.002 * seed], rebel_frac=0.2))
    frame = pd.concat(runs, ignore_index=True)
    diff = analysis.paired_difference(frame, "test_acc", {"rebel_frac": 0.2}, {"rebel_frac": 0.0})
    # Per-seed differences are 0, 0.002, 0.004, 0.006.
    assert diff["mean"] == pytest.approx(0.003)
    assert diff["n"] == 4
    assert diff["differences"].to_numpy() == pytest.approx([0.0, 0.002, 0.004, 0.006])
    final = analysis.final_epoch(frame).sort_values("seed")
    expected = stats.ttest_rel(
        final.loc[final["rebel_frac"] == 0.2, "test_acc"],
        final.loc[final["rebel_frac"] == 0.0, "test_acc"],
    )
    assert diff["p_value"] == pytest.approx(expected.pvalue)
    assert diff["unpaired"] == [] and diff["n_dropped"] == 0


def test_paired_difference_reports_unpaired_seeds_and_rejects_ambiguous_filters():
    frame = pd.concat([synthetic_sweep(seeds=(0, 1, 2)), synthetic_sweep((0.2,), seeds=(1, 2))])
    diff = analysis.paired_difference(frame, "test_acc", {"rebel_frac": 0.2}, {"rebel_frac": 0.0})
    assert diff["n"] == 2 and diff["unpaired"] == [0]
    both_masks = pd.concat([synthetic_sweep(mask="resample"), synthetic_sweep(mask="fixed")])
    with pytest.raises(ValueError, match="mask"):
        analysis.paired_difference(
            both_masks, "test_acc", {"rebel_frac": 0.1}, {"rebel_frac": 0.0}
        )


def interval(low: float, high: float, n: int = 3) -> dict:
    return {"mean": (low + high) / 2, "ci_low": low, "ci_high": high, "n": n}


@pytest.mark.parametrize(
    ("low", "high", "direction", "min_effect", "expected"),
    [
        (0.1, 0.3, "greater", 0.0, "supported"),
        (-0.3, -0.1, "greater", 0.0, "not supported"),
        (-0.1, 0.3, "greater", 0.0, "inconclusive"),
        (0.1, 0.3, "greater", 0.2, "inconclusive"),
        (0.05, 0.15, "greater", 0.2, "not supported"),
        (-0.3, -0.1, "less", 0.0, "supported"),
        (0.1, 0.3, "less", 0.0, "not supported"),
        (-0.3, 0.1, "less", 0.0, "inconclusive"),
    ],
)
def test_verdict_difference_branches(low, high, direction, min_effect, expected):
    assert analysis.verdict_difference(interval(low, high), direction, min_effect) == expected


def test_verdict_difference_is_inconclusive_from_one_run():
    assert analysis.verdict_difference(interval(0.1, 0.3, n=1), "greater") == "inconclusive"
    with pytest.raises(ValueError, match="direction"):
        analysis.verdict_difference(interval(0.1, 0.3), "bigger")


@pytest.mark.parametrize(
    ("low", "high", "n", "expected"),
    [
        (-0.1, 0.2, 3, "supported"),
        (0.6, 0.9, 3, "not supported"),
        (-0.9, -0.6, 3, "not supported"),
        (-0.1, 0.8, 3, "inconclusive"),
        (-0.1, 0.2, 1, "inconclusive"),
    ],
)
def test_verdict_equivalence_branches(low, high, n, expected):
    assert analysis.verdict_equivalence(interval(low, high, n), margin=0.5) == expected


# ---------------------------------------------------------------------------------------------
# Smoothness


def test_smoothness_is_the_std_of_first_differences():
    run = synthetic_run(0, [0.0, 0.2, 0.1, 0.5])  # test loss 1 - acc: 1.0, 0.8, 0.9, 0.5
    per_run = analysis.smoothness_per_run(run, "test_loss")
    # Steps -0.2, +0.1, -0.4: sum of squares about their mean is 0.21 - 0.25 / 3 = 0.38 / 3.
    assert per_run["roughness"].iloc[0] == pytest.approx(math.sqrt(0.19 / 3))
    later = analysis.smoothness_per_run(run, "test_loss", from_epoch=2)
    assert later["roughness"].iloc[0] == pytest.approx(math.sqrt(0.125))  # steps +0.1, -0.4


def test_smoothness_aggregates_per_setting():
    frame = synthetic_sweep()  # straight lines: every step equal, so roughness 0
    table = analysis.smoothness(frame, "test_loss")
    assert table["mean"].to_numpy() == pytest.approx([0.0, 0.0])
    assert table["n_seeds"].tolist() == [3, 3]


# ---------------------------------------------------------------------------------------------
# Formatting, ledger, moments


def test_formatting():
    assert analysis.format_pct(0.98873) == "98.87 %"
    assert analysis.format_ci(0.9887, 0.9880, 0.9894) == "98.87 % [98.80, 98.94]"
    assert analysis.format_ci(0.9887, math.nan, math.nan) == "98.87 % (1 run)"
    assert analysis.format_ci(0.0009, -0.001, 0.003, signed=True) == "+0.09 % [-0.10, +0.30]"
    assert analysis.format_threshold(0.975) == "97.5 %"


def test_claims_table_orders_columns_and_checks_verdicts():
    table = analysis.claims_table(
        [{"id": "x", "chapter": "v1_random_mask", "claim": "c", "verdict": "inconclusive"}]
    )
    assert list(table.columns) == [*analysis.CLAIM_COLUMNS, "id"]
    assert math.isnan(table.loc[0, "effect"])
    with pytest.raises(ValueError, match="verdict"):
        analysis.claims_table([{"chapter": "c", "claim": "c", "verdict": "maybe"}])


@pytest.mark.parametrize("p", [0.0, 0.05, 0.2, 0.5])
def test_perturbation_moments_match_their_two_point_distributions(p):
    # Sign flip: -1 with probability p, +1 otherwise; dropout: 0 with probability p, else 1.
    flip_mean = p * -1 + (1 - p) * 1
    flip_var = p * (-1 - flip_mean) ** 2 + (1 - p) * (1 - flip_mean) ** 2
    assert analysis.sign_flip_moments(p) == pytest.approx((flip_mean, flip_var))
    drop_mean = 1 - p
    drop_var = p * drop_mean**2 + (1 - p) * (1 - drop_mean) ** 2
    assert analysis.dropout_moments(p) == pytest.approx((drop_mean, drop_var))
    assert analysis.lr_matched_scale(p) == pytest.approx(1 - 2 * p)


def test_moments_reject_a_percentage():
    with pytest.raises(ValueError, match="fraction"):
        analysis.sign_flip_moments(20)


# ---------------------------------------------------------------------------------------------
# The log's tables


def test_log_tables_transcribe_the_log():
    v1 = logdata.v1_final().set_index("rebel_frac")
    assert v1.loc[0.2, "test_acc"] == 0.9924 and v1.loc[0.0, "test_acc"] == 0.9915
    assert logdata.v2_final().set_index("rebel_frac").loc[0.3, "train_acc"] == 0.9437
    v3 = logdata.v3_fixed_vs_random().set_index("rebel_frac")
    assert v3.loc[0.3, "fixed_test"] == 0.3275 and v3.loc[0.1, "fixed_test"] == 0.9625
    assert logdata.v4_final().set_index("rebel_frac").loc[0.05, "test_acc"] == 0.7255


def test_log_threshold_tables_transcribe_the_log():
    v2 = logdata.v2_thresholds().pivot(index="rebel_frac", columns="threshold", values="epoch")
    assert v2.loc[0.3].tolist() == [2, 4, 6, 12]
    assert v2.loc[0.2].tolist() == [2, 3, 5, 8]
    v4 = logdata.v4_thresholds().pivot(index="rebel_frac", columns="threshold", values="epoch")
    assert v4.loc[0.05, 0.7] == 8 and math.isnan(v4.loc[0.0, 0.75])


def test_log_claims_are_complete_and_in_our_own_words():
    ids = [claim["id"] for claim in logdata.LOG_CLAIMS]
    assert len(ids) == len(set(ids))
    chapters = {claim["chapter"] for claim in logdata.LOG_CLAIMS}
    assert chapters == {"v1_random_mask", "v2_tinycnn", "v3_fixed_mask", "v4_cifar10", "tldr"}
    for claim in logdata.LOG_CLAIMS:
        assert {"id", "chapter", "claim", "test"} <= claim.keys()
    if LOG_PATH.is_file():
        log = LOG_PATH.read_text()
        for claim in logdata.LOG_CLAIMS:
            assert claim["claim"] not in log


# ---------------------------------------------------------------------------------------------
# Figures


def test_curves_draw_one_line_and_one_band_per_setting_with_seeds():
    frame = synthetic_sweep(fracs=(0.0, 0.05, 0.2))
    figure = plots.curves(frame)
    assert len(figure.axes) == 4
    for ax in figure.axes:
        assert len(ax.lines) == 3
        assert len(ax.collections) == 3
        assert ax.get_xlabel() == "epoch"
    ylabels = [ax.get_ylabel() for ax in figure.axes]
    assert ylabels[1] == "test loss (cross-entropy, nats)"
    assert ylabels[3] == "test accuracy (%)"
    legend = figure.legends[0]
    assert legend.get_title().get_text() == "rebel fraction"
    assert [t.get_text() for t in legend.get_texts()] == ["p = 0 %", "p = 5 %", "p = 20 %"]
    # Accuracies are drawn in percent: the last epoch of p = 0 averages to 96.1 %.
    assert figure.axes[3].lines[0].get_ydata()[-1] == pytest.approx(96.1)


def test_curves_draw_no_band_for_a_single_seed():
    figure = plots.curves(synthetic_sweep(seeds=(0,)), metrics=("test_acc",))
    assert len(figure.axes) == 1
    assert len(figure.axes[0].lines) == 2 and len(figure.axes[0].collections) == 0


def test_curves_mark_diverged_runs():
    frame = pd.concat(
        [synthetic_sweep(fracs=(0.0,)), synthetic_run(3, [0.5, 0.1], status=["ok", "diverged"])]
    )
    figure = plots.curves(frame, metrics=("test_acc",))
    labels = [line.get_label() for line in figure.axes[0].lines]
    assert labels == ["p = 0 %", "diverged (last epoch)"]


def test_final_bars_overlay_the_log_values():
    log = logdata.v1_final().set_index("rebel_frac")["test_acc"]
    figure = plots.final_bars(synthetic_sweep(fracs=(0.0, 0.1)), log_values=log)
    (ax,) = figure.axes
    log_line = next(line for line in ax.lines if line.get_label() == plots.LOG_LABEL)
    assert log_line.get_ydata().tolist() == pytest.approx([99.15, 99.09, 99.10, 99.24])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "5", "10", "20"]
    assert ax.get_xlabel() == "rebel fraction p (%)"
    assert ax.get_ylabel() == "final test accuracy (%)"
    assert ax.get_legend().get_title().get_text() != ""


def test_sensitivity_draws_one_line_per_method_with_bands_only_from_seeds():
    with_seeds = synthetic_sweep(fracs=(0.0, 0.1, 0.2), label="rebel")
    one_seed = synthetic_sweep(fracs=(0.0, 0.1, 0.2), seeds=(0,), label="lr-matched")
    figure = plots.sensitivity(pd.concat([with_seeds, one_seed]), hue="label")
    (ax,) = figure.axes
    assert [line.get_label() for line in ax.lines] == ["lr-matched", "rebel"]
    assert len(ax.collections) == 1
    assert ax.lines[1].get_xdata().tolist() == pytest.approx([0, 10, 20])
    assert ax.get_legend().get_title().get_text() == "method"
    assert "(%)" in ax.get_xlabel() and "(%)" in ax.get_ylabel()
