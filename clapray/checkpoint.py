"""Learner checkpoints that load without executing code.

A checkpoint (``<run>/checkpoint.pt`` of a single run, ``train_runs/*/task_*/learner.pt`` of a sweep trial,
possibly in a shared ``s3://`` store) holds tensors and plain Python values only: dicts, lists, tuples,
strings, numbers (NumPy's RNG state is converted to a tensor). So it is read with
``torch.load(weights_only=True)``, whose unpickler builds nothing else: a file whose unpickling would run
code, planted by whoever can write to the run directory or the store, is refused with one line and its
code never runs. Writes are atomic (a temporary file, then a rename).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapray.errors import UserError


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint read without executing code; a truncated, foreign or tampered file is a one-line
    UserError (and nothing from it is used)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, foreign, or refused by the safe unpickler
        text = str(err).lower()
        refused = "weights_only" in text or "unsupported global" in text
        reason = "it holds objects a checkpoint never has, which could run code" if refused else type(err).__name__
        raise UserError(f"{path}: not a readable checkpoint ({reason}); it was not loaded") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a readable checkpoint (it holds a {type(state).__name__}); it was not loaded")
    return state


def numpy_rng_state() -> dict[str, Any]:
    """NumPy's global RNG state as plain values and a tensor (what ``weights_only`` loading accepts)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": str(kind), "keys": torch.from_numpy(np.array(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def set_numpy_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`numpy_rng_state` captured."""
    np.random.set_state((state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                         state["cached_gaussian"]))
