"""The Parquet results store: one row per run, per (run, task) and per (run, task, evaluated task).

Layout under a root (a local path, ``file://`` or ``s3://`` URI, or any ``pyarrow.fs`` filesystem)::

    <root>/runs/<run_id>.parquet          one row per run
    <root>/tasks/<run_id>.parquet         one row per task t: the metrics after training task t
    <root>/accuracy/<run_id>.parquet      one row per (task t, evaluated task j <= t): a[t, j]
    <root>/calibration/<run_id>.parquet   one row per (task t, non-empty confidence bin)
    <root>/<table>/part-<id>.parquet      the rows of many ended runs, after ``python -m clapray.results compact``

The run writes its own rows as each task finishes (:class:`RunWriter`): each of its files is rewritten
whole with every task so far, so an interrupted run leaves readable results and a retried or resumed task
replaces its rows rather than adding them (:mod:`~clapray.results.files` has the layout,
:mod:`~clapray.results.compact` the compaction, :mod:`~clapray.results.lease` the one-writer lease). Each
directory is a Parquet dataset: ``pd.read_parquet("<root>/tasks")`` reads every file of it as one table.
Two properties make that safe:

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
  float64 with NaN for missing. Every loss and timing the learner reports has its own column
  (:data:`LOSS_KEYS`, :data:`TIMING_KEYS`); other keys go into the JSON column ``other_metrics``, and
  caller-supplied ``extra`` run columns must be the same for every run of a store, like the ids. So
  pandas, pyarrow, polars and DuckDB read every column of every table at their default options.

The package: :mod:`~clapray.results.columns` (every fixed column's type, unit and meaning),
:mod:`~clapray.results.schema` (tables and their fixed schemas), :mod:`~clapray.results.writer`
(:class:`RunWriter`), :mod:`~clapray.results.reader` (:func:`load_table`, :func:`aggregate`),
:mod:`~clapray.results.consistency` (:func:`verify_consistency`) and :mod:`~clapray.results.docs` (the data
dictionary ``docs/results-schema.md``, ``python -m clapray.results schema``). A config field the run never
reads (:meth:`clapray.config.RunConfig.unused_fields`) is null in its ``runs`` row; ``config_yaml`` keeps it.

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

from clapray.results.consistency import verify_consistency
from clapray.results.reader import aggregate, load_table, t_critical_975
from clapray.results.schema import (
    LOSS_KEYS,
    RUN_STATUSES,
    TABLES,
    TIMING_KEYS,
    accuracy_schema,
    calibration_schema,
    config_schema,
    run_schema,
    task_schema,
)
from clapray.results.writer import RunWriter

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
