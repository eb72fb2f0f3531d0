"""The tables of the results store and their fixed Arrow schemas (see :mod:`clapray.results`).

Every table has a fixed set of columns with explicit types, built here rather than inferred from values,
so that every file of a table shares one schema: ``pd.read_parquet(dir)`` takes the schema of the *first*
file and casts the others to it. Every RunConfig field gets its type from its dataclass annotation:
``int`` / ``int | None`` -> int64 (nullable), ``float`` -> float64, ``bool`` -> bool, ``str`` /
``Literal[...]`` -> string, ``tuple[...]`` -> a JSON list as a string (hashable, so ``groupby`` and ``==``
work on it in pandas). Metric columns are float64 with NaN for missing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from clapray.config import RunConfig
from clapray.results import columns

Table = Literal["runs", "tasks", "accuracy", "calibration"]
TABLES: tuple[str, ...] = ("runs", "tasks", "accuracy", "calibration")
RunStatus = Literal["running", "finished", "error", "stopped"]
RUN_STATUSES: tuple[str, ...] = ("running", "finished", "error", "stopped")

# Every loss and timing the learner reports (ContinualLearner.learn_task: each phase's total, CE, KD and KL
# terms and the prompt variant's own loss; the phase timings). Each always has a column (NaN when a run
# lacks it: zero-shot trains nothing, a replay-free run never consolidates, only AttriCLIP has a prompt
# loss), so every file of a table has the same columns whatever mix of methods a store holds. Keys outside
# these lists (a new variant's) go into the JSON column ``other_metrics`` rather than new columns.
LOSS_KEYS: tuple[str, ...] = (
    "train", "train_ce", "train_kd", "train_kl", "train_prompt",
    "consolidation", "consolidation_ce", "consolidation_kd", "consolidation_kl", "consolidation_prompt")
TIMING_KEYS: tuple[str, ...] = ("train", "consolidate", "evaluate", "total")
# Integer facts a task result may carry in ``TaskResult.extra``, each a fixed nullable column.
COUNT_KEYS: tuple[str, ...] = ("n_steps", "n_consolidation_steps", "memory_size")

# 2: timestamps with time zone; setting, grid, sampled, forgetting and fwt in runs; forgetting and the
# next-task accuracies in tasks; config fields a run never reads are null.
SCHEMA_VERSION = "2"
META_VERSION = b"clapray.results.version"
META_IDS = b"clapray.results.ids"
META_EXTRA = b"clapray.results.extra"
# The run ids a compacted file holds (see clapray.results.compact).
META_RUNS = b"clapray.results.runs"

SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
ID_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")

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


@functools.cache
def config_schema() -> pa.Schema:
    """One column per RunConfig leaf field, dotted names, types from the annotations (module docstring)."""
    return pa.schema([pa.field(name, _arrow_type(tp)) for name, tp in _config_fields(RunConfig)])


def config_values(config: RunConfig) -> dict[str, Any]:
    """``config.flatten()`` with list values (tuple fields) as JSON text, matching :func:`config_schema`, and
    None for every field the run never reads (:meth:`RunConfig.unused_fields`)."""
    unused = config.unused_fields()
    return {k: None if k in unused else json.dumps(v) if isinstance(v, list) else v
            for k, v in config.flatten().items()}


# Columns after the ids, in file order (documented in clapray.results.columns).
_TASK_HEAD: list[tuple[str, pa.DataType]] = [c.pair for c in columns.TASK_HEAD]
_TASK_TAIL: list[tuple[str, pa.DataType]] = [c.pair for c in columns.TASK_TAIL]
_ACCURACY_COLUMNS: list[tuple[str, pa.DataType]] = [c.pair for c in columns.ACCURACY_COLUMNS]
# The reliability diagram's data (TaskResult.calibration): only results that carry it write these rows.
_CALIBRATION_COLUMNS: list[tuple[str, pa.DataType]] = [c.pair for c in columns.CALIBRATION_COLUMNS]
_RUN_HEAD: list[tuple[str, pa.DataType]] = [c.pair for c in columns.RUN_COLUMNS]


def loss_column(key: str) -> str:
    return f"loss_{key}"


def timing_column(key: str) -> str:
    return f"{key}_s"


def _schema(ids: Sequence[pa.Field], columns: Iterable[tuple[str, pa.DataType]],
            id_keys: Sequence[str], extra_keys: Sequence[str] = ()) -> pa.Schema:
    meta = {META_VERSION: SCHEMA_VERSION.encode(), META_IDS: json.dumps(list(id_keys)).encode(),
            META_EXTRA: json.dumps(list(extra_keys)).encode()}
    return pa.schema([*ids, *(pa.field(n, t) for n, t in columns)], metadata=meta)


def task_schema(ids: Sequence[pa.Field] = ()) -> pa.Schema:
    """Schema of a ``tasks`` file: ids, run_id, task metrics, every loss and timing column, counts."""
    cols = [*_TASK_HEAD, *((loss_column(k), _F64) for k in LOSS_KEYS),
            *((timing_column(k), _F64) for k in TIMING_KEYS), *_TASK_TAIL]
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
    return _schema(ids, cols, [f.name for f in ids], [f.name for f in extra])


def reserved_names() -> set[str]:
    names = {n for n, _ in (*_TASK_HEAD, *_TASK_TAIL, *_ACCURACY_COLUMNS, *_CALIBRATION_COLUMNS, *_RUN_HEAD)}
    names |= {loss_column(k) for k in LOSS_KEYS} | {timing_column(k) for k in TIMING_KEYS}
    return names | set(config_schema().names)


def scalar_field(name: str, value: Any, what: str) -> tuple[pa.Field, Any]:
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


