"""Reading the store back: :func:`load_table` (one or several stores, schemas unified) and
:func:`aggregate` (mean, std, 95 % CI and count over seeds)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from clapray.fileio import data_files, resolve_filesystem
from clapray.results.files import read_file, upgrade_table
from clapray.results.schema import TABLES, Table, accuracy_schema, calibration_schema, run_schema, task_schema

# --------------------------------------------------------------------------------------------------
# Reading


def _empty_schema(table: Table) -> pa.Schema:
    if table == "runs":
        return run_schema()
    if table == "tasks":
        return task_schema()
    if table == "calibration":
        return calibration_schema()
    return accuracy_schema()


def _read_dir(fs: pafs.FileSystem, directory: str, skip_unreadable: bool = False) -> pa.Table | None:
    files = data_files(fs, directory)
    if skip_unreadable:
        files = [f for f in files if read_file(fs, f) is not None]
    if not files:
        return None
    factory = pads.FileSystemDatasetFactory(fs, files, pads.ParquetFileFormat())
    # Inspect every file, not just the first (which is what a plain directory read does), so columns
    # that only some runs have (extra losses, extra run columns) are kept; ints widen to floats if mixed.
    try:
        schema = factory.inspect(promote_options="permissive", fragments=None)
    except pa.ArrowTypeError:
        # Files of an older schema version beside newer ones (a store resumed after an upgrade of
        # clapray): read them one by one in today's types.
        tables = [upgrade_table(t) for t in (read_file(fs, f) for f in files) if t is not None]
        return pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="permissive")
    return factory.finish(schema).to_table()


def load_table(root: str | Path | Sequence[str | Path], table: Table, *,
               filesystem: pafs.FileSystem | None = None, skip_unreadable: bool = False) -> pd.DataFrame:
    """Read one table of one or several stores into a DataFrame.

    Every file's schema is unified (pyarrow's permissive promotion), so columns only some files have
    appear with missing values elsewhere. Nullable int columns with a missing value come back as float64
    with NaN, as with ``pd.read_parquet``. A store with no file of ``table`` gives an empty frame with the
    table's fixed columns (without id or extra columns, which the store does not know yet).

    An unreadable file (truncated, not Parquet) raises, unless ``skip_unreadable`` leaves it out
    (:func:`~clapray.results.verify_consistency` names such files).
    """
    if table not in TABLES:
        raise ValueError(f"table {table!r}: expected one of {', '.join(TABLES)}")
    roots = [root] if isinstance(root, (str, Path)) else list(root)
    parts = []
    for r in roots:
        fs, path = resolve_filesystem(r, filesystem)
        part = _read_dir(fs, f"{path}/{table}", skip_unreadable)
        if part is not None:
            parts.append(part)
    if not parts:
        return _empty_schema(table).empty_table().to_pandas()
    # Schema metadata (ids) may differ between stores; it is descriptive only, so drop it before concat.
    merged = pa.concat_tables([p.replace_schema_metadata(None) for p in parts], promote_options="permissive")
    return merged.to_pandas()


# --------------------------------------------------------------------------------------------------
# Aggregation

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959963984540054


def t_critical_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (NaN for ``dof < 1``).

    A table up to 30; beyond, the normal quantile with the Cornish-Fisher correction terms in 1/dof
    (error below 1e-5 there), which avoids depending on scipy.
    """
    if dof < 1:
        return math.nan
    if dof <= len(_T975):
        return _T975[dof - 1]
    z, v = _Z975, float(dof)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3))


def aggregate(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean, std, 95 % CI half-width and count of ``metrics`` per group of ``by`` (e.g. over seeds).

    For each metric ``m``: ``m_mean``, ``m_std`` (ddof=1, NaN for one value), ``m_ci95`` (half-width
    ``t_{0.975, n-1} * std / sqrt(n)``) and ``m_count`` (n, the non-missing values). Missing values of a
    ``by`` column form their own group (a config field that is null in some runs). Empty ``by`` gives one
    row over the whole frame.
    """
    missing = [c for c in (*by, *metrics) if c not in df.columns]
    if missing:
        raise KeyError(f"aggregate: no column {', '.join(map(repr, missing))}")
    keys = list(by) or ["__all__"]
    frame = pd.DataFrame({k: df[k] for k in by}, index=df.index)
    if not by:
        frame["__all__"] = 0
    # Metrics go in under private names so that a metric may also be a `by` column without a clash.
    names = {m: f"__m{i}__" for i, m in enumerate(metrics)}
    for m, name in names.items():
        frame[name] = pd.to_numeric(df[m], errors="raise").astype("float64")
    stats = frame.groupby(keys, dropna=False, sort=True)[list(names.values())].agg(["mean", "std", "count"])
    out = pd.DataFrame(index=stats.index)
    for m, name in names.items():
        mean, std, count = stats[(name, "mean")], stats[(name, "std")], stats[(name, "count")].astype("int64")
        t = np.array([t_critical_975(int(n) - 1) for n in count], dtype="float64")
        out[f"{m}_mean"] = mean
        out[f"{m}_std"] = std  # pandas' std is ddof=1
        with np.errstate(divide="ignore", invalid="ignore"):  # n = 0 or 1: the CI is NaN, not a warning
            out[f"{m}_ci95"] = t * std.to_numpy() / np.sqrt(count.to_numpy(dtype="float64"))
        out[f"{m}_count"] = count
    out = out.reset_index()
    if not by:
        out = out.drop(columns="__all__")
    return out


