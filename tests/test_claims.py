"""Claim checks, noise controls and design-question tables, on hand-made frames.

Every frame here is SYNTHETIC: rows shaped like the engine's output with numbers chosen so
that each verdict and each difference is known exactly.
"""

import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest

from rebel import claims, controls, design
from rebel.store import config_key
from rebel.train import RunConfig


def fake_runs(settings, seeds, curve):
    """Rows for each (setting, seed): ``curve(setting, seed)`` gives per-epoch metric dicts."""
    rows = []
    for setting, seed in itertools.product(settings, seeds):
        config = RunConfig(**{"dataset": "synthetic-mnist", **setting, "seed": seed})
        key = config_key(config)
        for epoch, metrics in enumerate(curve(setting, seed), start=1):
            rows.append(
                {
                    **dataclasses.asdict(config),
                    "epoch": epoch,
                    "train_loss": metrics.get("train_loss", 1.0 / epoch),
                    "train_acc": metrics.get("train_acc", 0.9),
                    "test_loss": metrics.get("test_loss", 1.0 / epoch),
                    "test_acc": metrics["test_acc"],
                    "seconds": 1.0,
                    "status": "ok",
                    "run_key": key,
                }
            )
    return pd.DataFrame(rows)


def test_holm_adjustment_matches_hand_computation():
    adjusted = controls.holm(pd.Series([0.01, 0.04, 0.03, np.nan]))
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04; running maximum 0.06.
    assert adjusted.iloc[0] == pytest.approx(0.03)
    assert adjusted.iloc[2] == pytest.approx(0.06)
    assert adjusted.iloc[1] == pytest.approx(0.06)
    assert np.isnan(adjusted.iloc[3])


def noise_frame(rebel_bonus, gaussian_bonus=0.0, seeds=range(6)):
    """Final test accuracy 0.8 + bonus + a seed effect shared by every arm (paired)."""
    settings = [{"model": "Mnist1DNet"}]
    for p in (0.1, 0.3):
        settings += [
            {"model": "Mnist1DNet", "rebel_frac": p, "perturbation": name}
            for name in ("sign", "scale", "gaussian", "zero")
        ]
    settings.append({"model": "Mnist1DNet", "grad_noise": 0.001})

    def curve(setting, seed):
        bonus = {"sign": rebel_bonus, "gaussian": gaussian_bonus}.get(
            setting.get("perturbation"), 0.0
        )
        if "rebel_frac" not in setting:
            bonus = 0.0
        jitter = 0.001 * ((seed * 7 + len(str(setting))) % 3)  # small, not seed-constant
        return [{"test_acc": 0.7}, {"test_acc": 0.8 + 0.01 * seed + bonus + jitter}]

    return fake_runs(settings, list(seeds), curve)


def test_comparisons_are_paired_differences_with_holm_p_values():
    frame = noise_frame(rebel_bonus=0.02)
    table = controls.comparisons(frame)
    assert len(table) == 2 * 4  # two fractions, against plain AdamW and three controls
    against_scale = table[table["rebels minus"] == controls.PERTURBATION_NAMES["scale"]]
    assert against_scale["mean"].to_numpy() == pytest.approx([0.02, 0.02], abs=2e-3)
    valid = table["p_value"].notna()
    assert valid.sum() >= 6
    assert (table.loc[valid, "p_holm"] >= table.loc[valid, "p_value"]).all()


def test_just_noise_verdicts():
    # Rebels and the Gaussian control both 2 pts above plain AdamW and the other controls.
    as_noise = noise_frame(rebel_bonus=0.02, gaussian_bonus=0.02)
    verdict, evidence = controls.check_just_noise(as_noise, margin=0.005)
    assert verdict == "supported" and "Gaussian" in evidence
    # Rebels 3 pts above everything, controls included: the signs themselves would matter.
    assert controls.check_just_noise(noise_frame(rebel_bonus=0.03))[0] == "not supported"
    # Rebels 3 pts below plain AdamW and never above: there is no benefit to explain.
    assert controls.check_just_noise(noise_frame(rebel_bonus=-0.03))[0] == "not supported"
    # Rebels equal to everything: no help, no harm.
    assert controls.check_just_noise(noise_frame(rebel_bonus=0.0))[0] == "inconclusive"


def test_v3_checks_collapse_and_rising_loss():
    settings = [
        {"model": "TinyCNN", "rebel_frac": p, "mask": mask}
        for p in (0.0, 0.1, 0.3)
        for mask in ("resample", "fixed")
    ]

    def curve(setting, seed):
        p, fixed = setting["rebel_frac"], setting["mask"] == "fixed"
        final = 0.98 - (0.7 * p / 0.3 if fixed else 0.0) + 0.001 * seed
        losses = [0.5, 0.3, 0.6] if fixed and p > 0 else [0.5, 0.3, 0.2]
        return [
            {"test_acc": 0.97, "train_loss": losses[0]},
            {"test_acc": 0.975, "train_loss": losses[1]},
            {"test_acc": final, "train_loss": losses[2]},
        ]

    frame = fake_runs(settings, [0, 1, 2], curve)
    rows = {row["id"]: row for row in claims.check("v3_fixed_mask", frame)}
    assert rows["v3-30-collapses"]["verdict"] == "supported"  # 0.28 < 0.5 on every seed
    assert rows["v3-loss-rises"]["verdict"] == "supported"
    assert rows["v3-fixed-worse-with-p"]["verdict"] == "supported"
    assert rows["v3-fixed-worse-with-p"]["effect"] == pytest.approx(-100 * 0.7 * 2 / 3)
    assert rows["v3-10-declines"]["verdict"] == "supported"


def test_single_seed_comparisons_are_never_supported():
    settings = [{"model": "MnistCNN", "rebel_frac": p} for p in (0.0, 0.05, 0.1, 0.2)]

    def curve(setting, seed):
        return [{"test_acc": 0.99 + setting["rebel_frac"] / 100}]

    rows = claims.check("v1_random_mask", fake_runs(settings, [0], curve))
    assert {row["verdict"] for row in rows} == {"inconclusive"}


def test_ledger_lists_every_log_claim(tmp_path, monkeypatch):
    import rebel.report as report

    frame = noise_frame(rebel_bonus=0.0)
    frame.attrs["rebel"] = {"parameters": {}}
    monkeypatch.setattr(report, "load_chapter", lambda chapter, results_dir: frame)
    ledger = claims.ledger(["noise_controls"], tmp_path)
    from rebel.logdata import LOG_CLAIMS

    assert sorted(ledger["id"]) == sorted(claim["id"] for claim in LOG_CLAIMS)
    assert (ledger.loc[ledger["id"] != "tldr-just-noise", "verdict"] == "not tested").all()


def test_design_configs_vary_one_thing_from_the_reference():
    base = RunConfig(dataset="synthetic-mnist1d", model="Mnist1DNet", epochs=2)
    runs = design.configs(base, seeds=[0, 1], rebel_fracs=[0.1, 0.2], long_epochs=6)
    assert len(runs) == len(set(runs))
    # Per seed: plain at two lengths, then per fraction the reference at two lengths and six
    # variants (flip, mask, two anneal settings, two layer settings); at p = 0.2 the constant
    # p/2 = 0.1 setting is the reference at 0.1, which is not run twice.
    per_seed = 2 + 2 * (2 + 1 + 1 + 2 + 2) - 1
    assert len(runs) == 2 * per_seed
    changed = {
        field.name
        for run in runs
        if run.rebel_frac == 0.1 and run.epochs == 2
        for field in dataclasses.fields(run)
        if getattr(run, field.name)
        != getattr(base.replace(rebel_frac=0.1, seed=run.seed), field.name)
    }
    assert changed == {"flip", "mask", "rebel_frac_end", "rebel_layers"}


def test_shared_baseline_is_copied_under_every_perturbation_as_distinct_runs():
    frame = noise_frame(rebel_bonus=0.0, seeds=range(2))
    shared = controls.with_shared_baseline(frame, ["sign", "scale"])
    base = shared[shared["rebel_frac"] == 0]
    assert sorted(base["perturbation"].unique()) == ["scale", "sign"]
    assert base["run_key"].nunique() == 2 * 2  # two seeds, two copies
    assert (shared["grad_noise"] == 0).all()
