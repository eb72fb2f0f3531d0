"""Typed, validated configuration of a sweep: ``python -m clapray.sweep sweeps/X.yaml``.

A sweep YAML names a base run config, overrides on top of it, grid axes crossed into *cells*, a search
space sampled inside every cell, the init seeds every sampled configuration runs with, the scheduler,
the resources of one trial and where results go::

    name: ablation-cifar100
    base: cifar100                       # shipped run config name, path to a run YAML, or a mapping
    set: {optim.epochs: 5}               # dotted overrides on top of base
    grid:                                # crossed into cells
      method.deterministic: [false, true]
      setting: [standard, replay_free]   # the named presets of `settings`
    search:
      algorithm: tpe                     # tpe | random | grid
      metric: avg_acc
      trials_per_cell: 8
      space:
        method.kd_weight: {float: [0.0, 30.0]}
        memory.size: {int: [500, 5000], step: 500, when: {setting: standard}}
      same_as: {method.mc_samples_eval: method.mc_samples_train}
    seeds: [0, 1, 2]
    scheduler: {asha: {grace_tasks: 3, reduction_factor: 3}}
    resources: {workers_per_trial: 1, gpus_per_worker: 1, cpus_per_worker: 4}
    retries: 2
    storage: results                     # or s3://bucket/prefix

Loading validates everything a trial would otherwise find out hours later: every dotted field is a
run-config leaf, every grid value, preset and distribution bound is accepted by the run config (checked
by building run configs, so the rules live in one place, :mod:`clapray.config`), every cell is a valid
run config, conditions refer to grid axes or other parameters (without cycles), and the trial budget
adds up. The first
problem raises a one-line :class:`~clapray.errors.ConfigError`::

    sweeps/x.yaml: search.space.method.vga.depth: expected an integer >= 1, got 0

This module is pure Python and YAML (no torch, Ray or Optuna): the sweep driver turns
:class:`Distribution` objects into Optuna ``suggest_*`` calls, and tests import it cheaply.

Order in which a trial's run config is assembled (later wins): base, ``set``, the cell's setting
preset, the cell's grid values, the sampled values that are active, ``same_as`` copies, then
``seeds.init`` and ``name``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from clapray.config import PROMPT_VARIANTS, RunConfig, shipped_config_paths
from clapray.typed_config import (
    TypedConfig,
    config_field,
    describe_fields,
    from_mapping,
    load_yaml_mapping,
    parse_override,
)
from clapray.errors import ConfigError, UserError

# Metrics the learner reports after every task; the searcher and ASHA optimise one of them.
REPORTED_METRICS = ("avg_acc", "last_acc", "acc", "bwt", "ece", "ece_per_batch")
# The direction in which each metric improves, used when `search.mode` is left out.
METRIC_MODES: Mapping[str, str] = types.MappingProxyType({
    "avg_acc": "max", "last_acc": "max", "acc": "max", "bwt": "max", "ece": "min", "ece_per_batch": "min"})

SEARCH_ALGORITHMS = ("tpe", "random", "grid")

# The special grid axis whose values are named presets of overrides (`settings`), not field values.
SETTING_AXIS = "setting"

# Built-in presets of the `setting` axis (method reference §12.6); a sweep may redefine or add presets.
BUILTIN_SETTINGS: Mapping[str, Mapping[str, Any]] = types.MappingProxyType({
    "standard": types.MappingProxyType({}),
    "replay_free": types.MappingProxyType({"budget.replay_free": True}),
    "budget": types.MappingProxyType({"budget.max_steps_per_task": 200}),
})

# Fields the sweep sets per trial itself. Sweeping them would also be meaningless for results: name and
# output_dir are left out of the config hash, so trials differing only there would share a run id.
MANAGED_FIELDS = ("name", "output_dir", "seeds.init")

# The name of the single cell of a sweep without grid axes.
DEFAULT_CELL_NAME = "base"

_TOP_LEVEL_KEYS = ("name", "base", "set", "grid", "settings", "search", "seeds", "scheduler", "resources",
                   "retries", "storage")
_DISTRIBUTION_KINDS = ("int", "float", "choice")
_DISTRIBUTION_OPTIONS = ("step", "log", "when")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_S3_URI = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?\Z")
# Source of errors raised while trying values out; callers re-anchor them at the sweep file and field.
_PROBE = "<probe>"


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
            return any(_same_value(value, choice) for choice in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int":
            return (isinstance(value, int) and self.low <= value <= self.high
                    and (value - self.low) % (self.step or 1) == 0)
        return self.low <= value <= self.high

    def describe(self) -> str:
        """``int [1, 4]``, ``float [0.0001, 0.01] log``, ``int [500, 5000] step 500``, ``choice [1, 5]``."""
        if self.kind == "choice":
            return "choice [" + ", ".join(_format_value(c) for c in self.choices) + "]"
        text = f"{self.kind} [{_format_value(self.low)}, {_format_value(self.high)}]"
        if self.step is not None:
            text += f" step {_format_value(self.step)}"
        if self.log:
            text += " log"
        return text

    def to_spec(self) -> dict[str, Any]:
        """The YAML form, ``{int: [1, 4], step: 1}``, without the condition."""
        if self.kind == "choice":
            return {"choice": [_plain(c) for c in self.choices]}
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
            spec["when"] = {name: [_plain(v) for v in values] for name, values in self.when.items()}
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
class SearchConfig(TypedConfig):
    """How configurations are sampled inside every cell (Optuna through Ray Tune)."""

    algorithm: Literal["tpe", "random", "grid"] = config_field(
        "tpe", doc="Optuna sampler: tpe, random, or grid (every combination of a finite space)")
    seed: int = config_field(0, doc="seed of the sampler", ge=0)
    metric: str = config_field("avg_acc", doc="reported metric the searcher and the scheduler optimise",
                         choices=REPORTED_METRICS)
    mode: Literal["max", "min"] | None = config_field(
        None, doc="max or min; null = the metric's own direction (max for accuracies and bwt, min for ece)")
    trials_per_cell: int | None = config_field(
        None, doc="sampled configurations per cell, each run once per seed; null = the grid size with "
        "algorithm grid, or 1 when nothing is sampled", ge=1)
    space: tuple[Param, ...] = config_field(factory=tuple, doc="the sampled parameters in sampling order: file "
                                      "order, each after the parameters its `when` names")
    same_as: tuple[SameAs, ...] = config_field(factory=tuple, doc="fields copied from another field, in order")

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


@dataclass(frozen=True)
class ResourcesConfig(TypedConfig):
    """What one trial occupies: a Ray Train worker group."""

    workers_per_trial: int = config_field(1, doc="Ray Train workers (DDP ranks) per trial", ge=1)
    gpus_per_worker: float = config_field(0.0, doc="GPUs per worker (fractions share a GPU); 0 = CPU only", ge=0.0)
    cpus_per_worker: int = config_field(1, doc="CPUs per worker (data loading threads)", ge=1)
    max_concurrent_trials: int | None = config_field(None, doc="cap on trials running at once; null = as many as "
                                               "the cluster's resources allow", ge=1)


@dataclass(frozen=True)
class _SweepOptions(TypedConfig):
    """The scalar top-level fields, validated by the run-config machinery."""

    name: str = config_field("sweep", doc="sweep name: a directory name under storage")
    seeds: tuple[int, ...] = config_field(factory=lambda: (0,), doc="init seeds (seeds.init) every configuration "
                                    "runs with; the class order stays the base's seeds.class_order")
    retries: int = config_field(2, doc="times a failed trial is resumed from its last finished task", ge=0)
    storage: str = config_field("results", doc="results and checkpoints: a local path (relative to the working "
                          "directory) or s3://bucket/prefix")

    def check(self) -> None:
        if not _SAFE_NAME.match(self.name):
            raise ConfigError(type(self).__name__, "name", "a directory name of letters, digits, '.', '_' "
                              "and '-', not starting with '.', '_' or '-'", self.name)
        if not self.seeds or any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(type(self).__name__, "seeds", "a non-empty list of distinct integers >= 0",
                              list(self.seeds))
        if not self.storage.strip() or ("://" in self.storage and not _S3_URI.match(self.storage)):
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
            if name not in self.grid and not (name in drawn and _value_in(drawn[name], allowed)):
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
        ``seed`` becomes ``seeds.init``; ``output_dir`` (default: the base's) where the run writes.
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
        assignments["seeds.init"] = seed
        assignments["name"] = self.trial_name(cell)
        if output_dir is not None:
            assignments["output_dir"] = output_dir
        try:
            return _apply(self.base, assignments)
        except ConfigError as err:
            raise ConfigError(f"{self.source} (cell {cell.name})", err.field, err.expected, err.got,
                              got_text=err.got_text) from None

    def cell_config(self, cell: Cell | str) -> RunConfig:
        """The run config of ``cell`` before sampling: base, ``set``, preset and grid values applied."""
        return _apply(self.base, self._trial_assignments(self._as_cell(cell), {}))

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
            "grid": {axis: [_plain(v) for v in values] for axis, values in self.grid.items()},
            "settings": {name: {k: _plain(v) for k, v in preset.items()} for name, preset in self.settings.items()},
            "search": {
                "algorithm": self.search.algorithm, "seed": self.search.seed, "metric": self.search.metric,
                "mode": self.search.mode, "trials_per_cell": self.search.trials_per_cell,
                "space": {p.field: p.to_spec() for p in self.search.space},
                "same_as": {s.target: s.source for s in self.search.same_as},
            },
            "seeds": list(self.seeds),
            "scheduler": None if self.scheduler is None else {"asha": self.scheduler.to_dict()},
            "resources": self.resources.to_dict(),
            "retries": self.retries,
            "storage": self.storage,
        }

    # ---- helpers

    def _as_cell(self, cell: Cell | str) -> Cell:
        return self.cell(cell) if isinstance(cell, str) else cell

    def _axis_conditions_hold(self, p: Param, cell: Cell) -> bool:
        return _axis_conditions_hold(p, self.grid, cell)

    def _trial_assignments(self, cell: Cell, active: Mapping[str, Any]) -> dict[str, Any]:
        return _trial_assignments(self.base, self.search.same_as, cell, active)


# --------------------------------------------------------------------------------------------------
# Values and run-config fields.


def _same_value(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from 0 and 1 (YAML ``true`` is not the integer 1 here)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _value_in(value: Any, allowed: Sequence[Any]) -> bool:
    return any(_same_value(value, a) for a in allowed)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _format_value(value: Any) -> str:
    """A value as a user would write it in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def _name_text(value: Any) -> str:
    """A value as it appears in a cell name: characters unsafe in paths become '_'."""
    if isinstance(value, (list, tuple)):
        text = "+".join(_format_value(v) for v in value) or "none"
    else:
        text = _format_value(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


@functools.lru_cache(maxsize=None)
def _leaf_types() -> dict[str, Any]:
    """Dotted run-config leaf field -> its annotation (callers must not mutate the cached dict)."""
    out: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
            else:
                out[f"{prefix}{f.name}"] = tp

    walk(RunConfig, "")
    return out


@functools.lru_cache(maxsize=None)
def _leaf_type_texts() -> dict[str, str]:
    return {name: expected for name, expected, _default, _doc in describe_fields(RunConfig)}


def _is_section(name: str) -> bool:
    return any(leaf.startswith(name + ".") for leaf in _leaf_types())


def _field_problem(name: Any) -> tuple[str, str] | None:
    """Why ``name`` cannot be swept, as (expected, got text); ``None`` when it is a usable leaf field."""
    leaves = _leaf_types()
    if isinstance(name, str) and name in leaves:
        if name in MANAGED_FIELDS:
            return ("a field the sweep does not set per trial (it sets name, output_dir and seeds.init; "
                    "list init seeds under seeds)", "a field the sweep sets itself")
        return None
    if isinstance(name, str) and _is_section(name):
        return "a run config leaf field (a dotted name such as optim.lr)", "a section, not a leaf field"
    close = difflib.get_close_matches(str(name), list(leaves), n=1)
    hint = f" such as {close[0]}" if close else ""
    return (f"a run config field{hint} (python -m clapray.run --fields lists them)", "an unknown field")


def _numeric_kinds(tp: Any) -> set[str]:
    """Which numeric distributions a field annotation accepts: float fields take int and float samples."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if float in args:
        return {"int", "float"}
    if int in args:
        return {"int"}
    return set()


def _axis_conditions_hold(p: Param, grid: Mapping[str, Any], cell: Cell) -> bool:
    """Whether ``p``'s conditions on grid axes hold in ``cell`` (conditions on parameters are not looked at)."""
    return all(_value_in(cell.axes.get(name), allowed) for name, allowed in p.when.items() if name in grid)


def _trial_assignments(base: RunConfig, same_as: Sequence[SameAs], cell: Cell, active: Mapping[str, Any]
                       ) -> dict[str, Any]:
    """Dotted values a trial sets on top of ``base``: the cell's, the active sampled ones, then the copies."""
    values = dict(cell.overrides)
    values.update(active)
    for copy in same_as:
        values[copy.target] = values[copy.source] if copy.source in values else _get(base, copy.source)
    return values


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _apply(cfg: Any, assignments: Mapping[str, Any], prefix: str = "") -> Any:
    """``cfg`` with dotted ``assignments`` replaced, validated by the config classes themselves.

    Only the sections on the changed paths are rebuilt, which keeps trying out values cheap. Errors come
    back as ConfigError with source ``<probe>`` and the full dotted field.
    """
    groups: dict[str, dict[str, Any]] = {}
    changes: dict[str, Any] = {}
    for key, value in assignments.items():
        head, _, rest = key.partition(".")
        if rest:
            groups.setdefault(head, {})[rest] = value
        else:
            changes[head] = value
    for head, sub in groups.items():
        changes[head] = _apply(getattr(cfg, head), sub, f"{prefix}{head}.")
    try:
        return dataclasses.replace(cfg, **changes)
    except ConfigError as err:
        if err.source == type(cfg).__name__:  # raised by this section's own checks: give the full path
            raise ConfigError(_PROBE, f"{prefix}{err.field}", err.expected, err.got, got_text=err.got_text) from None
        raise


# --------------------------------------------------------------------------------------------------
# Loading.


class _Loader:
    """Validates one sweep mapping; every error names ``source`` and the dotted sweep field."""

    def __init__(self, data: Mapping[str, Any], source: str, base_dir: Path | None) -> None:
        self.data, self.source, self.base_dir = data, source, base_dir
        # Filled section by section by load(); later sections are checked against earlier ones.
        self.base: RunConfig = RunConfig()
        self.base_source = ""
        self.set_overrides: dict[str, Any] = {}
        self.settings: dict[str, dict[str, Any]] = {}
        self.grid: dict[str, tuple[Any, ...]] = {}
        self.search = SearchConfig()

    def fail(self, field_name: str, expected: str, got: Any, got_text: str | None = None) -> ConfigError:
        return ConfigError(self.source, field_name, expected, got, got_text=got_text)

    def relabel(self, err: ConfigError, field_name: str, expected: str | None = None) -> ConfigError:
        return ConfigError(self.source, field_name, expected or err.expected, err.got, got_text=err.got_text)

    def check_field(self, name: Any, label: str) -> str:
        problem = _field_problem(name)
        if problem is not None:
            raise self.fail(label, problem[0], None, got_text=problem[1])
        return name

    def check_variant(self, value: Any, label: str) -> None:
        if value not in PROMPT_VARIANTS:
            raise self.fail(label, "a prompt variant (" + ", ".join(PROMPT_VARIANTS) + ")", value)

    def mapping(self, value: Any, label: str, what: str) -> Mapping[Any, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(label, what, value)
        return value

    def try_value(self, cfg: RunConfig, name: str, value: Any, label: str) -> Any:
        """``value`` for field ``name`` as the run config normalises it; errors are blamed on ``label``."""
        try:
            return _get(_apply(cfg, {name: value}), name)
        except ConfigError as err:
            if err.field == name:
                raise self.relabel(err, label) from None
            raise self.fail(label, f"a value that keeps {err.field} valid ({err.expected})", value) from None

    # ---- sections

    def load(self) -> SweepConfig:
        data = self.data
        for key in data:
            if key not in _TOP_LEVEL_KEYS:
                raise self.fail(str(key), "one of the fields " + ", ".join(_TOP_LEVEL_KEYS), None,
                                got_text="an unknown field")
        for key in ("name", "base"):
            if key not in data:
                raise self.fail(key, "a value (the field is required)", None, got_text="nothing")
        options = from_mapping(_SweepOptions, {k: data[k] for k in ("name", "seeds", "retries", "storage")
                                               if k in data}, self.source)
        self.base, self.base_source = self.load_base(data["base"])
        self.set_overrides = self.load_set(data.get("set"))
        self.settings = self.load_settings(data.get("settings"))
        self.grid = self.load_grid(data.get("grid"))
        self.search = search = self.load_search(data.get("search"))
        scheduler = self.load_scheduler(data.get("scheduler", "none"))
        resources = from_mapping(ResourcesConfig, data.get("resources"), self.source, "resources.")
        if resources.gpus_per_worker > 0 and self.base.device == "cpu":
            raise self.fail("resources.gpus_per_worker", "0 when the runs' device is cpu",
                            resources.gpus_per_worker)
        cells = self.make_cells()
        self.check_space_in_cells(cells)
        sweep = SweepConfig(name=options.name, source=self.source, base=self.base, base_source=self.base_source,
                            set_overrides=self.set_overrides, grid=self.grid, settings=self.settings,
                            search=search, seeds=options.seeds, scheduler=scheduler, resources=resources,
                            retries=options.retries, storage=options.storage, cell_list=tuple(cells))
        self.check_budget(sweep)
        return sweep

    def load_base(self, value: Any) -> tuple[RunConfig, str]:
        if isinstance(value, Mapping):
            return from_mapping(RunConfig, value, self.source, "base."), "inline run config"
        shipped = shipped_config_paths()
        expected = ("a shipped run config name (" + ", ".join(shipped) + "), a path to a run YAML or a "
                    "mapping of run config fields")
        if not isinstance(value, str) or not value.strip():
            raise self.fail("base", expected, value)
        candidates = [Path(value)] if Path(value).is_absolute() else (
            ([self.base_dir / value] if self.base_dir is not None else []) + [Path(value)])
        path = next((p for p in candidates if p.is_file()), None)
        if path is None and value in shipped:
            path = shipped[value]
        if path is None:
            raise self.fail("base", expected, value, got_text=f"{value!r}, which is neither")
        base = from_mapping(RunConfig, load_yaml_mapping(path), str(path))
        return base, (value if Path(value) == path else f"{value} ({path})")

    def flatten(self, data: Any, label: str) -> dict[str, Any]:
        """A mapping of dotted fields (nested sections allowed) -> values, every field checked."""
        out: dict[str, Any] = {}

        def walk(node: Mapping[Any, Any], prefix: str) -> None:
            for key, value in node.items():
                dotted = f"{prefix}{key}"
                if dotted not in _leaf_types() and _is_section(dotted) and isinstance(value, Mapping):
                    walk(value, dotted + ".")
                    continue
                self.check_field(dotted, f"{label}.{dotted}")
                out[dotted] = value

        walk(self.mapping(data, label, "a mapping of run config fields to values"), "")
        return out

    def load_set(self, data: Any) -> dict[str, Any]:
        assignments = self.flatten(data, "set")
        if "method.variant" in assignments:
            self.check_variant(assignments["method.variant"], "set.method.variant")
        try:
            self.base = _apply(self.base, assignments)
        except ConfigError as err:
            raise self.relabel(err, f"set.{err.field}") from None
        return {name: _get(self.base, name) for name in assignments}

    def load_settings(self, data: Any) -> dict[str, dict[str, Any]]:
        settings = {name: dict(preset) for name, preset in BUILTIN_SETTINGS.items()}
        for name, preset in self.mapping(data, "settings", "a mapping of setting names to overrides").items():
            if not isinstance(name, str) or not _SAFE_NAME.match(name):
                raise self.fail(f"settings.{name}", "a setting name of letters, digits, '.', '_' and '-'", name)
            label = f"settings.{name}"
            assignments = self.flatten(preset, label)
            if "method.variant" in assignments:
                self.check_variant(assignments["method.variant"], f"{label}.method.variant")
            try:
                cfg = _apply(self.base, assignments)
            except ConfigError as err:
                raise self.relabel(err, f"{label}.{err.field}") from None
            settings[name] = {k: _get(cfg, k) for k in assignments}
        return settings

    def load_grid(self, data: Any) -> dict[str, tuple[Any, ...]]:
        grid: dict[str, tuple[Any, ...]] = {}
        for axis, values in self.mapping(data, "grid", "a mapping of axes to lists of values").items():
            label = f"grid.{axis}"
            if axis != SETTING_AXIS:
                self.check_field(axis, label)
            if not isinstance(values, list) or not values:
                raise self.fail(label, "a non-empty list of values", values)
            for i, value in enumerate(values):
                if _value_in(value, values[:i]):
                    raise self.fail(label, "distinct values", value, got_text=f"{_format_value(value)} twice")
            if axis == SETTING_AXIS:
                for value in values:
                    if not isinstance(value, str) or value not in self.settings:
                        raise self.fail(label, "names of settings (" + ", ".join(self.settings) + ")", value)
                grid[axis] = tuple(values)
                continue
            if axis == "method.variant":
                for value in values:
                    self.check_variant(value, label)
            normalised = []
            for value in values:
                try:
                    normalised.append(_get(_apply(self.base, {axis: value}), axis))
                except ConfigError as err:
                    if err.field == axis:
                        raise self.relabel(err, label) from None
                    normalised.append(value)  # only wrong with the base: the cell check decides
            grid[axis] = tuple(normalised)
        for name in grid.get(SETTING_AXIS, ()):
            for field_name in self.settings[name]:
                if field_name in grid:
                    raise self.fail(f"settings.{name}.{field_name}", "a field that no grid axis sets", None,
                                    got_text=f"the grid axis {field_name}")
        return grid

    def preset_fields(self) -> set[str]:
        return {f for name in self.grid.get(SETTING_AXIS, ()) for f in self.settings[name]}

    def load_search(self, data: Any) -> SearchConfig:
        data = dict(self.mapping(data, "search", "a mapping of search options"))
        known = [f.name for f in dataclasses.fields(SearchConfig)]
        for key in data:
            if key not in known:
                raise self.fail(f"search.{key}", "one of the fields " + ", ".join(known), None,
                                got_text="an unknown field")
        algorithm = data.get("algorithm", "tpe")
        space: list[Param] = []
        entries = self.mapping(data.get("space"), "search.space", "a mapping of run config fields to distributions")
        for name, spec in self.sampling_order(entries):
            space.append(self.load_param(name, spec, space, algorithm))
        data["space"] = tuple(space)
        data["same_as"] = self.load_same_as(data.get("same_as"), space)
        return from_mapping(SearchConfig, data, self.source, "search.")

    def sampling_order(self, entries: Mapping[Any, Any]) -> list[tuple[Any, Any]]:
        """The space entries in file order, except that a parameter comes after those its ``when`` names
        (a define-by-run sampler must draw them first). Malformed entries are left to load_param."""
        def parents(name: Any, spec: Any) -> set[Any]:
            when = spec.get("when") if isinstance(spec, Mapping) else None
            if not isinstance(when, Mapping):
                return set()
            return {ref for ref in when if ref != name and ref in entries and ref not in self.grid}

        pending = list(entries.items())
        ordered: list[tuple[Any, Any]] = []
        placed: set[Any] = set()
        while pending:
            for i, (name, spec) in enumerate(pending):
                if parents(name, spec) <= placed:
                    ordered.append(pending.pop(i))
                    placed.add(name)
                    break
            else:
                name = pending[0][0]
                raise self.fail(f"search.space.{name}.when", "conditions without a cycle", None,
                                got_text="a cycle through " + ", ".join(str(n) for n, _ in pending))
        return ordered

    def load_param(self, name: Any, spec: Any, earlier: list[Param], algorithm: Any) -> Param:
        label = f"search.space.{name}"
        self.check_field(name, label)
        if name in self.grid:
            raise self.fail(label, "a field that is not a grid axis", None, got_text=f"the grid axis {name}")
        if name in self.preset_fields():
            raise self.fail(label, "a field that no setting of the grid sets", None,
                            got_text="a field a setting preset sets")
        spec = self.mapping(spec, label, "a distribution such as {int: [1, 4]}, {float: [0.0, 1.0]} or "
                            "{choice: [a, b]}")
        for key in spec:
            if key not in _DISTRIBUTION_KINDS + _DISTRIBUTION_OPTIONS:
                raise self.fail(f"{label}.{key}", "one of " + ", ".join(_DISTRIBUTION_KINDS + _DISTRIBUTION_OPTIONS),
                                None, got_text="an unknown key")
        kinds = [k for k in _DISTRIBUTION_KINDS if k in spec]
        if len(kinds) != 1:
            raise self.fail(label, "exactly one of int, float, choice", None,
                            got_text=", ".join(kinds) if kinds else "none")
        kind = kinds[0]
        dist = self.load_distribution(name, kind, spec, label)
        if algorithm == "grid" and not dist.finite:
            raise self.fail(label, "a choice or int distribution with algorithm grid", None,
                            got_text="a float distribution")
        when = self.load_when(name, spec.get("when"), earlier, algorithm, label)
        return Param(field=name, distribution=dist, when=when)

    def load_distribution(self, name: str, kind: str, spec: Mapping[str, Any], label: str) -> Distribution:
        tp = _leaf_types()[name]
        if kind == "choice":
            for key in ("step", "log"):
                if key in spec:
                    raise self.fail(f"{label}.{key}", "no step or log with a choice distribution", spec[key])
            choices = spec["choice"]
            if not isinstance(choices, list) or not choices:
                raise self.fail(f"{label}.choice", "a non-empty list of values", choices)
            normalised: list[Any] = []
            for value in choices:
                # Optuna's categorical values must be scalars.
                if not (value is None or isinstance(value, (bool, int, float, str))):
                    raise self.fail(label, "scalar choices (null, booleans, numbers or strings)", value)
                if name == "method.variant":
                    self.check_variant(value, label)
                value = self.try_value(self.base, name, value, label)
                if _value_in(value, normalised):
                    raise self.fail(label, "distinct choices", value, got_text=f"{_format_value(value)} twice")
                normalised.append(value)
            return Distribution(kind="choice", choices=tuple(normalised))

        if kind not in _numeric_kinds(tp):
            expected = ("an int or choice distribution" if "int" in _numeric_kinds(tp) else
                        "a choice distribution")
            raise self.fail(label, f"{expected} for this field ({_leaf_type_texts()[name]})", None,
                            got_text=f"a {kind} distribution")
        bounds = spec[kind]
        if kind == "int":
            ok = isinstance(bounds, list) and len(bounds) == 2 and all(
                isinstance(b, int) and not isinstance(b, bool) for b in bounds)
        else:
            ok = isinstance(bounds, list) and len(bounds) == 2
            if ok:
                try:
                    bounds = [float(b) for b in bounds if not isinstance(b, bool)]
                except (TypeError, ValueError):
                    ok = False
                ok = ok and len(bounds) == 2 and all(math.isfinite(b) for b in bounds)
        if not ok:
            raise self.fail(f"{label}.{kind}", f"[low, high], two {'integers' if kind == 'int' else 'numbers'}",
                            spec[kind])
        low, high = bounds
        if not low < high:
            raise self.fail(f"{label}.{kind}", "[low, high] with low < high", spec[kind])
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise self.fail(f"{label}.log", "true or false", log)
        if log and low <= 0:
            raise self.fail(f"{label}.{kind}", "low > 0 with log: true", spec[kind])
        step = spec.get("step")
        if step is not None:
            if log:
                raise self.fail(f"{label}.step", "no step with log: true", step)
            valid = (isinstance(step, int) and not isinstance(step, bool)) if kind == "int" else (
                isinstance(step, (int, float)) and not isinstance(step, bool))
            if not valid or step <= 0:
                raise self.fail(f"{label}.step", "an integer >= 1" if kind == "int" else "a number > 0", step)
            step = step if kind == "int" else float(step)
            count = (high - low) / step
            if abs(count - round(count)) > 1e-9 * max(1.0, abs(count)):
                raise self.fail(f"{label}.step", f"a step that divides the range [{_format_value(low)}, "
                                f"{_format_value(high)}]", step)
        for bound in (low, high):
            self.try_value(self.base, name, bound, label)
        return Distribution(kind=kind, low=low, high=high, step=step, log=log)

    def load_when(self, name: str, data: Any, earlier: list[Param], algorithm: Any, label: str
                  ) -> dict[str, tuple[Any, ...]]:
        params = {p.field: p for p in earlier}
        axes = ", ".join(self.grid) or "none"
        when: dict[str, tuple[Any, ...]] = {}
        for ref, values in self.mapping(data, f"{label}.when", "a mapping of grid axes or earlier "
                                        "parameters to values").items():
            ref_label = f"{label}.when.{ref}"
            values = values if isinstance(values, list) else [values]
            if not values:
                raise self.fail(ref_label, "a value or a non-empty list of values", values)
            if ref in self.grid:
                allowed = self.grid[ref]
                normalised = []
                for value in values:
                    if ref != SETTING_AXIS and not _value_in(value, allowed):
                        try:  # the axis values are normalised, so normalise the condition's values too
                            value = _get(_apply(self.base, {ref: value}), ref)
                        except ConfigError:
                            pass
                    if not _value_in(value, allowed):
                        raise self.fail(ref_label, "values of the grid axis (" +
                                        ", ".join(_format_value(a) for a in allowed) + ")", value)
                    normalised.append(value)
                when[ref] = tuple(normalised)
            elif ref in params:
                if algorithm == "grid":
                    raise self.fail(ref_label, "a grid axis with algorithm grid (conditions on parameters need "
                                    "tpe or random)", None, got_text="a search parameter")
                dist = params[ref].distribution
                if not dist.finite:
                    raise self.fail(ref_label, "a grid axis or an int or choice parameter", None,
                                    got_text="a float parameter")
                for value in values:
                    if not dist.contains(value):
                        raise self.fail(ref_label, f"values of {ref} ({dist.describe()})", value)
                when[ref] = tuple(values)
            else:
                got = "the parameter itself" if ref == name else "an unknown name"
                raise self.fail(ref_label, f"a grid axis ({axes}) or another search parameter", None, got_text=got)
        return when

    def load_same_as(self, data: Any, space: list[Param]) -> tuple[SameAs, ...]:
        sampled = {p.field for p in space}
        copies = []
        for target, source in self.mapping(data, "search.same_as", "a mapping of fields to the fields they "
                                           "copy").items():
            label = f"search.same_as.{target}"
            self.check_field(target, label)
            taken = ("a grid axis" if target in self.grid else "a search parameter" if target in sampled else
                     "set by set" if target in self.set_overrides else
                     "set by a setting preset" if target in self.preset_fields() else None)
            if taken:
                raise self.fail(label, "a field nothing else in the sweep sets", None, got_text=taken)
            problem = _field_problem(source)
            if problem is not None:
                raise self.fail(label, "the name of a run config field to copy from: " + problem[0], None,
                                got_text=f"{source!r}, {problem[1]}")
            if source == target:
                raise self.fail(label, "another field than itself", source)
            copies.append(SameAs(target=target, source=source))
        return tuple(copies)

    def load_scheduler(self, data: Any) -> AshaConfig | None:
        expected = "none, asha, or {asha: {grace_tasks: ..., reduction_factor: ...}}"
        if data is None or data == "none":
            return None
        if data == "asha":
            return AshaConfig()
        if not isinstance(data, Mapping):
            raise self.fail("scheduler", expected, data)
        for key in data:
            if key != "asha":
                raise self.fail(f"scheduler.{key}", "asha (or scheduler: none)", None,
                                got_text="an unknown scheduler")
        if len(data) != 1:
            raise self.fail("scheduler", expected, data)
        return from_mapping(AshaConfig, data["asha"], self.source, "scheduler.asha.")

    # ---- cells

    def make_cells(self) -> list[Cell]:
        axes = list(self.grid)
        last = [a.rsplit(".", 1)[-1] for a in axes]
        short = {a: (s if last.count(s) == 1 else a) for a, s in zip(axes, last)}
        targets = {copy.target for copy in self.search.same_as}
        cells: list[Cell] = []
        names: set[str] = set()
        for combo in itertools.product(*(self.grid[a] for a in axes)):
            coords = dict(zip(axes, combo))
            name = ",".join(f"{short[a]}={_name_text(v)}" for a, v in coords.items()) or DEFAULT_CELL_NAME
            if name in names:
                raise self.fail("grid", "axis values that give distinct cell names", None,
                                got_text=f"two cells named {name!r}")
            names.add(name)
            overrides = dict(self.settings[coords[SETTING_AXIS]]) if SETTING_AXIS in coords else {}
            overrides.update({a: v for a, v in coords.items() if a != SETTING_AXIS})
            provisional = Cell(name=name, overrides=overrides, axes=coords)
            try:
                cfg = _apply(self.base, self.trial_assignments(provisional, {}))
            except ConfigError as err:
                where = f"search.same_as.{err.field}" if err.field in targets else f"cells[{name}].{err.field}"
                raise self.relabel(err, where) from None
            overrides = {k: _get(cfg, k) for k in overrides}
            coords = {a: (v if a == SETTING_AXIS else overrides[a]) for a, v in coords.items()}
            cells.append(Cell(name=name, overrides=overrides, axes=coords))
        return cells

    def trial_assignments(self, cell: Cell, active: Mapping[str, Any]) -> dict[str, Any]:
        return _trial_assignments(self.base, self.search.same_as, cell, active)

    def check_space_in_cells(self, cells: list[Cell]) -> None:
        """Every parameter is active somewhere, and each of its bounds or choices works in every cell
        where it is active (a cell can change what a value must satisfy)."""
        targets = {copy.target for copy in self.search.same_as}
        for p in self.search.space:
            label = f"search.space.{p.field}"
            active_cells = [c for c in cells if _axis_conditions_hold(p, self.grid, c)]
            if not active_cells:
                raise self.fail(f"{label}.when", "a condition that holds in at least one cell", None,
                                got_text="one that holds in none")
            values = p.distribution.choices if p.distribution.kind == "choice" else (
                p.distribution.low, p.distribution.high)
            for cell in active_cells:
                for value in values:
                    try:
                        _apply(self.base, self.trial_assignments(cell, {p.field: value}))
                    except ConfigError as err:
                        if err.field in targets and err.field != p.field:
                            raise self.relabel(err, f"search.same_as.{err.field}") from None
                        if err.field == p.field:
                            raise self.relabel(err, label, f"{err.expected} in cell {cell.name}") from None
                        raise self.fail(label, f"a value that keeps {err.field} valid in cell {cell.name} "
                                        f"({err.expected})", value) from None

    def check_budget(self, sweep: SweepConfig) -> None:
        search = sweep.search
        if search.algorithm != "grid" or search.trials_per_cell is None:
            return
        sizes = {cell.name: sweep.grid_size(cell) for cell in sweep.cell_list}
        distinct = sorted(set(sizes.values()))
        if len(distinct) > 1:
            detail = ", ".join(f"{size} in cell {name}" for name, size in list(sizes.items())[:3])
            raise self.fail("search.trials_per_cell", f"null, as the cells' grid sizes differ ({detail})",
                            search.trials_per_cell)
        if distinct and distinct[0] != search.trials_per_cell:
            raise self.fail("search.trials_per_cell", f"null or the grid size {distinct[0]}",
                            search.trials_per_cell)


def sweep_from_mapping(data: Mapping[str, Any], source: str = "<sweep>", base_dir: str | Path | None = None
                       ) -> SweepConfig:
    """Validate a sweep given as a mapping (the parsed YAML). ``source`` names it in errors; a relative
    ``base`` path is looked up under ``base_dir`` first, then in the working directory."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, "<top level>", "a mapping of fields", data)
    return _Loader(data, source, Path(base_dir) if base_dir is not None else None).load()


# Sections whose keys are dotted run-config fields: a --set path continues as one key inside them.
_FIELD_KEYED = {("set",): 1, ("grid",): 1, ("settings",): 2, ("search", "space"): 2, ("search", "same_as"): 2}


def _override_keys(path: list[str]) -> list[str]:
    """The mapping keys a dotted sweep override walks: ``search.space.optim.lr.log`` ->
    ``[search, space, optim.lr, log]``."""
    for prefix, depth in _FIELD_KEYED.items():
        n = len(prefix)
        if tuple(path[:n]) != prefix or len(path) <= n:
            continue
        head = path[:n] + path[n:depth]  # settings.<preset> keeps the preset name as its own key
        rest = path[depth:]
        if not rest:
            return head
        if prefix == ("search", "space") and len(rest) > 1 and rest[-1] in _DISTRIBUTION_KINDS + _DISTRIBUTION_OPTIONS \
                and ".".join(rest) not in _leaf_types():
            return head + [".".join(rest[:-1]), rest[-1]]
        return head + [".".join(rest)]
    return path


def apply_sweep_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """A copy of the sweep mapping with ``--set``-style overrides applied, and the dotted paths touched.

    Paths are sweep fields: ``search.trials_per_cell=2``, ``storage=/tmp/x``, ``seeds=[0]``,
    ``set.optim.epochs=1``, ``grid.setting=[standard]``, ``search.space.optim.lr={float: [1e-4, 1e-2]}``.
    Values are YAML; everything is validated when the result is loaded.
    """
    import copy as _copy

    out = _copy.deepcopy(dict(data))
    touched = []
    for text in overrides:
        path, value = parse_override(text)
        if path[0] not in _TOP_LEVEL_KEYS:
            raise ConfigError("--set", path[0], "one of the sweep fields " + ", ".join(_TOP_LEVEL_KEYS), None,
                              got_text="an unknown field")
        if path[0] == "base" and len(path) > 1:
            raise ConfigError("--set", ".".join(path), f"base=<name or path>; change run fields with "
                              f"set.{'.'.join(path[1:])}=...", None, got_text="a path inside base")
        keys = _override_keys(path)
        node = out
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value
        touched.append(".".join(keys))
    return out, touched


def shipped_sweep_paths() -> dict[str, Path]:
    """The sweeps in the repository's ``sweeps/`` folder, by name (``quickstart``, ``ablation``, ...)."""
    folder = Path(__file__).resolve().parents[1] / "sweeps"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_sweep_argument(value: str | None) -> Path:
    """A sweep YAML path, or the name of a shipped sweep; ``None`` = ``quickstart``."""
    shipped = shipped_sweep_paths()
    if value is None:
        value = "quickstart"
    path = Path(value)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    if value in shipped:
        return shipped[value]
    raise UserError(f"{value}: no such sweep file, and no shipped sweep of that name "
                    f"(shipped: {', '.join(shipped) or 'none'})")


def load_sweep_config(path: str | Path, overrides: Sequence[str] = ()) -> SweepConfig:
    """Load and validate a sweep YAML, then apply ``--set``-style overrides of sweep fields.

    The file is checked on its own first, so its mistakes name the file; a problem an override causes
    names ``--set`` (or ``<file> with --set`` for a combination).
    """
    path = Path(path)
    data = load_yaml_mapping(path)
    sweep = sweep_from_mapping(data, str(path), path.parent)
    if not overrides:
        return sweep
    merged, touched = apply_sweep_overrides(data, overrides)
    try:
        return sweep_from_mapping(merged, str(path), path.parent)
    except ConfigError as err:
        if err.source != str(path):  # e.g. a base run YAML named by the override: its own message is right
            raise
        hit = any(err.field == t or err.field.startswith(t + ".") for t in touched)
        raise err.relocated("--set" if hit else f"{path} with --set", "") from None


# --------------------------------------------------------------------------------------------------
# What --dry-run prints.


def describe(sweep: SweepConfig) -> str:
    """A multi-line, readable account of the sweep: the cells, their spaces and the trial budget."""
    search = sweep.search
    lines = [f"sweep {sweep.name}  ({sweep.source})"]

    def row(key: str, text: str) -> None:
        lines.append(f"  {key:<10} {text}")

    row("base", sweep.base_source)
    if sweep.set_overrides:
        row("set", ", ".join(f"{k}={_format_value(v)}" for k, v in sweep.set_overrides.items()))
    where = "" if sweep.storage.startswith("s3://") else f" (local: {sweep.storage_path()})"
    row("storage", f"{sweep.storage}{where}")
    budget = ("the grid of each cell's space" if search.algorithm == "grid" and search.trials_per_cell is None
              else f"{search.trials_per_cell or 1} configuration(s) per cell")
    row("search", f"{search.algorithm} (seed {search.seed}), {'maximise' if search.mode == 'max' else 'minimise'} "
        f"{search.metric}, {budget}")
    row("seeds", ", ".join(map(str, sweep.seeds)) + f" (seeds.init; class order from seeds.class_order = "
        f"{sweep.base.seeds.class_order})")
    if sweep.scheduler is None:
        row("scheduler", "none (every trial runs all its tasks)")
    else:
        row("scheduler", f"ASHA at task boundaries: grace {sweep.scheduler.grace_tasks} task(s), reduction "
            f"factor {sweep.scheduler.reduction_factor:g}")
    res = sweep.resources
    concurrency = (f"at most {res.max_concurrent_trials} trials at once" if res.max_concurrent_trials
                   else "concurrency limited by the cluster's resources")
    row("resources", f"{res.workers_per_trial} worker(s) per trial x ({res.gpus_per_worker:g} GPU, "
        f"{res.cpus_per_worker} CPU); {concurrency}")
    row("retries", f"{sweep.retries} (a failed trial resumes from its last finished task)")
    if sweep.grid:
        row("grid", "; ".join(f"{axis}: {', '.join(_format_value(v) for v in values)}"
                              for axis, values in sweep.grid.items()))
    for name in sweep.grid.get(SETTING_AXIS, ()):
        preset = sweep.settings[name]
        row("setting", f"{name} = " + (", ".join(f"{k}={_format_value(v)}" for k, v in preset.items()) or
                                         "(no overrides)"))

    width = max([len(p.field) for p in search.space] + [len(c.target) for c in search.same_as] + [10])

    def conditions(param: Param, axes_too: bool) -> str:
        parts = [f"{ref}={'|'.join(_format_value(v) for v in vals)}" for ref, vals in param.when.items()
                 if axes_too or ref not in sweep.grid]
        return f"   when {', '.join(parts)}" if parts else ""

    for i, param in enumerate(search.space):
        row("space" if i == 0 else "",
            f"{param.field:<{width}}  {param.distribution.describe()}{conditions(param, True)}")
    for i, copy in enumerate(search.same_as):
        row("same_as" if i == 0 else "", f"{copy.target:<{width}}  = {copy.source}")

    cells = sweep.cells()
    lines.append(f"cells ({len(cells)}):")
    digits = len(str(len(cells)))
    indent = " " * (digits + 4)
    for index, cell in enumerate(cells, 1):
        lines.append(f"  {index:>{digits}}. {cell.name}")
        overrides = "  ".join(f"{k}={_format_value(v)}" for k, v in cell.overrides.items())
        lines.append(f"{indent}overrides  {overrides or '(none)'}")
        space = sweep.active_space(cell)
        if not space:
            lines.append(f"{indent}space      (nothing sampled)")
        for i, (name, dist) in enumerate(space.items()):
            extra = conditions(sweep.params[name], False)  # conditions on axes hold here by construction
            lines.append(f"{indent}{'space' if i == 0 else '':<10} {name:<{width}}  {dist.describe()}{extra}")
        n = sweep.trials_for(cell)
        lines.append(f"{indent}trials     {n} configuration(s) x {len(sweep.seeds)} seed(s) = {n * len(sweep.seeds)}")
    lines.append(f"total: {len(cells)} cell(s), {sweep.trial_count()} trial(s)")
    return "\n".join(lines)
