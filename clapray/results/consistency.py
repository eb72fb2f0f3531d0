"""Checking a store: every run's stored summaries follow from its accuracy matrix (:func:`verify_consistency`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from clapray.fileio import data_files, resolve_filesystem
from clapray.results.files import read_file, table_dir
from clapray.results.reader import load_table
from clapray.results.schema import TABLES

# --------------------------------------------------------------------------------------------------
# Consistency


# The summaries recomputed from the accuracy matrix, in the order recompute() returns them.
SUMMARIES = ("last_acc", "avg_acc", "bwt", "forgetting")


def _differs(column: str, stored: float, value: float, atol: float) -> bool:
    # Rows of stores written before forgetting was recorded (schema version 1) read it as NaN.
    if column == "forgetting" and math.isnan(stored):
        return False
    return not _close(stored, value, atol)


def _close(a: float, b: float, atol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=atol)


def verify_consistency(root: str | Path | Sequence[str | Path], *, filesystem: pafs.FileSystem | None = None,
                       atol: float = 1e-6) -> list[str]:
    """Check that every run's stored summaries follow from its accuracy matrix; return the problems.

    From the ``accuracy`` rows of a run, the matrix a[t, j] is rebuilt and, with :mod:`clapray.metrics`,
    every ``tasks`` row's ``acc`` (A_t, the macro mean of row t), ``avg_acc`` (mean of A_0..A_t) and
    ``bwt`` (mean over j < t of a[t, j] - a[j, j], NaN at t = 0) and ``forgetting`` (average forgetting,
    NaN at t = 0) are recomputed, as are the ``runs`` row's ``last_acc``, ``avg_acc``, ``bwt`` and
    ``forgetting`` at ``tasks_done - 1``. Also reported: duplicate rows,
    incomplete matrix rows, task rows or run rows without accuracy rows, runs that have task or accuracy
    rows but no ``runs`` row (a deleted or lost run file), and every file that cannot be read (truncated,
    not Parquet), which is then left out of the other checks. An empty list means consistent.
    """
    from clapray import metrics  # imports torch; only needed here

    problems: list[str] = []
    roots = [root] if isinstance(root, (str, Path)) else list(root)
    for r in roots:
        problems.extend(unreadable_files(r, filesystem=filesystem))
    runs = load_table(root, "runs", filesystem=filesystem, skip_unreadable=True)
    tasks = load_table(root, "tasks", filesystem=filesystem, skip_unreadable=True)
    accuracy = load_table(root, "accuracy", filesystem=filesystem, skip_unreadable=True)

    known = set(runs["run_id"].astype(str)) if len(runs) else set()
    orphans: dict[str, list[str]] = {}
    for name, frame in (("tasks", tasks), ("accuracy", accuracy)):
        for run_id in sorted(set(frame["run_id"].astype(str)) - known) if len(frame) else ():
            orphans.setdefault(run_id, []).append(name)
    for run_id, names in sorted(orphans.items()):
        problems.append(f"runs: no row for run {run_id}, which has {' and '.join(names)} rows (its runs file is "
                        f"missing or unreadable)")

    for name, frame, key in (("tasks", tasks, ["run_id", "task"]),
                             ("accuracy", accuracy, ["run_id", "task", "eval_task"]),
                             ("runs", runs, ["run_id"])):
        dup = frame[frame.duplicated(key, keep=False)]
        for values in dup[key].drop_duplicates().itertuples(index=False):
            problems.append(f"{name}: duplicate rows for {dict(zip(key, values, strict=False))}")

    matrices: dict[str, np.ndarray] = {}
    for run_id, rows in accuracy.groupby("run_id", sort=True):
        size = int(rows["task"].max()) + 1
        mat = np.full((size, size), np.nan)
        mat[rows["task"].to_numpy(dtype=int), rows["eval_task"].to_numpy(dtype=int)] = rows["acc"].to_numpy(float)
        matrices[str(run_id)] = mat

    def recompute(run_id: str, step: int, where: str) -> tuple[float, float, float, float] | None:
        mat = matrices.get(run_id)
        if mat is None or step >= mat.shape[0]:
            problems.append(f"{where}: no accuracy rows for task {step}")
            return None
        sub = mat[: step + 1, : step + 1]
        try:
            return (metrics.last_accuracy(sub, step), metrics.average_incremental_accuracy(sub),
                    metrics.backward_transfer(sub, step), metrics.average_forgetting(sub, step))
        except ValueError as err:
            problems.append(f"{where}: accuracy matrix incomplete ({err})")
            return None

    for row in tasks.itertuples(index=False):
        run_id, step = str(row.run_id), int(row.task)
        where = f"tasks: run {run_id} task {step}"
        expected = recompute(run_id, step, where)
        if expected is None:
            continue
        for column, value in zip(SUMMARIES, expected, strict=True):
            stored = float(getattr(row, column, math.nan))
            if _differs(column, stored, value, atol):
                problems.append(f"{where}: {column} = {stored!r} but the accuracy table gives {value!r}")

    for _, row in runs.iterrows():
        run_id, done = str(row["run_id"]), row["tasks_done"]
        if pd.isna(done) or int(done) == 0:
            continue
        where = f"runs: run {run_id}"
        expected = recompute(run_id, int(done) - 1, where)
        if expected is None:
            continue
        for column, value in zip(SUMMARIES, expected, strict=True):
            stored = float(row.get(column, math.nan))
            if _differs(column, stored, value, atol):
                problems.append(f"{where}: {column} = {stored!r} but the accuracy table gives {value!r}")
        n_task_rows = int((tasks["run_id"] == run_id).sum()) if len(tasks) else 0
        if n_task_rows != int(done):
            problems.append(f"{where}: tasks_done = {int(done)} but {n_task_rows} task rows")
    return problems


def unreadable_files(root: str | Path, *, filesystem: pafs.FileSystem | None = None) -> list[str]:
    """``"<table>: <path> is unreadable (<why>)"`` for every data file of ``root`` that cannot be read."""
    fs, path = resolve_filesystem(root, filesystem)
    out = []
    for table in TABLES:
        for file in data_files(fs, table_dir(path, table)):
            if read_file(fs, file) is None:
                out.append(f"{table}: {file} is unreadable ({_why_unreadable(fs, file)})")
    return out


def _why_unreadable(fs: pafs.FileSystem, path: str) -> str:
    import pyarrow.parquet as pq

    try:
        pq.read_table(path, filesystem=fs)
    except (OSError, pa.ArrowException) as err:
        return str(err).splitlines()[0][:120] if str(err) else type(err).__name__
    return "unknown"
