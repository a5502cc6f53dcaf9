"""Figures for the lab notebook: training curves, final metrics, sensitivity to p.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so nothing
is shown twice in a notebook and no figure lingers in pyplot's registry; display it by making
it the last expression of a cell, or save it with ``fig.savefig``.

Bands are t-intervals over seeds from :func:`rebel.analysis.mean_ci` (not seaborn's
bootstrap, which with three seeds gives intervals that are too narrow), drawn only where at
least two seeds exist. A single run is a plain line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from rebel import analysis

# ---------------------------------------------------------------------------------------------
# Style, in one place

PALETTE = "colorblind"  # seaborn's palette that stays distinct under common colour blindness
AXES_STYLE = "whitegrid"
CONTEXT = "notebook"
PANEL_SIZE = (4.8, 3.8)  # inches per subplot: room for the longest axis label
BAND_ALPHA = 0.2  # opacity of interval bands: visible, yet the lines stay readable
SEED_DOT_ALPHA = 0.35  # opacity of individual seeds behind a mean
LOG_MARKER = "D"  # the research log's values: a diamond, unlike anything else drawn
DIVERGED_MARKER = "x"
LINE_STYLES = ("-", "--", ":", "-.")

LOG_LABEL = "research log (single run)"

METRIC_LABELS = {
    "train_loss": "training loss (cross-entropy, nats)",
    "test_loss": "test loss (cross-entropy, nats)",
    "train_acc": "training accuracy (%)",
    "test_acc": "test accuracy (%)",
    "seconds": "wall time per epoch (s)",
    "roughness": "roughness (std of epoch-to-epoch change)",
}
# Metrics stored as fractions and shown in percent.
PERCENT_METRICS = {"train_acc", "test_acc"}
PERCENT = 100.0

COLUMN_LABELS = {
    "epoch": "epoch",
    "rebel_frac": "rebel fraction p (%)",
    "rebel_frac_end": "final rebel fraction (%)",
    "lr": "learning rate",
    "weight_decay": "weight decay",
    "grad_noise": "gradient-noise scale",
    "train_subset": "training images",
    "batch_size": "batch size (images)",
}
# Columns holding fractions that read better in percent.
PERCENT_COLUMNS = {"rebel_frac", "rebel_frac_end"}
LEGEND_TITLES = {
    "rebel_frac": "rebel fraction",
    "rebel_frac_end": "final rebel fraction",
    "label": "method",
    "perturbation": "perturbation",
    "mask": "rebel mask",
    "flip": "what is flipped",
}


@contextmanager
def book_style():
    """The book's look: seaborn's whitegrid style and notebook context, for one figure."""
    with sns.axes_style(AXES_STYLE), sns.plotting_context(CONTEXT):
        yield


def palette(n: int) -> list:
    """``n`` colours from the book's palette."""
    return sns.color_palette(PALETTE, n)


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def column_label(column: str) -> str:
    return COLUMN_LABELS.get(column, column)


def legend_title(column: str) -> str:
    return LEGEND_TITLES.get(column, column)


def value_label(column: str, value: Any) -> str:
    """How a setting appears in a legend: "p = 5 %" for a rebel fraction, else the value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if column in PERCENT_COLUMNS:
        return f"p = {round(value * PERCENT, 6):g} %"
    if value == "":
        return "(no label)"
    return str(value)


def _scale(metric: str) -> float:
    return PERCENT if metric in PERCENT_METRICS else 1.0


def _x_scale(column: str) -> float:
    return PERCENT if column in PERCENT_COLUMNS else 1.0


def _new_figure(n_panels: int, ncols: int) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    figure = Figure(figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    # A grid with more cells than panels leaves the extra cells out of the figure.
    for extra in axes[n_panels:]:
        figure.delaxes(extra)
    return figure, axes[:n_panels]


def _mean_band(values: pd.DataFrame, x: str, metric: str, confidence: float) -> pd.DataFrame:
    """Mean and t-interval of ``metric`` at each ``x`` over the rows (seeds) sharing it."""
    rows = []
    for x_value, group in values.groupby(x, sort=True):
        mean, low, high, n = analysis.mean_ci(group[metric], confidence)
        rows.append({x: x_value, "mean": mean, "ci_low": low, "ci_high": high, "n": n})
    return pd.DataFrame(rows, columns=[x, "mean", "ci_low", "ci_high", "n"])


def _draw_mean(ax, band: pd.DataFrame, x: str, x_scale: float, y_scale: float, **line) -> None:
    """A mean line, with a band only where two or more seeds give an interval."""
    xs = band[x].to_numpy(float) * x_scale
    ax.plot(xs, band["mean"].to_numpy(float) * y_scale, **line)
    if (band["n"] >= analysis.MIN_REPLICATES_FOR_INTERVAL).any():
        ax.fill_between(
            xs,
            band["ci_low"].to_numpy(float) * y_scale,
            band["ci_high"].to_numpy(float) * y_scale,
            color=line.get("color"),
            alpha=BAND_ALPHA,
            linewidth=0,
        )


def _check_hue_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    analysis.require_columns(frame, columns, what)
    runs = analysis.final_epoch(frame) if "epoch" in frame.columns else frame
    analysis.check_one_run_per_seed(runs, list(columns), what)


# ---------------------------------------------------------------------------------------------
# Figures


def curves(
    frame: pd.DataFrame,
    metrics: Sequence[str] = ("train_loss", "test_loss", "train_acc", "test_acc"),
    hue: str = "rebel_frac",
    style: str | None = None,
    confidence: float = analysis.DEFAULT_CONFIDENCE,
    ncols: int = 2,
    hue_labels: Mapping[Any, str] | None = None,
) -> Figure:
    """Per-epoch curves, one panel per metric and one line per ``hue`` (and ``style``) value.

    A line is the mean over seeds at each epoch, with a shaded t-interval where two or more
    seeds exist. A run that diverged drops out after its last epoch, so later means rest on
    the runs that survived; its last epoch is marked with an "x". Accuracies are in percent.
    ``hue_labels`` renames hue values in the legend.
    """
    metrics = list(metrics)
    if not metrics:
        raise ValueError("metrics is empty; name at least one, e.g. ['test_acc']")
    grouping = [hue] + ([style] if style else [])
    _check_hue_columns(frame, [*grouping, "epoch", *metrics], "curves")
    hue_values = sorted(frame[hue].unique(), key=_sort_key)
    style_values = sorted(frame[style].unique(), key=_sort_key) if style else [None]
    if len(style_values) > len(LINE_STYLES):
        raise ValueError(
            f"style {style!r} has {len(style_values)} values; at most {len(LINE_STYLES)} "
            "line styles are distinguishable; filter the frame or use it as hue"
        )
    colours = dict(zip(hue_values, palette(len(hue_values)), strict=True))
    diverged = _diverged_last_epochs(frame)

    with book_style():
        figure, axes = _new_figure(len(metrics), ncols)
        for ax, metric in zip(axes, metrics, strict=True):
            y_scale = _scale(metric)
            for (key, group), linestyle in _hue_style_groups(frame, hue, style, style_values):
                label = _legend_entry(hue, key[0], hue_labels, style, key[-1])
                band = _mean_band(group, "epoch", metric, confidence)
                _draw_mean(
                    ax,
                    band,
                    "epoch",
                    1.0,
                    y_scale,
                    color=colours[key[0]],
                    linestyle=linestyle,
                    label=label,
                )
            if not diverged.empty:
                ax.plot(
                    diverged["epoch"],
                    diverged[metric] * y_scale,
                    DIVERGED_MARKER,
                    color="black",
                    linestyle="none",
                    label="diverged (last epoch)",
                )
            ax.set_xlabel(column_label("epoch"))
            ax.set_ylabel(metric_label(metric))
        _figure_legend(figure, axes[0], legend_title(hue))
    return figure


def final_bars(
    frame: pd.DataFrame,
    metric: str = "test_acc",
    by: str = "rebel_frac",
    log_values: pd.Series | None = None,
    confidence: float = analysis.DEFAULT_CONFIDENCE,
) -> Figure:
    """Final-epoch ``metric`` per setting: mean over seeds with t-interval error bars.

    Drawn as points with error bars, not bars: a bar starting at zero would hide differences
    of a tenth of a point at 99 %, and a bar with a cut axis misleads. Each seed is a faint
    dot behind its mean. ``log_values`` (a Series indexed by values of ``by``, in the metric's
    units, e.g. ``logdata.v1_final().set_index("rebel_frac")["test_acc"]``) is overlaid as
    diamonds labelled "research log (single run)".
    """
    runs = analysis.final_epoch(frame)
    summary = analysis.summarize(runs, metric, [by], confidence)
    settings = list(summary[by])
    if log_values is not None:
        settings += [v for v in log_values.index if not _contains(settings, v)]
    settings = sorted(settings, key=_sort_key)
    position = {_position_key(v): i for i, v in enumerate(settings)}
    y_scale = _scale(metric)
    colour = palette(1)[0]

    with book_style():
        figure, (ax,) = _new_figure(1, 1)
        xs = [position[_position_key(v)] for v in summary[by]]
        means = summary["mean"].to_numpy(float) * y_scale
        has_interval = summary["n_seeds"] >= analysis.MIN_REPLICATES_FOR_INTERVAL
        errors = np.vstack(
            [
                means - summary["ci_low"].to_numpy(float) * y_scale,
                summary["ci_high"].to_numpy(float) * y_scale - means,
            ]
        )
        errors[:, ~has_interval.to_numpy()] = 0.0
        seed_x = [position[_position_key(v)] for v in runs[by]]
        ax.plot(
            seed_x,
            runs[metric].to_numpy(float) * y_scale,
            "o",
            color=colour,
            alpha=SEED_DOT_ALPHA,
            markersize=4,
            label="single seeds",
        )
        n_max = int(summary["n_seeds"].max())
        ax.errorbar(
            xs,
            means,
            yerr=errors,
            fmt="o",
            color=colour,
            capsize=4,
            label=f"mean, {confidence * 100:g} % interval over seeds (n ≤ {n_max})",
        )
        if log_values is not None:
            ax.plot(
                [position[_position_key(v)] for v in log_values.index],
                log_values.to_numpy(float) * y_scale,
                LOG_MARKER,
                color=palette(2)[1],
                linestyle="none",
                label=LOG_LABEL,
            )
        ax.set_xticks(range(len(settings)), [_tick_label(by, v) for v in settings])
        ax.set_xlabel(column_label(by))
        ax.set_ylabel(f"final {metric_label(metric)}")
        ax.legend(title="final epoch of each run", loc="best")
    return figure


def sensitivity(
    frame: pd.DataFrame,
    metric: str = "test_acc",
    x: str = "rebel_frac",
    hue: str = "label",
    confidence: float = analysis.DEFAULT_CONFIDENCE,
    hue_labels: Mapping[Any, str] | None = None,
    facet: str | None = None,
) -> Figure:
    """Final-epoch ``metric`` against ``x``, one line per ``hue`` value (rebels vs controls).

    Each point is the mean over seeds; a band shows the t-interval where two or more seeds
    exist. ``hue`` is e.g. ``"label"`` or ``"perturbation"``. With ``facet`` (e.g.
    ``"dataset"``) each value of that column gets a panel of its own, titled with the value.
    """
    runs = analysis.final_epoch(frame)
    by = [hue, x] if facet is None else [facet, hue, x]
    summary = analysis.summarize(runs, metric, by, confidence)
    hue_values = sorted(summary[hue].unique(), key=_sort_key)
    colours = dict(zip(hue_values, palette(len(hue_values)), strict=True))
    x_scale, y_scale = _x_scale(x), _scale(metric)
    panels = [None] if facet is None else sorted(summary[facet].unique(), key=_sort_key)

    with book_style():
        figure, axes = _new_figure(len(panels), len(panels))
        for ax, panel in zip(axes, panels, strict=True):
            shown = summary if panel is None else summary[summary[facet] == panel]
            for value in hue_values:
                band = shown[shown[hue] == value].rename(columns={"n_seeds": "n"})
                if band.empty:
                    continue
                _draw_mean(
                    ax,
                    band.sort_values(x),
                    x,
                    x_scale,
                    y_scale,
                    color=colours[value],
                    marker="o",
                    label=_legend_entry(hue, value, hue_labels),
                )
            ax.set_xlabel(column_label(x))
            ax.set_ylabel(f"final {metric_label(metric)}")
            if panel is not None:
                ax.set_title(str(panel))
        if facet is None:
            axes[0].legend(title=legend_title(hue), loc="best")
        else:
            _figure_legend(figure, axes[0], legend_title(hue))
    return figure


# ---------------------------------------------------------------------------------------------
# Helpers


def _sort_key(value: Any) -> tuple:
    """Order settings with missing values last and numbers before text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, "")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (0, float(value))
    return (1, str(value))


def _position_key(value: Any) -> Any:
    """A dictionary key that treats 0.05 from a log table and from a run as the same setting."""
    if isinstance(value, (float, np.floating)) and not math.isnan(value):
        return round(float(value), 9)
    return value


def _contains(values: list, value: Any) -> bool:
    return any(_position_key(v) == _position_key(value) for v in values)


def _tick_label(column: str, value: Any) -> str:
    if column in PERCENT_COLUMNS and value is not None:
        return f"{round(value * PERCENT, 6):g}"
    return value_label(column, value)


def _legend_entry(
    hue: str,
    value: Any,
    hue_labels: Mapping[Any, str] | None,
    style: str | None = None,
    style_value: Any = None,
) -> str:
    text = hue_labels[value] if hue_labels and value in hue_labels else value_label(hue, value)
    if style:
        text += f", {style} = {value_label(style, style_value)}"
    return text


def _hue_style_groups(frame: pd.DataFrame, hue: str, style: str | None, style_values: list):
    """Yield ``((hue value, style value), rows), line style`` in a stable order."""
    linestyles = dict(zip(style_values, LINE_STYLES, strict=False))
    columns = [hue, style] if style else [hue]
    groups = list(frame.groupby(columns, dropna=False, sort=False))
    groups.sort(key=lambda item: tuple(_sort_key(v) for v in item[0]))
    for key, group in groups:
        yield (key, group), linestyles[key[-1] if style else None]


def _diverged_last_epochs(frame: pd.DataFrame) -> pd.DataFrame:
    if "status" not in frame.columns:
        return frame.iloc[0:0]
    last = analysis.final_epoch(frame)
    return last[last["status"] == analysis.STATUS_DIVERGED]


def _figure_legend(figure: Figure, ax, title: str) -> None:
    """One legend for the whole grid, outside the panels, from the first panel's lines."""
    handles, labels = ax.get_legend_handles_labels()
    figure.legend(handles, labels, title=title, loc="outside right upper")
