"""Ray Tune callbacks of a sweep: readable progress lines, and trial outcomes recorded in the store.

Ray's own progress tables are off (``verbose=0``); instead one line per finished task and per finished
trial, with per-cell counts (done, running, stopped, failed) and the best complete metric so far.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict

from ray.tune import Callback

from clapray.config import RunConfig, from_mapping


def trial_ids(trial) -> tuple[str, dict]:
    """The run id and id columns a trial writes under (the same as :mod:`clapray.sweep_trial` uses)."""
    config = trial.config
    ids = {"sweep": config["trainer"]["sweep"], "cell": config["cell"], "trial_id": trial.trial_id,
           "seed": int(config["seed"]), "configuration": config["configuration"]}
    return f"trial-{trial.trial_id}", ids


class ProgressPrinter(Callback):
    def __init__(self, sweep, num_tasks: dict[str, int], out=None):
        self.metric, self.mode = sweep.search.metric, sweep.search.mode
        self.num_tasks = num_tasks
        self.out = out or sys.stdout
        self.state: dict[str, dict[str, str]] = defaultdict(dict)  # cell -> trial -> state
        self.best: dict[str, float] = {}

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _cell_summary(self, cell: str) -> str:
        counts = defaultdict(int)
        for state in self.state[cell].values():
            counts[state] += 1
        best = self.best.get(cell)
        best_text = f"best {self.metric} {best:.2f}" if best is not None else "best -"
        return (f"[{cell}: {counts['done']} done, {counts['running']} running, {counts['stopped']} stopped, "
                f"{counts['failed']} failed; {best_text}]")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.state[trial.config["cell"]][trial.trial_id] = "running"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "tasks_done" not in result or result.get("diverged"):
            return
        cell = trial.config["cell"]
        self._print(f"{cell}  {trial.trial_id}  seed {trial.config['seed']}  task {result['tasks_done']}/"
                    f"{self.num_tasks[cell]}  acc {result.get('acc', float('nan')):6.2f}  "
                    f"avg {result.get('avg_acc', float('nan')):6.2f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        cell = trial.config["cell"]
        result = trial.last_result or {}
        done = result.get("tasks_done", 0) >= self.num_tasks[cell] and not result.get("diverged")
        self.state[cell][trial.trial_id] = "done" if done else ("failed" if result.get("diverged") else "stopped")
        value = result.get(self.metric)
        if done and value is not None and math.isfinite(value):
            better = max if self.mode == "max" else min
            self.best[cell] = value if cell not in self.best else better(self.best[cell], value)
        what = "finished" if done else ("diverged" if result.get("diverged") else
                                        f"stopped after task {result.get('tasks_done', 0)}")
        self._print(f"{cell}  {trial.trial_id}  {what}  {self._cell_summary(cell)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        cell = trial.config["cell"]
        self.state[cell][trial.trial_id] = "failed"
        self._print(f"{cell}  {trial.trial_id}  failed  {self._cell_summary(cell)}")


class StoreStatusCallback(Callback):
    """Record in ``runs`` what only the driver knows: a trial stopped early by ASHA, or failed for good."""

    def __init__(self, store: str, num_tasks: dict[str, int]):
        self.store = store
        self.num_tasks = num_tasks

    def _writer(self, trial):
        from clapray.results import RunWriter

        run_id, ids = trial_ids(trial)
        cfg = from_mapping(RunConfig, trial.config["run"], f"trial {trial.trial_id}")
        return RunWriter(self.store, run_id, cfg, ids=ids)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if result.get("diverged"):
            return  # the worker recorded the error itself
        if result.get("tasks_done", 0) < self.num_tasks[trial.config["cell"]]:
            self._writer(trial).mark("stopped", f"stopped by the scheduler after task {result.get('tasks_done', 0)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._writer(trial).mark("error", last_error_line(trial))


def last_error_line(trial) -> str:
    """The last line of the trial's error file (the exception), or a generic reason."""
    try:
        lines = [line for line in open(trial.error_file).read().splitlines() if line.strip()]
        return lines[-1].strip() if lines else "trial failed"
    except (OSError, TypeError):
        return "trial failed"
