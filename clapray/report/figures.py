"""Figures of a report, drawn with matplotlib's Agg backend (files only, no display).

Sized and lettered for print: a single-column figure is about 3.4 x 2.6 inches at 200 dpi with 8-9 pt
text, lines at least 1.2 pt, and markers so that curves stay apart in black and white.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: the report runs on headless machines and in tests

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from clapray.report.tables import BENCHMARK_LABELS, metric_label, value_label  # noqa: E402

DPI = 200
_STYLE = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "lines.linewidth": 1.4, "lines.markersize": 4, "axes.grid": True, "grid.alpha": 0.3,
    "savefig.dpi": DPI, "figure.dpi": 100,
}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _grid(n: int, width: float = 3.4, height: float = 2.6, max_cols: int = 3):
    cols = min(max(n, 1), max_cols)
    rows = math.ceil(max(n, 1) / cols)
    # Constrained layout keeps the figure title, panel titles and long tick labels from overlapping.
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _label(keys: Sequence[str], values: Sequence) -> str:
    return ", ".join(value_label(k, v) for k, v in zip(keys, values, strict=False) if value_label(k, v) != "-") or "all"


def accuracy_evolution(curves: pd.DataFrame, rows: Sequence[str], path: Path) -> Path:
    """A_t after every task per row key (e.g. variant), mean line and ±1 std band over seeds; one panel
    per benchmark. ``curves``: rows..., benchmark, task (0-based), mean, std, n."""
    return task_curves(curves, rows, path, ylabel="accuracy A_t (%)",
                       title="Accuracy after each task (mean ± std over seeds)")


def task_curves(curves: pd.DataFrame, rows: Sequence[str], path: Path, *, ylabel: str, title: str) -> Path:
    """A per-task quantity per row key, mean line and ±1 std band over seeds; one panel per benchmark.
    ``curves``: rows..., benchmark (optional), task (0-based), mean, std, n."""
    curves = curves if "benchmark" in curves else curves.assign(benchmark="all")
    with plt.rc_context(_STYLE):
        benchmarks = sorted(curves["benchmark"].unique(), key=lambda b: (b not in BENCHMARK_LABELS, str(b)))
        fig, axes = _grid(len(benchmarks))
        for ax, bench in zip(axes, benchmarks, strict=True):
            part = curves[curves["benchmark"] == bench]
            groups = list(part.groupby(list(rows), dropna=False, sort=True)) if rows else [((), part)]
            for i, (key, g) in enumerate(groups):
                key = key if isinstance(key, tuple) else (key,)
                g = g.sort_values("task")
                x = g["task"].to_numpy() + 1
                mean, std = g["mean"].to_numpy(float), g["std"].to_numpy(float)
                n = int(g["n"].max())
                line, = ax.plot(x, mean, marker=_MARKERS[i % len(_MARKERS)], label=f"{_label(rows, key)} (n={n})")
                if n > 1:
                    ax.fill_between(x, mean - np.nan_to_num(std), mean + np.nan_to_num(std),
                                    color=line.get_color(), alpha=0.2, linewidth=0)
            ax.set_title(BENCHMARK_LABELS.get(str(bench), str(bench)))
            ax.set_xlabel("task")
            ax.set_ylabel(ylabel)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(loc="best", frameon=False)
        fig.suptitle(title, fontsize=9)
        return _save(fig, path)


def grouped_bars(summary: pd.DataFrame, keys: Sequence[str], group: str, metric: str, path: Path, *,
                 title: str) -> Path:
    """Bars of ``metric`` per row key, one bar per value of ``group`` (e.g. the setting), ±1 std error bars.
    ``summary``: keys..., group, <metric>_mean, <metric>_std, <metric>_count."""
    with plt.rc_context(_STYLE):
        rows = list(summary.groupby(list(keys), dropna=False, sort=True)) if keys else [((), summary)]
        values = sorted(summary[group].unique(), key=lambda v: value_label(group, v))
        fig, ax = plt.subplots(figsize=(max(3.4, 0.9 * len(rows) * len(values)), 2.8), layout="constrained")
        width = 0.8 / max(len(values), 1)
        for i, value in enumerate(values):
            means, stds = [], []
            for _, part in rows:
                hit = part[part[group] == value]
                means.append(float(hit[f"{metric}_mean"].iloc[0]) if len(hit) else np.nan)
                stds.append(float(hit[f"{metric}_std"].iloc[0]) if len(hit) else np.nan)
            x = np.arange(len(rows)) + (i - (len(values) - 1) / 2) * width
            ax.bar(x, means, width=width, yerr=np.nan_to_num(stds), capsize=2, edgecolor="black", linewidth=0.5,
                   label=value_label(group, value))
        ax.set_xticks(np.arange(len(rows)), [_label(keys, k if isinstance(k, tuple) else (k,)) for k, _ in rows],
                      rotation=20, ha="right")
        ax.set_ylabel(f"{metric_label(metric)} (%)" if metric.endswith("acc") else metric_label(metric))
        ax.legend(loc="best", frameon=False, title=group)
        ax.set_title(title, fontsize=8)
        return _save(fig, path)


def metric_against_cost(per_conf: pd.DataFrame, keys: Sequence[str], metric: str, costs: Sequence[str],
                        path: Path) -> Path:
    """One panel per cost column: each configuration's mean ``metric`` against its mean cost, ±1 std bars,
    one marker per row key. ``per_conf``: keys..., config_key, <column>_mean/_std for metric and costs."""
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(costs), width=3.4, height=2.8, max_cols=2)
        groups = list(per_conf.groupby(list(keys), dropna=False, sort=True)) if keys else [((), per_conf)]
        for ax, column in zip(axes, costs, strict=True):
            for i, (key, g) in enumerate(groups):
                key = key if isinstance(key, tuple) else (key,)
                ax.errorbar(g[f"{column}_mean"], g[f"{metric}_mean"], yerr=np.nan_to_num(g[f"{metric}_std"]),
                            xerr=np.nan_to_num(g[f"{column}_std"]), fmt=_MARKERS[i % len(_MARKERS)], capsize=2,
                            label=_label(keys, key))
            if column == "trainable_params" and (per_conf[f"{column}_mean"] > 0).all():
                ax.set_xscale("log")
            ax.set_xlabel(metric_label(column))
            ax.set_ylabel(f"{metric_label(metric)} (%)" if metric.endswith("acc") else metric_label(metric))
            ax.legend(loc="best", frameon=False, fontsize=6)
        fig.suptitle(f"{metric_label(metric)} against cost, one point per configuration", fontsize=9)
        return _save(fig, path)


def accuracy_matrix(matrix: np.ndarray, title: str, path: Path) -> Path:
    """Heat-map of a[t, j] (rows: after task t; columns: evaluated task j), values written in the cells."""
    size = matrix.shape[0]
    with plt.rc_context({**_STYLE, "axes.grid": False}):
        side = min(2.2 + 0.35 * size, 7.0)
        fig, ax = plt.subplots(figsize=(side + 0.8, side), layout="constrained")
        shown = np.ma.masked_invalid(matrix)
        image = ax.imshow(shown, vmin=0, vmax=100, cmap="viridis")
        if size <= 12:
            for t in range(size):
                for j in range(size):
                    if not np.isnan(matrix[t, j]):
                        ax.text(j, t, f"{matrix[t, j]:.0f}", ha="center", va="center", fontsize=6,
                                color="white" if matrix[t, j] < 60 else "black")
        ticks = np.arange(size)
        ax.set_xticks(ticks, [str(i + 1) for i in ticks])
        ax.set_yticks(ticks, [str(i + 1) for i in ticks])
        ax.set_xlabel("evaluated task j")
        ax.set_ylabel("after task t")
        ax.set_title(title, fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="accuracy (%)")
        return _save(fig, path)


def knob_curves(summary: pd.DataFrame, knob: str, metrics: Sequence[str], path: Path) -> Path:
    """One curve per cell and one panel per metric: mean against the knob's value (or bin centre), error
    bars ±1 std over the trials. ``summary``: cell, metric, x (number; NaN for categories), label, mean,
    std, n."""
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(metrics), width=3.6, height=2.8, max_cols=2)
        for ax, metric in zip(axes, metrics, strict=False):
            part = summary[summary["metric"] == metric]
            categorical = part["x"].isna().any()
            labels = sorted(part["label"].unique()) if categorical else []
            for i, (cell, g) in enumerate(part.groupby("cell", sort=True)):
                g = g.sort_values("label") if categorical else g.sort_values("x")
                x = np.array([labels.index(v) for v in g["label"]]) if categorical else g["x"].to_numpy(float)
                ax.errorbar(x, g["mean"].to_numpy(float), yerr=np.nan_to_num(g["std"].to_numpy(float)),
                            marker=_MARKERS[i % len(_MARKERS)], capsize=2.5, label=str(cell))
            if categorical:
                ax.set_xticks(np.arange(len(labels)), labels)
            ax.set_xlabel(knob)
            ax.set_ylabel(f"{metric_label(metric)} (%)" if metric.endswith("acc") else metric_label(metric))
            ax.legend(loc="best", frameon=False, fontsize=6)
        fig.suptitle(f"{knob}: mean ± std over the trials of each value", fontsize=9)
        return _save(fig, path)


def reliability(panels: list[tuple[str, pd.DataFrame]], path: Path) -> Path:
    """Reliability diagrams: per panel, accuracy per confidence bin (bars) against the diagonal, with the
    pooled ECE. Each frame: lower, upper, count, mean_confidence, accuracy (pooled over trials)."""
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(panels), width=2.8, height=2.8)
        for ax, (title, bins) in zip(axes, panels, strict=False):
            width = (bins["upper"] - bins["lower"]).to_numpy(float)
            centre = bins["lower"].to_numpy(float) + width / 2
            acc = bins["accuracy"].to_numpy(float)
            conf = bins["mean_confidence"].to_numpy(float)
            count = bins["count"].to_numpy(float)
            ax.bar(centre, acc, width=width, edgecolor="black", linewidth=0.6, color="#4C72B0", label="accuracy")
            ax.bar(centre, conf - acc, bottom=acc, width=width, edgecolor="#C44E52", linewidth=0.6,
                   color="#C44E52", alpha=0.25, label="gap to mean confidence")
            ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.0, label="perfect calibration")
            ece = float(np.sum(count * np.abs(acc - conf)) / max(count.sum(), 1))
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("confidence")
            ax.set_ylabel("accuracy")
            ax.set_title(title, fontsize=8)
            # Above the diagonal at low confidence is empty for all but under-confident models.
            ax.legend(loc="upper left", frameon=False, fontsize=6, title=f"ECE {ece:.3f}, n = {int(count.sum())}",
                      title_fontsize=7, alignment="left")
        fig.suptitle("Reliability after the last task (bins pooled over seeds)", fontsize=9)
        return _save(fig, path)


def importance_bars(importances: pd.DataFrame, path: Path) -> Path:
    """Horizontal bars of fANOVA importance per parameter, one panel per cell.
    ``importances``: cell, parameter, importance (sums to 1 per cell)."""
    cells = sorted(importances["cell"].unique())
    with plt.rc_context(_STYLE):
        height = max(1.8, 0.8 + 0.35 * importances.groupby("cell").size().max())
        fig, axes = _grid(len(cells), width=5.0, height=height, max_cols=1)
        for ax, cell in zip(axes, cells, strict=False):
            part = importances[importances["cell"] == cell].sort_values("importance")
            bars = ax.barh(part["parameter"].map(_short), part["importance"], color="#55A868", edgecolor="black",
                           linewidth=0.6)
            ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=6)
            ax.set_xlim(0, 1.1)
            ax.set_xlabel("fANOVA importance")
            ax.set_title(str(cell), fontsize=8)
            ax.grid(axis="y", visible=False)
        fig.suptitle("Hyperparameter importance per cell", fontsize=9)
        return _save(fig, path)


def _short(label: str) -> str:
    """A parameter label short enough for a tick: the table lists the tied fields, the chart counts them."""
    base, sep, twins = label.partition(" (= ")
    return f"{base} (+{twins.count(',') + 1} tied)" if sep else label
