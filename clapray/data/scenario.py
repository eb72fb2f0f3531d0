"""Class-incremental scenarios: class order, tasks, label remapping, per-task index arrays.

A scenario turns a :class:`~clapray.data.base.Benchmark` into the sequence of tasks the method learns,
exactly as the official code does (reference §12.3): the class order is a NumPy permutation seeded with
``1993 + seed`` (identity for VTAB), labels are remapped to positions in that order, and task ``t``
owns remapped labels ``[t·k, (t+1)·k)``. Index arrays point into the benchmark's splits and are built
with vectorised NumPy (one stable argsort per split), so scenarios over 50k images build in
milliseconds.

Deviation from the official code: when the task size does not divide the class count the official code
silently drops the leftover classes (``len(order) // increment`` tasks); here it is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from clapray.data.base import Benchmark, BenchmarkShape, ClassOrderKind, LabeledImages
from clapray.errors import UserError

ORDER_SEED_BASE = 1993  # the official code seeds its class-order shuffle with 1993 + run index
EvalSplit = Literal["test", "val"]


def class_order(num_classes: int, seed: int, kind: ClassOrderKind = "seeded",
                segments: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """Original class ids in learning order, ``[num_classes]`` int64.

    ``"seeded"``: ``np.random.RandomState(1993 + seed).shuffle(arange(n))``, identical to the official
    ``np.random.seed(1993 + seed); np.random.shuffle(order)`` without touching NumPy's global state.
    With ``segments`` (chained datasets) every segment is shuffled on its own with the same seed, i.e.
    each dataset gets the order it has on its own, and segments keep their sequence.
    ``"identity"``: ``arange(n)``.
    """
    if kind not in ("seeded", "identity"):
        raise UserError(f"class order kind must be 'seeded' or 'identity', got {kind!r}")
    segments = list(segments) if segments else [(0, num_classes)]
    _check_segments(segments, num_classes)
    parts = []
    for start, end in segments:
        part = np.arange(end - start, dtype=np.int64)
        if kind == "seeded":
            np.random.RandomState(ORDER_SEED_BASE + seed).shuffle(part)
        parts.append(part + start)
    return np.concatenate(parts)


def _check_segments(segments: Sequence[tuple[int, int]], num_classes: int) -> None:
    expected_start = 0
    for start, end in segments:
        if start != expected_start or end <= start:
            raise UserError(f"segments {list(segments)} must tile [0, {num_classes}) in order")
        expected_start = end
    if expected_start != num_classes:
        raise UserError(f"segments {list(segments)} must tile [0, {num_classes}) in order")


class TaskSplitError(UserError):
    """The requested tasks do not fit the benchmark's classes. ``option`` names the scenario option at fault
    (``num_tasks``, ``classes_per_task`` or ``initial_classes``; the run config's ``data.<option>``),
    ``expected`` what it must be and ``got`` its value, so a config check can name file and field."""

    def __init__(self, option: str, expected: str, got: object):
        self.option, self.expected, self.got = option, expected, got
        super().__init__(f"{option}: expected {expected}, got {got}")


def task_sizes(num_classes: int, *, num_tasks: int | None = None, classes_per_task: int | None = None,
               initial_classes: int | None = None) -> tuple[int, ...]:
    """Classes per task. All tasks are equal, except an optional larger/smaller first task
    (``initial_classes``, B50-style). Exactly one of ``num_tasks`` / ``classes_per_task`` may be omitted;
    the rest must divide evenly, otherwise a :class:`TaskSplitError` lists the valid choices."""
    first = 0 if initial_classes is None else int(initial_classes)
    if initial_classes is not None and not 0 < first < num_classes:
        raise TaskSplitError("initial_classes", f"an integer in [1, {num_classes - 1}] (fewer than the "
                             f"benchmark's {num_classes} classes) or null", initial_classes)
    if num_tasks is None and classes_per_task is None:
        raise UserError("give num_tasks or classes_per_task")
    rest = num_classes - first
    extra = 1 if first else 0  # the first task, when it has its own size
    what = f"{rest} classes" + (f" after the first task's {first}" if first else "")
    divisors = [d for d in range(1, rest + 1) if rest % d == 0]
    valid = f"valid classes_per_task: {divisors}, i.e. num_tasks: {[rest // d + extra for d in divisors]}"
    if classes_per_task is not None:
        if classes_per_task < 1:
            raise TaskSplitError("classes_per_task", "an integer >= 1 or null", classes_per_task)
        if rest % classes_per_task:
            raise TaskSplitError("classes_per_task", f"a divisor of the {what}; {valid}", classes_per_task)
        later = rest // classes_per_task
        if num_tasks is not None and num_tasks != later + extra:
            raise TaskSplitError("num_tasks", f"{later + extra} (the {what} in tasks of {classes_per_task}) or "
                                 "null", num_tasks)
    else:
        later = num_tasks - extra  # type: ignore[operator]
        if later < 1:
            raise TaskSplitError("num_tasks", f"an integer >= {1 + extra}", num_tasks)
        if later > rest:
            raise TaskSplitError("num_tasks", f"at most {rest + extra} (one class per task; the benchmark has "
                                 f"{num_classes} classes)", num_tasks)
        if rest % later:
            raise TaskSplitError("num_tasks", f"a task count that splits the {what} evenly; {valid}", num_tasks)
        classes_per_task = rest // later
    return ((first,) if first else ()) + (classes_per_task,) * later


def plan_tasks(shape: BenchmarkShape, *, num_tasks: int | None = None, classes_per_task: int | None = None,
               initial_classes: int | None = None) -> tuple[int, ...]:
    """The task sizes of a scenario over a benchmark of ``shape``: :func:`task_sizes` with the benchmark's
    default task count, and no task crossing the boundary of a chained dataset. Needs no data, so the
    config checks (``--dry-run``) and :func:`build_scenario` share it."""
    if num_tasks is None and classes_per_task is None:
        num_tasks = shape.default_num_tasks
    sizes = task_sizes(shape.num_classes, num_tasks=num_tasks, classes_per_task=classes_per_task,
                       initial_classes=initial_classes)
    boundaries = set(np.cumsum((0,) + sizes).tolist())
    for start, end in shape.segments:
        if start not in boundaries or end not in boundaries:
            option, value = ("classes_per_task", classes_per_task) if classes_per_task is not None else (
                "num_tasks", num_tasks)
            raise TaskSplitError(option, f"tasks that do not cross a dataset boundary (tasks {list(sizes)} cross "
                                 f"segment [{start}, {end})); choose a task size that divides every dataset's "
                                 "class count", value)
    return sizes


def _stratified_val_mask(targets: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean ``[N]``: ``round(fraction * n_c)`` random images of every class ``c`` (at least one and
    at most ``n_c - 1`` when ``fraction > 0`` and ``n_c >= 2``; none for single-image classes)."""
    mask = np.zeros(targets.shape[0], dtype=bool)
    if fraction <= 0 or targets.size == 0:
        return mask
    keys = np.random.default_rng(seed).random(targets.shape[0])
    order = np.lexsort((keys, targets))  # grouped by class, random within a class
    sorted_targets = targets[order]
    classes, starts, counts = np.unique(sorted_targets, return_index=True, return_counts=True)
    n_val = np.clip(np.floor(fraction * counts + 0.5).astype(np.int64), 1, np.maximum(counts - 1, 0))
    n_val = np.where(counts >= 2, n_val, 0)
    rank = np.arange(targets.shape[0]) - np.repeat(starts, counts)  # position within the class group
    mask[order] = rank < np.repeat(n_val, counts)
    return mask


def _group_by_task(task_of_image: np.ndarray, num_tasks: int, keep: np.ndarray | None = None
                   ) -> tuple[np.ndarray, ...]:
    """Per task, the image indices (ascending) with that task; images with ``keep == False`` dropped."""
    index = np.arange(task_of_image.shape[0], dtype=np.int64)
    if keep is not None:
        index, task_of_image = index[keep], task_of_image[keep]
    order = np.argsort(task_of_image, kind="stable")  # stable: dataset order within a task
    bounds = np.searchsorted(task_of_image[order], np.arange(num_tasks + 1))
    return tuple(_frozen(index[order[bounds[t]:bounds[t + 1]]]) for t in range(num_tasks))


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class ClassIncrementalScenario:
    """The tasks of one run over a benchmark. Built by :func:`build_scenario`; arrays are read-only.

    Label conventions: *original* labels are the benchmark's; *remapped* labels are positions in
    :attr:`class_order` (``label_map[original] = remapped``, ``class_order[remapped] = original``).
    Every index returned is an index into ``benchmark.train`` or ``benchmark.test``.
    """

    benchmark: Benchmark
    class_order: np.ndarray  # [C] original id at each remapped position
    label_map: np.ndarray  # [C] remapped id of each original id (inverse permutation)
    task_sizes: tuple[int, ...]
    task_of_class: np.ndarray  # [C] task of each remapped id
    train_targets: np.ndarray  # [N_train] remapped label of every training image (val images included)
    test_targets: np.ndarray  # [N_test] remapped label of every test image
    val_mask: np.ndarray  # [N_train] True for training images held out for validation
    class_order_seed: int
    val_fraction: float
    split_seed: int
    evaluate_on: EvalSplit
    _train_by_task: tuple[np.ndarray, ...]
    _val_by_task: tuple[np.ndarray, ...]
    _test_by_task: tuple[np.ndarray, ...]

    # ------------------------------------------------------------------------------- classes/tasks

    @property
    def num_tasks(self) -> int:
        return len(self.task_sizes)

    @property
    def num_classes(self) -> int:
        return int(self.class_order.shape[0])

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in remapped order."""
        names = self.benchmark.class_names
        return tuple(names[i] for i in self.class_order)

    def _check_task(self, t: int) -> None:
        if not 0 <= t < self.num_tasks:
            raise IndexError(f"task {t} out of range for {self.num_tasks} tasks")

    def task_bounds(self, t: int) -> tuple[int, int]:
        """Remapped label range ``[start, end)`` of task ``t``."""
        self._check_task(t)
        start = sum(self.task_sizes[:t])
        return start, start + self.task_sizes[t]

    def classes_of_task(self, t: int) -> np.ndarray:
        """Remapped ids learned in task ``t``."""
        return np.arange(*self.task_bounds(t), dtype=np.int64)

    def seen_classes(self, t: int) -> np.ndarray:
        """Remapped ids learned in tasks ``0..t``."""
        return np.arange(self.task_bounds(t)[1], dtype=np.int64)

    # ------------------------------------------------------------------------------ index arrays

    def train_indices(self, t: int) -> np.ndarray:
        """Training-image indices of task ``t`` (validation images excluded), ascending."""
        self._check_task(t)
        return self._train_by_task[t]

    def val_indices(self, t: int) -> np.ndarray:
        """Held-out training-image indices of task ``t`` (empty when ``val_fraction == 0``)."""
        self._check_task(t)
        return self._val_by_task[t]

    def test_indices(self, t: int) -> np.ndarray:
        """Test-image indices of task ``t``, ascending."""
        self._check_task(t)
        return self._test_by_task[t]

    @property
    def eval_split(self) -> LabeledImages:
        """The split evaluation reads: the test split, or the training split for ``evaluate_on="val"``."""
        return self.benchmark.test if self.evaluate_on == "test" else self.benchmark.train

    @property
    def eval_targets(self) -> np.ndarray:
        """Remapped labels of :attr:`eval_split`."""
        return self.test_targets if self.evaluate_on == "test" else self.train_targets

    def eval_indices(self, t: int) -> np.ndarray:
        """Indices into :attr:`eval_split` of task ``t``'s evaluation images (test or validation)."""
        return self.test_indices(t) if self.evaluate_on == "test" else self.val_indices(t)

    # ------------------------------------------------------------------------------ datasets

    def task_dataset(self, t: int, split: Literal["train", "val", "test", "eval"],
                     transform: Callable[[Any], Any] | None = None) -> TaskSubset:
        """A :class:`TaskSubset` over task ``t``'s images of ``split``."""
        if split == "eval":
            split = self.evaluate_on
        if split == "train":
            return TaskSubset(self.benchmark.train, self.train_indices(t), self.label_map, transform)
        if split == "val":
            return TaskSubset(self.benchmark.train, self.val_indices(t), self.label_map, transform)
        if split == "test":
            return TaskSubset(self.benchmark.test, self.test_indices(t), self.label_map, transform)
        raise ValueError(f"split must be train, val, test or eval, got {split!r}")

    def __repr__(self) -> str:
        return (f"ClassIncrementalScenario({self.benchmark.name!r}, tasks={list(self.task_sizes)}, "
                f"class_order_seed={self.class_order_seed}, val_fraction={self.val_fraction}, "
                f"evaluate_on={self.evaluate_on!r})")

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for run records."""
        return {
            "benchmark": self.benchmark.name,
            "num_tasks": self.num_tasks,
            "task_sizes": list(self.task_sizes),
            "class_order_seed": self.class_order_seed,
            "class_order": self.class_order.tolist(),
            "val_fraction": self.val_fraction,
            "split_seed": self.split_seed,
            "evaluate_on": self.evaluate_on,
        }


def build_scenario(benchmark: Benchmark, *, num_tasks: int | None = None,
                   classes_per_task: int | None = None, initial_classes: int | None = None,
                   class_order_seed: int = 0, val_fraction: float = 0.0, split_seed: int | None = None,
                   evaluate_on: EvalSplit = "test") -> ClassIncrementalScenario:
    """Build the scenario of one run.

    ``num_tasks`` / ``classes_per_task`` default to the benchmark's task count; tasks never straddle
    the segments of a chained benchmark. ``val_fraction`` holds out that fraction of every class's
    training images (stratified, seeded by ``split_seed``, default ``class_order_seed``);
    ``evaluate_on="val"`` makes :meth:`~ClassIncrementalScenario.eval_indices` return them, for
    hyper-parameter searches that must not see the test set.
    """
    n = benchmark.num_classes
    sizes = plan_tasks(BenchmarkShape.of(benchmark), num_tasks=num_tasks, classes_per_task=classes_per_task,
                       initial_classes=initial_classes)
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if evaluate_on not in ("test", "val"):
        raise UserError(f"evaluate_on must be 'test' or 'val', got {evaluate_on!r}")
    if evaluate_on == "val" and val_fraction == 0.0:
        raise UserError("evaluate_on='val' needs val_fraction > 0")
    split_seed = class_order_seed if split_seed is None else split_seed

    order = class_order(n, class_order_seed, benchmark.class_order, benchmark.segments)
    label_map = np.empty(n, dtype=np.int64)
    label_map[order] = np.arange(n, dtype=np.int64)  # the official `order.argsort()`
    task_of_class = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)

    train_targets = label_map[np.asarray(benchmark.train.targets, dtype=np.int64)]
    test_targets = label_map[np.asarray(benchmark.test.targets, dtype=np.int64)]
    val_mask = _stratified_val_mask(train_targets, val_fraction, split_seed)
    train_task = task_of_class[train_targets]
    test_task = task_of_class[test_targets]

    return ClassIncrementalScenario(
        benchmark=benchmark,
        class_order=_frozen(order),
        label_map=_frozen(label_map),
        task_sizes=sizes,
        task_of_class=_frozen(task_of_class),
        train_targets=_frozen(train_targets),
        test_targets=_frozen(test_targets),
        val_mask=_frozen(val_mask),
        class_order_seed=class_order_seed,
        val_fraction=float(val_fraction),
        split_seed=split_seed,
        evaluate_on=evaluate_on,
        _train_by_task=_group_by_task(train_task, len(sizes), ~val_mask),
        _val_by_task=_group_by_task(train_task, len(sizes), val_mask),
        _test_by_task=_group_by_task(test_task, len(sizes)),
    )


class TaskSubset:
    """Map-style dataset over ``split[indices]`` yielding ``(image, remapped_label, index)``.

    ``index`` is the position in ``split`` (exemplar memories and feature caches key on it);
    ``label_map`` maps original to remapped labels; ``transform`` turns the PIL image into a tensor.
    It implements the protocol torch's ``DataLoader`` uses (``__len__``/``__getitem__``) without
    subclassing ``torch.utils.data.Dataset``, so this module does not import torch. Picklable when
    ``split`` and ``transform`` are (no closures here).
    """

    def __init__(self, split: LabeledImages, indices: np.ndarray, label_map: np.ndarray,
                 transform: Callable[[Any], Any] | None = None):
        self.split = split
        self.indices = np.asarray(indices, dtype=np.int64)
        self.label_map = np.asarray(label_map, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        index = int(self.indices[i])
        image, label = self.split[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.label_map[label]), index

    @property
    def targets(self) -> np.ndarray:
        """Remapped labels of the subset, ``[len(self)]``, without loading images."""
        return self.label_map[np.asarray(self.split.targets, dtype=np.int64)[self.indices]]
