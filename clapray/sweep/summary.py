"""The console summary at the end of a sweep: every configuration's final metrics over its seeds.

One line per sampled configuration of the finished trials, ``mean ± std (n) [95% CI]`` of Avg and Last,
and, where the sweep has a single zero-shot reference configuration, the paired difference of Last against
it (trials of the same seed share the class order and the evaluation batches when the sweep's
``seed_fields`` set the class order, so the pairing removes that part of the spread). A number from one
seed is printed as such: ``(1)`` and no interval.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from clapray.results.reader import t_critical_975

REFERENCE_VARIANT = "zeroshot"


def mean_std_ci(values: Sequence[float]) -> str:
    """``83.1 ± 1.2 (3) [80.2, 86.0]``: mean, sample std, count and the t-based 95 % CI of the mean."""
    x = np.asarray([v for v in values if np.isfinite(v)], dtype="float64")
    if len(x) == 0:
        return "-"
    if len(x) == 1:
        return f"{x[0]:.1f} (1)"
    std = float(x.std(ddof=1))
    half = t_critical_975(len(x) - 1) * std / np.sqrt(len(x))
    return f"{x.mean():.1f} ± {std:.1f} ({len(x)}) [{x.mean() - half:.1f}, {x.mean() + half:.1f}]"


def _short_params(sampled: object) -> str:
    try:
        values = json.loads(sampled) if isinstance(sampled, str) else {}
    except ValueError:
        values = {}
    parts = []
    for name, value in sorted(values.items()):
        short = name.rsplit(".", 1)[-1]
        parts.append(f"{short}={value:.3g}" if isinstance(value, float) else f"{short}={value}")
    return " ".join(parts)


def summary_lines(runs: pd.DataFrame) -> list[str]:
    """Lines of the summary of a sweep store's ``runs`` table (empty when no trial finished)."""
    needed = {"cell", "configuration", "seed", "status", "avg_acc", "last_acc"}
    if runs.empty or not needed <= set(runs.columns):
        return []
    done = runs[runs["status"] == "finished"]
    if done.empty:
        return []
    variant = done["method.variant"] if "method.variant" in done.columns else pd.Series("", index=done.index)
    reference_configs = sorted(done.loc[variant == REFERENCE_VARIANT, "configuration"].unique())
    reference = None
    if len(reference_configs) == 1:
        ref = done[done["configuration"] == reference_configs[0]]
        reference = dict(zip(ref["seed"].astype(int), ref["last_acc"].astype(float), strict=True))
    lines = ["summary of finished trials: mean ± std (n seeds) [95% CI of the mean]"
             + ("; vs zero-shot = Last minus zero-shot's Last, paired by seed" if reference else "")]
    for configuration, group in done.groupby("configuration", sort=True):
        params = _short_params(group["sampled"].iloc[0]) if "sampled" in group.columns else ""
        line = (f"  {configuration}{'  ' + params if params else ''}: Avg {mean_std_ci(group['avg_acc'])}  "
                f"Last {mean_std_ci(group['last_acc'])}")
        if reference is not None and configuration != reference_configs[0]:
            diffs = [last - reference[seed] for seed, last in zip(group["seed"].astype(int),
                                                                  group["last_acc"].astype(float), strict=True)
                     if seed in reference]
            if diffs:
                line += f"  vs zero-shot {mean_std_ci(diffs)}"
        lines.append(line)
    return lines


def print_summary(root: str, out) -> None:
    """Print :func:`summary_lines` of the store at ``root``; an unreadable store prints nothing (the
    sweep's results are in the store regardless, and ``python -m clapray.report`` reads them)."""
    from clapray.results import load_table

    try:
        runs = load_table(root, "runs", skip_unreadable=True)
    except Exception:  # noqa: BLE001 - a summary never fails a finished sweep
        return
    for line in summary_lines(runs):
        print(line, file=out)
