"""The Parquet store as the source of truth: reconcile it with the trials Ray Tune knows, before and after a run.

Ray Tune's experiment state says which trials exist and how they ended; the store must hold, for each,
the rows that ending implies. :func:`reconcile` compares the two and repairs the store:

* a trial Tune counts as ended (finished, stopped by the scheduler, failed) whose rows are missing,
  incomplete or unreadable is **restored from its last task checkpoint** (the learner's checkpoint holds
  the result of every task so far; the trial's provenance is saved beside it), and its status is
  recorded; an unreadable file is first moved to ``<table>/_quarantine/`` (hidden, kept);
* a trial whose recorded status disagrees with Tune's (a status write that failed) gets Tune's;
* a trial Tune will resume keeps its rows, minus unreadable files: its Train run rewrites every row of
  the run after its next task, or at once when the run had already finished (:mod:`clapray.sweep.trial`);
* rows of a trial Tune does not know (a trial started after Tune last saved its state, before a kill:
  Tune runs its configuration again under a new trial id) are moved to ``<table>/_quarantine/``, so the
  sweep never counts one (cell, configuration, seed) twice.

What cannot be restored (rows lost and no checkpoint) raises :class:`StoreDamaged`: one line naming
the runs and what is missing; nothing is guessed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from clapray.errors import UserError
from clapray.fileio import resolve_filesystem
from clapray.results import load_table
from clapray.results.files import list_table, quarantine, read_file
from clapray.results.schema import TABLES
from clapray.sweep.spec import PROVENANCE_FILE, TrialIdentity, TrialSpec, trial_run_config
from clapray.task_result import RunProvenance, TaskResult


class StoreDamaged(UserError):
    """Rows the store must hold are gone and no checkpoint can restore them."""


@dataclass(frozen=True)
class TrialRecord:
    """What Ray Tune knows of one trial: its id, status, last result and searcher suggestion."""

    trial_id: str
    status: str  # PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    last_result: Mapping[str, Any]
    config: Mapping[str, Any]


@dataclass
class ReconcileReport:
    restored: list[str] = field(default_factory=list)
    statuses_fixed: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    def line(self) -> str | None:
        parts = []
        if self.restored:
            parts.append(f"{len(self.restored)} run(s) restored from checkpoints ({', '.join(self.restored)})")
        if self.statuses_fixed:
            parts.append(f"{len(self.statuses_fixed)} status(es) recorded ({', '.join(self.statuses_fixed)})")
        if self.quarantined:
            parts.append(f"{len(self.quarantined)} unreadable file(s) moved to _quarantine/")
        if self.orphans:
            parts.append(f"{len(self.orphans)} run(s) of trials Ray Tune does not know moved to _quarantine/ "
                         f"({', '.join(self.orphans)})")
        return "store repaired: " + "; ".join(parts) if parts else None


def restorable(root: str) -> bool:
    """Whether a Tune experiment at ``root`` can be restored: its tuner file and a saved experiment state.

    Tune writes the tuner file as the run starts and its first experiment state only later, so a driver
    killed in between leaves a folder ``Tuner.can_restore`` accepts but ``Tuner.restore`` cannot read; no
    trial of that run was saved, so the sweep starts afresh (the store's rows of its trials are then runs
    Tune does not know, quarantined by :func:`reconcile`).
    """
    import pyarrow.fs as pafs
    import ray.tune


    if not ray.tune.Tuner.can_restore(root):
        return False
    fs, path = resolve_filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return any(i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json") for i in infos)


def trials_from_experiment(root: str) -> list[TrialRecord]:
    """Every trial of the Tune experiment saved at ``root`` (empty when there is none)."""
    import ray.tune

    if not restorable(root):
        return []
    analysis = ray.tune.ExperimentAnalysis(root)
    return [TrialRecord(str(t.trial_id), str(t.status), dict(t.last_result or {}), dict(t.config or {}))
            for t in analysis.trials]


def expected_outcome(record: TrialRecord, num_tasks: int, *, errored_resume: bool = False) -> str:
    """``finished``, ``stopped``, ``error`` (a trial Tune ended) or ``unfinished`` (Tune will run it; with
    ``errored_resume``, failed trials too, as a restored sweep resumes them)."""
    result = record.last_result
    if record.status == "ERROR":
        return "unfinished" if errored_resume else "error"
    if record.status != "TERMINATED":
        return "unfinished"
    if result.get("diverged"):
        return "error"
    return "finished" if result.get("tasks_done", 0) >= num_tasks else "stopped"


# --------------------------------------------------------------------------------------------------
# Reading the store and the checkpoints


@dataclass(frozen=True)
class StoredRun:
    status: str | None
    tasks_done: int
    task_rows: frozenset[int]
    accuracy_rows: int


def _load(root: str, table: str) -> pd.DataFrame:
    try:
        return load_table(root, table)  # type: ignore[arg-type]
    except Exception:  # an unreadable file: read the rest (the caller moved such files aside first)
        return load_table(root, table, skip_unreadable=True)  # type: ignore[arg-type]


def stored_runs(root: str) -> dict[str, StoredRun]:
    """What the store holds of every run it has rows of, in any table."""
    runs, tasks, accuracy = _load(root, "runs"), _load(root, "tasks"), _load(root, "accuracy")
    ids = {str(r) for frame in (runs, tasks, accuracy) if len(frame) for r in frame["run_id"]}
    rows = {str(r["run_id"]): r for r in runs.to_dict("records")} if len(runs) else {}
    task_sets: dict[str, set[int]] = {}
    for run_id, task in zip(tasks.get("run_id", []), tasks.get("task", []), strict=True):
        task_sets.setdefault(str(run_id), set()).add(int(task))
    acc_counts = accuracy["run_id"].astype(str).value_counts().to_dict() if len(accuracy) else {}
    out = {}
    for run_id in ids:
        row = rows.get(run_id)
        done = None if row is None else row["tasks_done"]
        out[run_id] = StoredRun(status=None if row is None else str(row["status"]),
                                tasks_done=0 if done is None or pd.isna(done) else int(done),
                                task_rows=frozenset(task_sets.get(run_id, ())),
                                accuracy_rows=int(acc_counts.get(run_id, 0)))
    return out


def rows_complete(stored: StoredRun | None, tasks: int) -> bool:
    """Whether the store holds every row of a run that finished ``tasks`` tasks."""
    return (stored is not None and stored.status is not None and stored.tasks_done == tasks
            and stored.task_rows == frozenset(range(tasks)) and stored.accuracy_rows == tasks * (tasks + 1) // 2)


def latest_checkpoint(spec: TrialSpec, trial_id: str) -> tuple[list[TaskResult], RunProvenance] | None:
    """The task results and provenance in the trial's newest readable task checkpoint, or None."""
    from clapray.checkpoint import load_checkpoint
    from clapray.sweep import task_checkpoints

    def read(folder: Path) -> tuple[list[TaskResult], RunProvenance]:
        history = [TaskResult.from_dict(r) for r in load_checkpoint(folder / task_checkpoints.LEARNER_FILE)["history"]]
        if not history:
            raise ValueError("no finished task")
        provenance = RunProvenance()
        try:
            provenance = RunProvenance(**json.loads((folder / PROVENANCE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            pass
        return history, provenance

    return task_checkpoints.newest(spec.run_folder(trial_id), read)


# --------------------------------------------------------------------------------------------------
# Reconciling


def _quarantine_unreadable(root: str, report: ReconcileReport) -> set[str]:
    """Move every unreadable data file aside; the run ids they belonged to."""
    fs, path = resolve_filesystem(root)
    touched = set()
    for table in TABLES:
        files = list_table(fs, path, table)
        for run_id, file in files.runs.items():
            if read_file(fs, file) is None:
                report.quarantined.append(quarantine(fs, file))
                touched.add(run_id)
        for file in files.unreadable:  # a compacted part: its runs must come back from checkpoints
            report.quarantined.append(quarantine(fs, file))
    return touched


def reconcile(spec: TrialSpec, records: Iterable[TrialRecord], num_tasks: Mapping[str, int], *,
              tune_knows_every_trial: bool = True, errored_resume: bool = False) -> ReconcileReport:
    """Make the store at ``spec.store`` hold what Ray Tune's ``records`` imply (module docstring).

    ``tune_knows_every_trial``: the records are Tune's whole list, so store runs outside it are orphans.
    ``errored_resume``: Tune is about to resume its failed trials (a restored sweep), so they are not ended.
    """
    report = ReconcileReport()
    _quarantine_unreadable(spec.store, report)
    stored = stored_runs(spec.store)
    damaged: list[str] = []
    known: set[str] = set()
    for record in records:
        if "cell" not in record.config or record.config["cell"] not in num_tasks:
            continue
        identity = TrialIdentity.of(spec.sweep, record.trial_id, record.config)
        known.add(identity.run_id)
        outcome = expected_outcome(record, num_tasks[identity.cell], errored_resume=errored_resume)
        if outcome == "unfinished":
            continue
        have = stored.get(identity.run_id)
        if outcome == "finished":
            complete = rows_complete(have, num_tasks[identity.cell])
        else:
            complete = have is not None and have.status is not None and rows_complete(have, have.tasks_done)
            if complete and have.status == "finished" and have.tasks_done >= num_tasks[identity.cell]:
                continue  # finished in the store: a failure or stop after the last task changes nothing
        cfg = trial_run_config(record.config, record.trial_id)
        if not complete:
            checkpoint = latest_checkpoint(spec, record.trial_id)
            needed = num_tasks[identity.cell] if outcome == "finished" else 1
            if checkpoint is None or len(checkpoint[0]) < needed:
                if outcome != "finished" and (have is None or have.tasks_done == 0) and checkpoint is None:
                    # Ended before its first checkpoint: there are no rows to restore, only its status.
                    _record_status(identity, spec, cfg, outcome, record, report)
                    continue
                damaged.append(f"{identity.run_id} ({_describe_loss(have, num_tasks[identity.cell])}, "
                               f"{'no checkpoint' if checkpoint is None else 'checkpoint too old'})")
                continue
            history, provenance = checkpoint
            writer = identity.open_writer(spec.store, cfg, provenance)
            writer.write_task(history[-1], history)
            report.restored.append(identity.run_id)
            have = StoredRun("finished" if len(history) == history[-1].num_tasks else "running", len(history),
                             frozenset(range(len(history))), 0)
        if outcome != "finished" and have is not None and have.status != outcome:
            _record_status(identity, spec, cfg, outcome, record, report)
    if tune_knows_every_trial:
        fs, path = resolve_filesystem(spec.store)
        for run_id in sorted(set(stored) - known):
            for table in TABLES:
                files = list_table(fs, path, table)
                if run_id in files.runs:
                    quarantine(fs, files.runs[run_id])
            report.orphans.append(run_id)
    if damaged:
        raise StoreDamaged(f"{spec.store}: rows of {len(damaged)} run(s) are lost and cannot be restored: "
                           f"{'; '.join(damaged)}. Check with clapray.results.verify_consistency; move the sweep "
                           f"aside and run it again (or under a new name) to recompute them")
    return report


def _describe_loss(have: StoredRun | None, num_tasks: int) -> str:
    if have is None:
        return "no rows"
    if have.status is None:
        return "no runs row"
    return f"{len(have.task_rows)} of {max(have.tasks_done, num_tasks)} task rows"


def _record_status(identity: TrialIdentity, spec: TrialSpec, cfg, outcome: str, record: TrialRecord,
                   report: ReconcileReport) -> None:
    writer = identity.open_writer(spec.store, cfg)
    if writer.compacted_in is not None:
        return
    reason = ("stopped by the scheduler after task " + str(record.last_result.get("tasks_done", 0))
              if outcome == "stopped" else "trial failed (recorded from Ray Tune's state)")
    writer.mark(outcome, reason)  # type: ignore[arg-type]
    report.statuses_fixed.append(f"{identity.run_id}: {outcome}")
