"""What a chapter notebook does besides science: run its sweep, save its parquet, and say what
it ran on. Keeping this here leaves the notebooks short and every chapter consistent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from rebel import analysis
from rebel.book import chapter_output
from rebel.store import ResultStore, read_metadata, read_run, write_parquet
from rebel.train import RunConfig, sweep

# The datasets each experiment of the log used; a chapter run on anything else says so.
LOG_DATASETS = {
    "v1_random_mask": "mnist",
    "v2_tinycnn": "mnist",
    "v3_fixed_mask": "mnist",
    "v4_cifar10": "cifar10",
}


def run_chapter(
    chapter: str, configs: Iterable[RunConfig], params: dict[str, Any]
) -> pd.DataFrame:
    """Run (or load) a chapter's sweep and write its metrics to the chapter's parquet file.

    The returned frame carries ``attrs["output"]`` (the parquet path) and
    ``attrs["provenance"]`` (see :func:`provenance`).
    """
    configs = list(configs)
    frame = sweep(
        configs,
        results_dir=params["results_dir"],
        data_dir=params["data_dir"],
        force=params["force"],
    )
    prov = provenance(frame, params["results_dir"])
    output = chapter_output(chapter, params)
    metadata = {
        "chapter": chapter,
        "parameters": params,
        "provenance": prov,
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_parquet(output, frame, metadata)
    frame.attrs["output"] = str(output)
    frame.attrs["provenance"] = prov
    return frame


def load_chapter(chapter: str, results_dir: str | Path = "results") -> pd.DataFrame:
    """A chapter's stored metrics, with its metadata in ``attrs["rebel"]``."""
    path = Path(results_dir) / f"{chapter}.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"no results for chapter {chapter!r} at {path}; run that chapter first "
            f"(make book, or make run CHAPTER={chapter})"
        )
    return read_run(path)


def provenance(frame: pd.DataFrame, results_dir: str | Path) -> dict[str, Any]:
    """Summarise what the runs in ``frame`` ran on, from the metadata stored with each run."""
    store = ResultStore(results_dir)
    runs = [read_metadata(store.runs_dir / f"{key}.parquet") for key in frame["run_key"].unique()]
    datasets = {}
    for meta in runs:
        datasets[meta["dataset"]["name"]] = meta["dataset"]
    versions = sorted({tuple(sorted(meta["versions"].items())) for meta in runs})
    return {
        "runs": len(runs),
        "seeds": sorted({int(s) for s in frame["seed"].unique()}),
        "datasets": datasets,
        "devices": sorted({meta["device_name"] for meta in runs}),
        "wall_seconds": float(sum(meta["wall_seconds"] for meta in runs)),
        "versions": [dict(v) for v in versions],
        "diverged_runs": sum(meta["status"] == "diverged" for meta in runs),
        "started": min((meta["started_at"] for meta in runs), default=None),
    }


def synthetic_warning(prov: dict[str, Any]) -> str:
    """A warning admonition when any run used synthetic data, else an empty string."""
    synthetic = [name for name, d in prov["datasets"].items() if d["synthetic"]]
    if not synthetic:
        return ""
    return (
        ":::{warning}\n"
        f"This page was built from **synthetic data** ({', '.join(synthetic)}), made up for "
        "testing the pipeline. Its numbers say nothing about Rebel AdamW; the verdicts below "
        "are computed the same way but mean nothing either. Build with the default profile "
        "for real results.\n:::\n"
    )


def dataset_note(chapter: str, prov: dict[str, Any]) -> str:
    """A note when a chapter ran on another real dataset than the log's experiment used."""
    expected = LOG_DATASETS.get(chapter)
    used = [n for n, d in prov["datasets"].items() if not d["synthetic"] and n != expected]
    if not expected or not used:
        return ""
    return (
        ":::{note}\n"
        f"The log ran this experiment on **{expected}**; this page ran it on "
        f"**{', '.join(used)}**, so its numbers are not directly comparable with the log's, "
        "only the direction and size of the effects are.\n:::\n"
    )


def ran_on(prov: dict[str, Any], output: str | Path) -> str:
    """A Markdown list: what the chapter's runs ran on and where the metrics went."""
    lines = []
    for name, d in prov["datasets"].items():
        kind = "synthetic" if d["synthetic"] else "real"
        lines.append(
            f"- **Dataset:** {name} ({kind}; {d['source']}), {d['train_images']:,} training "
            f"and {d['test_images']:,} test images; sha256 `{d['checksum'][:16]}…`"
        )
    seeds = prov["seeds"]
    lines.append(
        f"- **Runs:** {prov['runs']} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''}: "
        f"{', '.join(map(str, seeds))}); diverged: {prov['diverged_runs']}"
    )
    lines.append(f"- **Device:** {', '.join(prov['devices'])}")
    minutes = prov["wall_seconds"] / 60
    lines.append(f"- **Wall time of the runs:** {minutes:.1f} min (when they were trained)")
    if prov["versions"]:
        v = prov["versions"][0]
        lines.append(
            f"- **Libraries:** torch {v.get('torch')}, torchvision {v.get('torchvision')}, "
            f"Python {v.get('python')}"
            + (" (runs were made with several version sets)" if len(prov["versions"]) > 1 else "")
        )
    lines.append(f"- **Metrics:** `{output}`")
    return "\n".join(lines)


# --- tables --------------------------------------------------------------------------------


def _ci_text(row: pd.Series) -> str:
    return analysis.format_ci(row["mean"], row["ci_low"], row["ci_high"])


def final_table(frame: pd.DataFrame, log_final: pd.DataFrame) -> pd.DataFrame:
    """Final train and test accuracy per rebel fraction, this book's runs beside the log's."""
    table = pd.DataFrame(index=sorted(frame["rebel_frac"].unique()))
    for metric, title in (("train_acc", "train accuracy"), ("test_acc", "test accuracy")):
        summary = analysis.summarize(frame, metric, by=["rebel_frac"]).set_index("rebel_frac")
        table[f"{title} (this book)"] = summary.apply(_ci_text, axis=1)
        logged = log_final.set_index("rebel_frac")[metric]
        table[f"{title} (log)"] = [
            analysis.format_pct(logged[p]) if p in logged.index else "not run" for p in table.index
        ]
    table.index = [f"{p:.0%}" for p in table.index]
    table.index.name = "rebel fraction"
    return table


def threshold_table(
    frame: pd.DataFrame, thresholds: list[float], log_thresholds: pd.DataFrame
) -> pd.DataFrame:
    """Epochs to each test-accuracy threshold per rebel fraction, beside the log's."""
    ours = analysis.format_threshold_table(analysis.epochs_to_threshold(frame, thresholds))
    ours.columns = [f"{c} (this book)" for c in ours.columns]
    logged = log_thresholds.pivot(index="rebel_frac", columns="threshold", values="epoch")
    for threshold in sorted(logged.columns):
        column = f"{analysis.format_threshold(threshold)} (log)"
        ours[column] = [
            "not run"
            if p not in logged.index
            else "not reached"
            if pd.isna(logged.loc[p, threshold])
            else f"{logged.loc[p, threshold]:g}"
            for p in ours.index
        ]
    ours.index = [f"{p:.0%}" for p in ours.index]
    ours.index.name = "rebel fraction"
    return ours


def mask_table(frame: pd.DataFrame, log_masks: pd.DataFrame) -> pd.DataFrame:
    """Final test accuracy with a resampled and a fixed mask, beside the log's."""
    summary = analysis.summarize(frame, "test_acc", by=["rebel_frac", "mask"])
    table = summary.assign(text=summary.apply(_ci_text, axis=1)).pivot(
        index="rebel_frac", columns="mask", values="text"
    )
    table = table.rename(
        columns={"resample": "random mask (this book)", "fixed": "fixed mask (this book)"}
    )
    logged = log_masks.set_index("rebel_frac")
    for column, title in (
        ("random_test", "random mask (log)"),
        ("fixed_test", "fixed mask (log)"),
    ):
        table[title] = [
            analysis.format_pct(logged.loc[p, column]) if p in logged.index else "not run"
            for p in table.index
        ]
    table.index = [f"{p:.0%}" for p in table.index]
    table.index.name = "rebel fraction"
    table.columns.name = None
    return table


# --- claims --------------------------------------------------------------------------------

VERDICT_MARKS = {
    "supported": "✅ supported",
    "not supported": "❌ not supported",
    "inconclusive": "❔ inconclusive",
    "not tested": "➖ not tested here",
}


def claims_markdown(rows: list[dict]) -> str:
    """A Markdown list: each claim, its verdict, and the evidence behind it."""
    lines = [
        f"- **{VERDICT_MARKS.get(row['verdict'], row['verdict'])}**: {row['claim']}  \n"
        f"  *Evidence:* {row['evidence']}"
        for row in rows
    ]
    return "\n".join(lines) + "\n\nThe rules behind the verdicts are on the TL;DR page."


def ledger_summary(ledger: pd.DataFrame) -> str:
    counts = ledger["verdict"].value_counts()
    parts = [f"{counts.get(v, 0)} {v}" for v in VERDICT_MARKS if counts.get(v, 0)]
    return f"Of the log's {len(ledger)} claims: " + ", ".join(parts) + "."


def ledger_table(ledger: pd.DataFrame) -> pd.DataFrame:
    table = ledger[["chapter", "claim", "evidence", "verdict"]].copy()
    table["verdict"] = table["verdict"].map(lambda v: VERDICT_MARKS.get(v, v))
    return table.set_index(["chapter", "claim"])
