"""The Parquet results store: one row per run, per (run, task) and per (run, task, evaluated task).

Layout under a root (a local path, ``file://`` or ``s3://`` URI, or any ``pyarrow.fs`` filesystem)::

    <root>/runs/<run_id>.parquet                  one row per run, rewritten after every task
    <root>/tasks/<run_id>--task-<t:03d>.parquet      one row: the metrics after training task t
    <root>/accuracy/<run_id>--task-<t:03d>.parquet   one row per evaluated task j <= t: a[t, j]
    <root>/calibration/<run_id>--task-<t:03d>.parquet   one row per non-empty confidence bin after task t

The run writes its own rows as each task finishes (:class:`RunWriter`), so an interrupted run leaves
readable results, and file names are deterministic, so a retried or resumed task overwrites its file
rather than adding rows. Each directory is a Parquet dataset: ``pd.read_parquet("<root>/tasks")`` reads
every file of it as one table. Two properties make that safe:

* **Atomic files.** Local (and other renaming) filesystems get a temporary file named
  ``.<name>.<random>.tmp`` that is then moved over the final name. pyarrow's dataset discovery (used by
  ``pd.read_parquet(dir)``) skips names starting with ``.`` or ``_``, so a temporary file left by a crash is
  never read. Object stores (S3, GCS, Azure) write the final key directly: one PUT is atomic there.
* **Stable column types.** ``pd.read_parquet(dir)`` takes the schema of the *first* file and casts every
  other file to it: a column typed ``null`` in one file and ``int64`` in another fails, and a column the
  first file lacks is silently dropped. So every table has a fixed set of columns with explicit types
  (built below, not inferred from values), and every RunConfig field gets its type from the dataclass
  annotation: ``int`` / ``int | None`` -> int64 (nullable), ``float`` -> float64, ``bool`` -> bool,
  ``str`` / ``Literal[...]`` -> string, ``tuple[...]`` -> a JSON list as a string (``'["cifar100"]'``:
  hashable, so ``groupby`` and ``==`` work on it in pandas, unlike list columns). Metric columns are
  float64 with NaN for missing. Loss keys outside :data:`LOSS_KEYS` and timing keys outside
  :data:`TIMING_KEYS`, and caller-supplied ``extra`` run columns, are appended after the fixed columns;
  :func:`load_table` unifies all files' schemas, whereas ``pd.read_parquet(dir)`` may drop such columns.

Id columns (``sweep``, ``cell``, ``trial_id``, ``seed``, ...) are passed to the writer as a mapping and
added to every row of every table, before ``run_id``. **Every file of a store must use the same id keys**
(and value types); the writer checks the keys against an existing run file of the store, since a
mismatch would make ``pd.read_parquet(dir)`` drop or fail on columns.

Reading back: :func:`load_table` (several roots, schema unification, an empty frame with the right
columns for an empty store), :func:`aggregate` (mean, std, 95 % CI and count over seeds) and
:func:`verify_consistency` (the stored summaries agree with the accuracy matrix).

Only pyarrow, pandas, numpy and the standard library are imported here; :func:`verify_consistency`
imports :mod:`clapray.metrics` (and so torch) when it is called.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import types
import typing
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clapray.config import RunConfig
from clapray.records import TaskResult

__all__ = [
    "LOSS_KEYS",
    "RUN_STATUSES",
    "TABLES",
    "TIMING_KEYS",
    "RunWriter",
    "accuracy_schema",
    "aggregate",
    "calibration_schema",
    "config_schema",
    "load_table",
    "run_schema",
    "t_critical_975",
    "task_schema",
    "verify_consistency",
]

Table = Literal["runs", "tasks", "accuracy", "calibration"]
TABLES: tuple[str, ...] = ("runs", "tasks", "accuracy", "calibration")
RunStatus = Literal["running", "finished", "error", "stopped"]
RUN_STATUSES: tuple[str, ...] = ("running", "finished", "error", "stopped")

# Losses and timings a run reports; each always has a column (NaN when a run lacks it) so that files of
# runs with different methods still share one schema.
LOSS_KEYS: tuple[str, ...] = ("train", "train_ce", "train_kd", "train_kl", "consolidation")
TIMING_KEYS: tuple[str, ...] = ("train", "consolidate", "evaluate", "total")

# Packages whose versions go into every run row (read from installed metadata, never imported).
PROVENANCE_PACKAGES: tuple[str, ...] = (
    "clapray", "torch", "open_clip_torch", "numpy", "pyarrow", "pandas", "ray", "optuna")

SCHEMA_VERSION = "1"
_META_VERSION = b"clapray.results.version"
_META_IDS = b"clapray.results.ids"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_ID_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
# Object stores write a key in one request, so the final name is written directly there.
_OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})

_F64 = pa.float64()
_I64 = pa.int64()
_STR = pa.string()


# --------------------------------------------------------------------------------------------------
# Schemas


def _arrow_type(tp: Any) -> pa.DataType:
    """The arrow type of a config field annotation (Optional is nullable, which every arrow column is)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"config annotation {tp!r}: only X | None unions are supported")
        return _arrow_type(args[0])
    if origin is Literal:
        values = typing.get_args(tp)
        if all(isinstance(v, bool) for v in values):
            return pa.bool_()
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return _I64
        return _STR
    if origin is tuple:
        return _STR  # JSON text of the list
    if tp is bool:
        return pa.bool_()
    if tp is int:
        return _I64
    if tp is float:
        return _F64
    if tp is str:
        return _STR
    raise TypeError(f"config annotation {tp!r} has no arrow column type")


def _config_fields(cls: type[Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, annotation) of every leaf field of a config dataclass, in declaration order."""
    out: list[tuple[str, Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(_config_fields(tp, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", tp))
    return out


@functools.lru_cache(maxsize=None)
def config_schema() -> pa.Schema:
    """One column per RunConfig leaf field, dotted names, types from the annotations (module docstring)."""
    return pa.schema([pa.field(name, _arrow_type(tp)) for name, tp in _config_fields(RunConfig)])


def _config_values(config: RunConfig) -> dict[str, Any]:
    """``config.flatten()`` with list values (tuple fields) as JSON text, matching :func:`config_schema`."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in config.flatten().items()}


# Columns after the ids, in file order. Loss and timing columns follow the metrics in `tasks`.
_TASK_HEAD: list[tuple[str, pa.DataType]] = [
    ("run_id", _STR), ("task", _I64), ("num_tasks", _I64), ("acc", _F64), ("avg_acc", _F64),
    ("bwt", _F64), ("ece", _F64), ("ece_per_batch", _F64), ("phndd_auroc", _F64), ("phndd_aupr", _F64),
    ("phndd_fpr95", _F64), ("phndd_fpr95_at_least", _F64),
]
_TASK_TAIL: list[tuple[str, pa.DataType]] = [("peak_memory_mb", _F64), ("n_steps", _I64)]
_ACCURACY_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("run_id", _STR), ("task", _I64), ("eval_task", _I64), ("acc", _F64), ("task_aware_acc", _F64),
    ("n_samples", _I64),
]
# The reliability diagram's data (TaskResult.calibration): only results that carry it write these rows.
_CALIBRATION_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("run_id", _STR), ("task", _I64), ("n_bins", _I64), ("bin", _I64), ("lower", _F64), ("upper", _F64),
    ("count", _I64), ("mean_confidence", _F64), ("accuracy", _F64),
]
_RUN_HEAD: list[tuple[str, pa.DataType]] = [
    ("run_id", _STR), ("status", _STR), ("error", _STR), ("tasks_done", _I64), ("num_tasks", _I64),
    ("avg_acc", _F64), ("last_acc", _F64), ("bwt", _F64), ("ece", _F64), ("ece_per_batch", _F64),
    ("phndd_auroc", _F64), ("phndd_aupr", _F64), ("phndd_fpr95", _F64), ("phndd_fpr95_at_least", _F64),
    ("wall_s", _F64), ("gpu_s", _F64), ("peak_memory_mb", _F64), ("started_at", _STR), ("updated_at", _STR),
    ("git_sha", _STR), ("git_dirty", pa.bool_()), ("package_versions", _STR), ("python_version", _STR),
    ("config_hash", _STR), ("dataset_fingerprint", _STR), ("config_yaml", _STR),
]


def _loss_column(key: str) -> str:
    return f"loss_{key}"


def _timing_column(key: str) -> str:
    return f"{key}_s"


def _schema(ids: Sequence[pa.Field], columns: Iterable[tuple[str, pa.DataType]],
            id_keys: Sequence[str]) -> pa.Schema:
    meta = {_META_VERSION: SCHEMA_VERSION.encode(), _META_IDS: json.dumps(list(id_keys)).encode()}
    return pa.schema([*ids, *(pa.field(n, t) for n, t in columns)], metadata=meta)


def task_schema(ids: Sequence[pa.Field] = (), extra_losses: Sequence[str] = (),
                extra_timings: Sequence[str] = ()) -> pa.Schema:
    """Schema of a ``tasks`` file: ids, run_id, task metrics, fixed then extra loss/timing columns."""
    cols = [*_TASK_HEAD, *((_loss_column(k), _F64) for k in LOSS_KEYS),
            *((_timing_column(k), _F64) for k in TIMING_KEYS), *_TASK_TAIL,
            *((_loss_column(k), _F64) for k in extra_losses), *((_timing_column(k), _F64) for k in extra_timings)]
    return _schema(ids, cols, [f.name for f in ids])


def accuracy_schema(ids: Sequence[pa.Field] = ()) -> pa.Schema:
    """Schema of an ``accuracy`` file: ids, run_id, task, eval_task, acc, task_aware_acc, n_samples."""
    return _schema(ids, _ACCURACY_COLUMNS, [f.name for f in ids])


def calibration_schema(ids: Sequence[pa.Field] = ()) -> pa.Schema:
    """Schema of a ``calibration`` file: ids, run_id, task, bin and its bounds, count, confidence, accuracy."""
    return _schema(ids, _CALIBRATION_COLUMNS, [f.name for f in ids])


def run_schema(ids: Sequence[pa.Field] = (), extra: Sequence[pa.Field] = ()) -> pa.Schema:
    """Schema of a ``runs`` file: ids, run_id, status and summaries, provenance, config fields, extras."""
    cols = [*_RUN_HEAD, *((f.name, f.type) for f in config_schema()), *((f.name, f.type) for f in extra)]
    return _schema(ids, cols, [f.name for f in ids])


def _reserved_names() -> set[str]:
    names = {n for n, _ in (*_TASK_HEAD, *_TASK_TAIL, *_ACCURACY_COLUMNS, *_CALIBRATION_COLUMNS, *_RUN_HEAD)}
    names |= {_loss_column(k) for k in LOSS_KEYS} | {_timing_column(k) for k in TIMING_KEYS}
    return names | set(config_schema().names)


def _scalar_field(name: str, value: Any, what: str) -> tuple[pa.Field, Any]:
    """The arrow field and plain Python value of an id or extra column (str, int, float or bool)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return pa.field(name, pa.bool_()), value
    if isinstance(value, int):
        return pa.field(name, _I64), value
    if isinstance(value, float):
        return pa.field(name, _F64), value
    if isinstance(value, str):
        return pa.field(name, _STR), value
    raise TypeError(f"{what} {name!r}: expected a str, int, float or bool, got {type(value).__name__} {value!r}")


# --------------------------------------------------------------------------------------------------
# Filesystem


def resolve_filesystem(root: str | Path, filesystem: pafs.FileSystem | None = None
                       ) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path without a trailing slash) for a local path, a URI, or a path on ``filesystem``."""
    if filesystem is not None:
        return filesystem, str(root).rstrip("/")
    text = os.fspath(root)
    if isinstance(root, Path) or "://" not in text:
        return pafs.LocalFileSystem(), os.path.abspath(text)
    if text.startswith("s3://") and "allow_delayed_open" not in text:
        # Delayed open lets pyarrow send a small file as one PutObject instead of a three-request
        # multipart upload: fewer round trips per task row, and S3 look-alikes (moto) that mishandle
        # multipart completion work too. Either way the object appears whole or not at all.
        text += ("&" if "?" in text else "?") + "allow_delayed_open=true"
    fs, path = pafs.FileSystem.from_uri(text)
    return fs, path.rstrip("/")


def _is_object_store(fs: pafs.FileSystem) -> bool:
    while isinstance(fs, pafs.SubTreeFileSystem):
        fs = fs.base_fs
    return fs.type_name in _OBJECT_STORES


def _write_table(fs: pafs.FileSystem, directory: str, name: str, table: pa.Table) -> None:
    """Write ``directory/name`` so that readers see either the old file or the whole new one."""
    final = f"{directory}/{name}"
    if _is_object_store(fs):
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


def _data_files(fs: pafs.FileSystem, directory: str) -> list[str]:
    """Paths of the Parquet files of a table directory, skipping hidden and temporary names, sorted."""
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    out = []
    for info in infos:
        base = info.base_name
        if info.type == pafs.FileType.File and base.endswith(".parquet") and not base.startswith((".", "_")):
            out.append(info.path)
    return sorted(out)


# --------------------------------------------------------------------------------------------------
# Provenance


@functools.lru_cache(maxsize=1)
def _git_state() -> tuple[str | None, bool | None]:
    """(HEAD sha, dirty) of the checkout holding this package, or (None, None) if it is not one.

    Cached per process: the run row is rewritten after every task and two ``git`` calls per task would
    be wasted. Only a repository whose top level is the package's parent directory counts, so an
    installed copy inside some unrelated repository (a virtual environment in a project) reports None.
    """
    parent = Path(__file__).resolve().parent.parent
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
        dataset_fingerprint: the caller's fingerprint of the data the run used.
        extra: further run-row columns (``trainable_params``, ``used_feature_cache``, ...); values as for
            ``ids``.
        filesystem: a ``pyarrow.fs`` filesystem to write on (``root`` is then a path on it, no scheme).

    Constructing a writer reads this run's existing row (if any, same config hash) so that a resumed run
    keeps its ``started_at`` and summaries; :meth:`write_task` and :meth:`mark` rewrite the row.
    """

    def __init__(self, root: str | Path, run_id: str, config: RunConfig, *, ids: Mapping[str, Any] = {},
                 dataset_fingerprint: str | None = None, extra: Mapping[str, Any] = {},
                 filesystem: pafs.FileSystem | None = None) -> None:
        if not isinstance(run_id, str) or not _SAFE_NAME.match(run_id) or run_id in (".", ".."):
            raise ValueError(f"run_id {run_id!r}: use only letters, digits, '-', '_' and '.'")
        self.fs, self.root = resolve_filesystem(root, filesystem)
        self.run_id = run_id
        self.config = config
        reserved = _reserved_names()
        self._id_fields: list[pa.Field] = []
        self._ids: dict[str, Any] = {}
        for key, value in ids.items():
            if not isinstance(key, str) or not _ID_KEY.match(key) or key in reserved:
                raise ValueError(f"id column {key!r}: expected an identifier that is not a store column")
            fld, self._ids[key] = _scalar_field(key, value, "id column")
            self._id_fields.append(fld)
        self._extra_fields: list[pa.Field] = []
        self._extra: dict[str, Any] = {}
        for key, value in extra.items():
            if not isinstance(key, str) or not key or key in reserved or key in self._ids:
                raise ValueError(f"extra column {key!r}: expected a name that is not a store or id column")
            fld, self._extra[key] = _scalar_field(key, value, "extra column")
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
            "dataset_fingerprint": dataset_fingerprint, "config_yaml": config.to_yaml(),
        }
        previous = self._read_own_row()
        if previous is not None and previous.get("config_hash") == self._row["config_hash"]:
            for key in ("status", "error", "tasks_done", "num_tasks", "avg_acc", "last_acc", "bwt", "ece",
                        "ece_per_batch", "phndd_auroc", "phndd_aupr", "phndd_fpr95", "phndd_fpr95_at_least",
                        "wall_s", "gpu_s", "peak_memory_mb", "started_at"):
                if key in previous:
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
        others = [p for p in _data_files(self.fs, self._dir("runs")) if p != own]
        if not others:
            return
        meta = pq.read_schema(others[0], filesystem=self.fs).metadata or {}
        if _META_IDS not in meta:
            return
        theirs = json.loads(meta[_META_IDS])
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
            _write_table(self.fs, self._dir("calibration"), self._task_file(t),
                         pa.Table.from_pylist(cal_rows, schema=calibration_schema(self._id_fields)))
        _write_table(self.fs, self._dir("accuracy"), self._task_file(t),
                     pa.Table.from_pylist(acc_rows, schema=accuracy_schema(self._id_fields)))
        extra_losses = sorted(k for k in result.losses if k not in LOSS_KEYS)
        extra_timings = sorted(k for k in result.timings if k not in TIMING_KEYS)
        phndd = result.phndd
        row = {**ids_and_run, "task": t, "num_tasks": result.num_tasks, "acc": _float(result.last_acc),
               "avg_acc": _float(result.avg_acc), "bwt": _float(result.bwt), "ece": _float(result.ece),
               "ece_per_batch": _float(result.ece_per_batch),
               "phndd_auroc": _float(phndd.auroc) if phndd else math.nan,
               "phndd_aupr": _float(phndd.aupr) if phndd else math.nan,
               "phndd_fpr95": _float(phndd.fpr95) if phndd else math.nan,
               "phndd_fpr95_at_least": _float(phndd.fpr95_at_least) if phndd else math.nan,
               "peak_memory_mb": _float(result.peak_memory_mb),
               "n_steps": int(result.extra["n_steps"]) if result.extra.get("n_steps") is not None else None}
        for key in (*LOSS_KEYS, *extra_losses):
            row[_loss_column(key)] = _float(result.losses.get(key))
        for key in (*TIMING_KEYS, *extra_timings):
            row[_timing_column(key)] = _float(result.timings.get(key))
        schema = task_schema(self._id_fields, extra_losses, extra_timings)
        _write_table(self.fs, self._dir("tasks"), self._task_file(t), pa.Table.from_pylist([row], schema=schema))

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
        for path in _data_files(self.fs, self._dir("tasks")):
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
        row = {**self._ids, **self._row, **_config_values(self.config), **self._extra}
        _write_table(self.fs, self._dir("runs"), f"{self.run_id}.parquet",
                     pa.Table.from_pylist([row], schema=self._run_schema))


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


def _read_dir(fs: pafs.FileSystem, directory: str) -> pa.Table | None:
    files = _data_files(fs, directory)
    if not files:
        return None
    factory = pads.FileSystemDatasetFactory(fs, files, pads.ParquetFileFormat())
    # Inspect every file, not just the first (which is what a plain directory read does), so columns
    # that only some runs have (extra losses, extra run columns) are kept; ints widen to floats if mixed.
    schema = factory.inspect(promote_options="permissive", fragments=None)
    return factory.finish(schema).to_table()


def load_table(root: str | Path | Sequence[str | Path], table: Table, *,
               filesystem: pafs.FileSystem | None = None) -> pd.DataFrame:
    """Read one table of one or several stores into a DataFrame.

    Every file's schema is unified (pyarrow's permissive promotion), so columns only some files have
    appear with missing values elsewhere. Nullable int columns with a missing value come back as float64
    with NaN, as with ``pd.read_parquet``. A store with no file of ``table`` gives an empty frame with the
    table's fixed columns (without id or extra columns, which the store does not know yet).
    """
    if table not in TABLES:
        raise ValueError(f"table {table!r}: expected one of {', '.join(TABLES)}")
    roots = [root] if isinstance(root, (str, Path)) else list(root)
    parts = []
    for r in roots:
        fs, path = resolve_filesystem(r, filesystem)
        part = _read_dir(fs, f"{path}/{table}")
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
            problems.append(f"{name}: duplicate rows for {dict(zip(key, values))}")

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
        for column, value in zip(("acc", "avg_acc", "bwt"), expected):
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
        for column, value in zip(("last_acc", "avg_acc", "bwt"), expected):
            stored = float(row[column])
            if not _close(stored, value, atol):
                problems.append(f"{where}: {column} = {stored!r} but the accuracy table gives {value!r}")
        n_task_rows = int((tasks["run_id"] == run_id).sum()) if len(tasks) else 0
        if n_task_rows != int(done):
            problems.append(f"{where}: tasks_done = {int(done)} but {n_task_rows} task rows")
    return problems
