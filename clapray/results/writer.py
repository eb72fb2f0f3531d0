"""Writing one run's rows into the store as its tasks finish (:class:`RunWriter`).

Each run has one file per table (``<table>/<run_id>.parquet``), rewritten whole after every task with the
rows of every task so far (from the run's history), so a retried or resumed task replaces its rows rather
than adding them, and a store holds a few files per run rather than a few per task. Local (and other
renaming) filesystems get a temporary file named ``.<name>.<random>.tmp`` that is then moved over the
final name (pyarrow's dataset discovery skips names starting with ``.``, so a temporary file left by a
crash is never read); object stores (S3, GCS, Azure) write the final key directly: one PUT is atomic there.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import math
import platform
import subprocess
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clapray.config import RunConfig
from clapray.fileio import resolve_filesystem
from clapray.metrics.accuracy import average_forgetting, stack_accuracy_rows
from clapray.results.files import PART_PREFIX, list_table, read_file, run_file, table_dir, write_table_atomic
from clapray.results.schema import (
    COUNT_KEYS,
    ID_KEY,
    LOSS_KEYS,
    META_EXTRA,
    META_IDS,
    RUN_STATUSES,
    SAFE_NAME,
    TIMING_KEYS,
    RunStatus,
    Table,
    accuracy_schema,
    calibration_schema,
    config_values,
    loss_column,
    reserved_names,
    run_schema,
    scalar_field,
    task_schema,
    timing_column,
)
from clapray.task_result import RunProvenance, SweepCoordinates, TaskResult

log = logging.getLogger(__name__)

# Packages whose versions go into every run row (read from installed metadata, never imported).
PROVENANCE_PACKAGES: tuple[str, ...] = (
    "clapray", "torch", "open_clip_torch", "numpy", "pyarrow", "pandas", "ray", "optuna")


# --------------------------------------------------------------------------------------------------
# Provenance


@functools.lru_cache(maxsize=1)
def _git_state() -> tuple[str | None, bool | None]:
    """(HEAD sha, dirty) of the checkout holding this package, or (None, None) if it is not one.

    Cached per process: the run row is rewritten after every task and two ``git`` calls per task would
    be wasted. Only a repository whose top level is the package's parent directory counts, so an
    installed copy inside some unrelated repository (a virtual environment in a project) reports None.
    """
    parent = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(parent), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.split()
        if len(out) != 2 or Path(out[0]).resolve() != parent:
            return None, None
        status = subprocess.run(["git", "-C", str(parent), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
        return out[1], bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


@functools.lru_cache(maxsize=1)
def _package_versions() -> str:
    """JSON ``{package: version or null}`` from installed metadata (nothing is imported)."""
    versions: dict[str, str | None] = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return json.dumps(versions, sort_keys=True)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _as_utc(value: Any) -> datetime | None:
    """A stored timestamp as an aware UTC datetime (ISO text from stores of schema version 1 too)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------------------------------
# Writing


def _float(value: Any) -> float:
    """A metric as a float, NaN for None (so that every metric column is NaN-for-missing)."""
    return float("nan") if value is None else float(value)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


# The run row's metric summaries (NaN until a task is written; kept across resumes).
_SUMMARIES = ("avg_acc", "last_acc", "bwt", "forgetting", "fwt", "ece", "ece_per_batch", "phndd_auroc", "phndd_aupr",
              "phndd_fpr95", "phndd_fpr95_at_least", "wall_s", "gpu_s", "peak_memory_mb")
_COORDINATE_KEYS = ("setting", "grid", "sampled")


def _coordinate_columns(coordinates: SweepCoordinates | None) -> dict[str, Any]:
    if coordinates is None:
        return dict.fromkeys(_COORDINATE_KEYS)
    return {"setting": coordinates.setting, "grid": coordinates.grid_json(), "sampled": coordinates.sampled_json()}


class RunWriter:
    """Writes one run's rows into a store as its tasks finish.

    Args:
        root: store root: a local path, a ``file://`` or ``s3://`` URI (resolved by
            ``pyarrow.fs.FileSystem.from_uri``), or a path on ``filesystem``.
        run_id: the run's name in the store, used in file names: letters, digits, ``-``, ``_``, ``.``.
        config: the resolved run configuration; every field becomes a column of the run row.
        ids: id columns added to every row of every table (``{"sweep": ..., "seed": 3}``); values must be
            str, int, float or bool, and every file of a store must use the same keys.
        provenance: what the run saw and trained (dataset fingerprint, trainable parameters, feature cache);
            ``None`` or a ``None`` field keeps the value the store already holds for this run, so a writer
            that only records a new status (a stopped or failed trial) never blanks them.
        coordinates: where a sweep trial sits in its sweep (columns ``setting``, ``grid``, ``sampled``);
            ``None`` keeps the stored values (null for a new run: not a sweep trial).
        extra: further run-row columns; values as for ``ids``.
        filesystem: a ``pyarrow.fs`` filesystem to write on (``root`` is then a path on it, no scheme).

    Constructing a writer reads this run's existing row (if any, same config hash) so that a resumed run
    keeps its ``started_at`` and summaries; :meth:`write_task` and :meth:`mark` rewrite the row.
    """

    def __init__(self, root: str | Path, run_id: str, config: RunConfig, *, ids: Mapping[str, Any] = {},
                 provenance: RunProvenance | None = None, extra: Mapping[str, Any] = {},
                 filesystem: pafs.FileSystem | None = None, coordinates: SweepCoordinates | None = None) -> None:
        if (not isinstance(run_id, str) or not SAFE_NAME.match(run_id) or run_id.startswith((".", "_"))
                or run_id.startswith(PART_PREFIX)):
            raise ValueError(f"run_id {run_id!r}: use only letters, digits, '-', '_' and '.', not starting with "
                             f"'.', '_' or {PART_PREFIX!r}")
        self.fs, self.root = resolve_filesystem(root, filesystem)
        self.run_id = run_id
        self.config = config
        reserved = reserved_names()
        self._id_fields: list[pa.Field] = []
        self._ids: dict[str, Any] = {}
        for key, value in ids.items():
            if not isinstance(key, str) or not ID_KEY.match(key) or key in reserved:
                raise ValueError(f"id column {key!r}: expected an identifier that is not a store column")
            fld, self._ids[key] = scalar_field(key, value, "id column")
            self._id_fields.append(fld)
        self._extra_fields: list[pa.Field] = []
        self._extra: dict[str, Any] = {}
        for key, value in extra.items():
            if not isinstance(key, str) or not key or key in reserved or key in self._ids:
                raise ValueError(f"extra column {key!r}: expected a name that is not a store or id column")
            fld, self._extra[key] = scalar_field(key, value, "extra column")
            self._extra_fields.append(fld)
        self._run_schema = run_schema(self._id_fields, self._extra_fields)
        runs_files = list_table(self.fs, self.root, "runs")
        # A run folded into a compacted part is complete: its rows are read from there and never rewritten.
        self.compacted_in = runs_files.part_of(run_id) if run_id not in runs_files.runs else None
        self._check_store_ids(runs_files)
        git_sha, git_dirty = _git_state()
        self._row: dict[str, Any] = {
            "run_id": run_id, "status": "running", "error": None, "tasks_done": 0, "num_tasks": None,
            **_coordinate_columns(coordinates),
            **{k: float("nan") for k in _SUMMARIES},
            "started_at": _now(), "updated_at": None,
            "git_sha": git_sha, "git_dirty": git_dirty, "package_versions": _package_versions(),
            "python_version": platform.python_version(), "config_hash": config.config_hash(),
            "config_yaml": config.to_yaml(),
        }
        provenance = provenance or RunProvenance()
        provided = {"dataset_fingerprint": provenance.dataset_fingerprint,
                    "trainable_params": provenance.trainable_params,
                    "used_feature_cache": provenance.used_feature_cache}
        self._row.update(provided)
        previous = self.stored_row()
        if previous is not None and previous.get("config_hash") == self._row["config_hash"]:
            for key in ("status", "error", "tasks_done", "num_tasks", *_SUMMARIES, "started_at"):
                if key in previous:
                    self._row[key] = previous[key]
            self._row["started_at"] = _as_utc(self._row["started_at"])
            if coordinates is None:
                for key in _COORDINATE_KEYS:
                    self._row[key] = previous.get(key)
            for key, value in provided.items():
                if value is None and previous.get(key) is not None:
                    self._row[key] = previous[key]

    # -- paths ---------------------------------------------------------------------------------------

    def _dir(self, table: Table) -> str:
        return table_dir(self.root, table)

    def _file_name(self) -> str:
        return f"{self.run_id}.parquet"

    # -- store checks --------------------------------------------------------------------------------

    def _check_store_ids(self, runs_files) -> None:
        """Refuse id (or extra) keys that differ from those of the runs already in the store.

        The first readable file of another run decides; unreadable files (a truncated file, say) are
        skipped, so one damaged file never stops other runs from writing.
        """
        others = [p for r, p in sorted(runs_files.runs.items()) if r != self.run_id] + sorted(runs_files.parts)
        for path in others:
            try:
                meta = pq.read_schema(path, filesystem=self.fs).metadata or {}
            except (OSError, pa.ArrowException):
                log.warning("%s: unreadable, skipped when checking the store's id columns", path)
                continue
            if META_IDS not in meta:
                return
            theirs = json.loads(meta[META_IDS])
            if theirs != list(self._ids):
                raise ValueError(f"ids {list(self._ids)} differ from the id columns {theirs} of the runs already "
                                 f"in {self.root}: every file of a store must use the same id keys")
            extra = json.loads(meta.get(META_EXTRA, b"[]"))
            if extra != list(self._extra):
                raise ValueError(f"extra columns {list(self._extra)} differ from {extra} of the runs already in "
                                 f"{self.root}: every file of a store must have the same columns")
            return

    def _read_own(self, table: Table) -> pa.Table | None:
        """This run's rows of ``table`` (from its own file or its compacted part); None when missing or
        unreadable."""
        if self.compacted_in is None:
            return read_file(self.fs, run_file(self.root, table, self.run_id))
        part = list_table(self.fs, self.root, table).part_of(self.run_id)
        if part is None:
            return None
        rows = read_file(self.fs, part)
        if rows is None:
            return None
        return rows.filter(pc.equal(rows.column("run_id"), self.run_id))

    def stored_row(self) -> dict[str, Any] | None:
        """This run's row in ``runs`` as the store holds it now (None if missing or unreadable)."""
        rows = self._read_own("runs")
        if rows is None:
            return None
        rows = rows.to_pylist()
        return rows[0] if rows else None

    def _refuse_if_compacted(self) -> None:
        if self.compacted_in is not None:
            raise RunCompacted(f"run {self.run_id} was compacted into {self.compacted_in}: it is complete and "
                               f"its rows are not rewritten")

    # -- writing -------------------------------------------------------------------------------------

    def write_task(self, result: TaskResult, history: Sequence[TaskResult], *, wall_s: float | None = None,
                   gpu_s: float | None = None) -> None:
        """Write the rows of tasks 0..``result.task`` (from ``history``) and rewrite the run row.

        Args:
            result: the task just finished.
            history: the results of tasks 0..result.task, in order, ending with ``result`` (after a resume,
                the earlier results restored by the caller).
            wall_s: the run's wall-clock seconds so far; default the sum of ``timings["total"]`` over
                ``history`` (task time only, comparable across resumes).
            gpu_s: GPU seconds so far; NaN (the default when never given) on CPU runs.

        Each table's file of this run is rewritten whole with the rows of every task in ``history``, so
        a retried task replaces its rows and a later task never depends on an earlier write having
        survived. The run row's status becomes "finished" after the last task and "running" before it.
        Its summaries: ``avg_acc``, ``last_acc``, ``bwt``, ``ece``, ``ece_per_batch`` are those of
        ``result``; ``phndd_*`` are means over the steps that have novelty detection (every step but the
        last, when enabled); ``peak_memory_mb`` is the maximum over ``history``.
        """
        self._check_history(result, history)
        self._refuse_if_compacted()
        for earlier in history:
            self._check_result(earlier)
        ids_and_run = {**self._ids, "run_id": self.run_id}
        acc_rows, cal_rows, task_rows = [], [], []
        matrix = stack_accuracy_rows([r.accuracy_row for r in history])
        for res in history:
            acc_rows.extend(_accuracy_rows(ids_and_run, res))
            cal_rows.extend(_calibration_rows(ids_and_run, res))
            task_rows.append(_task_row(ids_and_run, res, average_forgetting(matrix, res.task)))
        # Calibration and accuracy first, then tasks, then the run row: a task row therefore implies its
        # matrix row, and a run row's tasks_done never exceeds the task rows written.
        if cal_rows:
            write_table_atomic(self.fs, self._dir("calibration"), self._file_name(),
                               pa.Table.from_pylist(cal_rows, schema=calibration_schema(self._id_fields)))
        write_table_atomic(self.fs, self._dir("accuracy"), self._file_name(),
                           pa.Table.from_pylist(acc_rows, schema=accuracy_schema(self._id_fields)))
        write_table_atomic(self.fs, self._dir("tasks"), self._file_name(),
                           pa.Table.from_pylist(task_rows, schema=task_schema(self._id_fields)))

        def mean_of(attr: str) -> float:
            return _nanmean([_float(getattr(r.phndd, attr)) for r in history if r.phndd is not None])

        forgetting = [row["forgetting"] for row in task_rows]

        t = result.task
        totals = [r.timings["total"] for r in history if "total" in r.timings]
        peaks = [v for v in (_float(r.peak_memory_mb) for r in history) if not math.isnan(v)]
        self._row.update({
            "status": "finished" if t == result.num_tasks - 1 else "running", "error": None,
            "tasks_done": t + 1, "num_tasks": result.num_tasks, "avg_acc": _float(result.avg_acc),
            "last_acc": _float(result.last_acc), "bwt": _float(result.bwt), "forgetting": forgetting[-1],
            "fwt": _nanmean([row["next_task_acc"] - row["next_task_zero_shot_acc"] for row in task_rows]),
            "ece": _float(result.ece),
            "ece_per_batch": _float(result.ece_per_batch), "phndd_auroc": mean_of("auroc"),
            "phndd_aupr": mean_of("aupr"), "phndd_fpr95": mean_of("fpr95"),
            "phndd_fpr95_at_least": mean_of("fpr95_at_least"),
            "wall_s": _float(wall_s) if wall_s is not None else (float(sum(totals)) if totals else math.nan),
            "peak_memory_mb": max(peaks) if peaks else math.nan,
        })
        if gpu_s is not None:
            self._row["gpu_s"] = _float(gpu_s)
        self._write_run_row()

    def mark(self, status: RunStatus, error: str | None = None, *, wall_s: float | None = None,
             gpu_s: float | None = None) -> None:
        """Rewrite the run row with a new status (e.g. "error" after a NaN loss, "stopped" by a scheduler).

        The summaries stay those of the last task written (by this writer or, after a resume, read back
        from the store); ``wall_s``/``gpu_s`` replace the stored values when given.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"status {status!r}: expected one of {', '.join(RUN_STATUSES)}")
        if error is not None and not isinstance(error, str):
            raise TypeError(f"error: expected a string or None, got {type(error).__name__}")
        self._refuse_if_compacted()
        self._row["status"], self._row["error"] = status, error
        if wall_s is not None:
            self._row["wall_s"] = _float(wall_s)
        if gpu_s is not None:
            self._row["gpu_s"] = _float(gpu_s)
        self._write_run_row()

    def finished_tasks(self) -> list[int]:
        """The tasks of this run that have a ``tasks`` row in the store, ascending (for resuming)."""
        rows = self._read_own("tasks")
        if rows is None:
            return []
        return sorted(int(t) for t in rows.column("task").to_pylist())

    def holds_complete_run(self, num_tasks: int) -> bool:
        """Whether the store holds every row of this run finished after ``num_tasks`` tasks (readable)."""
        row, accuracy = self.stored_row(), self._read_own("accuracy")
        return (row is not None and row.get("status") == "finished" and row.get("tasks_done") == num_tasks
                and self.finished_tasks() == list(range(num_tasks))
                and accuracy is not None and accuracy.num_rows == num_tasks * (num_tasks + 1) // 2)

    def _check_history(self, result: TaskResult, history: Sequence[TaskResult]) -> None:
        if not 0 <= result.task < result.num_tasks:
            raise ValueError(f"task {result.task}: expected 0 <= task < num_tasks = {result.num_tasks}")
        # Tasks are compared rather than whole results: NaN fields (bwt at task 0) make equal results unequal.
        if [r.task for r in history] != list(range(result.task + 1)):
            raise ValueError(f"history: expected the results of tasks 0..{result.task} ending with this result, "
                             f"got tasks {[r.task for r in history]}")

    @staticmethod
    def _check_result(result: TaskResult) -> None:
        n = result.task + 1
        if len(result.accuracy_row) != n:
            raise ValueError(f"accuracy_row: expected {n} entries (tasks 0..{result.task}), "
                             f"got {len(result.accuracy_row)}")
        for name in ("task_aware_row", "n_eval"):
            if len(getattr(result, name)) not in (0, n):
                raise ValueError(f"{name}: expected {n} entries or none, got {len(getattr(result, name))}")

    def _write_run_row(self) -> None:
        self._row["updated_at"] = _now()
        row = {**self._ids, **self._row, **config_values(self.config), **self._extra}
        write_table_atomic(self.fs, self._dir("runs"), self._file_name(),
                           pa.Table.from_pylist([row], schema=self._run_schema))


class RunCompacted(RuntimeError):
    """A writer was asked to rewrite a run whose rows were folded into a compacted part."""


def _accuracy_rows(ids_and_run: Mapping[str, Any], result: TaskResult) -> list[dict[str, Any]]:
    t = result.task
    return [{**ids_and_run, "task": t, "eval_task": j, "acc": _float(result.accuracy_row[j]),
             "task_aware_acc": _float(result.task_aware_row[j]) if result.task_aware_row else math.nan,
             "n_samples": int(result.n_eval[j]) if result.n_eval else None}
            for j in range(len(result.accuracy_row))]


def _calibration_rows(ids_and_run: Mapping[str, Any], result: TaskResult) -> list[dict[str, Any]]:
    bins = result.calibration
    if bins is None:
        return []
    return [{**ids_and_run, "task": result.task, "n_bins": bins.n_bins, "bin": bins.bin[k], "lower": bins.lower[k],
             "upper": bins.upper[k], "count": bins.count[k], "mean_confidence": bins.confidence[k],
             "accuracy": bins.accuracy[k]} for k in range(len(bins.bin))]


def _task_row(ids_and_run: Mapping[str, Any], result: TaskResult, forgetting: float) -> dict[str, Any]:
    """The ``tasks`` row of one result: every fixed column; loss or timing keys outside the fixed lists go
    into ``other_metrics`` (JSON), so the table keeps one schema. ``forgetting``: F_t from the run's matrix."""
    phndd = result.phndd
    row = {**ids_and_run, "task": result.task, "num_tasks": result.num_tasks, "last_acc": _float(result.last_acc),
           "avg_acc": _float(result.avg_acc), "bwt": _float(result.bwt), "forgetting": _float(forgetting),
           "next_task_acc": _float(result.extra.get("next_task_acc")),
           "next_task_zero_shot_acc": _float(result.extra.get("next_task_zero_shot_acc")),
           "ece": _float(result.ece),
           "ece_per_batch": _float(result.ece_per_batch),
           "phndd_auroc": _float(phndd.auroc) if phndd else math.nan,
           "phndd_aupr": _float(phndd.aupr) if phndd else math.nan,
           "phndd_fpr95": _float(phndd.fpr95) if phndd else math.nan,
           "phndd_fpr95_at_least": _float(phndd.fpr95_at_least) if phndd else math.nan,
           "peak_memory_mb": _float(result.peak_memory_mb)}
    for key in LOSS_KEYS:
        row[loss_column(key)] = _float(result.losses.get(key))
    for key in TIMING_KEYS:
        row[timing_column(key)] = _float(result.timings.get(key))
    for key in COUNT_KEYS:
        value = result.extra.get(key)
        row[key] = int(value) if value is not None else None
    other = {**{loss_column(k): float(v) for k, v in result.losses.items() if k not in LOSS_KEYS},
             **{timing_column(k): float(v) for k, v in result.timings.items() if k not in TIMING_KEYS}}
    row["other_metrics"] = json.dumps(other, sort_keys=True) if other else None
    return row
