"""The log's design questions as paired comparisons against one reference setting.

The reference is the log's v1 choice: flip the whole update, resample the mask every step,
a constant fraction, every layer. Each question changes one of these and nothing else, at the
same rebel fraction and on the same seeds.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from rebel import analysis
from rebel.train import RunConfig

REFERENCE_NAME = "reference (as in log v1)"
REFERENCE: dict[str, Any] = {
    "flip": "update",
    "mask": "resample",
    "rebel_frac_end": None,
    "rebel_layers": "all",
    "perturbation": "sign",
    "grad_noise": 0.0,
}
QUESTIONS = ("flip", "mask", "anneal", "layers", "long")


def variants(question: str, p: float) -> list[tuple[str, dict[str, Any]]]:
    """The settings a question compares at fraction ``p``, reference first."""
    if question == "flip":
        return [("flip the gradient", {"flip": "grad"})]
    if question == "mask":
        return [("fixed mask", {"mask": "fixed"})]
    if question == "anneal":
        return [
            (f"annealed {p:.0%} → 0", {"rebel_frac_end": 0.0}),
            (f"constant {p / 2:.1%} (the schedule's mean)", {"rebel_frac": p / 2}),
        ]
    if question == "layers":
        return [
            ("last layer only", {"rebel_layers": "last"}),
            ("all but the last layer", {"rebel_layers": "all-but-last"}),
        ]
    raise ValueError(f"unknown question {question!r}; choose one of {QUESTIONS}")


def configs(
    base: RunConfig, seeds: list[int], rebel_fracs: list[float], long_epochs: int
) -> list[RunConfig]:
    """Every run the chapter needs, seed by seed, so an interrupted sweep has whole seeds."""
    runs = []
    for seed in seeds:
        runs.append(base.replace(seed=seed))
        runs.append(base.replace(seed=seed, epochs=long_epochs))
        for p in rebel_fracs:
            reference = base.replace(seed=seed, rebel_frac=p)
            runs.append(reference)
            runs.append(reference.replace(epochs=long_epochs))
            for question in QUESTIONS[:-1]:
                runs += [reference.replace(**change) for _, change in variants(question, p)]
    # A variant can coincide with another setting (constant p/2 is the reference at p/2).
    return list(dict.fromkeys(runs))


def _where(p: float, epochs: int, change: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**REFERENCE, "rebel_frac": p, "epochs": epochs, **(change or {})}


def _cell(frame: pd.DataFrame, where: dict[str, Any]) -> str:
    values = analysis.final_epoch(analysis.select(frame, where))["test_acc"]
    return analysis.format_ci(*analysis.mean_ci(values)[:3])


def _diff(frame: pd.DataFrame, treatment: dict, baseline: dict) -> dict:
    return analysis.paired_difference(frame, "test_acc", treatment, baseline)


def _diff_text(diff: dict) -> str:
    return analysis.format_ci(diff["mean"], diff["ci_low"], diff["ci_high"], unit="", signed=True)


def short_epochs(frame: pd.DataFrame) -> int:
    return int(frame["epochs"].min())


def long_runs(frame: pd.DataFrame, long_epochs: int) -> pd.DataFrame:
    return analysis.select(frame, {**REFERENCE, "epochs": long_epochs})


def table(frame: pd.DataFrame, question: str, rebel_fracs: list[float]) -> pd.DataFrame:
    """Final test accuracy per setting and its paired difference to the reference."""
    epochs = short_epochs(frame)
    fracs = sorted(p for p in rebel_fracs if p > 0)
    plain = _where(0.0, epochs)
    rows = []
    if question == "long":
        for run_epochs in sorted(frame["epochs"].unique()):
            for p in fracs:
                if not len(analysis.select(frame, _where(p, run_epochs))):
                    continue
                diff = _diff(frame, _where(p, run_epochs), _where(0.0, run_epochs))
                rows.append(
                    {
                        "epochs": int(run_epochs),
                        "rebel fraction": f"{p:.0%}",
                        "test accuracy (%)": _cell(frame, _where(p, run_epochs)),
                        "minus plain AdamW (pts)": _diff_text(diff),
                    }
                )
        return pd.DataFrame(rows).set_index(["epochs", "rebel fraction"])
    for p in fracs:
        reference = _where(p, epochs)
        if not len(analysis.select(frame, reference)):
            continue
        rows.append(
            {
                "rebel fraction": f"{p:.0%}",
                "setting": REFERENCE_NAME,
                "test accuracy (%)": _cell(frame, reference),
                "minus reference (pts)": "",
                "minus plain AdamW (pts)": _diff_text(_diff(frame, reference, plain)),
            }
        )
        for name, change in variants(question, p):
            where = _where(p, epochs, change)
            rows.append(
                {
                    "rebel fraction": f"{p:.0%}",
                    "setting": name,
                    "test accuracy (%)": _cell(frame, where),
                    "minus reference (pts)": _diff_text(_diff(frame, where, reference)),
                    "minus plain AdamW (pts)": _diff_text(_diff(frame, where, plain)),
                }
            )
    return pd.DataFrame(rows).set_index(["rebel fraction", "setting"])


def _direction(diff: dict) -> str:
    verdict_up = analysis.verdict_difference(diff, "greater")
    verdict_down = analysis.verdict_difference(diff, "less")
    if verdict_up == analysis.VERDICT_SUPPORTED:
        return "better"
    if verdict_down == analysis.VERDICT_SUPPORTED:
        return "worse"
    return "indistinguishable"


def answers_markdown(frame: pd.DataFrame, rebel_fracs: list[float]) -> str:
    """One line per question and setting: better, worse or indistinguishable, per fraction."""
    epochs = short_epochs(frame)
    fracs = sorted(p for p in rebel_fracs if p > 0)
    lines = []
    for question in QUESTIONS[:-1]:
        for name, _ in variants(question, fracs[0]):
            verdicts = []
            for p in fracs:
                change = dict(variants(question, p))[
                    name if question != "anneal" else _anneal_name(name, p)
                ]
                diff = _diff(frame, _where(p, epochs, change), _where(p, epochs))
                verdicts.append(f"p = {p:.0%}: {_direction(diff)} ({_diff_text(diff)} pts)")
            label = name.split(" ")[0] if question == "anneal" else name
            lines.append(
                f"- **{question}, {label}** against the reference: " + "; ".join(verdicts)
            )
    for p in fracs:
        short = _diff(frame, _where(p, epochs), _where(0.0, epochs))
        long_epochs = int(frame["epochs"].max())
        if long_epochs == epochs or not len(analysis.select(frame, _where(p, long_epochs))):
            continue
        longer = _diff(frame, _where(p, long_epochs), _where(0.0, long_epochs))
        lines.append(
            f"- **longer training**, p = {p:.0%} minus plain AdamW: {_diff_text(short)} pts "
            f"after {epochs} epochs, {_diff_text(longer)} pts after {long_epochs}."
        )
    return (
        "\n".join(lines)
        + "\n\n*Better* or *worse* means the 95 % interval of the paired difference excludes "
        "zero; no correction for the number of comparisons is applied here, so read a single "
        "isolated *better* with care."
    )


def _anneal_name(name: str, p: float) -> str:
    """The anneal variants' names contain p; find this p's name with the same meaning."""
    names = [n for n, _ in variants("anneal", p)]
    return names[0] if name.startswith("annealed") else names[1]
