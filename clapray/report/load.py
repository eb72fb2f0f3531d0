"""Read one or several results stores and tell complete trials from incomplete ones.

A trial is *complete* when its run row says ``finished`` after all its tasks and the store holds a task
row for each of them. Everything else (running, stopped by the scheduler, errored, finished with tasks
missing) is *incomplete*: tables and figures leave it out and the report counts it, by reason.

The loader adds a few derived columns to ``runs`` so that stores of single runs (``python -m
clapray.run``, no sweep ids) and of sweeps read the same way:

``benchmark`` (``data.dataset``), ``variant`` (``method.variant``), ``inference`` (``VI`` or ``w/o VI``
from ``method.deterministic``; ``-`` for the zero-shot baseline), ``setting`` (``standard``,
``replay-free``, ``budget N``, ``replay-free, budget N`` from the ``budget.*`` fields; the store's own
``setting`` column, a sweep's preset name, becomes ``setting_preset``), ``seed`` (the
sweep's id column, else ``seeds.init``), ``cell`` (the sweep's cell, else one per variant, inference,
benchmark and setting), ``configuration`` (the sweep's id, else a hash of every config field but the seeds)
and ``config_key`` (store and configuration: trials differing only in their seed share it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from clapray.errors import UserError
from clapray.fileio import child, data_files, resolve_filesystem
from clapray.model.prompts.catalog import VARIANTS
from clapray.results import config_schema, load_table

# Run states, in the order the report lists them.
COMPLETE = "complete"
INCOMPLETE_STATES = ("running", "stopped", "error", "missing tasks")

# Config fields that never distinguish configurations: identity, where outputs go, host details.
# The class order counts as a seed, as in the paper's repeated runs (a sweep's `seed_fields` may set it).
NON_KNOBS = frozenset({"name", "output_dir", "seeds.init", "seeds.class_order", "device", "data.root",
                       "data.download", "data.num_workers", "backbone.cache_dir", "data.shapes.cache"})

_READ_ATTEMPTS = 3


@dataclass
class Store:
    """The tables of the stores read, with ``runs`` classified; tables keyed by (``store``, ``run_id``)."""

    roots: list[str]
    runs: pd.DataFrame  # every trial, with `state` (complete or why not) and the derived columns
    tasks: pd.DataFrame
    accuracy: pd.DataFrame
    calibration: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> pd.DataFrame:
        return self.runs[self.runs["state"] == COMPLETE]

    @property
    def incomplete(self) -> pd.DataFrame:
        return self.runs[self.runs["state"] != COMPLETE]

    def state_counts(self) -> dict[str, int]:
        counts = self.runs["state"].value_counts()
        return {s: int(counts.get(s, 0)) for s in (COMPLETE, *INCOMPLETE_STATES) if counts.get(s, 0)}

    def summary(self) -> str:
        """``12 trials: 9 complete, 3 incomplete (1 running, 2 stopped)``."""
        counts = self.state_counts()
        n_incomplete = sum(v for k, v in counts.items() if k != COMPLETE)
        text = f"{len(self.runs)} trials: {counts.get(COMPLETE, 0)} complete, {n_incomplete} incomplete"
        parts = [f"{v} {k}" for k, v in counts.items() if k != COMPLETE]
        return text + (f" ({', '.join(parts)})" if parts else "")


def _check_root(root: str) -> None:
    """A one-line error for a path that is not a store, with a hint where a sweep directory lies below."""
    try:
        fs, path = resolve_filesystem(root, None)
        info = fs.get_file_info(path)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise UserError(f"{root}: cannot open the results store ({str(err).splitlines()[0]})") from None
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{root}: no such directory (expected a results store: a sweep directory such as "
                        f"results/quickstart, with runs/*.parquet)")
    if info.type != pafs.FileType.Directory:
        raise UserError(f"{root}: not a directory (expected a results store with runs/*.parquet)")
    if data_files(fs, f"{path}/runs"):
        return
    hint = ""
    try:
        below = [i.base_name for i in fs.get_file_info(pafs.FileSelector(path))
                 if i.type == pafs.FileType.Directory and data_files(fs, f"{i.path}/runs")]
    except OSError:
        below = []
    if below:
        hint = "; stores below it: " + ", ".join(child(root, b) for b in sorted(below)[:5])
    raise UserError(f"{root}: not a results store (expected {child(root, 'runs')}/*.parquet){hint}")


def _read(root: str, table: str) -> pd.DataFrame:
    """One table of one store. A store being written may replace a file between listing and reading;
    a failed read is retried, as every file is written whole (results module docstring)."""
    for attempt in range(_READ_ATTEMPTS):
        try:
            return load_table(root, table)  # type: ignore[arg-type]
        except (OSError, pa.ArrowException) as err:
            if attempt == _READ_ATTEMPTS - 1:
                raise UserError(f"{child(root, table)}: cannot read ({str(err).splitlines()[0]})") from None
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def load_store(roots: Sequence[str | Path]) -> Store:
    """Read ``runs``, ``tasks``, ``accuracy`` and ``calibration`` of every root and classify the trials."""
    roots = [str(r) for r in roots]
    if not roots:
        raise UserError("no results store given (expected a path or s3:// URI of a sweep directory)")
    frames: dict[str, list[pd.DataFrame]] = {t: [] for t in ("runs", "tasks", "accuracy", "calibration")}
    for root in roots:
        _check_root(root)
        for table in frames:
            frame = _read(root, table)
            frame.insert(0, "store", root)
            frames[table].append(frame)
    runs, tasks, accuracy, calibration = (pd.concat(frames[t], ignore_index=True) if len(frames[t]) > 1
                                          else frames[t][0] for t in ("runs", "tasks", "accuracy", "calibration"))
    notes: list[str] = []
    dup = runs.duplicated(["store", "run_id"], keep="last")
    if dup.any():  # two files for one run cannot come from the writer; keep the last one read
        notes.append(f"{int(dup.sum())} duplicate run rows ignored")
        runs = runs[~dup]
    # Rows of runs whose run row is not written yet (a first task in flight) have nothing to join.
    key = ["store", "run_id"]
    known = runs[key]
    tasks, accuracy, calibration = (frame.merge(known, on=key, how="inner") if len(frame) else frame
                                    for frame in (tasks, accuracy, calibration))
    runs = derive_columns(runs.reset_index(drop=True))
    runs = classify(runs, tasks)
    return Store(roots=roots, runs=runs, tasks=tasks, accuracy=accuracy, calibration=calibration, notes=notes)


def classify(runs: pd.DataFrame, tasks: pd.DataFrame) -> pd.DataFrame:
    """Add ``state`` (``complete`` or the reason it is not) and ``task_rows`` to ``runs``."""
    runs = runs.copy()
    if len(tasks):
        counts = tasks.groupby(["store", "run_id"]).size().rename("task_rows").reset_index()
        runs = runs.drop(columns=["task_rows"], errors="ignore").merge(counts, on=["store", "run_id"], how="left")
    else:
        runs["task_rows"] = 0
    runs["task_rows"] = runs["task_rows"].fillna(0).astype("int64")
    done = pd.to_numeric(runs["tasks_done"], errors="coerce")
    total = pd.to_numeric(runs["num_tasks"], errors="coerce")
    status = runs["status"].astype("string").fillna("running")
    all_tasks = total.notna() & (done == total) & (runs["task_rows"] >= total)
    state = pd.Series("running", index=runs.index, dtype="object")
    state[status == "stopped"] = "stopped"
    state[status == "error"] = "error"
    state[(status == "finished") & ~all_tasks] = "missing tasks"
    state[(status == "finished") & all_tasks] = COMPLETE
    runs["state"] = state
    return runs


def _setting(row: pd.Series) -> str:
    replay_free = bool(row.get("budget.replay_free")) if pd.notna(row.get("budget.replay_free")) else False
    steps = row.get("budget.max_steps_per_task")
    budget = f"budget {int(steps)}" if steps is not None and pd.notna(steps) else None
    if replay_free and budget:
        return f"replay-free, {budget}"
    if replay_free:
        return "replay-free"
    return budget or "standard"


def _inference(row: pd.Series) -> str:
    spec = VARIANTS.get(row.get("method.variant"))
    if spec is not None and not spec.learns:  # a reference row (zero-shot) has no head, VI or otherwise
        return "-"
    det = row.get("method.deterministic")
    if det is None or pd.isna(det):
        return "-"
    return "w/o VI" if bool(det) else "VI"


def knob_columns(runs: pd.DataFrame) -> list[str]:
    """Config columns that may distinguish configurations (every config field but identity and host)."""
    return [c for c in config_schema().names if c in runs.columns and c not in NON_KNOBS]


def _configuration_key(row: pd.Series, columns: Sequence[str]) -> str:
    values = {c: (None if pd.isna(row[c]) else row[c]) if not isinstance(row[c], (list, tuple)) else list(row[c])
              for c in columns}
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def derive_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """Add the derived columns of the module docstring (kept where a store already has them)."""
    runs = runs.copy()
    if "setting" in runs.columns and "setting_preset" not in runs.columns:
        # The store's `setting` is a sweep's preset name (a sweep may name its variants that way); the report
        # compares what the runs did, read from their budget fields.
        runs = runs.rename(columns={"setting": "setting_preset"})
    get = runs.get
    if "benchmark" not in runs.columns:
        runs["benchmark"] = get("data.dataset", pd.Series("?", index=runs.index)).fillna("?")
    if "variant" not in runs.columns:
        runs["variant"] = get("method.variant", pd.Series("?", index=runs.index)).fillna("?")
    if "inference" not in runs.columns:
        runs["inference"] = runs.apply(_inference, axis=1) if len(runs) else pd.Series(dtype="object")
    if "setting" not in runs.columns:
        runs["setting"] = runs.apply(_setting, axis=1) if len(runs) else pd.Series(dtype="object")
    if "seed" not in runs.columns:
        runs["seed"] = get("seeds.init", pd.Series(0, index=runs.index))
    if "cell" not in runs.columns:
        runs["cell"] = (("variant=" + runs["variant"].astype(str) + ",inference=" + runs["inference"].astype(str)
                         + ",benchmark=" + runs["benchmark"].astype(str) + ",setting=" + runs["setting"].astype(str))
                        if len(runs) else pd.Series(dtype="object"))
    if "configuration" not in runs.columns:
        cols = knob_columns(runs)
        runs["configuration"] = (runs.apply(lambda r: _configuration_key(r, cols), axis=1) if len(runs)
                                 else pd.Series(dtype="object"))
    # The grouping key of a configuration: two stores may reuse a sweep's configuration keys for other trials.
    runs["config_key"] = runs["store"].astype(str) + "|" + runs["configuration"].astype(str)
    return runs
