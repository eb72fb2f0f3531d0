"""Typed, frozen configuration dataclasses: validation on construction, YAML loading, ``--set`` overrides.

The machinery behind every configuration of clapray (the run config in :mod:`clapray.config`, the sweep
model in :mod:`clapray.sweep.model`). A config section is a frozen dataclass deriving from
:class:`TypedConfig` whose fields are declared with :func:`config_field` (a docstring and the range the
value must lie in). Construction checks every field against its annotation and range and then runs the
section's own cross-field ``check``; the first problem raises a one-line
:class:`~clapray.errors.ConfigError`::

    quickstart.yaml: memory.size: expected an integer >= 0 or null, got -5

:func:`from_mapping` builds a dataclass tree from parsed YAML, naming the file and the dotted field in
every error; :func:`apply_overrides` applies ``--set dotted.field=value`` overrides, checked against the
dataclass tree; :func:`describe_fields` lists every leaf field with its type, default and docstring.
Only the standard library and PyYAML are imported here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from clapray.errors import ConfigError
from clapray.safe_yaml import load_yaml_text, read_yaml_file

__all__ = [
    "TypedConfig",
    "apply_overrides",
    "config_field",
    "describe_fields",
    "from_mapping",
    "load_yaml_mapping",
    "parse_override",
    "require",
    "to_plain",
    "type_name",
    "validate",
]


def config_field(default: Any = dataclasses.MISSING, *, doc: str, factory: Any = dataclasses.MISSING,
           ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, choices: Sequence[str] | None = None) -> Any:
    """A dataclass field with a docstring and the range it must lie in (checked on construction)."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------------
# Validation machinery: types from annotations, ranges from field metadata.


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a finite number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(type_name(a) for a in args) + " or null"
    if origin is tuple:
        return f"a list of {type_name(typing.get_args(tp)[0])}s".replace("a list of an ", "a list of ")
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, value converted to ``tp``). Conversions are only the lossless ones YAML needs."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return (type(None) in typing.get_args(tp)), None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            ok, converted = coerce(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is Literal:
        return value in typing.get_args(tp) and not isinstance(value, bool), value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        (item_tp, *_rest) = typing.get_args(tp)
        out = []
        for item in value:
            ok, converted = coerce(item, item_tp)
            if not ok:
                return False, value
            out.append(converted)
        return True, tuple(out)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        # YAML 1.1 reads ``1e-3`` (no dot) as a string; accept it as the number everybody means. No field
        # means anything by .inf or .nan (an infinite learning rate passes every ``> 0`` check), and an
        # integer too large for a float is refused rather than overflowing.
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return False, value
        try:
            number = float(value)
        except (ValueError, OverflowError):
            return False, value
        return (True, number) if math.isfinite(number) else (False, value)
    if tp is str:
        return isinstance(value, str), value
    if dataclasses.is_dataclass(tp):
        return isinstance(value, tp), value
    raise TypeError(f"unsupported config type {tp!r}")


def range_text(meta: Mapping[str, Any]) -> str:
    parts = []
    for key, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(key) is not None:
            bound = meta[key]
            parts.append(f"{symbol} {bound}" if isinstance(bound, int) else f"{symbol} {bound:g}")
    return " and ".join(parts)


def in_range(value: Any, meta: Mapping[str, Any]) -> bool:
    if value is None or isinstance(value, (bool, str, tuple)):
        return True
    return ((meta.get("ge") is None or value >= meta["ge"]) and (meta.get("gt") is None or value > meta["gt"])
            and (meta.get("le") is None or value <= meta["le"]) and (meta.get("lt") is None or value < meta["lt"]))


def validate(obj: Any) -> None:
    """Check every field of a config dataclass against its annotation and metadata; normalise values."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp, value, meta = hints[f.name], getattr(obj, f.name), f.metadata
        ok, converted = coerce(value, tp)
        expected = type_name(tp)
        if ok and meta.get("choices") is not None and converted is not None and converted not in meta["choices"]:
            ok, expected = False, "one of " + ", ".join(meta["choices"])
        if ok and not in_range(converted, meta):
            ok = False
        if not ok:
            rng = range_text(meta)
            if rng and "one of" not in expected:
                expected = expected.replace(" or null", "") + f" {rng}" + (" or null" if "null" in expected else "")
            raise ConfigError(type(obj).__name__, f.name, expected, value)
        if converted is not value:
            object.__setattr__(obj, f.name, converted)


def require(obj: Any, condition: bool, field_name: str, expected: str) -> None:
    """A cross-field rule: fail naming the field whose value breaks it."""
    if not condition:
        raise ConfigError(type(obj).__name__, field_name, expected, getattr(obj, field_name))


class TypedConfig:
    """Mixin: validation on construction, dict/YAML round trip, stable hash, flat view."""

    def __post_init__(self) -> None:
        validate(self)
        self.check()

    def check(self) -> None:
        """Cross-field rules; overridden where a section has any."""

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def flatten(self) -> dict[str, Any]:
        """``{"memory.size": 2000, ...}``: one column per leaf field (used by the results tables)."""
        out: dict[str, Any] = {}

        def walk(node: Any, prefix: str) -> None:
            for key, value in node.items():
                if isinstance(value, dict):
                    walk(value, f"{prefix}{key}.")
                else:
                    out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value

        walk(self.to_dict(), "")
        return out


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------------
# Loading: mapping -> dataclass, YAML files, dotted overrides.


def from_mapping(cls: type[Any], data: Any, source: str, prefix: str = "") -> Any:
    """Build config dataclass ``cls`` from a nested mapping; the first problem raises a ConfigError.

    ``source`` names where the data came from (a file path, ``--set``) and ``prefix`` the dotted path of
    ``data`` inside the whole config, so errors read ``file: memory.size: expected ..., got ...``.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(source, prefix.rstrip(".") or "<top level>", "a mapping of fields", data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(source, f"{prefix}{key}", "one of the fields " + ", ".join(fields), None,
                              got_text="an unknown field")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_mapping(tp, value, source, f"{prefix}{key}.")
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if err.source == cls.__name__:  # raised by cls's own checks: re-anchor at this file and path
            raise err.relocated(source, prefix) from None
        raise


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; unreadable, malformed or hostile files (see
    :mod:`clapray.safe_yaml`) give one-line errors."""
    data = read_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "<top level>", "a mapping of fields", data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"memory.size=500"`` -> (["memory", "size"], 500); the value is read as a YAML scalar."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError("--set", key or text, "dotted.field=value", text)
    try:
        value = load_yaml_text(raw, "--set") if raw.strip() else None
    except ConfigError as err:
        if err.expected != "valid YAML":  # within YAML's grammar but beyond the limits: refused
            raise ConfigError("--set", key, err.expected, None, got_text=err.got_text) from None
        value = raw  # not YAML at all: the text itself (a string field will take it)
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], cls: type[Any]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``--set`` overrides applied (validated later with the whole config).

    Paths are checked against the dataclass tree here, so a typo fails as ``--set: memroy.size: ...``
    rather than as an unknown key of the file.
    """
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node_cls, node = cls, out
        for depth, part in enumerate(path):
            names = {f.name: f for f in dataclasses.fields(node_cls)}
            dotted = ".".join(path[: depth + 1])
            if part not in names:
                raise ConfigError("--set", dotted, "one of the fields " + ", ".join(names), None,
                                  got_text="an unknown field")
            sub_tp = typing.get_type_hints(node_cls)[part]
            if depth == len(path) - 1:
                if dataclasses.is_dataclass(sub_tp) and not isinstance(value, dict):
                    raise ConfigError("--set", dotted, "a leaf field (a section needs a mapping)", value)
                node[part] = value
            else:
                if not dataclasses.is_dataclass(sub_tp):
                    raise ConfigError("--set", dotted, "a section with fields", None, got_text="a leaf field")
                existing = node.get(part)
                if not isinstance(existing, dict):
                    existing = node[part] = {}
                node_cls, node = sub_tp, existing
    return out


def describe_fields(cls: type[Any], prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted field, type text, default, docstring) for every leaf field: the config reference."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_fields(tp, f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
        expected = type_name(tp)
        if f.metadata.get("choices"):
            expected = "one of " + ", ".join(f.metadata["choices"])
        rng = range_text(f.metadata)
        rows.append((f"{prefix}{f.name}", f"{expected}{' ' + rng if rng else ''}", to_plain(default),
                     f.metadata.get("doc", "")))
    return rows
