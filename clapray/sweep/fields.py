"""Run-config fields and values as a sweep sees them: dotted leaf fields, normalised values, assignments.

A sweep names run-config fields by dotted path (``method.kd_weight``) and assigns values to them per
cell and per trial. Everything here is pure Python on :class:`~clapray.config.RunConfig`: which dotted
names are leaf fields (:func:`leaf_types`), why a name cannot be swept (:func:`field_problem`), how a
value is written back as YAML (:func:`format_value`), and :func:`apply_assignments`, which replaces dotted
fields of a config and lets the config classes validate the result (the rules live in one place).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from clapray.config import RunConfig
from clapray.errors import ConfigError
from clapray.typed_config import describe_fields

if TYPE_CHECKING:
    from clapray.sweep.model import Cell, Param, SameAs

# Fields the sweep sets per trial itself. Sweeping them would also be meaningless for results: name and
# output_dir are left out of the config hash, so trials differing only there would share a run id.
MANAGED_FIELDS = ("name", "output_dir", "seeds.init")

# Source of errors raised while trying values out; callers re-anchor them at the sweep file and field.
PROBE = "<probe>"


def same_value(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from 0 and 1 (YAML ``true`` is not the integer 1 here)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def value_in(value: Any, allowed: Sequence[Any]) -> bool:
    return any(same_value(value, a) for a in allowed)


def plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def format_value(value: Any) -> str:
    """A value as a user would write it in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def name_text(value: Any) -> str:
    """A value as it appears in a cell name: characters unsafe in paths become '_'."""
    if isinstance(value, (list, tuple)):
        text = "+".join(format_value(v) for v in value) or "none"
    else:
        text = format_value(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


@functools.cache
def leaf_types() -> dict[str, Any]:
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


@functools.cache
def leaf_type_texts() -> dict[str, str]:
    return {name: expected for name, expected, _default, _doc in describe_fields(RunConfig)}


def is_section(name: str) -> bool:
    return any(leaf.startswith(name + ".") for leaf in leaf_types())


def field_problem(name: Any) -> tuple[str, str] | None:
    """Why ``name`` cannot be swept, as (expected, got text); ``None`` when it is a usable leaf field."""
    leaves = leaf_types()
    if isinstance(name, str) and name in leaves:
        if name in MANAGED_FIELDS:
            return ("a field the sweep does not set per trial (it sets name, output_dir and seeds.init; "
                    "list init seeds under seeds)", "a field the sweep sets itself")
        return None
    if isinstance(name, str) and is_section(name):
        return "a run config leaf field (a dotted name such as optim.lr)", "a section, not a leaf field"
    close = difflib.get_close_matches(str(name), list(leaves), n=1)
    hint = f" such as {close[0]}" if close else ""
    return (f"a run config field{hint} (python -m clapray.run --fields lists them)", "an unknown field")


def numeric_kinds(tp: Any) -> set[str]:
    """Which numeric distributions a field annotation accepts: float fields take int and float samples."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if float in args:
        return {"int", "float"}
    if int in args:
        return {"int"}
    return set()


def axis_conditions_hold(p: Param, grid: Mapping[str, Any], cell: Cell) -> bool:
    """Whether ``p``'s conditions on grid axes hold in ``cell`` (conditions on parameters are not looked at)."""
    return all(value_in(cell.axes.get(name), allowed) for name, allowed in p.when.items() if name in grid)


def trial_assignments(base: RunConfig, same_as: Sequence[SameAs], cell: Cell, active: Mapping[str, Any]
                       ) -> dict[str, Any]:
    """Dotted values a trial sets on top of ``base``: the cell's, the active sampled ones, then the copies."""
    values = dict(cell.overrides)
    values.update(active)
    for copy in same_as:
        values[copy.target] = values[copy.source] if copy.source in values else get_field(base, copy.source)
    return values


def get_field(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def apply_assignments(cfg: Any, assignments: Mapping[str, Any], prefix: str = "") -> Any:
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
        changes[head] = apply_assignments(getattr(cfg, head), sub, f"{prefix}{head}.")
    try:
        return dataclasses.replace(cfg, **changes)
    except ConfigError as err:
        if err.source == type(cfg).__name__:  # raised by this section's own checks: give the full path
            raise ConfigError(PROBE, f"{prefix}{err.field}", err.expected, err.got, got_text=err.got_text) from None
        raise

