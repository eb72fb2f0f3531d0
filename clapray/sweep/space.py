"""Validating a sweep's ``search:`` section: the space of distributions, their conditions and ``same_as`` ties.

Mixed into :class:`~clapray.sweep.loader.SweepLoader`, which supplies the source file, the base run config,
the grid, the settings and the error helpers (``fail``, ``relabel``, ``mapping``, ``check_field``,
``check_variant``, ``try_value``); every error names the file and the dotted sweep field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from clapray.errors import ConfigError
from clapray.sweep.fields import (
    apply_assignments,
    field_problem,
    format_value,
    get_field,
    leaf_type_texts,
    leaf_types,
    numeric_kinds,
    value_in,
)
from clapray.sweep.model import SETTING_AXIS, Distribution, Param, SameAs, SearchConfig, StartPoint
from clapray.typed_config import from_mapping

DISTRIBUTION_KINDS = ("int", "float", "choice")
DISTRIBUTION_OPTIONS = ("step", "log", "when")


class SearchSpaceLoading:
    """The ``search:`` part of the sweep loader."""

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
        data["start_from"] = self.load_start_from(data.get("start_from"), space, algorithm)
        return from_mapping(SearchConfig, data, self.source, "search.")

    def load_start_from(self, data: Any, space: list[Param], algorithm: Any) -> tuple[StartPoint, ...]:
        if data is None:
            return ()
        if algorithm == "grid":
            raise self.fail("search.start_from", "no start points with algorithm grid (it runs every "
                            "combination anyway)", None, got_text="start points")
        if not isinstance(data, list):
            raise self.fail("search.start_from", "a list of mappings of search parameters to values", data)
        params = {p.field: p for p in space}
        points = []
        for i, point in enumerate(data):
            label = f"search.start_from[{i}]"
            point = self.mapping(point, label, "a mapping of search parameters to values")
            if not point:
                raise self.fail(label, "at least one search parameter", point)
            values: dict[str, Any] = {}
            for name, value in point.items():
                if name not in params:
                    raise self.fail(f"{label}.{name}", "a search parameter (" + ", ".join(params) + ")", None,
                                    got_text="a field the search does not sample")
                normalised = self.try_value(self.base, name, value, f"{label}.{name}")
                if not params[name].distribution.contains(normalised):
                    raise self.fail(f"{label}.{name}", f"a value of {params[name].distribution.describe()}",
                                    value)
                values[name] = normalised
            points.append(StartPoint(values=values))
        return tuple(points)

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
            if key not in DISTRIBUTION_KINDS + DISTRIBUTION_OPTIONS:
                raise self.fail(f"{label}.{key}", "one of " + ", ".join(DISTRIBUTION_KINDS + DISTRIBUTION_OPTIONS),
                                None, got_text="an unknown key")
        kinds = [k for k in DISTRIBUTION_KINDS if k in spec]
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
        tp = leaf_types()[name]
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
                if value_in(value, normalised):
                    raise self.fail(label, "distinct choices", value, got_text=f"{format_value(value)} twice")
                normalised.append(value)
            return Distribution(kind="choice", choices=tuple(normalised))

        if kind not in numeric_kinds(tp):
            expected = ("an int or choice distribution" if "int" in numeric_kinds(tp) else
                        "a choice distribution")
            raise self.fail(label, f"{expected} for this field ({leaf_type_texts()[name]})", None,
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
                raise self.fail(f"{label}.step", f"a step that divides the range [{format_value(low)}, "
                                f"{format_value(high)}]", step)
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
                    if ref != SETTING_AXIS and not value_in(value, allowed):
                        try:  # the axis values are normalised, so normalise the condition's values too
                            value = get_field(apply_assignments(self.base, {ref: value}), ref)
                        except ConfigError:
                            pass
                    if not value_in(value, allowed):
                        raise self.fail(ref_label, "values of the grid axis (" +
                                        ", ".join(format_value(a) for a in allowed) + ")", value)
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
            problem = field_problem(source)
            if problem is not None:
                raise self.fail(label, "the name of a run config field to copy from: " + problem[0], None,
                                got_text=f"{source!r}, {problem[1]}")
            if source == target:
                raise self.fail(label, "another field than itself", source)
            copies.append(SameAs(target=target, source=source))
        return tuple(copies)
