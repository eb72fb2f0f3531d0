"""Accuracies: from predictions, the accuracy matrix a[t, j] and its continual-learning summaries (§13.1 - §13.4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clapray.metrics.inputs import (
    ArrayLike,
    acc_matrix,
    check_same_length,
    labels,
    predictions,
    resolve_step,
    scores_2d,
    seen_row,
    task_sizes,
    to_numpy,
)


def top1_accuracy(logits_or_preds: ArrayLike, targets: ArrayLike) -> float:
    """Top-1 accuracy (fraction): ``mean_i [pred_i == y_i]``.

    Args:
        logits_or_preds: scores ``[N, C]`` (prediction = argmax over C, first maximum on ties) or
            predicted labels ``[N]``.
        targets: labels ``[N]``.
    """
    preds = predictions(logits_or_preds, "logits_or_preds")
    y = labels(targets, "targets")
    check_same_length(preds, y, "logits_or_preds", "targets")
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
    preds = predictions(logits_or_preds, "logits_or_preds")
    y = labels(targets, "targets")
    check_same_length(preds, y, "logits_or_preds", "targets")
    tasks = labels(task_of_class, "task_of_class")
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
        r = to_numpy(row, f"rows[{t}]").astype(np.float64).ravel()
        if r.size > size:
            raise ValueError(f"rows[{t}] has {r.size} entries, more than {size} tasks")
        acc[t, : r.size] = r
    return acc




def last_accuracy(acc: ArrayLike, step: int | None = None) -> float:
    """Accuracy at step t, macro-averaged over the seen tasks' test sets (§13.1).

    ``A_t = (1/(t+1)) Σ_{j=0..t} acc[t, j]``; ``step=None`` means ``t = T-1`` ("Last").

    Args:
        acc: ``[T, T]`` accuracy matrix (entries ``j > t`` ignored).
        step: 0-indexed step ``t``.
    """
    a = acc_matrix(acc)
    t = resolve_step(step, a.shape[0])
    return float(np.mean(seen_row(a, t)))


def step_accuracies(acc: ArrayLike) -> np.ndarray:
    """``[A_0, ..., A_{T-1}]`` (see :func:`last_accuracy`), shape ``[T]``."""
    a = acc_matrix(acc)
    return np.array([np.mean(seen_row(a, t)) for t in range(a.shape[0])])


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
    a = acc_matrix(acc)
    sizes = task_sizes(n_test_per_task, a.shape[0])
    t = resolve_step(step, a.shape[0])
    return _weighted_row_mean(a, sizes, t)


def _weighted_row_mean(a: np.ndarray, sizes: np.ndarray, t: int) -> float:
    w = sizes[: t + 1]
    if w.sum() <= 0:
        raise ValueError(f"n_test_per_task: the seen tasks 0..{t} have no test samples in total")
    return float(np.dot(w, seen_row(a, t)) / w.sum())


def step_accuracies_weighted(acc: ArrayLike, n_test_per_task: ArrayLike) -> np.ndarray:
    """``[A^w_0, ..., A^w_{T-1}]`` (see :func:`last_accuracy_weighted`), shape ``[T]``."""
    a = acc_matrix(acc)
    sizes = task_sizes(n_test_per_task, a.shape[0])
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
    a = acc_matrix(acc)
    t = resolve_step(step, a.shape[0])
    if t == 0:
        return float("nan")
    row = seen_row(a, t)[:t]
    diag = np.array([seen_row(a, j)[j] for j in range(t)])
    return float(np.mean(row - diag))


def step_backward_transfers(acc: ArrayLike) -> np.ndarray:
    """``[BwT_0, ..., BwT_{T-1}]`` (see :func:`backward_transfer`); ``BwT_0`` is NaN. Shape ``[T]``."""
    a = acc_matrix(acc)
    return np.array([backward_transfer(a, t) for t in range(a.shape[0])])


def average_forgetting(acc: ArrayLike, step: int | None = None) -> float:
    """Average forgetting at step t (Chaudhry et al., 2018): ``F_t = (1/t) Σ_{j<t} f_j``, with
    ``f_j = max_{l=j..t-1} acc[l, j] - acc[t, j]`` the drop from the best accuracy task j ever had before
    step t. Non-negative up to noise (unlike BwT, it compares with the best, not with the first, accuracy).
    NaN at ``t = 0``; ``step=None`` means ``t = T-1``.

    Args:
        acc: ``[T, T]`` accuracy matrix (entries ``j > t`` ignored).
        step: 0-indexed step ``t``.
    """
    a = acc_matrix(acc)
    t = resolve_step(step, a.shape[0])
    if t == 0:
        return float("nan")
    now = seen_row(a, t)[:t]
    best = np.array([max(seen_row(a, step_l)[j] for step_l in range(j, t)) for j in range(t)])
    return float(np.mean(best - now))


def step_forgetting(acc: ArrayLike) -> np.ndarray:
    """``[F_0, ..., F_{T-1}]`` (see :func:`average_forgetting`); ``F_0`` is NaN. Shape ``[T]``."""
    a = acc_matrix(acc)
    return np.array([average_forgetting(a, t) for t in range(a.shape[0])])


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
    a = acc_matrix(acc)
    n_tasks = a.shape[0]
    b = to_numpy(reference, "reference").astype(np.float64)
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
    a = acc_matrix(acc)
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
    scores = scores_2d(logits, "logits")
    y = labels(targets, "targets")
    check_same_length(scores, y, "logits", "targets")
    n_classes = scores.shape[1]
    tasks = labels(task_of_class, "task_of_class")
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
