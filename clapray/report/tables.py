"""Paper-style tables: pure functions from trial frames to summary frames, and their writers.

A *summary* is a long frame, one row per (row key, column key, metric) with ``mean``, ``std``, ``n``
(trials averaged, one per seed in the selected configuration) and ``best`` (the best mean of its column,
in the metric's direction). It is what the CSV files hold; Markdown and LaTeX render it wide, each cell
``mean ± std (n=N)`` with the best of a column in bold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clapray.model.prompts.catalog import VARIANTS, report_order
from clapray.results import aggregate, t_critical_975

# name -> (label, format, higher is better). Unknown metrics get a generic format, higher is better.
METRICS: dict[str, tuple[str, str, bool]] = {
    "avg_acc": ("Avg", ".2f", True),
    "last_acc": ("Last", ".2f", True),
    "acc": ("Acc", ".2f", True),
    "bwt": ("BwT", ".2f", True),
    "ece": ("ECE", ".3f", False),
    "ece_per_batch": ("ECE (per batch)", ".3f", False),
    "phndd_auroc": ("AUROC", ".3f", True),
    "phndd_aupr": ("AUPR", ".3f", True),
    "phndd_fpr95": ("FPR95", ".3f", False),
    "phndd_fpr95_at_least": ("FPR95 (TPR >= 95 %)", ".3f", False),
    "wall_s": ("wall time (s)", ".1f", False),
    "gpu_s": ("GPU-seconds", ".1f", False),
    "trainable_params": ("trainable parameters", ",.0f", False),
    "peak_memory_mb": ("peak memory (MB)", ".0f", False),
    "class_il": ("class-IL Last", ".2f", True),
    "task_il": ("task-IL Last", ".2f", True),
    "forgetting": ("forgetting", ".2f", False),
}

# Column labels of the derived and common grouping columns.
COLUMN_LABELS = {"variant": "variant", "inference": "inference", "benchmark": "benchmark", "setting": "setting",
                 "cell": "cell", "method.variant": "variant", "method.deterministic": "w/o VI",
                 "data.dataset": "benchmark"}

BENCHMARK_LABELS = {"cifar100": "CIFAR100", "imagenet100": "ImageNet100", "imagenet_r": "ImageNet-R",
                    "cub200": "CUB200", "vtab": "VTAB", "cdcl": "CDCL", "shapes": "Shapes", "shapes_cl": "Shapes-CL"}
_BENCHMARK_ORDER = list(BENCHMARK_LABELS)
# The zero-shot baseline first, as the reference row; then the prompt variants in the paper's order.


def metric_label(name: str) -> str:
    return METRICS.get(name, (name, "", True))[0]


def higher_is_better(name: str) -> bool:
    return METRICS.get(name, (name, "", True))[2]


def format_number(name: str, value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    fmt = METRICS.get(name, (name, ".4g", True))[1]
    return format(value, fmt)


def value_label(column: str, value) -> str:
    """How a grouping value reads in a table (benchmark names as in the paper, booleans as words)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column in ("benchmark", "data.dataset"):
        return BENCHMARK_LABELS.get(str(value), str(value))
    if column in ("variant", "method.variant") and str(value) in VARIANTS:
        return VARIANTS[str(value)].label
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else f"{float(value):.4g}"
    return str(value)


def _sort_key(column: str, value):
    """Benchmarks in the paper's order; VI before w/o VI; numbers numerically; the rest as text."""
    if column in ("benchmark", "data.dataset"):
        v = str(value)
        return (0, _BENCHMARK_ORDER.index(v), "") if v in _BENCHMARK_ORDER else (1, 0, v)
    if column == "setting":
        # Standard first, then the constrained settings: replay-free, budgets, both.
        v = str(value)
        rank = 0 if v == "standard" else 1 if v == "replay-free" else 3 if v.startswith("replay-free,") else 2
        steps = re.search(r"budget (\d+)", v)
        return (0, rank * 1e9 - (int(steps.group(1)) if steps else 0), v)
    if column in ("variant", "method.variant"):
        v = str(value)
        rank = report_order(v)
        return (0, rank[0] * 100 + rank[1], "") if v in VARIANTS else (1, 0, v)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, 0, "")
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return (0, float(value), "")
    return (1, 0, str(value))


# --------------------------------------------------------------------------------------------------
# Trial selection


def select_best_configurations(trials: pd.DataFrame, groups: Sequence[str], metric: str) -> pd.DataFrame:
    """The trials of the best configuration of every group: the highest (or, for a lower-is-better metric,
    lowest) mean of ``metric`` over its seeds. A grid sweep has one configuration per group, so this
    keeps every trial; a search sweep reports its tuned configuration, as the paper reports its method.
    """
    if trials.empty:
        return trials
    keys = list(groups)
    means = trials.groupby([*keys, "config_key"], dropna=False, sort=True)[metric].mean().reset_index()
    means = means.dropna(subset=[metric])
    if means.empty:
        return trials.iloc[0:0]
    ascending = not higher_is_better(metric)
    # Ties go to the configuration listed first (sorted by key), so the choice is deterministic.
    best = (means.sort_values([metric, "config_key"], ascending=[ascending, True], kind="mergesort")
            .groupby(keys, dropna=False, sort=False).head(1))
    return trials.merge(best[[*keys, "config_key"]], on=[*keys, "config_key"], how="inner")


# --------------------------------------------------------------------------------------------------
# Summaries


def summarize(trials: pd.DataFrame, rows: Sequence[str], columns: Sequence[str], metrics: Sequence[str], *,
              best_within: Sequence[str] = (), mark_best: bool = True) -> pd.DataFrame:
    """Long summary frame: rows..., columns..., metric, mean, std, n, best.

    ``mean``/``std`` (ddof 1, NaN for one value)/``n`` are over the trials of each (rows, columns) group
    that have the metric. ``best`` marks, for each column key and metric (and each ``best_within`` group),
    the rows with the best mean.
    """
    rows, columns, metrics = list(rows), list(columns), [m for m in metrics if m in trials.columns]
    keys = rows + columns
    head = [*keys, "metric", "mean", "std", "n", "best"]
    if trials.empty or not metrics:
        return pd.DataFrame(columns=head)
    agg = aggregate(trials, by=keys, metrics=metrics)
    parts = []
    for m in metrics:
        part = agg[keys].copy()
        part["metric"] = m
        part["mean"] = agg[f"{m}_mean"].to_numpy()
        part["std"] = agg[f"{m}_std"].to_numpy()
        part["n"] = agg[f"{m}_count"].to_numpy()
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    out["best"] = False
    if mark_best:
        group = [*columns, *best_within]
        for m in metrics:
            block = out[out["metric"] == m]
            if group:
                grouped = block.groupby(group, dropna=False, sort=False)["mean"]
                target = grouped.transform("max" if higher_is_better(m) else "min")
                size = grouped.transform("size")
            else:
                target = pd.Series(block["mean"].max() if higher_is_better(m) else block["mean"].min(),
                                   index=block.index)
                size = pd.Series(len(block), index=block.index)
            # A lone row is not "best" of anything; ties are all marked.
            hit = (size >= 2) & block["mean"].notna() & np.isclose(block["mean"], target, rtol=0, atol=1e-12)
            out.loc[block.index[hit.to_numpy()], "best"] = True
    return out[head]


def cell_text(metric: str, mean: float, std: float, n: int) -> str:
    """``86.13 ± 0.42 (n=3; CI ±1.04)``: mean ± std over seeds, their count and the half-width of the 95 %
    confidence interval of the mean (Student's t); ``86.13 (n=1)`` for one trial; ``-`` without any."""
    if n == 0 or mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    text = format_number(metric, mean)
    if n > 1 and std is not None and not math.isnan(std):
        half = t_critical_975(int(n) - 1) * std / math.sqrt(n)
        return f"{text} ± {format_number(metric, std)} (n={int(n)}; CI ±{format_number(metric, half)})"
    return f"{text} (n={int(n)})"


@dataclass
class Wide:
    """A summary laid out for reading: header labels, then rows of cell texts with a best flag."""

    row_headers: list[str]
    col_headers: list[tuple[str, ...]]  # per data column: (column-key labels..., metric label)
    rows: list[tuple[list[str], list[tuple[str, bool]]]]


def widen(summary: pd.DataFrame, rows: Sequence[str], columns: Sequence[str], metrics: Sequence[str], *,
          order: dict[str, dict] | None = None) -> Wide:
    """Lay a summary out wide. ``order`` maps a column to {value: position} where the values' own order
    is wrong (bin labels such as ``[7.5, 15)`` sort badly as text)."""
    rows, columns = list(rows), list(columns)
    order = order or {}

    def key_of(cols, values):
        return [(0, order[c].get(v, math.inf), "") if c in order else _sort_key(c, v)
                for c, v in zip(cols, values, strict=False)]

    metrics = [m for m in metrics if m in set(summary["metric"])] if len(summary) else []
    col_keys = sorted({tuple(r) for r in summary[columns].itertuples(index=False)} if columns and len(summary)
                      else {()}, key=lambda k: key_of(columns, k))
    row_keys = sorted({tuple(r) for r in summary[rows].itertuples(index=False)} if len(summary) else set(),
                      key=lambda k: key_of(rows, k))
    lookup = {}
    for rec in summary.to_dict("records"):
        key = (tuple(rec[c] for c in rows), tuple(rec[c] for c in columns), rec["metric"])
        lookup[_norm(key)] = rec
    col_headers = [(*(value_label(c, v) for c, v in zip(columns, ck, strict=False)), metric_label(m))
                   for ck in col_keys for m in metrics]
    out_rows = []
    for rk in row_keys:
        cells = []
        for ck in col_keys:
            for m in metrics:
                rec = lookup.get(_norm((rk, ck, m)))
                if rec is None:
                    cells.append(("-", False))
                else:
                    cells.append((cell_text(m, rec["mean"], rec["std"], int(rec["n"])), bool(rec["best"])))
        out_rows.append(([value_label(c, v) for c, v in zip(rows, rk, strict=False)], cells))
    return Wide(row_headers=[COLUMN_LABELS.get(r, r) for r in rows], col_headers=col_headers, rows=out_rows)


def _norm(key):
    """NaN-safe dictionary key (NaN != NaN would lose groups whose value is missing)."""
    def fix(v):
        if isinstance(v, tuple):
            return tuple(fix(x) for x in v)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "__nan__"
        return v
    return fix(key)


# --------------------------------------------------------------------------------------------------
# Writers


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(wide: Wide) -> str:
    header = [*wide.row_headers, *(" ".join(h) for h in wide.col_headers)]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join([":--"] * len(wide.row_headers) + ["--:"] * len(wide.col_headers)) + "|"]
    for labels, cells in wide.rows:
        texts = [_md_escape(t) for t in labels] + [f"**{_md_escape(t)}**" if best else _md_escape(t)
                                                   for t, best in cells]
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def _tex(text: str) -> str:
    text = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return text.replace("±", r"$\pm$").replace(">=", r"$\geq$")


def to_latex(wide: Wide, caption: str = "", label: str = "") -> str:
    """A ``booktabs`` table; the column keys (e.g. benchmarks) span their metrics with ``\\multicolumn``."""
    n_rows, n_cols = len(wide.row_headers), len(wide.col_headers)
    lines = [r"\begin{table}[t]", r"\centering", r"\small"]
    if caption:
        lines.append(rf"\caption{{{_tex(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{'l' * n_rows}{'c' * n_cols}}}", r"\toprule"]
    depth = max((len(h) for h in wide.col_headers), default=1)
    # Upper header levels: runs of equal labels become one spanning cell.
    for level in range(depth - 1):
        cells, rules, start = [""] * n_rows, [], n_rows + 1
        i = 0
        while i < n_cols:
            j = i
            while j + 1 < n_cols and wide.col_headers[j + 1][: level + 1] == wide.col_headers[i][: level + 1]:
                j += 1
            span = j - i + 1
            text = _tex(wide.col_headers[i][level])
            cells.append(rf"\multicolumn{{{span}}}{{c}}{{{text}}}" if span > 1 else text)
            rules.append(rf"\cmidrule(lr){{{start + i}-{start + j}}}")
            i = j + 1
        lines.append(" & ".join(cells) + r" \\")
        lines.append(" ".join(rules))
    lines.append(" & ".join([_tex(h) for h in wide.row_headers] + [_tex(h[-1]) for h in wide.col_headers]) + r" \\")
    lines.append(r"\midrule")
    for labels, cells in wide.rows:
        texts = [_tex(t) for t in labels] + [rf"\textbf{{{_tex(t)}}}" if best else _tex(t) for t, best in cells]
        lines.append(" & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def safe_name(text: str) -> str:
    """A file-name fragment: ``method.kd_weight`` -> ``method.kd_weight``, ``a=b,c=d`` -> ``a-b_c-d``."""
    text = text.replace("=", "-").replace(",", "_")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "all"


def frame_to_markdown(frame: pd.DataFrame, formats: dict[str, str] | None = None) -> str:
    """A plain frame as a Markdown table (``formats``: column -> format spec for numbers)."""
    formats = formats or {}
    if frame.empty:
        return "(none)\n"
    lines = ["| " + " | ".join(_md_escape(str(c)) for c in frame.columns) + " |",
             "|" + "|".join("--:" if pd.api.types.is_numeric_dtype(frame[c]) else ":--" for c in frame.columns) + "|"]
    for rec in frame.itertuples(index=False):
        cells = []
        for c, v in zip(frame.columns, rec, strict=False):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("-")
            elif c in formats:
                cells.append(format(v, formats[c]))
            else:
                cells.append(_md_escape(str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
