"""Writing one run's rows into the store as its tasks finish (:class:`RunWriter`).

File names are deterministic, so a retried or resumed task overwrites its file rather than adding rows.
Local (and other renaming) filesystems get a temporary file named ``.<name>.<random>.tmp`` that is then
moved over the final name (pyarrow's dataset discovery skips names starting with ``.``, so a temporary
file left by a crash is never read); object stores (S3, GCS, Azure) write the final key directly: one
PUT is atomic there.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import platform
import re
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clapray.config import RunConfig
from clapray.fileio import data_files, is_object_store, resolve_filesystem
from clapray.results.schema import (
    ID_KEY,
    LOSS_KEYS,
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
from clapray.task_result import RunProvenance, TaskResult

# Packages whose versions go into every run row (read from installed metadata, never imported).
PROVENANCE_PACKAGES: tuple[str, ...] = (
    "clapray", "torch", "open_clip_torch", "numpy", "pyarrow", "pandas", "ray", "optuna")


def write_table_atomic(fs: pafs.FileSystem, directory: str, name: str, table: pa.Table) -> None:
    """Write ``directory/name`` so that readers see either the old file or the whole new one."""
    final = f"{directory}/{name}"
    if is_object_store(fs):
        pq.write_table(table, final, filesystem=fs)
        return
    fs.create_dir(directory, recursive=True)
    # A leading dot hides the temporary file from pyarrow's dataset discovery (and so from pandas).
    tmp = f"{directory}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        pq.write_table(table, tmp, filesystem=fs)
        fs.move(tmp, final)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass
        raise



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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------
# Writing


def _float(value: Any) -> float:
    """A metric as a float, NaN for None (so that every metric column is NaN-for-missing)."""
    return float("nan") if value is None else float(value)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


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
        extra: further run-row columns; values as for ``ids``.
        filesystem: a ``pyarrow.fs`` filesystem to write on (``root`` is then a path on it, no scheme).

    Constructing a writer reads this run's existing row (if any, same config hash) so that a resumed run
    keeps its ``started_at`` and summaries; :meth:`write_task` and :meth:`mark` rewrite the row.
    """

    def __init__(self, root: str | Path, run_id: str, config: RunConfig, *, ids: Mapping[str, Any] = {},
                 provenance: RunProvenance | None = None, extra: Mapping[str, Any] = {},
                 filesystem: pafs.FileSystem | None = None) -> None:
        if not isinstance(run_id, str) or not SAFE_NAME.match(run_id) or run_id in (".", ".."):
            raise ValueError(f"run_id {run_id!r}: use only letters, digits, '-', '_' and '.'")
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
        self._check_store_ids()
        git_sha, git_dirty = _git_state()
        self._row: dict[str, Any] = {
            "run_id": run_id, "status": "running", "error": None, "tasks_done": 0, "num_tasks": None,
            **{k: float("nan") for k in ("avg_acc", "last_acc", "bwt", "ece", "ece_per_batch", "phndd_auroc",
                                         "phndd_aupr", "phndd_fpr95", "phndd_fpr95_at_least", "wall_s",
                                         "gpu_s", "peak_memory_mb")},
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
        previous = self._read_own_row()
        if previous is not None and previous.get("config_hash") == self._row["config_hash"]:
            for key in ("status", "error", "tasks_done", "num_tasks", "avg_acc", "last_acc", "bwt", "ece",
                        "ece_per_batch", "phndd_auroc", "phndd_aupr", "phndd_fpr95", "phndd_fpr95_at_least",
                        "wall_s", "gpu_s", "peak_memory_mb", "started_at"):
                if key in previous:
                    self._row[key] = previous[key]
            for key, value in provided.items():
                if value is None and previous.get(key) is not None:
                    self._row[key] = previous[key]

    # -- paths ---------------------------------------------------------------------------------------

    def _dir(self, table: Table) -> str:
        return f"{self.root}/{table}"

    def _task_file(self, task: int) -> str:
        return f"{self.run_id}--task-{task:03d}.parquet"

    # -- store checks --------------------------------------------------------------------------------

    def _check_store_ids(self) -> None:
        """Refuse ids whose keys differ from those of an existing run file of the store."""
        own = f"{self._dir('runs')}/{self.run_id}.parquet"
        others = [p for p in data_files(self.fs, self._dir("runs")) if p != own]
        if not others:
            return
        meta = pq.read_schema(others[0], filesystem=self.fs).metadata or {}
        if META_IDS not in meta:
            return
        theirs = json.loads(meta[META_IDS])
        if theirs != list(self._ids):
            raise ValueError(f"ids {list(self._ids)} differ from the id columns {theirs} of the runs already in "
                             f"{self.root}: every file of a store must use the same id keys")

    def _read_own_row(self) -> dict[str, Any] | None:
        path = f"{self._dir('runs')}/{self.run_id}.parquet"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        rows = pq.read_table(path, filesystem=self.fs).to_pylist()
        return rows[0] if rows else None

    # -- writing -------------------------------------------------------------------------------------

    def write_task(self, result: TaskResult, history: Sequence[TaskResult], *, wall_s: float | None = None,
                   gpu_s: float | None = None) -> None:
        """Write task ``result.task``'s rows and rewrite the run row.

        Args:
            result: the task just finished.
            history: the results of tasks 0..result.task, in order, ending with ``result`` (after a resume,
                the earlier results restored by the caller).
            wall_s: the run's wall-clock seconds so far; default the sum of ``timings["total"]`` over
                ``history`` (task time only, comparable across resumes).
            gpu_s: GPU seconds so far; NaN (the default when never given) on CPU runs.

        The run row's status becomes "finished" after the last task and "running" before it. Its
        summaries: ``avg_acc``, ``last_acc``, ``bwt``, ``ece``, ``ece_per_batch`` are those of ``result``;
        ``phndd_*`` are means over the steps that have novelty detection (every step but the last, when
        enabled); ``peak_memory_mb`` is the maximum over ``history``.
        """
        self._check_history(result, history)
        ids_and_run = {**self._ids, "run_id": self.run_id}
        t = result.task
        acc_rows = [{**ids_and_run, "task": t, "eval_task": j, "acc": _float(result.accuracy_row[j]),
                     "task_aware_acc": _float(result.task_aware_row[j]) if result.task_aware_row else math.nan,
                     "n_samples": int(result.n_eval[j]) if result.n_eval else None}
                    for j in range(len(result.accuracy_row))]
        # Calibration and accuracy first, then the task row: a task file therefore implies the others, and
        # finished_tasks() (which lists task files) never reports a task whose matrix row is missing.
        bins = result.calibration
        if bins is not None:
            cal_rows = [{**ids_and_run, "task": t, "n_bins": bins.n_bins, "bin": bins.bin[k], "lower": bins.lower[k],
                         "upper": bins.upper[k], "count": bins.count[k], "mean_confidence": bins.confidence[k],
                         "accuracy": bins.accuracy[k]} for k in range(len(bins.bin))]
            write_table_atomic(self.fs, self._dir("calibration"), self._task_file(t),
                         pa.Table.from_pylist(cal_rows, schema=calibration_schema(self._id_fields)))
        write_table_atomic(self.fs, self._dir("accuracy"), self._task_file(t),
                     pa.Table.from_pylist(acc_rows, schema=accuracy_schema(self._id_fields)))
        extra_losses = sorted(k for k in result.losses if k not in LOSS_KEYS)
        extra_timings = sorted(k for k in result.timings if k not in TIMING_KEYS)
        phndd = result.phndd
        row = {**ids_and_run, "task": t, "num_tasks": result.num_tasks, "last_acc": _float(result.last_acc),
               "avg_acc": _float(result.avg_acc), "bwt": _float(result.bwt), "ece": _float(result.ece),
               "ece_per_batch": _float(result.ece_per_batch),
               "phndd_auroc": _float(phndd.auroc) if phndd else math.nan,
               "phndd_aupr": _float(phndd.aupr) if phndd else math.nan,
               "phndd_fpr95": _float(phndd.fpr95) if phndd else math.nan,
               "phndd_fpr95_at_least": _float(phndd.fpr95_at_least) if phndd else math.nan,
               "peak_memory_mb": _float(result.peak_memory_mb),
               "n_steps": int(result.extra["n_steps"]) if result.extra.get("n_steps") is not None else None}
        for key in (*LOSS_KEYS, *extra_losses):
            row[loss_column(key)] = _float(result.losses.get(key))
        for key in (*TIMING_KEYS, *extra_timings):
            row[timing_column(key)] = _float(result.timings.get(key))
        schema = task_schema(self._id_fields, extra_losses, extra_timings)
        write_table_atomic(self.fs, self._dir("tasks"), self._task_file(t), pa.Table.from_pylist([row], schema=schema))

        def mean_of(attr: str) -> float:
            return _nanmean([_float(getattr(r.phndd, attr)) for r in history if r.phndd is not None])

        totals = [r.timings["total"] for r in history if "total" in r.timings]
        peaks = [v for v in (_float(r.peak_memory_mb) for r in history) if not math.isnan(v)]
        self._row.update({
            "status": "finished" if t == result.num_tasks - 1 else "running", "error": None,
            "tasks_done": t + 1, "num_tasks": result.num_tasks, "avg_acc": _float(result.avg_acc),
            "last_acc": _float(result.last_acc), "bwt": _float(result.bwt), "ece": _float(result.ece),
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
        self._row["status"], self._row["error"] = status, error
        if wall_s is not None:
            self._row["wall_s"] = _float(wall_s)
        if gpu_s is not None:
            self._row["gpu_s"] = _float(gpu_s)
        self._write_run_row()

    def finished_tasks(self) -> list[int]:
        """The tasks of this run that have a ``tasks`` file in the store, ascending (for resuming)."""
        pattern = re.compile(rf"^{re.escape(self.run_id)}--task-(\d+)\.parquet$")
        found = []
        for path in data_files(self.fs, self._dir("tasks")):
            match = pattern.match(path.rsplit("/", 1)[-1])
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def _check_history(self, result: TaskResult, history: Sequence[TaskResult]) -> None:
        if not 0 <= result.task < result.num_tasks:
            raise ValueError(f"task {result.task}: expected 0 <= task < num_tasks = {result.num_tasks}")
        # Tasks are compared rather than whole results: NaN fields (bwt at task 0) make equal results unequal.
        if [r.task for r in history] != list(range(result.task + 1)):
            raise ValueError(f"history: expected the results of tasks 0..{result.task} ending with this result, "
                             f"got tasks {[r.task for r in history]}")
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
        write_table_atomic(self.fs, self._dir("runs"), f"{self.run_id}.parquet",
                     pa.Table.from_pylist([row], schema=self._run_schema))


