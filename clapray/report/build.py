"""Assemble a report: every table and figure from a loaded store, written into one directory.

Which trials each artefact uses (the index repeats it per artefact):

* only complete trials; incomplete ones (running, stopped, errored) are listed in ``incomplete.md``;
* the main, calibration and novelty-detection tables, the accuracy-evolution figure and the reliability
  diagram use the *selected* configuration of every (row, benchmark) group: the one with the best mean
  of the first metric over its seeds (a grid sweep has one configuration per group, so nothing is
  chosen there). They use the standard setting when the store also holds others, as the paper's Table 1;
* the resource table selects the same way per (row, benchmark, setting);
* the ablation tables and curves, the cost table and the importance use every complete trial.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clapray.report import figures, tables, views
from clapray.report.importance import importance_table
from clapray.report.knobs import group_values, swept_knobs
from clapray.report.load import Store
from clapray.results import aggregate

CALIBRATION_METRICS = ("ece", "ece_per_batch")
NOVELTY_METRICS = ("phndd_auroc", "phndd_aupr", "phndd_fpr95")
COST_METRICS = ("wall_s", "gpu_s", "trainable_params", "peak_memory_mb")
# A knob's curve is drawn only through at least this many values (its table always lists them).
MIN_CURVE_VALUES = 3


@dataclass
class Artefact:
    kind: str  # "table" or "figure"
    title: str
    files: list[str]  # paths relative to the report directory; the first is the one to open
    what: str  # one line: what it shows
    trials: str  # which trials it used


@dataclass
class Report:
    out: Path
    artefacts: list[Artefact] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args, **kwargs) -> None:
        self.artefacts.append(Artefact(*args, **kwargs))


def _trials_text(frame: pd.DataFrame, what: str = "") -> str:
    n_conf = frame["config_key"].nunique() if len(frame) else 0
    seeds = frame.groupby("config_key")["seed"].nunique() if len(frame) else pd.Series(dtype=int)
    seed_text = ""
    if len(seeds):
        low, high = int(seeds.min()), int(seeds.max())
        seed_text = f", {low} seed{'s' if low != 1 else ''} each" if low == high else f", {low}-{high} seeds each"
    return (f"{_plural(len(frame), 'complete trial')} of {_plural(n_conf, 'configuration')}{seed_text}"
            + (f"; {what}" if what else ""))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _write_summary(report: Report, name: str, summary: pd.DataFrame, rows: Sequence[str], columns: Sequence[str],
                   metrics: Sequence[str], *, latex_caption: str | None = None,
                   order: dict[str, dict] | None = None) -> list[str]:
    wide = tables.widen(summary, rows, columns, metrics, order=order)
    files = [f"{name}.md", f"{name}.csv"]
    (report.out / f"{name}.md").write_text(tables.to_markdown(wide))
    summary.to_csv(report.out / f"{name}.csv", index=False)
    if latex_caption is not None:
        (report.out / f"{name}.tex").write_text(tables.to_latex(wide, caption=latex_caption, label=f"tab:{name}"))
        files.append(f"{name}.tex")
    return files


def _without(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``frame`` less the id columns (cell, seed, ...) it shares with ``runs``, before joining run columns on."""
    return frame.drop(columns=[c for c in columns if c in frame.columns and c not in ("store", "run_id")])


def _present(trials: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    return [m for m in metrics if m in trials.columns]


def build_report(store: Store, out: Path, *, by: Sequence[str], metrics: Sequence[str]) -> Report:
    """Write every table and figure of ``store`` into ``out`` (created) and return what was written."""
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out=out, notes=list(store.notes))
    rows = list(by)
    metric = metrics[0]  # selects configurations and drives the curves, heat-maps and importance
    complete = store.complete
    columns = [] if "benchmark" in rows else ["benchmark"]
    if len(complete) and complete[metric].notna().sum() == 0:
        report.notes.append(f"{metric} has no value in any complete trial, so no configuration could be selected "
                            "(gpu_s, for one, exists for GPU runs only)")

    # -- which trials the main tables use ---------------------------------------------------------------
    pool, pool_text = complete, "all settings"
    settings = set(complete["setting"]) if len(complete) else set()
    if "setting" not in rows and len(settings) > 1 and "standard" in settings:
        pool, pool_text = complete[complete["setting"] == "standard"], "standard setting"
    elif len(settings) == 1:
        pool_text = f"{next(iter(settings))} setting"
    selected = tables.select_best_configurations(pool, rows + columns, metric)
    chosen = (f"best configuration per {' x '.join(rows + columns)} by mean {tables.metric_label(metric)} "
              f"over seeds, {pool_text}")

    _incomplete_table(report, store)
    _main_tables(report, selected, rows, columns, metrics, chosen)
    _resource_table(report, complete, rows, metrics, metric)
    _cost_table(report, complete, rows)
    _ablation(report, complete, metrics)
    _importance(report, complete, metric)
    _evolution_figure(report, store, selected, rows, chosen)
    views.forgetting(report, store, selected, rows, chosen, _trials_text)
    views.task_incremental(report, store, selected, rows, chosen, _trials_text)
    views.settings(report, complete, rows, metric, _trials_text)
    views.cost(report, complete, rows, metric, _trials_text)
    _matrix_figures(report, store, complete, metric)
    _reliability_figure(report, store, selected, rows, chosen)
    _study_figures(report, store)
    return report


def _study_figures(report: Report, store: Store) -> None:
    from clapray.report.importance import study_figures

    for title, files, what in study_figures(store.roots, report.out):
        report.add("figure", title, files, what, "every trial the sweep's Optuna study recorded")


def _incomplete_table(report: Report, store: Store) -> None:
    inc = store.incomplete
    cols = [c for c in ("store", "run_id", "cell", "seed", "state", "tasks_done", "num_tasks", "error") if c in inc]
    frame = inc[cols].copy()
    if "error" in frame:
        frame["error"] = frame["error"].map(lambda e: e if not isinstance(e, str) or len(e) <= 80 else e[:77] + "...")
    frame = frame.sort_values([c for c in ("state", "cell", "run_id") if c in frame.columns])
    formats = {"tasks_done": ".0f", "num_tasks": ".0f"}
    (report.out / "incomplete.md").write_text(tables.frame_to_markdown(frame, formats))
    frame.to_csv(report.out / "incomplete.csv", index=False)
    report.add("table", "Incomplete trials", ["incomplete.md", "incomplete.csv"],
               "trials left out of every table and figure, with why (running, stopped, error, missing tasks)",
               store.summary())


def _main_tables(report: Report, selected: pd.DataFrame, rows, columns, metrics, chosen: str) -> None:
    summary = tables.summarize(selected, rows, columns, metrics)
    files = _write_summary(report, "main", summary, rows, columns, metrics,
                           latex_caption="Mean ± std over seeds (n: number of seeds); best per column in bold.")
    report.add("table", "Main table (Table 1 layout)", files,
               f"{', '.join(tables.metric_label(m) for m in metrics)} per {' / '.join(rows)} (rows) and "
               f"benchmark (columns), mean ± std (seeds), best per column in bold",
               _trials_text(selected, chosen))
    for name, title, group, what in (
            ("calibration", "Calibration (ECE)", CALIBRATION_METRICS,
             "expected calibration error after the last task: dataset-level and the official per-batch average"),
            ("novelty", "Novel data detection (PhNDD)", NOVELTY_METRICS,
             "AUROC, AUPR and FPR at 95 % TPR of seen vs future-task images, averaged over the steps")):
        present = _present(selected, group)
        summary = tables.summarize(selected, rows, columns, present)
        files = _write_summary(report, name, summary, rows, columns, present)
        report.add("table", title, files, what + "; best per column in bold", _trials_text(selected, chosen))


def _resource_table(report: Report, complete: pd.DataFrame, rows, metrics, metric: str) -> None:
    cols = [c for c in ("benchmark", "setting") if c not in rows
            and (c == "setting" or (len(complete) and complete[c].nunique() > 1))]
    selected = tables.select_best_configurations(complete, rows + cols, metric)
    summary = tables.summarize(selected, rows, cols, metrics)
    files = _write_summary(report, "resource", summary, rows, cols, metrics)
    report.add("table", "Resource-constrained settings", files,
               "standard vs replay-free vs compute-budgeted: " + ", ".join(tables.metric_label(m) for m in metrics)
               + " per setting, best per column in bold",
               _trials_text(selected, f"best configuration per {' x '.join(rows + cols)}"))


def _cost_table(report: Report, complete: pd.DataFrame, rows) -> None:
    keys = list(rows)
    for c in ("benchmark", "setting"):
        if c not in keys and len(complete) and (c == "benchmark" or complete[c].nunique() > 1):
            keys.append(c)
    present = _present(complete, COST_METRICS)
    summary = tables.summarize(complete, keys, [], present, mark_best=False)
    files = _write_summary(report, "cost", summary, keys, [], present)
    report.add("table", "Cost", files,
               "wall time, GPU-seconds (GPU runs only), trainable parameters and peak memory per run, mean ± std",
               _trials_text(complete, "every configuration"))


def _ablation(report: Report, complete: pd.DataFrame, metrics) -> None:
    knobs = swept_knobs(complete)
    by_column: dict[str, list[tuple[str, str]]] = {}
    for cell, cell_knobs in knobs.items():
        for knob in cell_knobs:
            by_column.setdefault(knob.column, []).append((cell, knob.label))
    if not by_column:
        report.notes.append("no swept knobs: every cell ran a single configuration (no ablation tables)")
    for column, cells in by_column.items():
        parts, order = [], {}
        for cell, _label in cells:
            trials = complete[complete["cell"] == cell].copy()
            trials["value"], trials["x"] = group_values(trials[column])
            parts.append(trials)
            for label, x in trials.drop_duplicates("value")[["value", "x"]].itertuples(index=False):
                order.setdefault(label, x if not pd.isna(x) else len(order))
        trials = pd.concat(parts, ignore_index=True)
        summary = tables.summarize(trials, ["cell", "value"], [], metrics, best_within=["cell"])
        label = cells[0][1]
        name = f"ablation__{tables.safe_name(column)}"
        files = _write_summary(report, name, summary.rename(columns={"value": label}), ["cell", label], [], metrics,
                               order={label: order})
        report.add("table", f"Ablation: {label}", files,
                   f"{', '.join(tables.metric_label(m) for m in metrics)} per value of {label} (binned when "
                   f"continuous) in each cell, marginal over the other sampled knobs; best per cell in bold",
                   _trials_text(trials, f"cells {', '.join(c for c, _ in cells)}"))
        values = int(trials["value"].nunique())
        if values < MIN_CURVE_VALUES:
            # Two points make a line whatever the knob does: a curve needs a third value to show a shape.
            report.notes.append(f"ablation curve of {label}: not drawn, the knob took {values} value(s) "
                                f"(a curve needs at least {MIN_CURVE_VALUES}); the table has them")
            continue
        curve = summary.merge(trials.drop_duplicates(["cell", "value"])[["cell", "value", "x"]], on=["cell", "value"])
        curve = curve.rename(columns={"value": "label"})
        figures.knob_curves(curve, label, [m for m in metrics if m in set(curve["metric"])], report.out / f"{name}.png")
        report.add("figure", f"Ablation curve: {label}", [f"{name}.png"],
                   f"one curve per cell: mean ± std of each metric against {label}",
                   _trials_text(trials))


def _importance(report: Report, complete: pd.DataFrame, metric: str) -> None:
    table, notes = importance_table(complete, metric)
    report.notes.extend(f"importance: {n}" for n in notes)
    (report.out / "importance.md").write_text(tables.frame_to_markdown(table, {"importance": ".3f"}))
    table.to_csv(report.out / "importance.csv", index=False)
    used = complete[complete["cell"].isin(set(table["cell"]))] if len(table) else complete.iloc[0:0]
    report.add("table", "Hyperparameter importance (fANOVA)", ["importance.md", "importance.csv"],
               f"fANOVA importance of every swept knob for {tables.metric_label(metric)} per cell, ranked "
               "(Optuna's evaluator on the runs table; one observation per configuration, its seed mean)",
               _trials_text(used))
    if len(table):
        figures.importance_bars(table, report.out / "importance.png")
        report.add("figure", "Hyperparameter importance", ["importance.png"],
                   "bar chart of the importance table, one panel per cell", _trials_text(used))


def _evolution_figure(report: Report, store: Store, selected: pd.DataFrame, rows, chosen: str) -> None:
    keys = [*rows, "benchmark"] if "benchmark" not in rows else list(rows)
    tasks = _without(store.tasks, keys).merge(selected[["store", "run_id", *keys]], on=["store", "run_id"])
    if tasks.empty:
        report.notes.append("accuracy evolution: no complete trial to draw")
        return
    per_task = aggregate(tasks, by=[*keys, "task"], metrics=["last_acc"]).rename(
        columns={"last_acc_mean": "mean", "last_acc_std": "std", "last_acc_count": "n"})
    if "benchmark" not in per_task:
        per_task["benchmark"] = "all"
    figures.accuracy_evolution(per_task, rows, report.out / "accuracy_evolution.png")
    report.add("figure", "Accuracy after each task", ["accuracy_evolution.png"],
               "A_t (macro accuracy over the seen tasks) after every task, per row, mean line and ±1 std band "
               "over seeds; one panel per benchmark", _trials_text(selected, chosen))


def _matrix_figures(report: Report, store: Store, complete: pd.DataFrame, metric: str) -> None:
    if complete.empty:
        return
    ascending = not tables.higher_is_better(metric)
    best = (complete.dropna(subset=[metric]).sort_values([metric, "run_id"], ascending=[ascending, True])
            .groupby("cell", sort=True).head(1).sort_values("cell"))
    for row in best.itertuples(index=False):
        rec = row._asdict()
        acc = store.accuracy[(store.accuracy["store"] == rec["store"]) & (store.accuracy["run_id"] == rec["run_id"])]
        size = int(rec["num_tasks"])
        matrix = np.full((size, size), np.nan)
        matrix[acc["task"].to_numpy(int), acc["eval_task"].to_numpy(int)] = acc["acc"].to_numpy(float)
        name = f"accuracy_matrix__{tables.safe_name(str(rec['cell']))}.png"
        title = (f"{rec['cell']}\nrun {rec['run_id']}: {tables.metric_label(metric)} "
                 f"{tables.format_number(metric, rec[metric])}")
        figures.accuracy_matrix(matrix, title, report.out / name)
        report.add("figure", f"Accuracy matrix: {rec['cell']}", [name],
                   "heat-map of a[t, j], accuracy on task j after learning task t, of the cell's best trial",
                   f"run {rec['run_id']} (seed {rec['seed']}), the best of "
                   f"{int((complete['cell'] == rec['cell']).sum())} complete trials by {tables.metric_label(metric)}")


def _reliability_figure(report: Report, store: Store, selected: pd.DataFrame, rows, chosen: str) -> None:
    cal = store.calibration
    keys = [*rows, "benchmark"] if "benchmark" not in rows else list(rows)
    if cal.empty:
        report.notes.append("reliability diagram: the store has no per-bin calibration rows (written by runs "
                            "that record them, in `calibration/`)")
        return
    last = selected[["store", "run_id", "num_tasks", *keys]].copy()
    last["task"] = last["num_tasks"].astype(int) - 1
    bins = _without(cal, [*keys, "num_tasks"]).merge(last, on=["store", "run_id", "task"])
    if bins.empty:
        report.notes.append("reliability diagram: no calibration rows for the selected trials' last task")
        return
    # The extra bin of confidence exactly 1 joins the top bin, so the diagram has n_bins bars.
    bins["bar"] = np.minimum(bins["bin"], bins["n_bins"] - 1)
    bins["conf_sum"] = bins["mean_confidence"] * bins["count"]
    bins["correct_sum"] = bins["accuracy"] * bins["count"]
    panels = []
    for key, part in bins.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        pooled = part.groupby("bar").agg(lower=("lower", "min"), upper=("upper", "max"), count=("count", "sum"),
                                         conf_sum=("conf_sum", "sum"), correct_sum=("correct_sum", "sum"))
        pooled["mean_confidence"] = pooled["conf_sum"] / pooled["count"]
        pooled["accuracy"] = pooled["correct_sum"] / pooled["count"]
        n_runs = part["run_id"].nunique()
        panels.append((f"{figures._label(keys, key)} ({n_runs} run{'s' if n_runs != 1 else ''})",
                       pooled.reset_index()))
    figures.reliability(panels, report.out / "reliability.png")
    report.add("figure", "Reliability diagram", ["reliability.png"],
               "accuracy per confidence bin against the diagonal after the last task, bins pooled over seeds, "
               "with the pooled ECE", _trials_text(selected, chosen))
