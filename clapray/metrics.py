"""Continual-learning, calibration and novelty-detection metrics (method reference §13).

Pure functions: no I/O, no global state. Inputs may be numpy arrays, torch tensors or nested
sequences; they are converted to numpy at the boundary and every result is a Python ``float``, a
numpy array or a frozen dataclass of those.

Conventions
-----------
* Tasks are **0-indexed**: task 0 is the first task; "step t" means "after training (and
  consolidating) task t". The method reference numbers tasks from 1, so its ``(1/t) Σ_{j≤t}``
  becomes ``(1/(t+1)) Σ_{j≤t}`` here.
* The accuracy matrix ``acc`` is a float array of shape ``[T, T]``; ``acc[t, j]`` is the top-1
  accuracy on task ``j``'s test set evaluated after step ``t``. Entries with ``j > t`` (tasks not
  trained yet) are ignored by every function except :func:`forward_transfer`, so they may be NaN.
  ``T`` is the number of steps evaluated so far (a partial run gives a smaller square matrix).
* Accuracy-matrix functions are scale-agnostic: fractions in ``[0, 1]`` give fractions, percents
  give percents. Functions computing an accuracy from predictions (:func:`top1_accuracy`,
  :func:`per_task_accuracy`, ...) return fractions.
* Logits / probabilities are ``[N, C]`` (samples x classes), labels are ``[N]`` integers in
  ``[0, C)``. For a probabilistic model (several samples ``M`` of the logits) average the logits
  over ``M`` first, as the reference evaluator does.
* Calibration (ECE) follows torchmetrics ``MulticlassCalibrationError(norm="l1")`` exactly, including
  its binning (see :func:`calibration_bins`); novelty detection follows scikit-learn's ROC / average
  precision tie handling (see :func:`novelty_detection_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch

__all__ = [
    "CalibrationBins",
    "ContinualSummary",
    "NoveltyDetectionMetrics",
    "accuracy_matrix",
    "average_incremental_accuracy",
    "average_incremental_accuracy_weighted",
    "backward_transfer",
    "calibration_bins",
    "energy_score",
    "expected_calibration_error",
    "forward_transfer",
    "fpr_at_tpr",
    "last_accuracy",
    "last_accuracy_weighted",
    "novelty_detection_metrics",
    "per_batch_ece",
    "per_task_accuracy",
    "phndd_at_step",
    "stack_accuracy_rows",
    "step_accuracies",
    "step_accuracies_weighted",
    "step_backward_transfers",
    "summarize",
    "task_aware_accuracy",
    "task_aware_predictions",
    "top1_accuracy",
]

ArrayLike = Any  # numpy array, torch tensor, or (nested) sequence of numbers


# --------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    """Convert a tensor / array / sequence to a numpy array (tensors are detached and moved to CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # numpy has no bfloat16 / float16-safe reductions worth trusting here: widen first.
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: cannot be converted to an array ({err})") from None


def _labels(x: ArrayLike, name: str) -> np.ndarray:
    """A 1-D integer label vector ``[N]``."""
    arr = _to_numpy(x, name)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D label vector [N], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name}: expected integer labels, got non-integer values of dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _predictions(logits_or_preds: ArrayLike, name: str) -> np.ndarray:
    """Predicted labels ``[N]``: argmax over the last axis of ``[N, C]`` scores, or ``[N]`` labels as is."""
    arr = _to_numpy(logits_or_preds, name)
    if arr.ndim == 2:
        if arr.shape[1] == 0:
            raise ValueError(f"{name}: scores [N, C] need C >= 1, got shape {arr.shape}")
        # numpy's argmax returns the first maximum, as torch.argmax does on ties.
        return np.argmax(arr, axis=1).astype(np.int64)
    if arr.ndim == 1:
        return _labels(arr, name)
    raise ValueError(f"{name}: expected scores [N, C] or labels [N], got shape {arr.shape}")


def _scores_2d(x: ArrayLike, name: str) -> np.ndarray:
    """A float ``[N, C]`` score matrix (logits or probabilities) with ``C >= 1``."""
    arr = _to_numpy(x, name)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{name}: expected a float array [N, C] with C >= 1, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} has {a.shape[0]} samples but {name_b} has {b.shape[0]}")


def _acc_matrix(acc: ArrayLike) -> np.ndarray:
    """Validate and return the ``[T, T]`` accuracy matrix as float64."""
    arr = _to_numpy(acc, "acc")
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"acc: expected a square accuracy matrix [T, T], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("acc: the accuracy matrix is empty (T = 0)")
    return arr.astype(np.float64)


def _resolve_step(step: int | None, n_tasks: int) -> int:
    """``None`` -> last step ``T-1``; otherwise check ``0 <= step < T``."""
    if step is None:
        return n_tasks - 1
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise ValueError(f"step: expected an integer task index, got {step!r}")
    if not 0 <= step < n_tasks:
        raise ValueError(f"step: expected 0 <= step < T = {n_tasks} (tasks are 0-indexed), got {step}")
    return int(step)


def _seen_row(acc: np.ndarray, t: int) -> np.ndarray:
    """``acc[t, 0..t]``, which must be finite (these tasks have all been trained by step t)."""
    row = acc[t, : t + 1]
    if not np.all(np.isfinite(row)):
        bad = int(np.flatnonzero(~np.isfinite(row))[0])
        raise ValueError(f"acc[{t}, {bad}] is not finite; accuracies on seen tasks (j <= t) are required")
    return row


def _task_sizes(n_test_per_task: ArrayLike, n_tasks: int) -> np.ndarray:
    sizes = _to_numpy(n_test_per_task, "n_test_per_task").astype(np.float64)
    if sizes.shape != (n_tasks,):
        raise ValueError(f"n_test_per_task: expected shape ({n_tasks},) to match acc, got {sizes.shape}")
    if not np.all(np.isfinite(sizes)) or np.any(sizes < 0):
        raise ValueError("n_test_per_task: test-set sizes must be finite and >= 0")
    return sizes


# --------------------------------------------------------------------------------------------------
# Accuracies from predictions
# --------------------------------------------------------------------------------------------------


def top1_accuracy(logits_or_preds: ArrayLike, targets: ArrayLike) -> float:
    """Top-1 accuracy (fraction): ``mean_i [pred_i == y_i]``.

    Args:
        logits_or_preds: scores ``[N, C]`` (prediction = argmax over C, first maximum on ties) or
            predicted labels ``[N]``.
        targets: labels ``[N]``.
    """
    preds = _predictions(logits_or_preds, "logits_or_preds")
    y = _labels(targets, "targets")
    _check_same_length(preds, y, "logits_or_preds", "targets")
    if y.size == 0:
        raise ValueError("top1_accuracy: no samples")
    return float(np.mean(preds == y))


def per_task_accuracy(
    logits_or_preds: ArrayLike,
    targets: ArrayLike,
    task_of_class: ArrayLike,
    n_tasks: int | None = None,
) -> np.ndarray:
    """Top-1 accuracy (fraction) on each task's share of a mixed test set: one row of ``acc``.

    ``out[j] = mean_{i : task_of_class[y_i] = j} [pred_i == y_i]``, NaN for tasks with no samples.

    Args:
        logits_or_preds: scores ``[N, C]`` or predicted labels ``[N]``.
        targets: labels ``[N]``.
        task_of_class: ``[C_total]`` integer task index of every class (``>= 0``).
        n_tasks: length of the output; defaults to ``max(task_of_class) + 1``.

    Returns:
        ``[n_tasks]`` float64 array.
    """
    preds = _predictions(logits_or_preds, "logits_or_preds")
    y = _labels(targets, "targets")
    _check_same_length(preds, y, "logits_or_preds", "targets")
    tasks = _labels(task_of_class, "task_of_class")
    if tasks.size == 0 or np.any(tasks < 0):
        raise ValueError("task_of_class: expected a non-empty vector of task indices >= 0")
    if y.size and (y.min() < 0 or y.max() >= tasks.size):
        raise ValueError(f"targets: labels must lie in [0, {tasks.size}) to be mapped by task_of_class")
    n = int(tasks.max()) + 1 if n_tasks is None else int(n_tasks)
    if n < int(tasks.max()) + 1:
        raise ValueError(f"n_tasks={n} is smaller than the largest task index + 1 ({int(tasks.max()) + 1})")
    task_of_sample = tasks[y]
    counts = np.bincount(task_of_sample, minlength=n).astype(np.float64)
    correct = np.bincount(task_of_sample, weights=(preds == y).astype(np.float64), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, correct / counts, np.nan)


def accuracy_matrix(
    predictions: Sequence[Sequence[ArrayLike | None]],
    targets: Sequence[ArrayLike],
) -> np.ndarray:
    """Build ``acc[t, j]`` from per-(step, task) predictions.

    ``acc[t, j] = top1_accuracy(predictions[t][j], targets[j])``.

    Args:
        predictions: ``T`` rows; row ``t`` is a sequence (of length ``<= T``) whose entry ``j`` holds the
            scores ``[N_j, C]`` or labels ``[N_j]`` predicted on task ``j``'s test set after step ``t``,
            or ``None`` when not evaluated. Missing entries become NaN.
        targets: ``T`` label vectors; ``targets[j]`` are the labels ``[N_j]`` of task ``j``'s test set.

    Returns:
        ``[T, T]`` float64 matrix of fractions.
    """
    n_tasks = len(targets)
    if len(predictions) != n_tasks:
        raise ValueError(f"predictions has {len(predictions)} steps but targets has {n_tasks} tasks")
    acc = np.full((n_tasks, n_tasks), np.nan)
    for t, row in enumerate(predictions):
        if len(row) > n_tasks:
            raise ValueError(f"predictions[{t}] has {len(row)} entries, more than T = {n_tasks} tasks")
        for j, preds in enumerate(row):
            if preds is not None:
                acc[t, j] = top1_accuracy(preds, targets[j])
    return acc


def stack_accuracy_rows(rows: Sequence[ArrayLike], n_tasks: int | None = None) -> np.ndarray:
    """Stack per-step accuracy rows (e.g. from :func:`per_task_accuracy`) into ``acc``.

    Row ``t`` gives ``acc[t, 0..len(row)-1]``; the rest is NaN. The result is ``[T, T]`` with
    ``T = len(rows)``, or ``[n_tasks, n_tasks]`` (missing rows NaN) when ``n_tasks`` is given.
    """
    size = len(rows) if n_tasks is None else int(n_tasks)
    if len(rows) > size:
        raise ValueError(f"{len(rows)} rows do not fit an accuracy matrix of {size} tasks")
    acc = np.full((size, size), np.nan)
    for t, row in enumerate(rows):
        r = _to_numpy(row, f"rows[{t}]").astype(np.float64).ravel()
        if r.size > size:
            raise ValueError(f"rows[{t}] has {r.size} entries, more than {size} tasks")
        acc[t, : r.size] = r
    return acc


# --------------------------------------------------------------------------------------------------
# Continual-learning summaries of the accuracy matrix
# --------------------------------------------------------------------------------------------------


def last_accuracy(acc: ArrayLike, step: int | None = None) -> float:
    """Accuracy at step t, macro-averaged over the seen tasks' test sets (§13.1).

    ``A_t = (1/(t+1)) Σ_{j=0..t} acc[t, j]``; ``step=None`` means ``t = T-1`` ("Last").

    Args:
        acc: ``[T, T]`` accuracy matrix (entries ``j > t`` ignored).
        step: 0-indexed step ``t``.
    """
    a = _acc_matrix(acc)
    t = _resolve_step(step, a.shape[0])
    return float(np.mean(_seen_row(a, t)))


def step_accuracies(acc: ArrayLike) -> np.ndarray:
    """``[A_0, ..., A_{T-1}]`` (see :func:`last_accuracy`), shape ``[T]``."""
    a = _acc_matrix(acc)
    return np.array([np.mean(_seen_row(a, t)) for t in range(a.shape[0])])


def average_incremental_accuracy(acc: ArrayLike) -> float:
    """"Avg" accuracy (§13.2): ``(1/T) Σ_{t=0..T-1} A_t``, with ``A_t`` from :func:`last_accuracy`."""
    return float(np.mean(step_accuracies(acc)))


def last_accuracy_weighted(acc: ArrayLike, n_test_per_task: ArrayLike, step: int | None = None) -> float:
    """Sample-weighted accuracy at step t: accuracy on the union of the seen tasks' test sets.

    ``A^w_t = Σ_{j≤t} n_j acc[t, j] / Σ_{j≤t} n_j``. Equals :func:`last_accuracy` when all ``n_j`` are
    equal (e.g. CIFAR100); differs on benchmarks with unequal task test sets (ImageNet-R, CUB, VTAB).

    Args:
        acc: ``[T, T]`` accuracy matrix.
        n_test_per_task: ``[T]`` test-set size ``n_j`` of every task.
        step: 0-indexed step ``t`` (``None`` -> ``T-1``).
    """
    a = _acc_matrix(acc)
    sizes = _task_sizes(n_test_per_task, a.shape[0])
    t = _resolve_step(step, a.shape[0])
    return _weighted_row_mean(a, sizes, t)


def _weighted_row_mean(a: np.ndarray, sizes: np.ndarray, t: int) -> float:
    w = sizes[: t + 1]
    if w.sum() <= 0:
        raise ValueError(f"n_test_per_task: the seen tasks 0..{t} have no test samples in total")
    return float(np.dot(w, _seen_row(a, t)) / w.sum())


def step_accuracies_weighted(acc: ArrayLike, n_test_per_task: ArrayLike) -> np.ndarray:
    """``[A^w_0, ..., A^w_{T-1}]`` (see :func:`last_accuracy_weighted`), shape ``[T]``."""
    a = _acc_matrix(acc)
    sizes = _task_sizes(n_test_per_task, a.shape[0])
    return np.array([_weighted_row_mean(a, sizes, t) for t in range(a.shape[0])])


def average_incremental_accuracy_weighted(acc: ArrayLike, n_test_per_task: ArrayLike) -> float:
    """Sample-weighted "Avg": ``(1/T) Σ_t A^w_t`` (steps are weighted equally, samples within a step)."""
    return float(np.mean(step_accuracies_weighted(acc, n_test_per_task)))


def backward_transfer(acc: ArrayLike, step: int | None = None) -> float:
    """Backward transfer at step t (§13.3): ``BwT_t = (1/t) Σ_{j=0..t-1} (acc[t, j] - acc[j, j])``.

    ``acc[j, j]`` is the accuracy on task j right after learning it; the current task ``j = t`` is
    excluded. Negative values mean forgetting. At ``t = 0`` there is no earlier task and the result
    is NaN. ``step=None`` means ``t = T-1`` (the reported value).

    Args:
        acc: ``[T, T]`` accuracy matrix (entries ``j > t`` ignored).
        step: 0-indexed step ``t``.
    """
    a = _acc_matrix(acc)
    t = _resolve_step(step, a.shape[0])
    if t == 0:
        return float("nan")
    row = _seen_row(a, t)[:t]
    diag = np.array([_seen_row(a, j)[j] for j in range(t)])
    return float(np.mean(row - diag))


def step_backward_transfers(acc: ArrayLike) -> np.ndarray:
    """``[BwT_0, ..., BwT_{T-1}]`` (see :func:`backward_transfer`); ``BwT_0`` is NaN. Shape ``[T]``."""
    a = _acc_matrix(acc)
    return np.array([backward_transfer(a, t) for t in range(a.shape[0])])


def forward_transfer(acc: ArrayLike, reference: ArrayLike) -> float:
    """Forward transfer against a reference accuracy (GEM-style, adapted to class-incremental CLIP).

    ``FWT = (1/(T-1)) Σ_{j=1..T-1} (acc[j-1, j] - b_j)``

    * ``acc[j-1, j]``: accuracy on task j's test set of the model **after step j-1**, i.e. before it
      has trained on task j.
    * ``b_j = reference[j]``: a reference accuracy on the same test set, typically zero-shot CLIP.
      ``reference[0]`` is not used (may be NaN); it exists so that ``reference[j]`` is task j.

    In class-incremental learning the model after step j-1 knows only the classes of tasks 0..j-1,
    so scored over that label space its accuracy on task j is 0 by construction (every task-j label
    is outside it), which makes a naive FWT meaningless. A CLIP-based model can score any class
    from its name, so ``acc[j-1, j]`` must be computed with task j's classes **added** to the label
    space: prediction = argmax over the classes of tasks 0..j, with the step-(j-1) model and
    whatever the method uses for not-yet-trained classes (e.g. plain text features, no adapter).
    ``b_j`` must be measured over the same label space (classes of tasks 0..j), which is why the
    reference is a required argument: no default is comparable. ``FWT > 0`` means training on tasks
    0..j-1 helped on the not-yet-seen task j relative to the reference. NaN when ``T = 1``.

    Args:
        acc: ``[T, T]`` accuracy matrix whose first super-diagonal ``acc[j-1, j]`` is filled as above.
        reference: ``[T]`` reference accuracies ``b_j`` on the same scale as ``acc``.
    """
    a = _acc_matrix(acc)
    n_tasks = a.shape[0]
    b = _to_numpy(reference, "reference").astype(np.float64)
    if b.shape != (n_tasks,):
        raise ValueError(f"reference: expected shape ({n_tasks},) (entry 0 unused), got {b.shape}")
    if n_tasks == 1:
        return float("nan")
    before = np.diagonal(a, offset=1)  # acc[j-1, j] for j = 1..T-1
    if not np.all(np.isfinite(before)):
        j = int(np.flatnonzero(~np.isfinite(before))[0]) + 1
        raise ValueError(f"acc[{j - 1}, {j}] is not finite; forward transfer needs it for task {j}")
    if not np.all(np.isfinite(b[1:])):
        raise ValueError("reference: b_j must be finite for j = 1..T-1")
    return float(np.mean(before - b[1:]))


@dataclass(frozen=True)
class ContinualSummary:
    """The headline numbers of an accuracy matrix (same scale as ``acc``).

    Attributes:
        n_tasks: T.
        step_accuracies: ``(A_0, ..., A_{T-1})``, macro over task test sets.
        avg: average incremental accuracy ``mean_t A_t``.
        last: ``A_{T-1}``.
        bwt: ``BwT_{T-1}`` (NaN when T = 1).
        step_accuracies_weighted, avg_weighted, last_weighted: sample-weighted variants, ``None``
            unless task test-set sizes were given.
    """

    n_tasks: int
    step_accuracies: tuple[float, ...]
    avg: float
    last: float
    bwt: float
    step_accuracies_weighted: tuple[float, ...] | None = None
    avg_weighted: float | None = None
    last_weighted: float | None = None

    def as_dict(self) -> dict[str, float]:
        """Flat ``name -> float`` mapping of the scalar fields that are available (for loggers)."""
        out = {"avg": self.avg, "last": self.last, "bwt": self.bwt}
        if self.avg_weighted is not None and self.last_weighted is not None:
            out["avg_weighted"] = self.avg_weighted
            out["last_weighted"] = self.last_weighted
        return out


def summarize(acc: ArrayLike, n_test_per_task: ArrayLike | None = None) -> ContinualSummary:
    """Avg, Last, BwT (and their sample-weighted variants when ``n_test_per_task [T]`` is given)."""
    a = _acc_matrix(acc)
    steps = step_accuracies(a)
    weighted: tuple[float, ...] | None = None
    if n_test_per_task is not None:
        weighted = tuple(float(v) for v in step_accuracies_weighted(a, n_test_per_task))
    return ContinualSummary(
        n_tasks=a.shape[0],
        step_accuracies=tuple(float(v) for v in steps),
        avg=float(np.mean(steps)),
        last=float(steps[-1]),
        bwt=backward_transfer(a),
        step_accuracies_weighted=weighted,
        avg_weighted=None if weighted is None else float(np.mean(weighted)),
        last_weighted=None if weighted is None else weighted[-1],
    )


# --------------------------------------------------------------------------------------------------
# Task-aware accuracy
# --------------------------------------------------------------------------------------------------


def task_aware_predictions(logits: ArrayLike, targets: ArrayLike, task_of_class: ArrayLike) -> np.ndarray:
    """Predictions when the task id is given (§13.4): argmax restricted to the target's task block.

    ``pred_i = argmax_{c : task_of_class[c] = task_of_class[y_i]} logits[i, c]``.

    Args:
        logits: ``[N, C]`` scores over the first ``C`` classes.
        targets: ``[N]`` labels in ``[0, C)``.
        task_of_class: ``[>= C]`` task index of every class; only the first ``C`` entries are used.

    Returns:
        ``[N]`` int64 predicted labels.
    """
    scores = _scores_2d(logits, "logits")
    y = _labels(targets, "targets")
    _check_same_length(scores, y, "logits", "targets")
    n_classes = scores.shape[1]
    tasks = _labels(task_of_class, "task_of_class")
    if tasks.size < n_classes:
        raise ValueError(f"task_of_class has {tasks.size} entries but logits score {n_classes} classes")
    tasks = tasks[:n_classes]
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"targets: labels must lie in [0, {n_classes})")
    same_task = tasks[None, :] == tasks[y][:, None]  # [N, C]: classes of each sample's own task
    masked = np.where(same_task, scores, -np.inf)
    return np.argmax(masked, axis=1).astype(np.int64)


def task_aware_accuracy(logits: ArrayLike, targets: ArrayLike, task_of_class: ArrayLike) -> float:
    """Task-aware ("TaW") top-1 accuracy (fraction): accuracy of :func:`task_aware_predictions`."""
    preds = task_aware_predictions(logits, targets, task_of_class)
    return top1_accuracy(preds, targets)


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin calibration data (for ECE and reliability diagrams); all arrays have ``n_bins + 1`` rows.

    Rows ``0..n_bins-1`` are the equal-width bins ``[lower, upper)``; the extra last row holds the
    samples whose confidence is exactly 1.0 (``lower = upper = 1``), which torchmetrics keeps apart.
    To draw a diagram with ``n_bins`` bars, merge the last row into row ``n_bins - 1``.

    Attributes:
        edges: ``[n_bins + 1]`` bin edges (float32 ``torch.linspace(0, 1, n_bins + 1)``).
        lower, upper: ``[n_bins + 1]`` bounds of every row.
        count: ``[n_bins + 1]`` number of samples per row.
        confidence: ``[n_bins + 1]`` mean top-1 confidence per row (NaN for empty rows).
        accuracy: ``[n_bins + 1]`` top-1 accuracy per row (NaN for empty rows).
        ece: ``Σ_b (count_b / N) |accuracy_b - confidence_b|`` over non-empty rows.
    """

    edges: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float


def _confidences(probs: ArrayLike, targets: ArrayLike, from_logits: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 confidence ``[N]`` (float64) and correctness ``[N]`` (float64 0/1)."""
    p = _scores_2d(probs, "probs")
    y = _labels(targets, "targets")
    _check_same_length(p, y, "probs", "targets")
    if p.shape[0] == 0:
        raise ValueError("probs: no samples")
    if from_logits:
        shifted = p.astype(np.float64) - p.max(axis=1, keepdims=True)
        p = np.exp(shifted)
        p /= p.sum(axis=1, keepdims=True)
    elif not np.all((p >= 0) & (p <= 1)):
        raise ValueError("probs: expected probabilities in [0, 1]; pass from_logits=True for logits")
    pred = np.argmax(p, axis=1)  # first maximum on ties, as torch.max(dim=1)
    conf = p[np.arange(p.shape[0]), pred]
    return conf.astype(np.float64), (pred == y).astype(np.float64)


def _bin_index(conf: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin of every confidence, as torchmetrics assigns it, and the bin edges.

    torchmetrics casts confidences to float32, builds ``torch.linspace(0, 1, n_bins + 1)`` in float32
    and uses ``bucketize(right=True) - 1``: bin k is ``[e_k, e_{k+1})`` and a confidence of exactly
    1.0 lands in an extra bin ``n_bins``. The same float32 edges are used here (``np.linspace``
    rounds differently), so a confidence lying exactly on an edge is binned identically.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins: expected an integer >= 1, got {n_bins!r}")
    edges = torch.linspace(0, 1, int(n_bins) + 1, dtype=torch.float32).numpy()
    index = np.searchsorted(edges, conf.astype(np.float32), side="right") - 1
    return index, edges


def calibration_bins(
    probs: ArrayLike, targets: ArrayLike, n_bins: int = 15, *, from_logits: bool = False
) -> CalibrationBins:
    """Per-bin confidence / accuracy / count of the top-1 prediction (see :class:`CalibrationBins`).

    Args:
        probs: ``[N, C]`` class probabilities (or logits with ``from_logits=True``: softmax first).
        targets: ``[N]`` labels.
        n_bins: number of equal-width confidence bins on ``[0, 1]``.
    """
    conf, correct = _confidences(probs, targets, from_logits)
    index, edges = _bin_index(conf, n_bins)
    size = int(n_bins) + 1
    count = np.bincount(index, minlength=size)
    conf_sum = np.bincount(index, weights=conf, minlength=size)
    correct_sum = np.bincount(index, weights=correct, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        mean_acc = np.where(count > 0, correct_sum / count, np.nan)
    # (n_b / N) |acc_b - conf_b| = |Σ_b correct - Σ_b conf| / N: no division by empty bins.
    ece = float(np.abs(correct_sum - conf_sum).sum() / conf.size)
    lower = edges.astype(np.float64)
    upper = np.append(edges[1:], np.float32(1.0)).astype(np.float64)
    return CalibrationBins(
        edges=edges.astype(np.float64),
        lower=lower,
        upper=upper,
        count=count,
        confidence=mean_conf,
        accuracy=mean_acc,
        ece=ece,
    )


def expected_calibration_error(
    probs: ArrayLike, targets: ArrayLike, n_bins: int = 15, *, from_logits: bool = False
) -> float:
    """Dataset-level top-1 ECE (L1), equal to torchmetrics ``multiclass_calibration_error(norm="l1")``.

    ``ECE = Σ_b (n_b / N) |acc_b - conf_b|`` where ``conf_i = max_c probs[i, c]``, ``acc_b`` and
    ``conf_b`` are the accuracy and mean confidence of the ``n_b`` samples in bin b. Bins: equal
    width on ``[0, 1]``, left-closed ``[e_k, e_{k+1})``, plus a separate bin for confidence == 1.0
    (torchmetrics' convention, see :func:`calibration_bins`).

    Args:
        probs: ``[N, C]`` probabilities (or logits with ``from_logits=True``).
        targets: ``[N]`` labels.
        n_bins: number of bins (15 in the method).
    """
    return calibration_bins(probs, targets, n_bins, from_logits=from_logits).ece


def per_batch_ece(
    probs: ArrayLike,
    targets: ArrayLike,
    batch_size: int = 32,
    n_bins: int = 15,
    *,
    from_logits: bool = False,
) -> float:
    """ECE as the reference evaluator reports it (§13.5): computed per test batch, then averaged.

    The ``N`` samples are split in order into consecutive batches of ``batch_size``; the last, partial
    batch is a batch of its own. ``per_batch_ece = (1/B) Σ_k ECE(batch_k)`` with the unweighted mean
    over the ``B = ceil(N / batch_size)`` batches and ECE as in :func:`expected_calibration_error`.
    This is biased upwards with respect to the dataset-level ECE (few samples per bin).

    Args:
        probs: ``[N, C]`` probabilities (or logits with ``from_logits=True``), in test-loader order.
        targets: ``[N]`` labels.
        batch_size: evaluation batch size (32 in the reference runs).
        n_bins: number of bins.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    conf, correct = _confidences(probs, targets, from_logits)
    index, _ = _bin_index(conf, n_bins)
    size = int(n_bins) + 1
    batch = np.arange(conf.size) // int(batch_size)
    n_batches = int(batch[-1]) + 1
    cell = batch * size + index  # one (batch, bin) cell per sample
    conf_sum = np.bincount(cell, weights=conf, minlength=n_batches * size).reshape(n_batches, size)
    correct_sum = np.bincount(cell, weights=correct, minlength=n_batches * size).reshape(n_batches, size)
    batch_len = np.bincount(batch, minlength=n_batches).astype(np.float64)
    ece_per_batch = np.abs(correct_sum - conf_sum).sum(axis=1) / batch_len
    return float(ece_per_batch.mean())


# --------------------------------------------------------------------------------------------------
# Post-hoc novel data detection (PhNDD)
# --------------------------------------------------------------------------------------------------


def energy_score(logits: ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy: ``s_i = T · logsumexp_c(logits[i, c] / T)`` (higher = in-distribution).

    Args:
        logits: ``[N, C]`` logits over the seen classes (mean over model samples for CLAP).
        temperature: ``T > 0``; the method uses 1.

    Returns:
        ``[N]`` float64 scores.
    """
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature!r}")
    z = _scores_2d(logits, "logits").astype(np.float64) / temperature
    peak = z.max(axis=1, keepdims=True)
    # Subtracting the row maximum keeps exp() from overflowing.
    lse = peak[:, 0] + np.log(np.exp(z - peak).sum(axis=1))
    return temperature * lse


@dataclass(frozen=True)
class NoveltyDetectionMetrics:
    """Detection of novel (OOD) data from a confidence score, ID = positive class (fractions).

    Attributes:
        auroc: area under the ROC curve (ties count one half), = sklearn ``roc_auc_score``.
        aupr: average precision with ID positive, = sklearn ``average_precision_score``.
        fpr95: smallest FPR on OOD among thresholds whose TPR on ID is >= 0.95 (sklearn ``roc_curve``
            with ``drop_intermediate=False``).
        fpr95_nearest: FPR at the threshold whose TPR is nearest to 0.95 (ties towards higher TPR),
            the rule of the energy-OOD ``fpr_and_fdr_at_recall`` used by the reference code. It may
            settle on a TPR below 0.95 (lower FPR than ``fpr95``) and, among thresholds with equal
            TPR, takes the lowest threshold (highest FPR); use it to compare with published numbers.
    """

    auroc: float
    aupr: float
    fpr95: float
    fpr95_nearest: float


def _binary_curve(id_scores: ArrayLike, ood_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Cumulative true / false positives at every distinct threshold, highest threshold first.

    Thresholds are the distinct score values; at threshold s everything with score >= s is called
    ID, so tied scores enter together (sklearn's convention). Returns ``tps [K]``, ``fps [K]``,
    the number of ID samples P and of OOD samples N.
    """
    pos = _to_numpy(id_scores, "id_scores").astype(np.float64).ravel()
    neg = _to_numpy(ood_scores, "ood_scores").astype(np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"need ID and OOD scores, got {pos.size} ID and {neg.size} OOD samples")
    scores = np.concatenate([pos, neg])
    if not np.all(np.isfinite(scores)):
        raise ValueError("id_scores / ood_scores must be finite")
    is_pos = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(scores, kind="stable")[::-1]
    scores, is_pos = scores[order], is_pos[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(is_pos)[last_of_group]
    fps = (last_of_group + 1) - tps
    return tps, fps, pos.size, neg.size


def fpr_at_tpr(
    id_scores: ArrayLike,
    ood_scores: ArrayLike,
    tpr: float = 0.95,
    rule: Literal["at_least", "nearest"] = "at_least",
) -> float:
    """False-positive rate on OOD at a target true-positive rate on ID (ID = positive, higher = ID).

    * ``rule="at_least"``: ``min { FPR(s) : TPR(s) >= tpr }`` over thresholds s.
    * ``rule="nearest"``: FPR at the threshold (among those up to the first reaching TPR = 1) with
      ``|TPR(s) - tpr|`` smallest; on equal distance the higher-TPR (lower-threshold) one wins.

    Args:
        id_scores: ``[N_id]`` scores of in-distribution samples.
        ood_scores: ``[N_ood]`` scores of novel samples.
        tpr: target TPR in ``(0, 1]``.
        rule: see above.
    """
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr: expected a value in (0, 1], got {tpr!r}")
    tps, fps, n_pos, n_neg = _binary_curve(id_scores, ood_scores)
    return _fpr_at_tpr(tps, fps, n_pos, n_neg, tpr, rule)


def _fpr_at_tpr(tps: np.ndarray, fps: np.ndarray, n_pos: int, n_neg: int, tpr: float, rule: str) -> float:
    recall = tps / n_pos
    if rule == "at_least":
        k = int(np.argmax(recall >= tpr))  # recall ends at 1, so some threshold qualifies
    elif rule == "nearest":
        full = int(np.searchsorted(tps, n_pos))  # first threshold reaching full recall
        distance = np.abs(recall[: full + 1] - tpr)
        k = full - int(np.argmin(distance[::-1]))  # argmin keeps the first, i.e. highest-recall, tie
    else:
        raise ValueError(f"rule: expected 'at_least' or 'nearest', got {rule!r}")
    return float(fps[k] / n_neg)


def novelty_detection_metrics(id_scores: ArrayLike, ood_scores: ArrayLike) -> NoveltyDetectionMetrics:
    """AUROC, AUPR and FPR@95%TPR for separating ID (positive) from OOD samples (§13.6).

    With thresholds at the distinct score values (ties enter together), ``TPR_k = tps_k / P``,
    ``FPR_k = fps_k / N``, ``precision_k = tps_k / (tps_k + fps_k)``:

    * ``auroc = Σ_k (FPR_k - FPR_{k-1}) (TPR_k + TPR_{k-1}) / 2`` (trapezoids from (0, 0));
    * ``aupr = Σ_k (TPR_k - TPR_{k-1}) precision_k`` (average precision, no interpolation);
    * ``fpr95`` / ``fpr95_nearest``: :func:`fpr_at_tpr` with rules ``"at_least"`` / ``"nearest"``.

    Args:
        id_scores: ``[N_id]`` scores (higher = more in-distribution), e.g. :func:`energy_score`.
        ood_scores: ``[N_ood]`` scores of novel samples.
    """
    tps, fps, n_pos, n_neg = _binary_curve(id_scores, ood_scores)
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    precision = tps / (tps + fps)
    aupr = float(np.sum(np.diff(tpr) * precision))
    return NoveltyDetectionMetrics(
        auroc=auroc,
        aupr=aupr,
        fpr95=_fpr_at_tpr(tps, fps, n_pos, n_neg, 0.95, "at_least"),
        fpr95_nearest=_fpr_at_tpr(tps, fps, n_pos, n_neg, 0.95, "nearest"),
    )


def phndd_at_step(
    logits_id: ArrayLike,
    logits_ood: ArrayLike,
    n_seen_classes: int | None = None,
    temperature: float = 1.0,
) -> NoveltyDetectionMetrics:
    """PhNDD at one step: energy scores of seen-task (ID) and future-task (OOD) test images.

    ``novelty_detection_metrics(energy_score(logits_id[:, :K]), energy_score(logits_ood[:, :K]))``
    with ``K = n_seen_classes`` (all columns when ``None``): the score only uses the classes seen so
    far.

    Args:
        logits_id: ``[N_id, C]`` logits of test images from tasks 0..t.
        logits_ood: ``[N_ood, C]`` logits of test images from tasks t+1..T-1.
        n_seen_classes: number of leading columns that belong to seen classes.
        temperature: energy temperature (1 in the method).
    """
    lid = _scores_2d(logits_id, "logits_id")
    lood = _scores_2d(logits_ood, "logits_ood")
    if n_seen_classes is not None:
        k = int(n_seen_classes)
        if not 1 <= k <= min(lid.shape[1], lood.shape[1]):
            raise ValueError(
                f"n_seen_classes: expected 1 <= K <= number of logit columns "
                f"({lid.shape[1]} ID, {lood.shape[1]} OOD), got {n_seen_classes}"
            )
        lid, lood = lid[:, :k], lood[:, :k]
    elif lid.shape[1] != lood.shape[1]:
        raise ValueError(f"logits_id has {lid.shape[1]} classes but logits_ood has {lood.shape[1]}")
    return novelty_detection_metrics(energy_score(lid, temperature), energy_score(lood, temperature))
