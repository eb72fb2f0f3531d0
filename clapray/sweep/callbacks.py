"""Ray Tune callbacks of a sweep: readable progress lines, and trial outcomes recorded in the store.

Ray's own progress tables are off (``verbose=0``); instead one line per finished task and per ended
trial, and heartbeats of running trials, each naming the trial's sampled parameters and ending with its
cell's counts (done, running, pending, stopped, failed), the best final metric of the cell's complete
trials so far and the sweep's ``k/N trials, elapsed, ETA``; a failed trial's line gives its reason and its
log; one line per cell when the sweep ends. The counts come from Ray Tune's list of all trials, so a
resumed sweep counts the trials finished before it too.
Ray Tune's own loggers (CSV, JSON, TensorBoard) stay on: ``tensorboard --logdir <storage>/<sweep>``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ray.tune import Callback

from clapray.progress import progress_path
from clapray.sweep.progress import (
    HeartbeatPoller,
    SweepClock,
    SweepPlan,
    TrialProgress,
    failure_reason,
    short_params,
)
from clapray.sweep.spec import TrialIdentity, TrialSpec, run_id_for, trial_run_config

# The states a trial is counted in, in the order the progress lines give them.
TRIAL_STATES = ("done", "running", "pending", "stopped", "failed")


@dataclass(frozen=True)
class TrialState:
    """What the progress lines need of one trial: its cell, its state, its final metric when done."""

    cell: str
    state: str  # one of TRIAL_STATES
    value: float | None = None


def classify_trial(status: str, result: Mapping | None, num_tasks: int, metric: str, cell: str) -> TrialState:
    """The state of a trial from Ray Tune's status (PENDING, RUNNING, PAUSED, TERMINATED, ERROR) and its
    last result: a terminated trial is done when it ran every task, failed when it diverged, else stopped
    (by the scheduler, or before it started)."""
    result = result or {}
    if status == "ERROR":
        return TrialState(cell, "failed")
    if status == "RUNNING":
        return TrialState(cell, "running")
    if status in ("PENDING", "PAUSED"):
        return TrialState(cell, "pending")
    if result.get("diverged"):
        return TrialState(cell, "failed")
    if result.get("tasks_done", 0) >= num_tasks:
        value = result.get(metric)
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        return TrialState(cell, "done", float(value) if finite else None)
    return TrialState(cell, "stopped")


def cell_summary(states: Iterable[TrialState], cell: str, metric: str, mode: str) -> str:
    """``[2 done, 1 running, 3 pending, 0 stopped, 1 failed; best avg_acc 72.31]`` for one cell."""
    counts = {s: 0 for s in TRIAL_STATES}
    values = []
    for st in states:
        if st.cell == cell:
            counts[st.state] += 1
            if st.state == "done" and st.value is not None:
                values.append(st.value)
    best = (max(values) if mode == "max" else min(values)) if values else None
    best_text = f"best {metric} {best:.2f}" if best is not None else f"best {metric} -"
    return "[" + ", ".join(f"{counts[s]} {s}" for s in TRIAL_STATES) + f"; {best_text}]"


def progress_lines(states: Iterable[TrialState], metric: str, mode: str) -> list[str]:
    """One ``cell  [counts; best]`` line per cell, cells sorted."""
    states = list(states)
    cells = sorted({s.cell for s in states})
    width = max((len(c) for c in cells), default=0)
    return [f"{c:<{width}}  {cell_summary(states, c, metric, mode)}" for c in cells]


class ProgressPrinter(Callback):
    """The sweep's console: one line per finished task, per ended trial, and a heartbeat of each running
    trial at most every ``$CLAPRAY_HEARTBEAT_S`` seconds (module :mod:`clapray.sweep.progress`).

    Every trial line starts with the cell, trial id, seed and the sampled parameters, and ends with the
    cell's counts and ``| k/N trials, elapsed, ETA``. Heartbeats come from ``<store>/_progress/`` (written by
    the trial's rank 0, see :mod:`clapray.progress`), polled from Ray Tune's controller loop.
    """

    def __init__(self, plan: SweepPlan, *, store: str | None = None, out=None):
        self.plan = plan
        self.metric, self.mode = plan.metric, plan.mode
        self.num_tasks = plan.num_tasks
        self.store = store
        self.out = out or sys.stdout
        self._start_clocks()

    def _start_clocks(self) -> None:
        self.clock = SweepClock(self.plan)
        store = self.store
        self.heartbeats = (HeartbeatPoller(lambda trial_id: progress_path(store, run_id_for(trial_id)))
                           if store is not None else None)

    def __getstate__(self) -> dict:
        # Ray Tune pickles the callbacks with the experiment (and a restored sweep unpickles them): keep the
        # plan and the store, not the console stream or this process's clocks.
        return {"plan": self.plan, "store": self.store}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["plan"], store=state["store"])

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _states(self, trials, override=None) -> list[TrialState]:
        """Every trial's state; ``override`` is (trial, state) for the trial a hook is about, whose status
        Ray Tune changes only after some hooks run (it is still RUNNING in ``on_trial_complete``)."""
        out = []
        for t in trials:
            cell = t.config.get("cell")
            if cell is None:  # not yet given a configuration by the searcher
                continue
            if override is not None and t is override[0]:
                out.append(override[1])
            else:
                out.append(classify_trial(t.status, t.last_result, self.num_tasks.get(cell, 0), self.metric, cell))
        return out

    def _line(self, trials, trial, what: str, override=None) -> str:
        """``cell  trial  seed s  params  <what>  [cell counts]  | k/N trials, elapsed, ETA``."""
        config = trial.config
        states = self._states(trials, override)
        progress = [TrialProgress(st.cell, st.state, int((t.last_result or {}).get("tasks_done", 0)))
                    for st, t in zip(states, (t for t in trials if t.config.get("cell") is not None), strict=True)]
        params = short_params(config.get("params"))
        head = f"{config['cell']}  {trial.trial_id}  seed {config['seed']}" + (f"  {params}" if params else "")
        summary = cell_summary(states, config["cell"], self.metric, self.mode)
        return f"{head}  {what}  {summary}  | {self.clock.line(progress)}"

    def on_step_begin(self, iteration, trials, **info):
        if self.heartbeats is None:
            return
        running = {t.trial_id: t for t in trials if t.status == "RUNNING" and t.config.get("cell") is not None}
        for trial_id, beat in self.heartbeats.poll(running):
            self._print(self._line(trials, running[trial_id], f"... {beat.describe()}"))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "tasks_done" not in result or result.get("diverged"):
            return
        self.clock.task_finished()
        cell = trial.config["cell"]
        running = (trial, TrialState(cell, "running"))
        what = (f"task {result['tasks_done']}/{self.num_tasks[cell]}  acc {result.get('last_acc', float('nan')):6.2f}  "
                f"avg {result.get('avg_acc', float('nan')):6.2f}")
        self._print(self._line(trials, trial, what, running))

    def on_trial_complete(self, iteration, trials, trial, **info):
        cell = trial.config["cell"]
        result = trial.last_result or {}
        state = classify_trial("TERMINATED", result, self.num_tasks[cell], self.metric, cell)
        what = {"done": "finished", "failed": "diverged"}.get(
            state.state, f"stopped after task {result.get('tasks_done', 0)}")
        self._print(self._line(trials, trial, what, (trial, state)))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._failure(trials, trial, "FAILED", f" (full log: {error_log(trial)})", "failed")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._failure(trials, trial, "failed", "; retrying from its last checkpoint", "running")

    def _failure(self, trials, trial, word: str, then: str, state: str) -> None:
        """``<word> after task k/N: <reason><then>``, the trial counted as ``state`` in its cell."""
        cell = trial.config["cell"]
        done = int((trial.last_result or {}).get("tasks_done", 0))
        what = f"{word} after task {done}/{self.num_tasks[cell]}: {failure_reason(trial.error_file)}{then}"
        self._print(self._line(trials, trial, what, (trial, TrialState(cell, state))))

    def on_experiment_end(self, trials, **info):
        for line in progress_lines(self._states(trials), self.metric, self.mode):
            self._print(line)


# Failures of the store-status callback in this driver process, as "trial <id>: <what>: <error>" lines.
# A failed status write never stops the sweep; the driver reconciles the store with Ray Tune's final
# state after the run (clapray.sweep.recovery), which records the status again, and reports these lines.
RECORDING_FAILURES: list[str] = []


class StoreStatusCallback(Callback):
    """Record in ``runs`` what only the driver knows: a trial stopped early by ASHA, or failed for good.

    A write that fails (storage unreachable, a damaged file) is contained: one line on stderr, an entry in
    :data:`RECORDING_FAILURES`, and the sweep goes on.
    """

    def __init__(self, spec: TrialSpec, num_tasks: dict[str, int]):
        self.spec = spec
        self.num_tasks = num_tasks

    def _writer(self, trial):
        # The same identity and writer as the trial's own workers; no provenance given, so the row keeps
        # what the workers recorded (dataset fingerprint, trainable parameters, feature cache).
        identity = TrialIdentity.of(self.spec.sweep, trial.trial_id, trial.config)
        return identity.open_writer(self.spec.store, trial_run_config(trial.config, trial.trial_id))

    def _record(self, trial, what: str, record) -> None:
        try:
            record()
        except Exception as err:  # never let a status write end the sweep
            line = f"trial {trial.trial_id}: could not record {what}: {type(err).__name__}: {err}"
            RECORDING_FAILURES.append(line)
            print(f"warning: {line} (recorded again when the sweep ends)", file=sys.stderr, flush=True)

    def _mark(self, trial, status: str, reason: str) -> None:
        writer = self._writer(trial)
        if writer.compacted_in is not None or writer.holds_complete_run(self.num_tasks[trial.config["cell"]]):
            return  # every task is in the store: what happened to the trial afterwards changes nothing
        writer.mark(status, reason)  # type: ignore[arg-type]

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if result.get("diverged"):
            return  # the worker recorded the error itself
        done = result.get("tasks_done", 0)
        if done < self.num_tasks[trial.config["cell"]]:
            self._record(trial, "its stop", lambda: self._mark(trial, "stopped",
                                                              f"stopped by the scheduler after task {done}"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, "its failure", lambda: self._mark(trial, "error", last_error_line(trial)))


def error_log(trial) -> str:
    """Where a failed trial's full traceback is kept: Ray Tune's ``error.txt`` in the trial's folder of the
    store (Tune copies it there from its local staging folder, where :func:`failure_reason` reads it)."""
    path = getattr(trial, "path", None)
    if path:
        return f"{str(path).rstrip('/')}/error.txt"
    return str(trial.error_file or "none")


def last_error_line(trial) -> str:
    """The last line of the trial's error file (the exception), or a generic reason."""
    try:
        lines = [line for line in open(trial.error_file).read().splitlines() if line.strip()]
        return lines[-1].strip() if lines else "trial failed"
    except (OSError, TypeError):
        return "trial failed"
