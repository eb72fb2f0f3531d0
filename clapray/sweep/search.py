"""How a sweep chooses and stops trials: one Optuna study and one ASHA per cell, inside one Ray Tune run.

Cells (e.g. variant x setting) are separate experiments: a configuration is only ever compared with
configurations of its own cell. Running one Tuner per cell would leave GPUs idle while the last cell
finishes, so a single Tuner runs every cell concurrently and these two objects route each trial to its
cell's own searcher and scheduler:

* :class:`CellSearch` keeps one Optuna study per cell, persisted in the sweep's journal
  (:mod:`clapray.sweep.studies`; open it with ``optuna-dashboard <store>/optuna.journal``), with a
  conditional define-by-run space and a seeded sampler (TPE, random, grid, GP or CMA-ES). It asks and tells
  the studies itself, interleaves the cells so each gets the same trial budget, evaluates the
  ``search.start_from`` points first and runs each sampled configuration once per seed; a study is told
  the mean over seeds of the final metric, PRUNED when any seed was stopped early, FAIL when one failed.
  Its checkpoint (taken by Ray Tune) keeps the samplers, so a resumed sweep continues their random streams
  and the same studies.
* :class:`PerCellASHA` keeps one ASHA per cell, with task boundaries as rungs.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from clapray.sweep.fields import axis_conditions_hold, plain
from clapray.sweep.model import Distribution, SweepConfig
from clapray.sweep.studies import StudyJournal, study_name


class CellSpace:
    """Define-by-run search space of one cell."""

    def __init__(self, sweep: SweepConfig, cell_name: str):
        self.sweep = sweep
        self.cell_name = cell_name

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        cell = self.sweep.cell(self.cell_name)
        sampled: dict[str, Any] = {}
        for name, dist in self.sweep.active_space(cell).items():
            if not self.sweep.is_active(name, cell, sampled):
                continue
            sampled[name] = suggest(trial, name, dist)
        return sampled


def suggest(trial: optuna.Trial, name: str, dist: Distribution) -> Any:
    if dist.kind == "choice":
        return trial.suggest_categorical(name, list(dist.choices))
    if dist.kind == "int":
        return trial.suggest_int(name, int(dist.low), int(dist.high), step=int(dist.step or 1), log=dist.log)
    return trial.suggest_float(name, float(dist.low), float(dist.high), step=dist.step, log=dist.log)


def make_sampler(sweep: SweepConfig, cell_index: int, cell_name: str) -> optuna.samplers.BaseSampler:
    """The cell's sampler, seeded from the sweep seed and the cell's position."""
    seed = sweep.search.seed * 1000 + cell_index
    algorithm = sweep.search.algorithm
    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algorithm == "grid":
        # BruteForce enumerates conditional spaces exactly (GridSampler cannot express `when:`).
        return optuna.samplers.BruteForceSampler(seed=seed)
    trials = sweep.trials_for(sweep.cell(cell_name))
    startup = min(10, max(2, trials // 2))
    if algorithm == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if algorithm == "cmaes":
        # CMA-ES samples numeric parameters; the others (choices, conditional ones) come from a seeded
        # random sampler, as Optuna documents.
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False,
                                            independent_sampler=optuna.samplers.RandomSampler(seed=seed))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


@dataclass
class _Configuration:
    """One sampled configuration of a cell (one Optuna trial) and the Tune trials running it, one per seed."""

    key: str
    cell: str
    params: dict[str, Any]
    seeds_left: list[int]
    number: int | None = None  # the Optuna trial number in the cell's study; None when nothing is sampled
    outcomes: dict[int, float | None] = field(default_factory=dict)  # seed -> final metric, None = stopped
    failed: bool = False
    told: bool = False


class CellSearch(Searcher):
    """Interleave per-cell Optuna studies; repeat every configuration for every seed."""

    def __init__(self, sweep: SweepConfig, *, num_tasks: dict[str, int], journal: StudyJournal):
        super().__init__(metric=sweep.search.metric, mode=sweep.search.mode)
        self.sweep = sweep
        self.num_tasks = num_tasks  # cell -> tasks of its scenario, to tell complete from stopped trials
        self.journal = journal
        self.cell_names = [c.name for c in sweep.cells()]
        self.samplers = {name: make_sampler(sweep, index, name) for index, name in enumerate(self.cell_names)
                         if sweep.active_space(sweep.cell(name))}
        self.configs_started = {name: 0 for name in self.cell_names}
        self.trials_started = {name: 0 for name in self.cell_names}
        self.open: dict[str, _Configuration | None] = {name: None for name in self.cell_names}
        self.configurations: dict[str, _Configuration] = {}
        self.trial_configuration: dict[str, tuple[str, int]] = {}
        self._studies: dict[str, optuna.Study] = {}

    # ---- the studies

    def study(self, cell: str) -> optuna.Study:
        """The cell's study, created (with the start points queued) or loaded from the journal."""
        if cell not in self._studies:
            direction = "maximize" if self.sweep.search.mode == "max" else "minimize"
            study = optuna.create_study(study_name=study_name(self.sweep.name, cell), storage=self.journal.storage,
                                        sampler=self.samplers[cell], direction=direction, load_if_exists=True)
            if not study.trials:
                for point in self.sweep.search.start_from:
                    values = self.point_in_cell(point.values, cell)
                    if values:
                        study.enqueue_trial(values, skip_if_exists=True)
                self.journal.sync()
            self._studies[cell] = study
        return self._studies[cell]

    def point_in_cell(self, values: dict[str, Any], cell: str) -> dict[str, Any]:
        """The part of a start point that can be sampled in ``cell`` (parameters whose grid conditions hold)."""
        the_cell = self.sweep.cell(cell)
        params = self.sweep.params
        return {k: v for k, v in values.items() if axis_conditions_hold(params[k], self.sweep.grid, the_cell)}

    # ---- Ray Tune's searcher interface

    def quota(self, cell: str) -> int:
        return self.sweep.trials_for(cell) * len(self.sweep.seeds)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        open_cells = [n for n in self.cell_names if self.trials_started[n] < self.quota(n)]
        if not open_cells:
            return Searcher.FINISHED
        cell = min(open_cells, key=lambda n: (self.trials_started[n], self.cell_names.index(n)))
        conf = self.open[cell]
        if conf is None or not conf.seeds_left:
            index = self.configs_started[cell]
            number, params = None, {}
            if cell in self.samplers:
                study = self.study(cell)
                trial = study.ask()
                params = CellSpace(self.sweep, cell)(trial)
                number = trial.number
                self.journal.sync()
            conf = _Configuration(key=f"{cell}#{index}", cell=cell, params=params, seeds_left=list(self.sweep.seeds),
                                  number=number)
            self.configurations[conf.key] = conf
            self.open[cell] = conf
            self.configs_started[cell] += 1
        seed = conf.seeds_left.pop(0)
        self.trials_started[cell] += 1
        self.trial_configuration[trial_id] = (conf.key, seed)
        run_config = self.sweep.run_config_for(cell, conf.params, seed)
        return {"cell": cell, "configuration": conf.key, "seed": seed, "params": conf.params,
                "grid": {axis: plain(value) for axis, value in self.sweep.cell(cell).axes.items()},
                "run": run_config.to_dict()}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Intermediate results drive ASHA, not Optuna: the objective is the seed mean at the end."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.trial_configuration:
            return
        key, seed = self.trial_configuration[trial_id]
        conf = self.configurations[key]
        finished = (result is not None and not result.get("diverged", False)
                    and result.get("tasks_done", 0) >= self.num_tasks[conf.cell])
        conf.failed |= error or bool(result and result.get("diverged", False))
        value = result.get(self.sweep.search.metric) if finished and result else None
        conf.outcomes[seed] = float(value) if value is not None and math.isfinite(value) else None
        if len(conf.outcomes) < len(self.sweep.seeds) or conf.number is None or conf.told:
            return
        study, values = self.study(conf.cell), list(conf.outcomes.values())
        if _already_told(study, conf.number):
            # A driver killed after its searcher told the study, but before Ray Tune saved the trial as ended:
            # the resumed trial reported its (deterministic) final result again. The study keeps the first.
            conf.told = True
            return
        if conf.failed:
            study.tell(conf.number, state=TrialState.FAIL)
        elif any(v is None for v in values):
            study.tell(conf.number, state=TrialState.PRUNED)  # stopped early by ASHA
        else:
            study.tell(conf.number, sum(values) / len(values))
        conf.told = True
        self.journal.sync()

    def save(self, checkpoint_path: str) -> None:
        # A pickle, like the rest of Ray Tune's experiment state beside it (tuner.pkl, params.pkl), which Tune
        # unpickles itself on resume: a sweep's storage is trusted as much as that (README "What is trusted").
        state = {k: v for k, v in self.__dict__.items() if k != "_studies"}
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(state, fh)

    def restore(self, checkpoint_path: str) -> None:
        # Tune's own searcher checkpoint, written by this process's predecessor next to the experiment
        # state (the same trust as Tune's experiment state itself).
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))
        self._studies = {}
        self.release_orphans()

    def release_orphans(self) -> None:
        """Mark FAIL the study trials a killed driver asked for but never recorded in its checkpoint: they
        will never be told, and a resumed sweep asks again in their place."""
        known = {(c.cell, c.number) for c in self.configurations.values() if c.number is not None}
        for cell in self.samplers:
            study = self.study(cell)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if (cell, trial.number) not in known:
                    study.tell(trial.number, state=TrialState.FAIL)
        self.journal.sync()


class PerCellASHA(FIFOScheduler):
    """Asynchronous successive halving within each cell; rungs are task boundaries (``tasks_done``)."""

    def __init__(self, sweep: SweepConfig, *, num_tasks: dict[str, int]):
        super().__init__()
        asha = sweep.scheduler
        self.schedulers: dict[str, ASHAScheduler] = {}
        for cell in sweep.cells():
            # max_t one past the last task: a trial reaching the last task ends by itself, so Ray Train
            # shuts down gracefully instead of being killed at the final rung.
            self.schedulers[cell.name] = ASHAScheduler(
                time_attr="tasks_done", metric=sweep.search.metric, mode=sweep.search.mode,
                max_t=num_tasks[cell.name] + 1, grace_period=min(asha.grace_tasks, num_tasks[cell.name]),
                reduction_factor=asha.reduction_factor)

    def _of(self, trial) -> ASHAScheduler:
        return self.schedulers[trial.config["cell"]]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("diverged"):
            return TrialScheduler.STOP
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def debug_string(self) -> str:
        return "; ".join(f"{name}: {s.debug_string()}" for name, s in self.schedulers.items())


def _already_told(study: Any, number: int) -> bool:
    """Whether study trial ``number`` has ended (told a value, pruned or failed) in the study's storage."""
    return any(t.number == number and t.state.is_finished() for t in study.get_trials(deepcopy=False))
