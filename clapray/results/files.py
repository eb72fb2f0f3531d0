"""Where a store's rows live: one file per run and table, compacted parts, and reading them defensively.

Layout of a store root (see :mod:`clapray.results`)::

    <root>/<table>/<run_id>.parquet      every row of one run in that table, rewritten as the run goes on
    <root>/<table>/part-<id>.parquet     rows of many finished runs, written by ``compact``; the Parquet
                                         metadata key ``clapray.results.runs`` lists their run ids
    <root>/<table>/_quarantine/...       files found unreadable and moved aside by a repair (hidden)

A run's rows are in exactly one file per table: its own file or one part. A file is written whole
(temporary name, then rename; one PUT on object stores), so readers see the old or the new version.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clapray.fileio import data_files, is_object_store
from clapray.results.columns import TIMESTAMP
from clapray.results.schema import META_RUNS, META_VERSION, TABLES

PART_PREFIX = "part-"
QUARANTINE = "_quarantine"


def table_dir(root: str, table: str) -> str:
    return f"{root}/{table}"


def run_file(root: str, table: str, run_id: str) -> str:
    return f"{root}/{table}/{run_id}.parquet"


def is_part(path: str) -> bool:
    return path.rsplit("/", 1)[-1].startswith(PART_PREFIX)


def run_id_of(path: str) -> str | None:
    """The run id a per-run file belongs to (None for a compacted part)."""
    name = path.rsplit("/", 1)[-1]
    return None if name.startswith(PART_PREFIX) else name[: -len(".parquet")]


def write_table_atomic(fs: pafs.FileSystem, directory: str, name: str, table: pa.Table) -> None:
    """Write ``directory/name`` so that readers see either the old file or the whole new one."""
    final = f"{directory}/{name}"
    if is_object_store(fs):
        pq.write_table(table, final, filesystem=fs)
        return
    fs.create_dir(directory, recursive=True)
    # A leading dot hides the temporary file from pyarrow's dataset discovery (and so from pandas, and
    # from `*.parquet` globs: the name ends in .tmp).
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


def read_file(fs: pafs.FileSystem, path: str) -> pa.Table | None:
    """The table in ``path``, or None when it is missing or unreadable (truncated, not Parquet)."""
    try:
        return pq.read_table(path, filesystem=fs)
    except (OSError, pa.ArrowException):
        return None


def upgrade_table(table: pa.Table) -> pa.Table:
    """A table read from a file of schema version 1 in today's types: its ISO-text timestamps become UTC
    timestamps. Columns it lacks (added in version 2) read as null when tables are concatenated."""
    meta = table.schema.metadata or {}
    if meta.get(META_VERSION, b"1") != b"1":
        return table
    for name in ("started_at", "updated_at"):
        if name in table.column_names and pa.types.is_string(table.schema.field(name).type):
            index = table.column_names.index(name)
            table = table.set_column(index, pa.field(name, TIMESTAMP), table.column(name).cast(TIMESTAMP))
    return table


def part_runs(fs: pafs.FileSystem, path: str) -> list[str] | None:
    """The run ids a compacted part holds (from its footer), or None when the part is unreadable."""
    try:
        meta = pq.read_schema(path, filesystem=fs).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    return json.loads(meta.get(META_RUNS, b"[]"))


@dataclass(frozen=True)
class TableFiles:
    """The data files of one table: per-run files by run id, compacted parts with their run ids, and the
    files that could not be read (a part whose footer fails; per-run files are read lazily by callers)."""

    runs: dict[str, str]
    parts: dict[str, list[str]]
    unreadable: list[str]

    def part_of(self, run_id: str) -> str | None:
        for path, ids in self.parts.items():
            if run_id in ids:
                return path
        return None

    def run_ids(self) -> set[str]:
        return set(self.runs) | {r for ids in self.parts.values() for r in ids}


def list_table(fs: pafs.FileSystem, root: str, table: str) -> TableFiles:
    runs: dict[str, str] = {}
    parts: dict[str, list[str]] = {}
    unreadable: list[str] = []
    for path in data_files(fs, table_dir(root, table)):
        if is_part(path):
            ids = part_runs(fs, path)
            if ids is None:
                unreadable.append(path)
            else:
                parts[path] = ids
        else:
            runs[run_id_of(path)] = path  # type: ignore[index]
    return TableFiles(runs, parts, unreadable)


def quarantine(fs: pafs.FileSystem, path: str) -> str:
    """Move an unreadable file aside (hidden from readers, kept for inspection); returns its new path."""
    directory, name = path.rsplit("/", 1)
    target_dir = f"{directory}/{QUARANTINE}"
    fs.create_dir(target_dir, recursive=True)
    target = f"{target_dir}/{name}.{uuid.uuid4().hex[:8]}"
    fs.move(path, target)
    return target


def every_table_dir(root: str) -> Iterable[tuple[str, str]]:
    return ((t, table_dir(root, t)) for t in TABLES)
