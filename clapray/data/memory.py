"""The exemplar memory for experience replay and its capacity (§10-§11 of the method reference).

After each task's main training (before consolidation) the learner updates the memory:

1. old classes shrink to their first ``k`` stored exemplars (what the official code does for its
   ``random`` = first-k selector), or, when ``reselect`` gives their inputs, are re-selected by the
   selector from their stored exemplars (what its model-based selectors do), and
2. every new class gets ``min(k, n_candidates)`` exemplars chosen by a selector
   (:mod:`clapray.data.selectors`),

where ``k = capacity.per_class(n_seen_classes)``. The memory stores, per remapped class id, an int64 array
of dataset indices into the training split **in selection order**, so step 1 is a prefix cut and the
replay set is ``memory.indices()`` with labels ``memory.labels()``.

Typical use in a learner::

    capacity = resolve_memory_capacity(cfg.memory, benchmark.default_memory, replay_free=cfg.budget.replay_free)
    ...
    k = capacity.per_class(len(scenario.seen_classes(t)))
    selector = get_selector(cfg.memory.selector)
    if selector.needs:                      # run the model only when the selector looks at it
        candidates = inputs_by_class(idx, labels, features=feats, probs=probs)
    else:
        candidates = {c: idx[labels == c] for c in scenario.classes_of_task(t)}
    memory.update(candidates, k, selector, rng=np.random.default_rng([init_seed, t]))

Replay-free mode is an empty memory: :func:`resolve_memory_capacity` with ``replay_free=True`` returns a
disabled capacity (``per_class`` is 0), and an :class:`ExemplarMemory` that is never filled (or updated with
``k = 0``) has ``len == 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from clapray.data.selectors import SelectionInputs, Selector, check_k, get_selector
from clapray.errors import UserError

MemoryPolicy = Literal["total", "per_class"]

# ``provide(class_id, candidate_indices [n], needs)`` -> the class's inputs; see ExemplarMemory.update.
InputProvider = Callable[[int, np.ndarray, frozenset], "SelectionInputs | Mapping[str, Any]"]

_STATE_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Budget


@dataclass(frozen=True)
class MemoryCapacity:
    """How many exemplars each seen class may keep.

    ``total``: ``size`` exemplars shared evenly by the seen classes, ``floor(size / n_seen)`` each
    (CIFAR-100, 2000 over 10x10 tasks: 200, 100, 66, 50, 40, 33, 28, 25, 22, 20). ``per_class``: ``size``
    each, so the total grows with the number of classes. ``size == 0`` disables replay.
    """

    policy: MemoryPolicy
    size: int

    def __post_init__(self) -> None:
        if self.policy not in ("total", "per_class"):
            raise ValueError(f"policy must be 'total' or 'per_class', got {self.policy!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 0:
            raise ValueError(f"size must be an integer >= 0, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))

    @property
    def enabled(self) -> bool:
        """False when nothing is ever stored (replay-free)."""
        return self.size > 0

    def per_class(self, n_seen_classes: int) -> int:
        """Exemplars per class once ``n_seen_classes`` classes (all tasks so far, the current included)
        have been learned."""
        if isinstance(n_seen_classes, bool) or not isinstance(n_seen_classes, (int, np.integer)) \
                or n_seen_classes < 1:
            raise ValueError(f"n_seen_classes must be an integer >= 1, got {n_seen_classes!r}")
        if self.policy == "total":
            return self.size // int(n_seen_classes)
        return self.size

    def max_total(self, n_seen_classes: int) -> int:
        """Upper bound of the stored exemplars with ``n_seen_classes`` classes (classes with fewer
        candidates than their share store fewer)."""
        return self.per_class(n_seen_classes) * int(n_seen_classes)


def resolve_memory_capacity(memory_cfg: Any, benchmark_default: tuple[str, int], *, replay_free: bool = False
                            ) -> MemoryCapacity:
    """The exemplar capacity a run uses (the exemplar count; the config's ``budget`` section is the compute
    budget, a different thing).

    Args:
        memory_cfg: a ``MemoryConfig`` (anything with ``policy`` and ``size``).
        benchmark_default: ``Benchmark.default_memory``, the official ``(policy, size)`` of the dataset.
        replay_free: ``BudgetConfig.replay_free``; gives a disabled memory (size 0).

    ``policy: auto`` takes the benchmark's default; a ``size`` given with ``auto`` replaces the default's
    size under the default's policy (e.g. CIFAR-100 ``auto`` + 500 = 500 in total, elsewhere 500 per
    class). An explicit ``total``/``per_class`` needs a size.
    """
    if replay_free:
        return MemoryCapacity("per_class", 0)
    policy, size = memory_cfg.policy, memory_cfg.size
    if policy == "auto":
        default_policy, default_size = benchmark_default
        return MemoryCapacity(default_policy, default_size if size is None else size)  # type: ignore[arg-type]
    if policy not in ("total", "per_class"):
        raise UserError(f"memory.policy: expected auto, total or per_class, got {policy!r}")
    if size is None:
        raise UserError(f"memory.size: expected an integer >= 0 when memory.policy is {policy}, got None")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise UserError(f"memory.size: expected an integer >= 0, got {size!r}")
    return MemoryCapacity(policy, size)


# --------------------------------------------------------------------------------------------------
# Memory


def _as_inputs(value: Any) -> SelectionInputs:
    if isinstance(value, SelectionInputs):
        return value
    if isinstance(value, Mapping):
        return SelectionInputs(**value)
    return SelectionInputs(indices=value)


class ExemplarMemory:
    """Per-class dataset indices (into the training split), each class in selection order.

    Classes are remapped ids (positions in the scenario's class order). Iteration order everywhere is
    ascending class id, then selection order within a class.
    """

    def __init__(self) -> None:
        self._store: dict[int, np.ndarray] = {}  # class id -> [n_c] int64, read-only

    # ------------------------------------------------------------------------------- queries

    @property
    def classes(self) -> tuple[int, ...]:
        """Stored class ids, ascending."""
        return tuple(sorted(self._store))

    def __len__(self) -> int:
        return sum(int(a.shape[0]) for a in self._store.values())

    def __contains__(self, class_id: object) -> bool:
        return class_id in self._store

    def class_counts(self) -> dict[int, int]:
        """``{class id: number of exemplars}``, ascending class id."""
        return {c: int(self._store[c].shape[0]) for c in self.classes}

    def indices_of(self, class_id: int) -> np.ndarray:
        """Read-only ``[n_c]`` int64 dataset indices of ``class_id`` in selection order."""
        return self._store[int(class_id)]

    def indices(self) -> np.ndarray:
        """``[len(self)]`` int64 dataset indices of every exemplar, classes ascending."""
        if not self._store:
            return np.empty(0, dtype=np.int64)
        return np.concatenate([self._store[c] for c in self.classes])

    def labels(self) -> np.ndarray:
        """``[len(self)]`` int64 remapped class id of each entry of :meth:`indices`."""
        counts = self.class_counts()
        return np.repeat(np.fromiter(counts, dtype=np.int64, count=len(counts)),
                         np.fromiter(counts.values(), dtype=np.int64, count=len(counts)))

    # ------------------------------------------------------------------------------- updates

    def shrink(self, k: int) -> None:
        """Keep the first ``k`` exemplars of every stored class."""
        k = check_k(k)
        for c, stored in self._store.items():
            if stored.shape[0] > k:
                self._store[c] = stored[:k]

    def update(self, candidates: Mapping[int, SelectionInputs | Mapping[str, Any] | np.ndarray], k: int,
               selector: str | Selector, rng: np.random.Generator | None = None, *,
               provide: InputProvider | None = None,
               reselect: Mapping[int, SelectionInputs | Mapping[str, Any]] | None = None) -> None:
        """Shrink (or re-select) old classes to ``k`` and add ``min(k, n_c)`` exemplars of every new class.

        Args:
            candidates: new class id -> its candidates: a :class:`SelectionInputs`, a mapping of its
                fields, or just the ``[n_c]`` dataset indices. The class's training images (no
                duplicates).
            k: exemplars per class, normally ``capacity.per_class(n_seen_classes)``.
            selector: a registered name or a :class:`Selector`.
            rng: needed by selectors with ``uses_rng``. Each new class gets its own child generator
                (``rng.spawn``, in ascending class id), so a class's choice does not depend on how many
                candidates other classes have. Pass a generator derived from the init seed and the task
                index for reproducible, independent draws.
            provide: called as ``provide(class_id, indices, missing)`` for a class whose candidates lack
                inputs the selector needs (``missing`` ⊆ ``{"features", "probs", "mc_logits"}``); returns a
                :class:`SelectionInputs` or a mapping with those arrays, rows aligned with ``indices``.
                Never called when the selector needs nothing or ``k == 0``.
            reselect: ``None`` = old classes keep their first ``k`` exemplars. Otherwise the inputs of every
                stored class, whose candidates must be exactly its stored exemplars: the selector chooses its
                ``min(k, n_c)`` exemplars among them again (the official model-based selectors, which score
                the old memory under the current model every task).

        Nothing is changed when an argument is invalid (all selections run before the memory is touched).
        """
        k = check_k(k)
        selector = get_selector(selector)
        new = sorted(int(c) for c in candidates)
        clash = [c for c in new if c in self._store]
        if clash:
            raise ValueError(f"classes {clash} are already in the memory; only new classes can be added")
        if any(c < 0 for c in new):
            raise ValueError(f"class ids must be >= 0, got {new}")
        originals = {int(c): v for c, v in candidates.items()}
        old: dict[int, SelectionInputs] = {}
        if reselect is not None:
            old = {int(c): _as_inputs(v) for c, v in reselect.items()}
            if sorted(old) != list(self.classes):
                raise ValueError(f"reselect must give every stored class {list(self.classes)}, got {sorted(old)}")
            for c, inputs in old.items():
                if not np.array_equal(np.sort(inputs.indices), np.sort(self._store[c])):
                    raise ValueError(f"reselect: the candidates of class {c} must be its stored exemplars")
        order = [*sorted(old), *new]
        if selector.uses_rng and isinstance(rng, np.random.Generator):
            # New classes draw from the first children, so re-selecting old classes leaves their draws alone.
            spawned = rng.spawn(len(order))
            children = [*spawned[len(new):], *spawned[:len(new)]]
        else:
            children = [rng] * len(order)

        chosen: dict[int, np.ndarray] = {}
        for c, child in zip(order, children, strict=True):
            inputs = old[c] if c in old else _as_inputs(originals[c])
            if k == 0 or inputs.n == 0:
                chosen[c] = np.empty(0, dtype=np.int64)
                continue
            missing = selector.needs - inputs.available()
            if missing:
                if provide is None:
                    raise ValueError(f"selector {selector.name!r} needs {', '.join(sorted(missing))} for "
                                     f"class {c}; include them in the candidates or pass provide=")
                inputs = self._provided(c, inputs, missing, provide)
            positions = selector(k, inputs, child)
            chosen[c] = inputs.indices[positions]

        self.shrink(k)
        for c in order:
            stored = np.array(chosen[c], dtype=np.int64)  # own copy: the caller's arrays stay theirs
            stored.setflags(write=False)
            self._store[c] = stored

    @staticmethod
    def _provided(class_id: int, inputs: SelectionInputs, missing: frozenset, provide: InputProvider
                  ) -> SelectionInputs:
        """Merge what ``provide`` returns into ``inputs`` (its indices must be the candidates')."""
        extra = provide(class_id, inputs.indices, frozenset(missing))
        kinds = ("features", "probs", "mc_logits")
        fields = ({name: getattr(extra, name) for name in kinds} if isinstance(extra, SelectionInputs)
                  else dict(extra))
        if isinstance(extra, SelectionInputs) and not np.array_equal(extra.indices, inputs.indices):
            raise ValueError(f"provide() returned inputs for other candidates than class {class_id}'s")
        unknown = set(fields) - {*kinds, "indices"}
        if unknown:
            raise ValueError(f"provide() returned unknown fields {sorted(unknown)}")
        merged = {name: fields.get(name) if fields.get(name) is not None else getattr(inputs, name) for name in kinds}
        return SelectionInputs(indices=inputs.indices, **merged)

    # ------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Plain ints and lists (JSON/pickle friendly): ``{"version", "classes", "indices"}``."""
        classes = self.classes
        return {
            "version": _STATE_VERSION,
            "classes": list(classes),
            "indices": [self._store[c].tolist() for c in classes],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the content with ``state`` (from :meth:`state_dict`); exact round trip."""
        try:
            version, classes, indices = state["version"], list(state["classes"]), list(state["indices"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"not an ExemplarMemory state: {err!r}") from None
        if version != _STATE_VERSION:
            raise ValueError(f"unsupported ExemplarMemory state version {version!r}")
        if len(classes) != len(indices) or len(set(classes)) != len(classes):
            raise ValueError("ExemplarMemory state: classes and indices do not match")
        store: dict[int, np.ndarray] = {}
        for c, idx in zip(classes, indices, strict=False):
            array = np.asarray(idx)
            if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
                raise ValueError(f"ExemplarMemory state: class {c} indices must be a list of ints")
            if array.size and (array.min() < 0 or np.unique(array).size != array.size):
                raise ValueError(f"ExemplarMemory state: class {c} indices must be distinct and >= 0")
            array = array.astype(np.int64)
            array.setflags(write=False)
            store[int(c)] = array
        self._store = store

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ExemplarMemory:
        memory = cls()
        memory.load_state_dict(state)
        return memory

    # ------------------------------------------------------------------------------- dunder

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExemplarMemory):
            return NotImplemented
        return self.classes == other.classes and all(
            np.array_equal(self._store[c], other._store[c]) for c in self.classes)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"ExemplarMemory(classes={len(self._store)}, exemplars={len(self)})"


__all__ = ["ExemplarMemory", "InputProvider", "MemoryCapacity", "resolve_memory_capacity"]
