"""Which config fields a sweep varied inside each cell, and how their values group for a table or a curve.

A *swept knob* of a cell is a config field that takes more than one value among the cell's trials, seeds
aside. The store does not keep the sweep's search space, so the knobs are read from the trials
themselves; a field tied to another (``same_as``: ``method.mc_samples_eval`` copies
``method.mc_samples_train``) would split every statistic between two names, so such twins are merged
under the first name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clapray.report.load import knob_columns

# A numeric knob with more distinct values than this is binned (a continuous search draws a new value
# for nearly every configuration, which would make a table of one trial per row).
MAX_EXACT_VALUES = 6
N_BINS = 4


@dataclass(frozen=True)
class Knob:
    column: str
    twins: tuple[str, ...] = ()  # fields always equal to this one in the cell

    @property
    def label(self) -> str:
        return self.column + (f" (= {', '.join(self.twins)})" if self.twins else "")


def _values(values: pd.Series) -> tuple:
    """The column's values as a hashable tuple, missing values alike (for finding twins)."""
    return tuple("__missing__" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                 for v in values.astype("object"))


def cell_knobs(trials: pd.DataFrame) -> list[Knob]:
    """The swept knobs of one cell's trials, twins merged, in config-field order.

    Missing values do not count as a value: a field that only some trials have (stores written before
    the field existed) is a difference of versions, not of configurations.
    """
    knobs: list[Knob] = []
    seen: dict[tuple, int] = {}
    for column in knob_columns(trials):
        values = trials[column]
        if values.dropna().astype("object").nunique() < 2:
            continue
        key = _values(values)
        if key in seen:
            first = knobs[seen[key]]
            knobs[seen[key]] = Knob(first.column, (*first.twins, column))
            continue
        seen[key] = len(knobs)
        knobs.append(Knob(column))
    return knobs


def swept_knobs(trials: pd.DataFrame) -> dict[str, list[Knob]]:
    """Per cell (sorted), its swept knobs; cells without any are left out."""
    out = {}
    for cell, part in trials.groupby("cell", sort=True):
        knobs = cell_knobs(part)
        if knobs:
            out[str(cell)] = knobs
    return out


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def group_values(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(label, x) per trial: the value itself when there are few, else the bin it falls in.

    Numeric knobs with more than :data:`MAX_EXACT_VALUES` values are cut into :data:`N_BINS` equal-width
    bins (in log space when the values span two decades or more, as learning rates do); ``x`` is then the
    bin's centre and ``label`` its interval. Non-numeric knobs have ``x`` NaN (drawn as categories).
    """
    present = values.dropna()
    if not _is_numeric(values):
        label = values.astype("object").map(lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v))
                                            else str(v))
        return label, pd.Series(np.nan, index=values.index)
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    if present.nunique() <= MAX_EXACT_VALUES:
        label = numbers.map(lambda v: "-" if math.isnan(v) else (str(int(v)) if float(v).is_integer() else f"{v:.4g}"))
        return label, numbers
    low, high = float(numbers.min()), float(numbers.max())
    log = low > 0 and high / low >= 100
    space = np.log10(numbers) if log else numbers
    edges = np.linspace(float(space.min()), float(space.max()), N_BINS + 1)
    index = np.clip(np.searchsorted(edges, space.to_numpy(), side="right") - 1, 0, N_BINS - 1)
    shown = 10 ** edges if log else edges
    centres = (10 ** ((edges[:-1] + edges[1:]) / 2)) if log else (edges[:-1] + edges[1:]) / 2
    label = pd.Series([f"[{shown[i]:.3g}, {shown[i + 1]:.3g}{']' if i == N_BINS - 1 else ')'}" for i in index],
                      index=values.index)
    x = pd.Series(centres[index], index=values.index)
    missing = numbers.isna()
    label[missing], x[missing] = "-", np.nan
    return label, x
