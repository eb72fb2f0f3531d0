"""Loading a sweep YAML into a validated :class:`~clapray.sweep.model.SweepConfig`, and ``--set`` overrides.

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
run config that :func:`clapray.validation.check_run` accepts (:mod:`clapray.sweep.runs_check`), conditions
refer to grid axes or other parameters (without cycles), and the trial budget adds up. The first problem
raises a one-line :class:`~clapray.errors.ConfigError`::

    sweeps/x.yaml: search.space.method.vga.depth: expected an integer >= 1, got 0

Pure Python and YAML (no torch, Ray or Optuna). Order in which a trial's run config is assembled (later
wins): base, ``set``, the setting preset, the grid values, the active sampled values, ``same_as`` copies,
then ``seeds.init`` and ``name``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clapray.config import PROMPT_VARIANTS, RunConfig, shipped_config_paths
from clapray.errors import ConfigError, UserError
from clapray.sweep.fields import (
    apply_assignments,
    axis_conditions_hold,
    field_problem,
    format_value,
    get_field,
    is_section,
    leaf_types,
    name_text,
    trial_assignments,
    value_in,
)
from clapray.sweep.model import (
    BUILTIN_SETTINGS,
    DEFAULT_CELL_NAME,
    SAFE_NAME,
    SETTING_AXIS,
    AshaConfig,
    Cell,
    ResourcesConfig,
    SearchConfig,
    SweepConfig,
    SweepOptions,
)
from clapray.sweep.runs_check import check_sweep_runs
from clapray.sweep.space import DISTRIBUTION_KINDS, DISTRIBUTION_OPTIONS, SearchSpaceLoading
from clapray.typed_config import from_mapping, load_yaml_mapping, parse_override

TOP_LEVEL_KEYS = ("name", "base", "set", "grid", "settings", "search", "seeds", "seed_fields", "scheduler", "resources",
                   "retries", "storage")


# --------------------------------------------------------------------------------------------------
# Loading.


class SweepLoader(SearchSpaceLoading):
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
        problem = field_problem(name)
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
            return get_field(apply_assignments(cfg, {name: value}), name)
        except ConfigError as err:
            if err.field == name:
                raise self.relabel(err, label) from None
            raise self.fail(label, f"a value that keeps {err.field} valid ({err.expected})", value) from None

    # ---- sections

    def load(self) -> SweepConfig:
        data = self.data
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                raise self.fail(str(key), "one of the fields " + ", ".join(TOP_LEVEL_KEYS), None,
                                got_text="an unknown field")
        for key in ("name", "base"):
            if key not in data:
                raise self.fail(key, "a value (the field is required)", None, got_text="nothing")
        options = from_mapping(SweepOptions, {k: data[k] for k in ("name", "seeds", "seed_fields", "retries",
                                                                    "storage") if k in data}, self.source)
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
                            retries=options.retries, storage=options.storage, seed_fields=options.seed_fields,
                            cell_list=tuple(cells))
        self.check_seed_fields(sweep)
        self.check_budget(sweep)
        check_sweep_runs(sweep)  # every cell and sampled value against the registries, as a single run
        return sweep

    def check_seed_fields(self, sweep: SweepConfig) -> None:
        """A field the trials' seeds set is set by nothing else (it would be silently overwritten)."""
        for name in sweep.seed_fields:
            if name == "seeds.init":
                continue  # refused everywhere as a managed field (clapray.sweep.fields)
            sources = [("set", sweep.set_overrides)] + [(f"settings.{k}", v) for k, v in sweep.settings.items()
                                                        if any(k in values for values in sweep.grid.values())]
            sources.append(("search.space", {p.field: None for p in sweep.search.space}))
            sources.append(("search.same_as", {s.target: None for s in sweep.search.same_as}))
            sources.append(("grid", sweep.grid))
            for label, fields in sources:
                if name in fields:
                    raise self.fail(f"{label}.{name}", f"no value: seed_fields lists {name}, so each trial's seed "
                                    "sets it (remove it from seed_fields to set it here)", fields[name])

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
                if dotted not in leaf_types() and is_section(dotted) and isinstance(value, Mapping):
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
            self.base = apply_assignments(self.base, assignments)
        except ConfigError as err:
            raise self.relabel(err, f"set.{err.field}") from None
        return {name: get_field(self.base, name) for name in assignments}

    def load_settings(self, data: Any) -> dict[str, dict[str, Any]]:
        settings = {name: dict(preset) for name, preset in BUILTIN_SETTINGS.items()}
        for name, preset in self.mapping(data, "settings", "a mapping of setting names to overrides").items():
            if not isinstance(name, str) or not SAFE_NAME.match(name):
                raise self.fail(f"settings.{name}", "a setting name of letters, digits, '.', '_' and '-'", name)
            label = f"settings.{name}"
            assignments = self.flatten(preset, label)
            if "method.variant" in assignments:
                self.check_variant(assignments["method.variant"], f"{label}.method.variant")
            try:
                cfg = apply_assignments(self.base, assignments)
            except ConfigError as err:
                raise self.relabel(err, f"{label}.{err.field}") from None
            settings[name] = {k: get_field(cfg, k) for k in assignments}
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
                if value_in(value, values[:i]):
                    raise self.fail(label, "distinct values", value, got_text=f"{format_value(value)} twice")
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
                    normalised.append(get_field(apply_assignments(self.base, {axis: value}), axis))
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
        short = {a: (s if last.count(s) == 1 else a) for a, s in zip(axes, last, strict=False)}
        targets = {copy.target for copy in self.search.same_as}
        cells: list[Cell] = []
        names: set[str] = set()
        for combo in itertools.product(*(self.grid[a] for a in axes)):
            coords = dict(zip(axes, combo, strict=False))
            name = ",".join(f"{short[a]}={name_text(v)}" for a, v in coords.items()) or DEFAULT_CELL_NAME
            if name in names:
                raise self.fail("grid", "axis values that give distinct cell names", None,
                                got_text=f"two cells named {name!r}")
            names.add(name)
            overrides = dict(self.settings[coords[SETTING_AXIS]]) if SETTING_AXIS in coords else {}
            overrides.update({a: v for a, v in coords.items() if a != SETTING_AXIS})
            provisional = Cell(name=name, overrides=overrides, axes=coords)
            try:
                cfg = apply_assignments(self.base, self.trial_assignments(provisional, {}))
            except ConfigError as err:
                where = f"search.same_as.{err.field}" if err.field in targets else f"cells[{name}].{err.field}"
                raise self.relabel(err, where) from None
            overrides = {k: get_field(cfg, k) for k in overrides}
            coords = {a: (v if a == SETTING_AXIS else overrides[a]) for a, v in coords.items()}
            cells.append(Cell(name=name, overrides=overrides, axes=coords))
        return cells

    def trial_assignments(self, cell: Cell, active: Mapping[str, Any]) -> dict[str, Any]:
        return trial_assignments(self.base, self.search.same_as, cell, active)

    def check_space_in_cells(self, cells: list[Cell]) -> None:
        """Every parameter is active somewhere, and each of its bounds or choices works in every cell
        where it is active (a cell can change what a value must satisfy)."""
        targets = {copy.target for copy in self.search.same_as}
        for p in self.search.space:
            label = f"search.space.{p.field}"
            active_cells = [c for c in cells if axis_conditions_hold(p, self.grid, c)]
            if not active_cells:
                raise self.fail(f"{label}.when", "a condition that holds in at least one cell", None,
                                got_text="one that holds in none")
            values = p.distribution.choices if p.distribution.kind == "choice" else (
                p.distribution.low, p.distribution.high)
            for cell in active_cells:
                for value in values:
                    try:
                        apply_assignments(self.base, self.trial_assignments(cell, {p.field: value}))
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
    return SweepLoader(data, source, Path(base_dir) if base_dir is not None else None).load()


# Sections whose keys are dotted run-config fields: a --set path continues as one key inside them.
FIELD_KEYED = {("set",): 1, ("grid",): 1, ("settings",): 2, ("search", "space"): 2, ("search", "same_as"): 2}


def override_keys(path: list[str]) -> list[str]:
    """The mapping keys a dotted sweep override walks: ``search.space.optim.lr.log`` ->
    ``[search, space, optim.lr, log]``."""
    for prefix, depth in FIELD_KEYED.items():
        n = len(prefix)
        if tuple(path[:n]) != prefix or len(path) <= n:
            continue
        head = path[:n] + path[n:depth]  # settings.<preset> keeps the preset name as its own key
        rest = path[depth:]
        if not rest:
            return head
        if prefix == ("search", "space") and len(rest) > 1 and rest[-1] in DISTRIBUTION_KINDS + DISTRIBUTION_OPTIONS \
                and ".".join(rest) not in leaf_types():
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
        if path[0] not in TOP_LEVEL_KEYS:
            raise ConfigError("--set", path[0], "one of the sweep fields " + ", ".join(TOP_LEVEL_KEYS), None,
                              got_text="an unknown field")
        if path[0] == "base" and len(path) > 1:
            raise ConfigError("--set", ".".join(path), f"base=<name or path>; change run fields with "
                              f"set.{'.'.join(path[1:])}=...", None, got_text="a path inside base")
        keys = override_keys(path)
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
    folder = Path(__file__).resolve().parents[2] / "sweeps"
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

