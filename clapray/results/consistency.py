"""Checking a store: every run's stored summaries follow from its accuracy matrix (:func:`verify_consistency`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from clapray.results.reader import load_table

# --------------------------------------------------------------------------------------------------
# Consistency


def _close(a: float, b: float, atol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=atol)


def verify_consistency(root: str | Path | Sequence[str | Path], *, filesystem: pafs.FileSystem | None = None,
                       atol: float = 1e-6) -> list[str]:
    """Check that every run's stored summaries follow from its accuracy matrix; return the problems.

    From the ``accuracy`` rows of a run, the matrix a[t, j] is rebuilt and, with :mod:`clapray.metrics`,
    every ``tasks`` row's ``acc`` (A_t, the macro mean of row t), ``avg_acc`` (mean of A_0..A_t) and
    ``bwt`` (mean over j < t of a[t, j] - a[j, j], NaN at t = 0) are recomputed, as are the ``runs``
    row's ``last_acc``, ``avg_acc`` and ``bwt`` at ``tasks_done - 1``. Also reported: duplicate rows,
    incomplete matrix rows, and task rows or run rows without accuracy rows. An empty list means
    consistent.
    """
    from clapray import metrics  # imports torch; only needed here

    runs = load_table(root, "runs", filesystem=filesystem)
    tasks = load_table(root, "tasks", filesystem=filesystem)
    accuracy = load_table(root, "accuracy", filesystem=filesystem)
    problems: list[str] = []

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

    def recompute(run_id: str, step: int, where: str) -> tuple[float, float, float] | None:
        mat = matrices.get(run_id)
        if mat is None or step >= mat.shape[0]:
            problems.append(f"{where}: no accuracy rows for task {step}")
            return None
        sub = mat[: step + 1, : step + 1]
        try:
            return (metrics.last_accuracy(sub, step), metrics.average_incremental_accuracy(sub),
                    metrics.backward_transfer(sub, step))
        except ValueError as err:
            problems.append(f"{where}: accuracy matrix incomplete ({err})")
            return None

    for row in tasks.itertuples(index=False):
        run_id, step = str(row.run_id), int(row.task)
        where = f"tasks: run {run_id} task {step}"
        expected = recompute(run_id, step, where)
        if expected is None:
            continue
        for column, value in zip(("last_acc", "avg_acc", "bwt"), expected, strict=False):
            stored = float(getattr(row, column))
            if not _close(stored, value, atol):
                problems.append(f"{where}: {column} = {stored!r} but the accuracy table gives {value!r}")

    for _, row in runs.iterrows():
        run_id, done = str(row["run_id"]), row["tasks_done"]
        if pd.isna(done) or int(done) == 0:
            continue
        where = f"runs: run {run_id}"
        expected = recompute(run_id, int(done) - 1, where)
        if expected is None:
            continue
        for column, value in zip(("last_acc", "avg_acc", "bwt"), expected, strict=False):
            stored = float(row[column])
            if not _close(stored, value, atol):
                problems.append(f"{where}: {column} = {stored!r} but the accuracy table gives {value!r}")
        n_task_rows = int((tasks["run_id"] == run_id).sum()) if len(tasks) else 0
        if n_task_rows != int(done):
            problems.append(f"{where}: tasks_done = {int(done)} but {n_task_rows} task rows")
    return problems
