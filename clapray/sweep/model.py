"""The typed sweep model: cells, search space, scheduler, resources and the trial budget (no Ray, no Optuna).

A validated :class:`SweepConfig` (built by :mod:`clapray.sweep.loader` from a sweep YAML) knows its cells
(the grid's product), each cell's active search space (:class:`Distribution` and :class:`Param`, in the
terms of Optuna's ``suggest_*`` calls), the seeds every sampled configuration runs with, and how to build
one trial's :class:`~clapray.config.RunConfig`. Order in which a trial's run config is assembled (later
wins): base, ``set``, the cell's setting preset, the cell's grid values, the sampled values that are
active, ``same_as`` copies, then ``seeds.init`` and ``name``.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from clapray.config import MAX_SEED, RunConfig
from clapray.errors import ConfigError
from clapray.sweep.fields import (
    apply_assignments,
    axis_conditions_hold,
    format_value,
    plain,
    same_value,
    trial_assignments,
    value_in,
)
from clapray.typed_config import TypedConfig, config_field

# Metrics the learner reports after every task; the searcher and ASHA optimise one of them.
REPORTED_METRICS = ("avg_acc", "last_acc", "bwt", "ece", "ece_per_batch")
# The direction in which each metric improves, used when `search.mode` is left out.
METRIC_MODES: Mapping[str, str] = types.MappingProxyType({
    "avg_acc": "max", "last_acc": "max", "bwt": "max", "ece": "min", "ece_per_batch": "min"})

SEARCH_ALGORITHMS = ("tpe", "random", "grid")

# The special grid axis whose values are named presets of overrides (`settings`), not field values.
SETTING_AXIS = "setting"

# Built-in presets of the `setting` axis (method reference §12.6); a sweep may redefine or add presets.
BUILTIN_SETTINGS: Mapping[str, Mapping[str, Any]] = types.MappingProxyType({
    "standard": types.MappingProxyType({}),
    "replay_free": types.MappingProxyType({"budget.replay_free": True}),
    "budget": types.MappingProxyType({"budget.max_steps_per_task": 200}),
})

# The name of the single cell of a sweep without grid axes.
DEFAULT_CELL_NAME = "base"

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
MAX_SEEDS = 1000
# Run fields a sweep may drive with each trial's seed (``seed_fields``).
SEED_FIELDS = ("seeds.init", "seeds.class_order")
S3_URI = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?\Z")


# --------------------------------------------------------------------------------------------------
# The typed pieces.


@dataclass(frozen=True)
class Distribution:
    """How one search parameter is sampled, in the terms of Optuna's ``suggest_*`` calls.

    ``kind`` int: ``suggest_int(name, low, high, step=step or 1, log=log)``; float:
    ``suggest_float(name, low, high, step=step, log=log)``; choice: ``suggest_categorical(name,
    choices)``. Bounds are inclusive; ``step`` and ``log`` never come together (Optuna refuses it).
    """

    kind: Literal["int", "float", "choice"]
    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def finite(self) -> bool:
        """Whether the distribution has a finite list of values (choice and int)."""
        return self.kind != "float"

    def values(self) -> tuple[Any, ...] | None:
        """Every value, for grid search; ``None`` for a float distribution."""
        if self.kind == "choice":
            return self.choices
        if self.kind == "int":
            return tuple(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return None

    def contains(self, value: Any) -> bool:
        """Whether ``value`` can be sampled from this distribution."""
        if self.kind == "choice":
            return any(same_value(value, choice) for choice in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int":
            return (isinstance(value, int) and self.low <= value <= self.high
                    and (value - self.low) % (self.step or 1) == 0)
        return self.low <= value <= self.high

    def describe(self) -> str:
        """``int [1, 4]``, ``float [0.0001, 0.01] log``, ``int [500, 5000] step 500``, ``choice [1, 5]``."""
        if self.kind == "choice":
            return "choice [" + ", ".join(format_value(c) for c in self.choices) + "]"
        text = f"{self.kind} [{format_value(self.low)}, {format_value(self.high)}]"
        if self.step is not None:
            text += f" step {format_value(self.step)}"
        if self.log:
            text += " log"
        return text

    def to_spec(self) -> dict[str, Any]:
        """The YAML form, ``{int: [1, 4], step: 1}``, without the condition."""
        if self.kind == "choice":
            return {"choice": [plain(c) for c in self.choices]}
        spec: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.step is not None:
            spec["step"] = self.step
        if self.log:
            spec["log"] = True
        return spec


@dataclass(frozen=True)
class Param:
    """A sampled run-config field: its distribution and the condition under which it is sampled.

    ``when`` maps a grid axis (``setting`` included) or an earlier parameter to the values for which
    this parameter is active; all entries must hold. Where it is inactive the field keeps the value of
    the cell (or base), and the parameter is not sampled at all.
    """

    field: str
    distribution: Distribution
    when: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)

    def to_spec(self) -> dict[str, Any]:
        spec = self.distribution.to_spec()
        if self.when:
            spec["when"] = {name: [plain(v) for v in values] for name, values in self.when.items()}
        return spec


@dataclass(frozen=True)
class SameAs:
    """``target`` takes the value of ``source`` (sampled, or fixed by base, set or the cell) in every trial."""

    target: str
    source: str


@dataclass(frozen=True)
class Cell:
    """One point of the grid: the trials of a cell differ only in sampled values and seeds.

    ``name`` is ``axis=value`` per grid axis joined by commas (the axis is the field's last dotted
    component unless that is ambiguous), e.g. ``variant=handcrafted,deterministic=false,setting=standard``;
    it is stable, unique in the sweep and safe in file names. ``overrides`` are the cell's dotted
    run-config values (the setting preset expanded, values as the run config normalises them);
    ``axes`` are its grid coordinates (``setting`` by preset name), against which ``when`` is checked.
    """

    name: str
    overrides: Mapping[str, Any]
    axes: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class StartPoint:
    """A configuration every cell evaluates first (``search.start_from``, e.g. the paper's defaults).

    ``values`` maps search parameters to values inside their distributions; a cell drops the parameters that
    are not active in it and samples any active parameter the point does not name.
    """

    values: Mapping[str, Any]


@dataclass(frozen=True)
class SearchConfig(TypedConfig):
    """How configurations are sampled inside every cell (one persisted Optuna study per cell)."""

    algorithm: Literal["tpe", "random", "grid", "gp", "cmaes"] = config_field(
        "tpe", doc="Optuna sampler: tpe, random, grid (every combination of a finite space), gp (Gaussian "
        "process, for small budgets) or cmaes (CMA-ES; choice parameters are sampled at random)")
    # The sampler of cell i is seeded seed * 1000 + i, which NumPy's RandomState (inside Optuna) takes below 2**32.
    seed: int = config_field(0, doc="seed of the sampler (at most 4194303: cell i's sampler is seeded "
                             "seed x 1000 + i, below 2^32)", ge=0, le=2**22 - 1)
    metric: str = config_field("avg_acc", doc="reported metric the searcher and the scheduler optimise",
                         choices=REPORTED_METRICS)
    mode: Literal["max", "min"] | None = config_field(
        None, doc="max or min; null = the metric's own direction (max for accuracies and bwt, min for ece)")
    trials_per_cell: int | None = config_field(
        None, doc="sampled configurations per cell, each run once per seed; null = the grid size with "
        "algorithm grid, or 1 when nothing is sampled", ge=1, le=100_000)
    space: tuple[Param, ...] = config_field(factory=tuple, doc="the sampled parameters in sampling order: file "
                                      "order, each after the parameters its `when` names")
    same_as: tuple[SameAs, ...] = config_field(factory=tuple, doc="fields copied from another field, in order")
    start_from: tuple[StartPoint, ...] = config_field(
        factory=tuple, doc="configurations every cell evaluates first, in order (a warm start, e.g. the "
        "paper's defaults): mappings of search parameters to values; they count towards trials_per_cell")

    def check(self) -> None:
        if self.mode is None:
            object.__setattr__(self, "mode", METRIC_MODES[self.metric])
        if self.algorithm != "grid" and self.space and self.trials_per_cell is None:
            raise ConfigError(type(self).__name__, "trials_per_cell",
                              "an integer >= 1 (null only with algorithm grid or an empty space)", None)
        if self.algorithm != "grid" and not self.space and self.trials_per_cell not in (None, 1):
            # Nothing is sampled, so every trial of a cell would be the same run (and the same run id).
            raise ConfigError(type(self).__name__, "trials_per_cell",
                              "1 or null when search.space is empty", self.trials_per_cell)

    def param(self, name: str) -> Param:
        """The parameter sampling field ``name``."""
        for p in self.space:
            if p.field == name:
                return p
        raise KeyError(name)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.field for p in self.space)


@dataclass(frozen=True)
class AshaConfig(TypedConfig):
    """Asynchronous successive halving with rungs at task boundaries (a task is one time step)."""

    grace_tasks: int = config_field(1, doc="tasks every trial finishes before it may be stopped", ge=1)
    reduction_factor: float = config_field(3.0, doc="keep the best 1/factor of trials at every rung", gt=1.0)


EXECUTORS = ("auto", "in_trial", "worker_group")


@dataclass(frozen=True)
class ResourcesConfig(TypedConfig):
    """What one trial occupies (its Ray Train workers) and where they run."""

    workers_per_trial: int = config_field(1, doc="Ray Train workers (DDP ranks) per trial", ge=1, le=1024)
    gpus_per_worker: float = config_field(0.0, doc="GPUs per worker (fractions share a GPU); 0 = CPU only", ge=0.0,
                                          le=64.0)
    cpus_per_worker: int = config_field(1, doc="CPUs per worker (data loading threads)", ge=1, le=1024)
    max_concurrent_trials: int | None = config_field(None, doc="cap on trials running at once; null = as many as "
                                               "the cluster's resources allow", ge=1, le=100_000)
    executor: str = config_field(
        "auto", doc="where a trial's Ray Train worker runs: in_trial (Ray Train's local mode, inside the trial's own "
        "process: no controller or worker process per trial, torch imported once per trial slot; a failed trial is "
        "retried by Ray Tune from its last task's checkpoint), worker_group (a Train controller and worker actors "
        "per trial; Ray Train retries a failed worker group; needed for several workers) or auto (in_trial for "
        "one worker, worker_group for several). Results are identical either way", choices=EXECUTORS)

    @property
    def in_trial(self) -> bool:
        """Whether a trial's one worker runs inside the trial's process (``executor`` resolved)."""
        return self.executor == "in_trial" or (self.executor == "auto" and self.workers_per_trial == 1)

    def check(self) -> None:
        if self.executor == "in_trial" and self.workers_per_trial > 1:
            raise ConfigError(type(self).__name__, "executor", "worker_group or auto when workers_per_trial > 1 "
                              "(in_trial runs one worker, inside the trial's process)", self.executor)
        # Ray shares a GPU between actors only in fractions of one; above one it wants whole GPUs.
        if self.gpus_per_worker > 1 and not float(self.gpus_per_worker).is_integer():
            raise ConfigError(type(self).__name__, "gpus_per_worker", "a fraction of one GPU (e.g. 0.25: four "
                              "workers share a GPU) or a whole number of GPUs", self.gpus_per_worker)


@dataclass(frozen=True)
class SweepOptions(TypedConfig):
    """The scalar top-level fields, validated by the run-config machinery."""

    name: str = config_field("sweep", doc="sweep name: a directory name under storage")
    seeds: tuple[int, ...] = config_field(factory=lambda: (0,), doc="the seeds every configuration runs with; "
                                    "each trial's seed sets the run fields named by seed_fields")
    seed_fields: tuple[str, ...] = config_field(
        factory=lambda: ("seeds.init",), doc="run fields a trial's seed sets: seeds.init (initialisation, MC "
        "draws, shuffling, exemplars) and optionally seeds.class_order (the paper's repeated runs change the "
        "class order too); a field not listed keeps the base's value")
    retries: int = config_field(2, doc="times a failed trial is resumed from its last finished task", ge=0, le=100)
    storage: str = config_field("results", doc="results and checkpoints: a local path (relative to the working "
                          "directory) or s3://bucket/prefix")

    def check(self) -> None:
        if not SAFE_NAME.match(self.name):
            raise ConfigError(type(self).__name__, "name", "a directory name of at most 100 letters, digits, '.', "
                              "'_' and '-', not starting with '.', '_' or '-'", self.name)
        if (not self.seeds or len(self.seeds) > MAX_SEEDS or any(not 0 <= s <= MAX_SEED for s in self.seeds)
                or len(set(self.seeds)) != len(self.seeds)):
            raise ConfigError(type(self).__name__, "seeds", f"a non-empty list of at most {MAX_SEEDS} distinct "
                              f"integers in [0, {MAX_SEED}]", list(self.seeds))
        if (not self.seed_fields or len(set(self.seed_fields)) != len(self.seed_fields)
                or any(f not in SEED_FIELDS for f in self.seed_fields)):
            raise ConfigError(type(self).__name__, "seed_fields", "a non-empty list of distinct fields among "
                              + ", ".join(SEED_FIELDS), list(self.seed_fields))
        if not self.storage.strip() or ("://" in self.storage and not S3_URI.match(self.storage)):
            raise ConfigError(type(self).__name__, "storage", "a local path or s3://bucket/prefix", self.storage)


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep. Build it with :func:`load_sweep_config` or :func:`sweep_from_mapping`.

    ``base`` is the base run config with ``set`` already applied: what every trial starts from.
    ``set_overrides`` keeps the ``set`` entries for display. ``settings`` holds every preset (built-in and
    the sweep's own); ``grid`` the axes in file order with their (normalised) values. ``scheduler`` is
    ``None`` for no early stopping.
    """

    name: str
    source: str
    base: RunConfig
    base_source: str
    set_overrides: Mapping[str, Any]
    grid: Mapping[str, tuple[Any, ...]]
    settings: Mapping[str, Mapping[str, Any]]
    search: SearchConfig
    seeds: tuple[int, ...]
    scheduler: AshaConfig | None
    resources: ResourcesConfig
    retries: int
    storage: str
    seed_fields: tuple[str, ...] = ("seeds.init",)
    cell_list: tuple[Cell, ...] = dataclasses.field(repr=False, default=())

    # ---- cells and the trial budget

    def cells(self) -> list[Cell]:
        """Every cell, in a stable order: the grid's product in file order (last axis fastest)."""
        return list(self.cell_list)

    def cell(self, name: str) -> Cell:
        """The cell called ``name``."""
        for cell in self.cell_list:
            if cell.name == name:
                return cell
        raise KeyError(f"no cell named {name!r} (cells: {', '.join(c.name for c in self.cell_list)})")

    @property
    def params(self) -> dict[str, Param]:
        """The search parameters by field, in sampling order."""
        return {p.field: p for p in self.search.space}

    def active_space(self, cell: Cell | str) -> dict[str, Distribution]:
        """The parameters that can be sampled in ``cell``, in sampling order: those whose conditions on
        grid axes hold. Conditions on other parameters depend on the values drawn, so while sampling,
        ask :meth:`is_active` for each of these before suggesting it."""
        cell = self._as_cell(cell)
        return {p.field: p.distribution for p in self.search.space if self._axis_conditions_hold(p, cell)}

    def is_active(self, param: str | Param, cell: Cell | str, sampled_so_far: Mapping[str, Any] = ()) -> bool:
        """Whether ``param`` is sampled in ``cell`` given the values drawn so far (in sampling order).

        A condition on another parameter holds only when that parameter was drawn (it was active) with
        one of the listed values.
        """
        p = param if isinstance(param, Param) else self.search.param(param)
        cell = self._as_cell(cell)
        drawn = dict(sampled_so_far)
        if not self._axis_conditions_hold(p, cell):
            return False
        for name, allowed in p.when.items():
            if name not in self.grid and not (name in drawn and value_in(drawn[name], allowed)):
                return False
        return True

    def grid_size(self, cell: Cell | str) -> int | None:
        """Distinct configurations of ``cell``'s space: the product of its parameters' value counts
        (1 when nothing is sampled); ``None`` when a parameter is continuous or conditional on another."""
        cell = self._as_cell(cell)
        size = 1
        for p in self.search.space:
            if not self._axis_conditions_hold(p, cell):
                continue
            values = p.distribution.values()
            if values is None or any(name not in self.grid for name in p.when):
                return None
            size *= len(values)
        return size

    def trials_for(self, cell: Cell | str) -> int:
        """Configurations sampled in ``cell`` (each runs once per seed): the grid size with algorithm grid,
        1 when nothing can be sampled in the cell, else ``search.trials_per_cell``."""
        cell = self._as_cell(cell)
        if self.search.algorithm == "grid":
            return self.grid_size(cell) or 1
        if not self.active_space(cell):
            return 1
        return int(self.search.trials_per_cell or 1)

    def trial_count(self) -> int:
        """Trials of the whole sweep: configurations of every cell times the seeds."""
        return sum(self.trials_for(cell) for cell in self.cell_list) * len(self.seeds)

    # ---- building trials

    def trial_name(self, cell: Cell | str) -> str:
        """Run name of ``cell``'s trials; trials of a cell differ in their config hash."""
        return f"{self.name}-{self._as_cell(cell).name}"

    def run_config_for(self, cell: Cell | str, sampled: Mapping[str, Any], seed: int, *,
                       output_dir: str | None = None) -> RunConfig:
        """The full run config of one trial.

        ``sampled`` maps parameter fields to drawn values; it must hold every parameter that is active
        (see :meth:`is_active`) and no name outside the space; values of inactive parameters are ignored.
        ``seed`` becomes every field of ``seed_fields`` (``seeds.init``, and ``seeds.class_order`` when listed);
        ``output_dir`` (default: the base's) where the run writes.
        Raises ``ValueError`` for a wrong ``sampled`` mapping and ``ConfigError`` for a value the run
        config rejects.
        """
        cell = self._as_cell(cell)
        unknown = [name for name in sampled if name not in self.params]
        if unknown:
            raise ValueError(f"not search parameters of sweep {self.name}: {', '.join(map(str, unknown))}")
        active: dict[str, Any] = {}
        for p in self.search.space:
            if self.is_active(p, cell, active):
                if p.field not in sampled:
                    raise ValueError(f"parameter {p.field} is active in cell {cell.name} but was not sampled")
                active[p.field] = sampled[p.field]
        assignments = self._trial_assignments(cell, active)
        for name in self.seed_fields:
            assignments[name] = seed
        assignments["name"] = self.trial_name(cell)
        if output_dir is not None:
            assignments["output_dir"] = output_dir
        try:
            return apply_assignments(self.base, assignments)
        except ConfigError as err:
            raise ConfigError(f"{self.source} (cell {cell.name})", err.field, err.expected, err.got,
                              got_text=err.got_text) from None

    def cell_config(self, cell: Cell | str) -> RunConfig:
        """The run config of ``cell`` before sampling: base, ``set``, preset and grid values applied."""
        return apply_assignments(self.base, self._trial_assignments(self._as_cell(cell), {}))

    def storage_path(self) -> str:
        """``storage`` as Ray wants it: an s3:// URI unchanged, a local path made absolute (from the cwd)."""
        if self.storage.startswith("s3://"):
            return self.storage
        return str(Path(self.storage).expanduser().resolve())

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping that :func:`sweep_from_mapping` loads back into an equal sweep (base inlined)."""
        return {
            "name": self.name,
            "base": self.base.to_dict(),
            "grid": {axis: [plain(v) for v in values] for axis, values in self.grid.items()},
            "settings": {name: {k: plain(v) for k, v in preset.items()} for name, preset in self.settings.items()},
            "search": {
                "algorithm": self.search.algorithm, "seed": self.search.seed, "metric": self.search.metric,
                "mode": self.search.mode, "trials_per_cell": self.search.trials_per_cell,
                "space": {p.field: p.to_spec() for p in self.search.space},
                "same_as": {s.target: s.source for s in self.search.same_as},
                "start_from": [{k: plain(v) for k, v in p.values.items()} for p in self.search.start_from],
            },
            "seeds": list(self.seeds),
            "seed_fields": list(self.seed_fields),
            "scheduler": None if self.scheduler is None else {"asha": self.scheduler.to_dict()},
            "resources": self.resources.to_dict(),
            "retries": self.retries,
            "storage": self.storage,
        }

    # ---- helpers

    def _as_cell(self, cell: Cell | str) -> Cell:
        return self.cell(cell) if isinstance(cell, str) else cell

    def _axis_conditions_hold(self, p: Param, cell: Cell) -> bool:
        return axis_conditions_hold(p, self.grid, cell)

    def _trial_assignments(self, cell: Cell, active: Mapping[str, Any]) -> dict[str, Any]:
        return trial_assignments(self.base, self.search.same_as, cell, active)

