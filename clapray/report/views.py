"""The report's views beyond the main tables: forgetting, settings, cost, task-IL vs class-IL (issue-level
questions a sweep is run to answer), each a table and a figure written into the report directory.

* **Forgetting curve**: average forgetting F_t after every task (the drop from the best accuracy each earlier
  task had, :func:`clapray.metrics.accuracy.average_forgetting`), recomputed from the accuracy table, mean ±
  std over seeds, per row of the main table.
* **Setting comparison**: the first metric per row in the standard, replay-free and compute-budgeted settings
  (the best configuration of each), with the standard deviation over seeds.
* **Accuracy against cost**: each configuration's seed mean of the first metric against its wall time (or
  GPU-seconds where runs have them) and its trainable parameters.
* **Task-IL vs class-IL**: Last accuracy after the last task without task identity (class-incremental, the
  paper's metric) and with it (task-aware: logits outside the task's classes masked).

Only ``pandas``, ``numpy``, ``matplotlib`` and the torch-free accuracy metrics are used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from clapray.metrics.accuracy import step_forgetting
from clapray.report import figures, tables
from clapray.results import aggregate

if TYPE_CHECKING:
    from clapray.report.build import Report
    from clapray.report.load import Store


def _keys(rows: Sequence[str]) -> list[str]:
    return [*rows, "benchmark"] if "benchmark" not in rows else list(rows)


def _run_matrices(store: Store, runs: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """The accuracy matrix a[t, j] of every run of ``runs``, from the store's accuracy table."""
    acc = store.accuracy.merge(runs[["store", "run_id", "num_tasks"]], on=["store", "run_id"])
    out = {}
    for (root, run_id), rows in acc.groupby(["store", "run_id"], sort=True):
        size = int(rows["num_tasks"].iloc[0])
        matrix = np.full((size, size), np.nan)
        matrix[rows["task"].to_numpy(int), rows["eval_task"].to_numpy(int)] = rows["acc"].to_numpy(float)
        out[(str(root), str(run_id))] = matrix
    return out


def forgetting(report: Report, store: Store, selected: pd.DataFrame, rows: Sequence[str], chosen: str,
               trials_text) -> None:
    keys = _keys(rows)
    matrices = _run_matrices(store, selected)
    records = []
    for run in selected.itertuples(index=False):
        rec = run._asdict()
        matrix = matrices.get((str(rec["store"]), str(rec["run_id"])))
        if matrix is None:
            continue
        for task, value in enumerate(step_forgetting(matrix)):
            if task > 0:
                records.append({**{k: rec[k] for k in keys}, "task": task, "forgetting": value})
    if not records:
        report.notes.append("forgetting curve: no complete trial with two or more tasks")
        return
    per_task = aggregate(pd.DataFrame(records), by=[*keys, "task"], metrics=["forgetting"])
    per_task.to_csv(report.out / "forgetting.csv", index=False)
    curves = per_task.rename(columns={"forgetting_mean": "mean", "forgetting_std": "std", "forgetting_count": "n"})
    figures.task_curves(curves, rows, report.out / "forgetting.png", ylabel="average forgetting F_t (points)",
                        title="Average forgetting after each task (mean ± std over seeds)")
    report.add("figure", "Forgetting after each task", ["forgetting.png", "forgetting.csv"],
               "average forgetting F_t (drop from each earlier task's best accuracy) after every task, per row, "
               "mean ± std over seeds", trials_text(selected, chosen))


def settings(report: Report, complete: pd.DataFrame, rows: Sequence[str], metric: str, trials_text) -> None:
    if complete.empty or complete["setting"].nunique() < 2:
        report.notes.append("setting comparison: the store holds one setting only")
        return
    keys = _keys(rows)
    selected = tables.select_best_configurations(complete, [*keys, "setting"], metric)
    summary = aggregate(selected, by=[*keys, "setting"], metrics=[metric])
    summary.to_csv(report.out / "settings.csv", index=False)
    figures.grouped_bars(summary, keys, "setting", metric, report.out / "settings.png",
                         title="Standard vs resource-constrained settings (best configuration each)")
    report.add("figure", "Setting comparison", ["settings.png", "settings.csv"],
               f"{tables.metric_label(metric)} per row in each setting (standard, replay-free, budgeted), bars "
               "with ±1 std over seeds", trials_text(selected, f"best configuration per {' x '.join(keys)} x setting"))


def cost(report: Report, complete: pd.DataFrame, rows: Sequence[str], metric: str, trials_text) -> None:
    if complete.empty:
        return
    time_column = "gpu_s" if "gpu_s" in complete and complete["gpu_s"].notna().any() else "wall_s"
    keys = [*_keys(rows), "config_key"]
    present = [c for c in (metric, time_column, "trainable_params") if c in complete]
    per_conf = aggregate(complete, by=keys, metrics=present)
    per_conf.to_csv(report.out / "accuracy_vs_cost.csv", index=False)
    figures.metric_against_cost(per_conf, _keys(rows), metric, [c for c in (time_column, "trainable_params")
                                                                if c in present], report.out / "accuracy_vs_cost.png")
    report.add("figure", "Accuracy against cost", ["accuracy_vs_cost.png", "accuracy_vs_cost.csv"],
               f"each configuration's mean {tables.metric_label(metric)} over seeds against its "
               f"{'GPU-seconds' if time_column == 'gpu_s' else 'wall time'} and trainable parameters, "
               "±1 std bars", trials_text(complete, "every configuration"))


def task_incremental(report: Report, store: Store, selected: pd.DataFrame, rows: Sequence[str], chosen: str,
                     trials_text) -> None:
    keys = _keys(rows)
    last = selected[["store", "run_id", "num_tasks", *keys]].copy()
    last["task"] = last["num_tasks"].astype(int) - 1
    # The accuracy rows carry the id columns too (cell, seed, ...): take the keys from the runs only.
    shared = [c for c in keys if c in store.accuracy.columns]
    acc = store.accuracy.drop(columns=shared).merge(last, on=["store", "run_id", "task"])
    if acc.empty or "task_aware_acc" not in acc:
        report.notes.append("task-IL vs class-IL: no accuracy rows for the selected trials' last task")
        return
    per_run = acc.groupby(["store", "run_id", *keys], dropna=False).agg(
        class_il=("acc", "mean"), task_il=("task_aware_acc", "mean")).reset_index()
    summary = tables.summarize(per_run, list(rows), [] if "benchmark" in rows else ["benchmark"],
                               ["class_il", "task_il"], mark_best=False)
    name = "task_vs_class_il"
    wide = tables.widen(summary, list(rows), [] if "benchmark" in rows else ["benchmark"], ["class_il", "task_il"])
    (report.out / f"{name}.md").write_text(tables.to_markdown(wide))
    summary.to_csv(report.out / f"{name}.csv", index=False)
    report.add("table", "Task-IL vs class-IL", [f"{name}.md", f"{name}.csv"],
               "Last accuracy after the last task without task identity (class-IL, the paper's metric) and with "
               "it (task-IL: only the task's own classes compete), mean ± std over seeds",
               trials_text(selected, chosen))
