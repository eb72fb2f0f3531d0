"""Merging a store's per-run files into one file per table (``python -m clapray.results compact <store>``).

A sweep writes one file per run and table (4 per trial); a sweep of thousands of trials leaves thousands
of small objects, slow to list and read on S3. :func:`compact` folds every *ended* run (status finished,
stopped or error) into one ``part-<id>.parquet`` per table, together with earlier parts, and deletes the
files it replaced. Runs still ``running`` (a sweep that was interrupted and will resume) keep their files.

Safety:

* **Writers.** Compaction holds the store's lease (:mod:`clapray.results.lease`): it refuses to start while
  a sweep driver runs on the store, and a driver refuses to start while it runs. A writer never rewrites a
  compacted run (:class:`~clapray.results.writer.RunCompacted`); a compacted run is complete.
* **Crashes.** The new part is written whole before anything is deleted, and each part's footer lists its
  run ids, so an interrupted compaction leaves duplicates, never losses; the next ``compact`` finishes it
  (it first deletes per-run files and parts that another part supersedes), and ``verify_consistency``
  reports the duplicates meanwhile.
* **Readers.** A reader that lists a table in the few milliseconds between the new part appearing and the
  replaced files being deleted sees those runs twice (or, if it lists before and opens after, fails on a
  deleted file). Compact a store when nothing reads it, or read again.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import pyarrow as pa

from clapray.fileio import resolve_filesystem
from clapray.results.files import PART_PREFIX, list_table, read_file, table_dir, upgrade_table, write_table_atomic
from clapray.results.schema import META_RUNS, META_VERSION, SCHEMA_VERSION, TABLES

ENDED = ("finished", "stopped", "error")
SORT_KEYS = {"runs": ["run_id"], "tasks": ["run_id", "task"], "accuracy": ["run_id", "task", "eval_task"],
             "calibration": ["run_id", "task", "bin"]}


@dataclass
class CompactReport:
    files_before: dict[str, int] = field(default_factory=dict)
    files_after: dict[str, int] = field(default_factory=dict)
    runs_compacted: int = 0
    runs_left: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    leftovers_removed: int = 0

    def line(self) -> str:
        tables = ", ".join(f"{t} {self.files_before.get(t, 0)} -> {self.files_after.get(t, 0)}" for t in TABLES)
        text = f"compacted {self.runs_compacted} run(s); files per table: {tables}"
        if self.runs_left:
            text += f"; {len(self.runs_left)} run(s) not ended, left as they are"
        if self.unreadable:
            text += f"; {len(self.unreadable)} unreadable file(s) left in place: {', '.join(self.unreadable)}"
        if self.leftovers_removed:
            text += f"; finished an interrupted compaction ({self.leftovers_removed} superseded file(s) deleted)"
        return text


def _delete(fs, path: str) -> None:
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def finish_interrupted(fs, root: str) -> int:
    """Delete files another part supersedes (what a crash between writing a part and deleting its inputs
    leaves); returns how many were deleted."""
    removed = 0
    for table in TABLES:
        files = list_table(fs, root, table)
        parts = sorted(files.parts.items(), key=lambda item: (-len(item[1]), item[0]))
        kept: list[tuple[str, set[str]]] = []
        for path, ids in parts:
            if any(set(ids) <= other for _, other in kept):
                _delete(fs, path)
                removed += 1
            else:
                kept.append((path, set(ids)))
        in_parts = set().union(*(ids for _, ids in kept)) if kept else set()
        for run_id, path in files.runs.items():
            if run_id in in_parts:
                _delete(fs, path)
                removed += 1
    return removed


def ended_runs(fs, root: str) -> tuple[set[str], list[str], list[str]]:
    """(ended run ids with a readable per-run runs file, run ids not ended, unreadable runs files)."""
    ended, left, unreadable = set(), [], []
    for run_id, path in list_table(fs, root, "runs").runs.items():
        rows = read_file(fs, path)
        if rows is None:
            unreadable.append(path)
        elif rows.num_rows and rows.column("status")[0].as_py() in ENDED:
            ended.add(run_id)
        else:
            left.append(run_id)
    return ended, sorted(left), unreadable


def compact(root: str, *, filesystem=None) -> CompactReport:
    """Fold every ended run of the store ``root`` into one part per table (module docstring). The caller
    holds the store's lease (the CLI does)."""
    fs, path = resolve_filesystem(root, filesystem)
    report = CompactReport()
    report.files_before = {t: len(list_table(fs, path, t).runs) + len(list_table(fs, path, t).parts) for t in TABLES}
    report.leftovers_removed = finish_interrupted(fs, path)
    ended, report.runs_left, report.unreadable = ended_runs(fs, path)
    for table in TABLES:
        files = list_table(fs, path, table)
        report.unreadable.extend(files.unreadable)
        chosen = {r: p for r, p in files.runs.items() if r in ended}
        pieces, inputs, run_ids = [], [], set()
        for part, ids in files.parts.items():
            rows = read_file(fs, part)
            if rows is None:
                report.unreadable.append(part)
                continue
            pieces.append(upgrade_table(rows))
            inputs.append(part)
            run_ids.update(ids)
        for run_id, file in sorted(chosen.items()):
            rows = read_file(fs, file)
            if rows is None:
                report.unreadable.append(file)
                continue
            pieces.append(upgrade_table(rows))
            inputs.append(file)
            run_ids.add(run_id)
        if not chosen or not pieces:
            continue  # nothing new to fold in (a lone part stays as it is)
        metadata = dict(pieces[0].schema.metadata or {})
        merged = pa.concat_tables([p.replace_schema_metadata(None) for p in pieces], promote_options="permissive")
        merged = merged.sort_by([(k, "ascending") for k in SORT_KEYS[table] if k in merged.column_names])
        metadata[META_RUNS] = json.dumps(sorted(run_ids)).encode()
        metadata[META_VERSION] = SCHEMA_VERSION.encode()  # older pieces were upgraded as they were read
        write_table_atomic(fs, table_dir(path, table), f"{PART_PREFIX}{uuid.uuid4().hex[:12]}.parquet",
                           merged.replace_schema_metadata(metadata))
        for file in inputs:  # only now: a crash before this point leaves duplicates, never a loss
            _delete(fs, file)
    report.runs_compacted = len(ended)
    report.files_after = {t: len(list_table(fs, path, t).runs) + len(list_table(fs, path, t).parts) for t in TABLES}
    return report
