"""Input handling shared by the metrics: conversion to numpy at the boundary, with named errors."""

from __future__ import annotations

from typing import Any

import numpy as np

ArrayLike = Any  # numpy array, torch tensor, or (nested) sequence of numbers


def to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    """Convert a tensor / array / sequence to a numpy array (tensors are detached and moved to CPU)."""
    if type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach"):
        # A tensor, recognised without importing torch (the report reads metrics with no torch installed).
        x = x.detach().cpu()
        # numpy has no bfloat16 / float16-safe reductions worth trusting here: widen first.
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: cannot be converted to an array ({err})") from None


def labels(x: ArrayLike, name: str) -> np.ndarray:
    """A 1-D integer label vector ``[N]``."""
    arr = to_numpy(x, name)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D label vector [N], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name}: expected integer labels, got non-integer values of dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def predictions(logits_or_preds: ArrayLike, name: str) -> np.ndarray:
    """Predicted labels ``[N]``: argmax over the last axis of ``[N, C]`` scores, or ``[N]`` labels as is."""
    arr = to_numpy(logits_or_preds, name)
    if arr.ndim == 2:
        if arr.shape[1] == 0:
            raise ValueError(f"{name}: scores [N, C] need C >= 1, got shape {arr.shape}")
        # numpy's argmax returns the first maximum, as torch.argmax does on ties.
        return np.argmax(arr, axis=1).astype(np.int64)
    if arr.ndim == 1:
        return labels(arr, name)
    raise ValueError(f"{name}: expected scores [N, C] or labels [N], got shape {arr.shape}")


def scores_2d(x: ArrayLike, name: str) -> np.ndarray:
    """A float ``[N, C]`` score matrix (logits or probabilities) with ``C >= 1``."""
    arr = to_numpy(x, name)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{name}: expected a float array [N, C] with C >= 1, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} has {a.shape[0]} samples but {name_b} has {b.shape[0]}")


def acc_matrix(acc: ArrayLike) -> np.ndarray:
    """Validate and return the ``[T, T]`` accuracy matrix as float64."""
    arr = to_numpy(acc, "acc")
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"acc: expected a square accuracy matrix [T, T], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("acc: the accuracy matrix is empty (T = 0)")
    return arr.astype(np.float64)


def resolve_step(step: int | None, n_tasks: int) -> int:
    """``None`` -> last step ``T-1``; otherwise check ``0 <= step < T``."""
    if step is None:
        return n_tasks - 1
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise ValueError(f"step: expected an integer task index, got {step!r}")
    if not 0 <= step < n_tasks:
        raise ValueError(f"step: expected 0 <= step < T = {n_tasks} (tasks are 0-indexed), got {step}")
    return int(step)


def seen_row(acc: np.ndarray, t: int) -> np.ndarray:
    """``acc[t, 0..t]``, which must be finite (these tasks have all been trained by step t)."""
    row = acc[t, : t + 1]
    if not np.all(np.isfinite(row)):
        bad = int(np.flatnonzero(~np.isfinite(row))[0])
        raise ValueError(f"acc[{t}, {bad}] is not finite; accuracies on seen tasks (j <= t) are required")
    return row


def task_sizes(n_test_per_task: ArrayLike, n_tasks: int) -> np.ndarray:
    sizes = to_numpy(n_test_per_task, "n_test_per_task").astype(np.float64)
    if sizes.shape != (n_tasks,):
        raise ValueError(f"n_test_per_task: expected shape ({n_tasks},) to match acc, got {sizes.shape}")
    if not np.all(np.isfinite(sizes)) or np.any(sizes < 0):
        raise ValueError("n_test_per_task: test-set sizes must be finite and >= 0")
    return sizes
