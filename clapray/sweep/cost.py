"""Measured seconds per trial (``bench ray --save``) and the cost estimate ``--dry-run`` prints from them.

The bench file is JSON, by default ``<storage>/_bench/ray.json`` (``python -m clapray.bench ray --save
<storage>/_bench/ray.json``; a dry run reads it when it exists, or the file given with ``--bench-file``)::

    {"orchestration_s_per_trial": 4.1,          # Ray's fixed cost per trial, measured at `concurrent` slots
     "concurrent": 1,
     "conditions": "2 CPUs, 4 trials x 2 tasks, ...",
     "variants": {"clap4clip": {"learning_s_per_task": 0.15}}}   # one entry per measured prompt variant

Estimate of a cell: trials x (orchestration + learning seconds per task of the cell's variant x the cell's
tasks), in slot-seconds; the sweep's wall time is that sum over cells divided by the trials running at once.
Learning seconds are those of the bench's tiny scenario on the machine that measured them: the estimate is
for sweeps on the same kind of machine and data; a larger scenario's learning scales with its steps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clapray.errors import UserError

BENCH_DIR = "_bench"
BENCH_FILE = "ray.json"


def default_bench_path(storage_path: str) -> Path:
    """Where ``--dry-run`` looks for measured seconds without ``--bench-file``: ``<storage>/_bench/ray.json``."""
    return Path(storage_path) / BENCH_DIR / BENCH_FILE


@dataclass(frozen=True)
class BenchFile:
    """Measured seconds (see the module's doc for the JSON layout)."""

    orchestration_s_per_trial: float | None = None
    concurrent: int | None = None
    conditions: str = ""
    learning_s_per_task: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> BenchFile:
        """Read ``path``; a one-line UserError naming the file and what is wrong with it."""
        try:
            data = json.loads(path.read_text())
        except OSError as err:
            raise UserError(f"{path}: cannot read the bench file ({err.strerror or err})") from None
        except ValueError as err:
            raise UserError(f"{path}: expected JSON written by `python -m clapray.bench ray --save`, got invalid "
                            f"JSON ({err})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
        orchestration = _seconds(data.get("orchestration_s_per_trial"), path, "orchestration_s_per_trial")
        concurrent = data.get("concurrent")
        if concurrent is not None and (not isinstance(concurrent, int) or isinstance(concurrent, bool)
                                       or concurrent < 1):
            raise UserError(f"{path}: concurrent: expected an integer >= 1, got {concurrent!r}")
        variants = data.get("variants") or {}
        if not isinstance(variants, dict):
            raise UserError(f"{path}: variants: expected an object of variant -> measurements")
        learning = {}
        for name, entry in variants.items():
            if not isinstance(entry, dict):
                raise UserError(f"{path}: variants.{name}: expected an object with learning_s_per_task")
            learning[str(name)] = _seconds(entry.get("learning_s_per_task"), path,
                                           f"variants.{name}.learning_s_per_task", required=True)
        return cls(orchestration, concurrent, str(data.get("conditions", "")), learning)

    @classmethod
    def load_or_empty(cls, path: Path) -> BenchFile:
        return cls.load(path) if path.is_file() else cls()

    def with_measurement(self, *, orchestration_s_per_trial: float, concurrent: int, conditions: str,
                         variant: str, learning_s_per_task: float) -> BenchFile:
        """This file with one bench run's numbers added (its variant's entry and the orchestration replaced)."""
        return replace(self, orchestration_s_per_trial=orchestration_s_per_trial, concurrent=concurrent,
                       conditions=conditions,
                       learning_s_per_task={**self.learning_s_per_task, variant: learning_s_per_task})

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {"orchestration_s_per_trial": self.orchestration_s_per_trial,
                                "concurrent": self.concurrent, "conditions": self.conditions,
                                "variants": {k: {"learning_s_per_task": v}
                                             for k, v in sorted(self.learning_s_per_task.items())}}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)  # never a half-written file in place of a good one


def _seconds(value: Any, path: Path, name: str, required: bool = False) -> float | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise UserError(f"{path}: {name}: expected a number of seconds >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CellCost:
    cell: str
    variant: str
    trials: int
    seconds_per_trial: float | None  # None: the variant was not measured


def estimate_lines(costs: list[CellCost], bench: BenchFile, source: str, concurrent: int | None) -> list[str]:
    """The dry run's cost lines, per prompt variant and in total, in slot-seconds (one trial running for a
    second in one slot), and the wall time when ``concurrent`` trials run at once."""
    lines = [f"cost estimate from {source}" + (f" ({bench.conditions})" if bench.conditions else "") + ":"]
    by_variant: dict[str, list[CellCost]] = {}
    for cost in costs:
        by_variant.setdefault(cost.variant, []).append(cost)
    total, missing = 0.0, []
    for variant, group in by_variant.items():
        trials = sum(c.trials for c in group)
        if group[0].seconds_per_trial is None:
            missing.append(variant)
            continue
        seconds = sum(c.trials * c.seconds_per_trial for c in group)
        total += seconds
        per_trial = {round(c.seconds_per_trial, 1) for c in group}
        each = f"{per_trial.pop():.1f}s" if len(per_trial) == 1 else f"{seconds / trials:.1f}s on average"
        lines.append(f"  {variant}: {len(group)} cell(s), {trials} trial(s) x {each} = {seconds:.0f} slot-seconds")
    wall = f"; about {total / concurrent:.0f}s of wall time at {concurrent} trials at once" if concurrent else ""
    lines.append(f"  total: {total:.0f} slot-seconds{wall}" + (" (measured variants only)" if missing else ""))
    if missing:
        lines.append(f"  not measured: {', '.join(missing)} (python -m clapray.bench ray --variant NAME --save "
                     f"{source})")
    return lines


def cell_costs(sweep: Any, num_tasks: Mapping[str, int], bench: BenchFile) -> list[CellCost]:
    """Seconds per trial of every cell: orchestration + learning per task of its variant x its tasks."""
    costs = []
    for cell in sweep.cells():
        variant = sweep.cell_config(cell).method.variant
        per_task = bench.learning_s_per_task.get(variant)
        seconds = (None if per_task is None or bench.orchestration_s_per_trial is None
                   else bench.orchestration_s_per_trial + per_task * num_tasks[cell.name])
        costs.append(CellCost(cell.name, variant, sweep.trials_for(cell) * len(sweep.seeds), seconds))
    return costs
