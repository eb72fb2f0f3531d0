"""What ``python -m clapray.sweep X.yaml --dry-run`` prints: the cells, their spaces and the trial budget."""

from __future__ import annotations

from clapray.sweep.fields import format_value
from clapray.sweep.model import SETTING_AXIS, Param, SweepConfig


def describe(sweep: SweepConfig) -> str:
    """A multi-line, readable account of the sweep: the cells, their spaces and the trial budget."""
    search = sweep.search
    lines = [f"sweep {sweep.name}  ({sweep.source})"]

    def row(key: str, text: str) -> None:
        lines.append(f"  {key:<10} {text}")

    row("base", sweep.base_source)
    if sweep.set_overrides:
        row("set", ", ".join(f"{k}={format_value(v)}" for k, v in sweep.set_overrides.items()))
    where = "" if sweep.storage.startswith("s3://") else f" (local: {sweep.storage_path()})"
    row("storage", f"{sweep.storage}{where}")
    budget = ("the grid of each cell's space" if search.algorithm == "grid" and search.trials_per_cell is None
              else f"{search.trials_per_cell or 1} configuration(s) per cell")
    row("search", f"{search.algorithm} (seed {search.seed}), {'maximise' if search.mode == 'max' else 'minimise'} "
        f"{search.metric}, {budget}")
    row("studies", f"one Optuna study per cell in {sweep.storage.rstrip('/')}/{sweep.name}/optuna.journal "
        "(optuna-dashboard <that file>)")
    fixed = "" if "seeds.class_order" in sweep.seed_fields else (
        f"; class order fixed by seeds.class_order = {sweep.base.seeds.class_order}")
    row("seeds", ", ".join(map(str, sweep.seeds)) + f" (each sets {' and '.join(sweep.seed_fields)}{fixed})")
    if sweep.scheduler is None:
        row("scheduler", "none (every trial runs all its tasks)")
    else:
        row("scheduler", f"ASHA at task boundaries: grace {sweep.scheduler.grace_tasks} task(s), reduction "
            f"factor {sweep.scheduler.reduction_factor:g}")
    res = sweep.resources
    concurrency = (f"at most {res.max_concurrent_trials} trials at once" if res.max_concurrent_trials
                   else "concurrency limited by the cluster's resources")
    where = "inside the trial's process" if res.in_trial else "a Ray Train worker group"
    row("resources", f"{res.workers_per_trial} worker(s) per trial x ({res.gpus_per_worker:g} GPU, "
        f"{res.cpus_per_worker} CPU), {where}; {concurrency}")
    row("retries", f"{sweep.retries} (a failed trial resumes from its last finished task)")
    if sweep.grid:
        row("grid", "; ".join(f"{axis}: {', '.join(format_value(v) for v in values)}"
                              for axis, values in sweep.grid.items()))
    for name in sweep.grid.get(SETTING_AXIS, ()):
        preset = sweep.settings[name]
        row("setting", f"{name} = " + (", ".join(f"{k}={format_value(v)}" for k, v in preset.items()) or
                                         "(no overrides)"))

    width = max([len(p.field) for p in search.space] + [len(c.target) for c in search.same_as] + [10])

    def conditions(param: Param, axes_too: bool) -> str:
        parts = [f"{ref}={'|'.join(format_value(v) for v in vals)}" for ref, vals in param.when.items()
                 if axes_too or ref not in sweep.grid]
        return f"   when {', '.join(parts)}" if parts else ""

    for i, param in enumerate(search.space):
        row("space" if i == 0 else "",
            f"{param.field:<{width}}  {param.distribution.describe()}{conditions(param, True)}")
    for i, copy in enumerate(search.same_as):
        row("same_as" if i == 0 else "", f"{copy.target:<{width}}  = {copy.source}")
    for i, point in enumerate(search.start_from):
        row("start_from" if i == 0 else "", ", ".join(f"{k}={format_value(v)}" for k, v in point.values.items()))

    cells = sweep.cells()
    lines.append(f"cells ({len(cells)}):")
    digits = len(str(len(cells)))
    indent = " " * (digits + 4)
    for index, cell in enumerate(cells, 1):
        lines.append(f"  {index:>{digits}}. {cell.name}")
        overrides = "  ".join(f"{k}={format_value(v)}" for k, v in cell.overrides.items())
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
