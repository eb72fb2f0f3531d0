"""The resolved sweep saved in its store, and the check that a re-run is the same sweep.

The first run of a sweep writes ``<storage>/<sweep>/sweep.yaml``: the sweep with its base config, ``set``
and ``--set`` overrides applied (what :meth:`SweepConfig.to_dict` gives, loadable again with
``python -m clapray.sweep <store>/sweep.yaml``), headed by the SHA-256 of its content. Every later run
compares its own resolved sweep with it *before* writing anything: Ray Tune restores an experiment as it
was saved (search space, trial budget, seeds), so a different sweep would silently run as the old one.
A difference is refused with one line naming the changed fields. ``storage`` is where the store lives,
not what it holds, so it is left out of the comparison (a store may be moved or copied).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow.fs as pafs
import yaml

from clapray.errors import UserError
from clapray.fileio import is_object_store, resolve_filesystem, write_bytes_atomic
from clapray.sweep.model import SweepConfig

SAVED_SWEEP = "sweep.yaml"
# Fields that say where the store is rather than what the sweep is.
LOCATION_FIELDS = ("storage",)
# Fields that say how trials are executed, not what they compute (the stored numbers are the same either way,
# and both executors resume from the same task checkpoints): a sweep may be resumed with another value.
EXECUTION_FIELDS = (("resources", "executor"),)


class SweepChanged(UserError):
    """A re-run's resolved sweep differs from the one saved in the store."""


def identity(sweep: SweepConfig) -> dict[str, Any]:
    """The resolved sweep as plain data, without its location and execution fields."""
    data = json.loads(json.dumps(sweep.to_dict()))  # tuples -> lists, as YAML gives them back
    return _identity_fields(data)


def _identity_fields(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a resolved sweep as plain data) without its location and execution fields."""
    for name in LOCATION_FIELDS:
        data.pop(name, None)
    for section, name in EXECUTION_FIELDS:
        if isinstance(data.get(section), dict):
            data[section].pop(name, None)
    return data


def sweep_hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def changed_fields(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``field (old -> new)`` for every dotted field that differs, in sorted order."""
    a, b = _flatten(saved), _flatten(current)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key} ({_short(a.get(key, '<unset>'))} -> {_short(b.get(key, '<unset>'))})")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def read_saved(root: str, filesystem: pafs.FileSystem | None = None) -> dict[str, Any] | None:
    """The resolved sweep saved in the store ``root`` (its identity fields), or None if none is saved."""
    fs, path = resolve_filesystem(root, filesystem)
    try:
        with fs.open_input_stream(f"{path}/{SAVED_SWEEP}") as fh:
            text = fh.readall().decode()
    except FileNotFoundError:
        return None
    except OSError:
        if fs.get_file_info(f"{path}/{SAVED_SWEEP}").type == pafs.FileType.NotFound:
            return None
        raise
    return _identity_fields(yaml.safe_load(text) or {})


def check_same_sweep(sweep: SweepConfig, root: str, filesystem: pafs.FileSystem | None = None) -> bool:
    """Raise :class:`SweepChanged` when the store holds a different resolved sweep; True when it holds this
    one, False when it holds none. Reads only."""
    saved = read_saved(root, filesystem)
    if saved is None:
        return False
    current = identity(sweep)
    if sweep_hash(saved) == sweep_hash(current):
        return True
    changes = changed_fields(saved, current)
    raise SweepChanged(
        f"{root}/{SAVED_SWEEP}: sweep {sweep.name!r} was started with different settings; changed: "
        f"{', '.join(changes)}. Nothing was run or changed. To run the new settings, give the sweep a new name "
        f"(--set name={sweep.name}-2); to resume the old one, run it without these changes "
        f"(python -m clapray.sweep {root}/{SAVED_SWEEP})")


def save_sweep(sweep: SweepConfig, root: str, filesystem: pafs.FileSystem | None = None) -> None:
    """Write the resolved sweep into the store (under the driver's lease, once per store)."""
    fs, path = resolve_filesystem(root, filesystem)
    data = identity(sweep)
    text = (f"# The resolved sweep {sweep.name!r} as first run in this store (sha256 {sweep_hash(data)}).\n"
            f"# A re-run must resolve to the same content; run this file to resume the sweep.\n"
            + yaml.safe_dump({**data, "storage": sweep.storage}, sort_keys=False))
    target = f"{path}/{SAVED_SWEEP}"
    if is_object_store(fs):
        with fs.open_output_stream(target) as fh:
            fh.write(text.encode())
    else:
        from pathlib import Path

        write_bytes_atomic(Path(target), text.encode())
