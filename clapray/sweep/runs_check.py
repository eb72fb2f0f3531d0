"""Every run a sweep can start, checked as a single run is: :func:`clapray.validation.check_run` on each cell.

The loader has already checked each field, bound and choice against the run config's own rules; this adds
what only the registries know (the dataset and its task arithmetic, the backbone, the method's fit to it)
for every cell, and for every value that a search parameter setting one of the fields check_run reads can
take there (all values of a choice or of an int range up to :data:`MAX_ENUMERATED` values, else its
bounds). It also checks that each cell's run name (``<sweep>-<cell>``) is a valid run name. So
``--dry-run`` refuses a sweep whose trials would fail on their first line, with one line naming the file,
the cell and the field. Pure Python, like the loader.
"""

from __future__ import annotations

from typing import Any

from clapray.config import RunConfig
from clapray.errors import ConfigError, UserError
from clapray.sweep.fields import apply_assignments, format_value, trial_assignments
from clapray.sweep.model import Cell, Param, SweepConfig
from clapray.validation import RUN_CHECK_FIELDS, check_run, run_check_key

MAX_ENUMERATED = 1000
"""Int ranges with at most this many values are checked value by value (a task count of 7 may not divide
the classes although 6 and 8 do)."""


def candidate_values(p: Param) -> tuple[Any, ...]:
    dist = p.distribution
    values = dist.values()
    if values is not None and len(values) <= MAX_ENUMERATED:
        return values
    return (dist.low, dist.high)


def check_sweep_runs(sweep: SweepConfig) -> None:
    """One-line ConfigError (or UserError) for the first cell or sampled value whose run would be refused."""
    checked: set[tuple[Any, ...]] = set()  # configs check_run decides alike are checked once
    for cell in sweep.cells():
        name = sweep.trial_name(cell)
        try:
            cfg = apply_assignments(sweep.base, {**_assignments(sweep, cell, {}), "name": name})
        except ConfigError as err:
            raise ConfigError(sweep.source, "name", "a sweep and cell names that make a valid run name "
                              f"({err.expected})", name) from None
        _check(cfg, sweep, cell, None, checked)
        for p in sweep.search.space:
            if not _matters(sweep, p) or not sweep.is_active(p, cell, _first_values(sweep, cell, p)):
                continue
            for value in candidate_values(p):
                try:
                    cfg = apply_assignments(sweep.base, {**_assignments(sweep, cell, {p.field: value}), "name": name})
                except ConfigError:
                    continue  # the loader reports values the run config itself refuses
                _check(cfg, sweep, cell, (p, value), checked)


def _matters(sweep: SweepConfig, p: Param) -> bool:
    """Whether the value of ``p`` (or a field copied from it by ``same_as``) can change check_run's verdict."""
    fields = [p.field] + [copy.target for copy in sweep.search.same_as if copy.source == p.field]
    return any(f.startswith(RUN_CHECK_FIELDS) for f in fields)


def _assignments(sweep: SweepConfig, cell: Cell, active: dict[str, Any]) -> dict[str, Any]:
    return trial_assignments(sweep.base, sweep.search.same_as, cell, active)


def _first_values(sweep: SweepConfig, cell: Cell, upto: Param) -> dict[str, Any]:
    """Values of the parameters sampled before ``upto`` that make as many of them active as possible
    (their first value), so a parameter conditional on another is checked too."""
    drawn: dict[str, Any] = {}
    for p in sweep.search.space:
        if p.field == upto.field:
            break
        if sweep.is_active(p, cell, drawn):
            dist = p.distribution
            drawn[p.field] = dist.choices[0] if dist.kind == "choice" else dist.low
    conditions = upto.when
    for name, allowed in conditions.items():
        if name in drawn and allowed:
            drawn[name] = allowed[0]
    return drawn


def _check(cfg: RunConfig, sweep: SweepConfig, cell: Cell, sampled: tuple[Param, Any] | None,
           checked: set[tuple[Any, ...]]) -> None:
    key = run_check_key(cfg)
    if key in checked:
        return
    checked.add(key)
    source = sweep.source
    try:
        check_run(cfg, source)
    except ConfigError as err:
        if sampled is not None and err.field == sampled[0].field:
            raise ConfigError(source, f"search.space.{err.field}", f"{err.expected} in cell {cell.name}",
                              err.got, got_text=err.got_text) from None
        where = "" if sampled is None else f" when search.space.{sampled[0].field} is {format_value(sampled[1])}"
        raise ConfigError(source, f"cells[{cell.name}].{err.field}", err.expected + where, err.got,
                          got_text=err.got_text) from None
    except UserError as err:
        text = str(err).removeprefix(f"{source}: ")
        raise UserError(f"{source}: cells[{cell.name}]: {text}") from None
