"""Exemplar selectors: which of a class's training images the replay memory keeps (§10 of the method
reference).

A selector sees the candidates of **one class** as a :class:`SelectionInputs` (their dataset indices and,
when it needs them, per-candidate features or predictive probabilities) and returns the **positions**
(``0..n-1``, into the candidate arrays) of the chosen exemplars in *selection order*: the memory keeps that
order so that shrinking a class later keeps its first ``k`` exemplars, as the official code does.

Each selector declares what it needs (``needs`` ⊆ ``{"features", "probs", "mc_logits"}``), so the caller
runs the model only when a selector looks at its outputs (and keeps the M samples only for those that read
them). Selectors register themselves by name::

    @register_selector("first_k")
    def first_k(k: int, inputs: SelectionInputs, rng: np.random.Generator | None) -> np.ndarray: ...

and are looked up with :func:`get_selector`. A test parametrised over :func:`list_selectors` checks every
entry, so a new selector is tested as soon as it is registered.

Registered selectors:

* ``first_k`` -- the first ``k`` candidates in dataset order. This is what the official code calls
  ``random`` (P8): it is deterministic and never looks at the images.
* ``random`` -- a true random choice without replacement from the generator passed in.
* ``herding`` -- iCaRL herding on L2-normalised features. The official ``icarl`` selector herds on the
  mean-over-MC *logit* vectors; the learner passes those as ``features`` under ``memory.selection:
  official`` and the image embeddings (as iCaRL) under ``clapray`` (:mod:`clapray.exemplars`).
* ``entropy`` -- the paper's uncertainty-based choice: highest predictive entropy of the probabilities
  (softmax of the MC-mean logits, see :func:`predictive_probs`), most uncertain first.
* ``energy`` -- highest energy first: the lowest ``mean_m logsumexp_c logits^(m)`` (the official
  ``energy`` selector; energy E = -logsumexp).
* ``variance`` -- lowest first of the variance over the M samples of each class's softmax probability,
  summed over classes (the official ``variance`` selector; unbiased variance, as ``torch.var``).

``energy`` and ``variance`` read the M samples of each candidate (``mc_logits`` [n, M, C]); the official
code reshapes its [M, B, C] outputs wrongly before scoring them (§10, P8). These rules follow the intended
definition; :func:`clapray.exemplars.official_mc_interleave` rebuilds the official arrangement for
``memory.official_mc_reshape``.

"Dataset order" always means ascending dataset index, whatever order the candidates are given in.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from clapray.errors import UserError

INPUT_KINDS = frozenset({"features", "probs", "mc_logits"})

# Rows of ``probs`` must sum to 1 within this tolerance; loose enough for half-precision softmax, tight
# enough to reject logits passed by mistake.
_PROB_SUM_ATOL = 1e-2


def _as_array(value: Any) -> np.ndarray:
    """A NumPy view of ``value``; torch tensors (any device, any float precision) are copied to CPU."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()  # bf16/fp16 have no (exact) NumPy counterpart
        return tensor.numpy()
    return np.asarray(value)


@dataclass(frozen=True, eq=False)
class SelectionInputs:
    """The candidates of one class and what selectors may look at.

    Attributes:
        indices: ``[n]`` int64 dataset indices (into the training split) of the candidates; unique.
        features: ``[n, d]`` per-candidate feature vectors (e.g. L2-normalised image embeddings), or None.
        probs: ``[n, C]`` predictive probabilities (rows sum to 1; mean over MC samples), or None.
        mc_logits: ``[n, M, C]`` the logits of each of the M Monte-Carlo samples of every candidate, or None.

    Arrays are converted on construction (torch tensors are accepted) and validated: a wrong shape or a
    non-probability ``probs`` raises :class:`ValueError` naming the array.
    """

    indices: np.ndarray
    features: np.ndarray | None = None
    probs: np.ndarray | None = None
    mc_logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        indices = _as_array(self.indices)
        if indices.ndim != 1:
            raise ValueError(f"indices must be 1-D [n], got shape {indices.shape}")
        if indices.size and not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
        indices = indices.astype(np.int64, copy=False)
        if indices.size and indices.min() < 0:
            raise ValueError("indices must be >= 0 (positions in the training split)")
        if np.unique(indices).size != indices.size:
            raise ValueError("indices contain duplicates; every candidate must be a distinct image")
        object.__setattr__(self, "indices", indices)
        n = indices.shape[0]
        for name in ("features", "probs"):
            value = getattr(self, name)
            if value is None:
                continue
            array = _as_array(value)
            if array.ndim != 2 or array.shape[0] != n or array.shape[1] < 1:
                raise ValueError(f"{name} must have shape [n={n}, >=1], got {array.shape}")
            if not np.issubdtype(array.dtype, np.floating):
                array = array.astype(np.float64)
            if not np.isfinite(array).all():
                raise ValueError(f"{name} contains NaN or infinite values")
            object.__setattr__(self, name, array)
        if self.mc_logits is not None:
            array = _as_array(self.mc_logits)
            if array.ndim != 3 or array.shape[0] != n or min(array.shape[1:]) < 1:
                raise ValueError(f"mc_logits must have shape [n={n}, M>=1, C>=1], got {array.shape}")
            if not np.issubdtype(array.dtype, np.floating):
                array = array.astype(np.float64)
            if not np.isfinite(array).all():
                raise ValueError("mc_logits contains NaN or infinite values")
            object.__setattr__(self, "mc_logits", array)
        if self.probs is not None and n:
            sums = self.probs.sum(axis=1, dtype=np.float64)
            if self.probs.min() < 0 or not np.allclose(sums, 1.0, atol=_PROB_SUM_ATOL):
                raise ValueError("probs must be probabilities (non-negative, rows summing to 1); "
                                 "convert logits with predictive_probs()")

    @property
    def n(self) -> int:
        """Number of candidates."""
        return int(self.indices.shape[0])

    def available(self) -> frozenset[str]:
        """Which of ``INPUT_KINDS`` are present."""
        return frozenset(kind for kind in INPUT_KINDS if getattr(self, kind) is not None)


def inputs_by_class(indices: Any, labels: Any, *, features: Any = None, probs: Any = None, mc_logits: Any = None
                    ) -> dict[int, SelectionInputs]:
    """Split one pass over a task's images into per-class :class:`SelectionInputs`.

    A learner typically runs the model once over all of a task's training images (batched, any order)
    and gets ``indices [N]``, ``labels [N]`` (remapped class ids) and optionally ``features [N, d]`` /
    ``probs [N, C]`` / ``mc_logits [N, M, C]``; this groups the rows by label, keeping their relative order
    within a class.
    """
    labels = _as_array(labels).astype(np.int64, copy=False)
    indices = _as_array(indices)
    if labels.ndim != 1 or indices.shape[:1] != labels.shape:
        raise ValueError(f"labels must be 1-D and match indices, got {labels.shape} and {indices.shape}")
    rows: dict[str, np.ndarray | None] = {"features": None, "probs": None, "mc_logits": None}
    for name, value in (("features", features), ("probs", probs), ("mc_logits", mc_logits)):
        if value is not None:
            array = _as_array(value)
            if array.shape[:1] != labels.shape:
                raise ValueError(f"{name} must have {labels.shape[0]} rows, got shape {array.shape}")
            rows[name] = array
    order = np.argsort(labels, kind="stable")  # group by class, keep the given order inside a class
    classes, starts = np.unique(labels[order], return_index=True)
    out: dict[int, SelectionInputs] = {}
    for c, block in zip(classes.tolist(), np.split(order, starts[1:]), strict=False):
        out[int(c)] = SelectionInputs(
            indices=indices[block], **{name: None if rows[name] is None else rows[name][block] for name in rows})
    return out


def predictive_probs(logits: Any, reduce: Literal["mean_logits", "mean_probs"] = "mean_logits") -> np.ndarray:
    """Predictive probabilities ``[n, C]`` from logits ``[M, n, C]`` (M MC samples) or ``[n, C]``.

    ``mean_logits`` = softmax of the MC-mean logits, what the official entropy selector uses;
    ``mean_probs`` = mean over MC samples of the per-sample softmax (the Bayesian model average).
    """
    z = _as_array(logits).astype(np.float64)
    if z.ndim == 2:
        z = z[None]
    if z.ndim != 3:
        raise ValueError(f"logits must have shape [M, n, C] or [n, C], got {z.shape}")
    if reduce not in ("mean_logits", "mean_probs"):
        raise ValueError(f"reduce must be 'mean_logits' or 'mean_probs', got {reduce!r}")

    return _softmax(z.mean(axis=0)) if reduce == "mean_logits" else _softmax(z).mean(axis=0)


def _softmax(a: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    a = np.asarray(a, dtype=np.float64)
    a = a - a.max(axis=-1, keepdims=True)  # shift for overflow-free exp
    e = np.exp(a)
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------------
# Registry


SelectFn = Callable[[int, SelectionInputs, "np.random.Generator | None"], np.ndarray]


@dataclass(frozen=True)
class Selector:
    """A registered selector. Call it as ``selector(k, inputs, rng)``.

    Attributes:
        name: registry name.
        fn: the selection rule; receives ``0 < k <= n`` and validated inputs.
        needs: which of ``INPUT_KINDS`` the rule reads (the caller computes only those).
        uses_rng: whether the rule draws from ``rng`` (then ``rng`` is required).
    """

    name: str
    fn: SelectFn
    needs: frozenset[str]
    uses_rng: bool = False

    def __call__(self, k: int, inputs: SelectionInputs, rng: np.random.Generator | None = None) -> np.ndarray:
        """Positions ``[min(k, n)]`` int64 into ``inputs``, unique, in selection order.

        ``k >= n`` selects every candidate (still in selection order); ``k == 0`` selects none.
        """
        k = check_k(k)
        if not isinstance(inputs, SelectionInputs):
            raise ValueError(f"inputs must be SelectionInputs, got {type(inputs).__name__}")
        missing = self.needs - inputs.available()
        if missing:
            raise ValueError(f"selector {self.name!r} needs {', '.join(sorted(missing))} of the candidates")
        if self.uses_rng and not isinstance(rng, np.random.Generator):
            raise ValueError(f"selector {self.name!r} needs a numpy Generator as rng, got {type(rng).__name__}")
        m = min(k, inputs.n)
        if m == 0:
            return np.empty(0, dtype=np.int64)
        positions = np.asarray(self.fn(m, inputs, rng), dtype=np.int64)
        # A registered rule that breaks the contract would corrupt the memory silently; fail here instead.
        if (positions.shape != (m,) or positions.min() < 0 or positions.max() >= inputs.n
                or np.unique(positions).size != m):
            raise RuntimeError(f"selector {self.name!r} returned invalid positions {positions!r}")
        return positions


_REGISTRY: dict[str, Selector] = {}


def check_k(k: Any) -> int:
    """``k`` as an int >= 0, or a ValueError."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    return int(k)


def register_selector(name: str, *, needs: Iterable[str] = (), uses_rng: bool = False
                      ) -> Callable[[SelectFn], SelectFn]:
    """Register ``fn(k, inputs, rng) -> positions`` under ``name``.

    ``fn`` may assume ``0 < k <= inputs.n``, that every input in ``needs`` is present and that ``rng`` is a
    Generator when ``uses_rng``; it returns ``k`` unique positions in selection order.
    """
    needs = frozenset(needs)
    if not needs <= INPUT_KINDS:
        raise ValueError(f"needs must be a subset of {sorted(INPUT_KINDS)}, got {sorted(needs)}")

    def decorate(fn: SelectFn) -> SelectFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"selector {name!r} is registered twice")
        _REGISTRY[name] = Selector(name=name, fn=fn, needs=needs, uses_rng=uses_rng)
        return fn

    return decorate


def list_selectors() -> list[str]:
    return sorted(_REGISTRY)


def get_selector(name: str | Selector) -> Selector:
    """The selector registered as ``name`` (a :class:`Selector` passes through)."""
    if isinstance(name, Selector):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown exemplar selector {name!r}{hint}; known: {', '.join(list_selectors())}") from None


# --------------------------------------------------------------------------------------------------
# Entries


def _dataset_order(inputs: SelectionInputs) -> np.ndarray:
    """Positions ``[n]`` sorted by dataset index (indices are unique, so the order is total)."""
    return np.argsort(inputs.indices, kind="stable")


@register_selector("first_k")
def first_k(k: int, inputs: SelectionInputs, rng: np.random.Generator | None) -> np.ndarray:
    """The ``k`` candidates with the smallest dataset indices, ascending (the official 'random')."""
    return _dataset_order(inputs)[:k]


@register_selector("random", uses_rng=True)
def random_choice(k: int, inputs: SelectionInputs, rng: np.random.Generator | None) -> np.ndarray:
    """``k`` candidates drawn uniformly without replacement; selection order = draw order.

    Draws are made over the candidates in dataset order, so the result depends only on the candidate
    set and the generator, not on the order the caller listed them in.
    """
    assert rng is not None
    return _dataset_order(inputs)[rng.choice(inputs.n, size=k, replace=False)]


@register_selector("herding", needs=("features",))
def herding(k: int, inputs: SelectionInputs, rng: np.random.Generator | None) -> np.ndarray:
    """iCaRL herding: greedily add the candidate that brings the mean of the chosen features closest to
    the class mean.

    Features are L2-normalised here (a no-op for embeddings that already are); the class mean ``mu`` is
    the plain mean of the normalised features, as in iCaRL. At step ``j`` (``j`` already chosen, running
    sum ``s``) the pick is ``argmin_i ||mu - (s + x_i) / (j + 1)||``. Multiplying by ``j + 1`` and
    expanding with ``r = (j + 1) mu - s`` gives ``||r||^2 - 2 r.x_i + ||x_i||^2``, where ``||r||^2`` is the
    same for every ``i``; so each step is one matrix-vector product over all candidates, O(n d), and the
    whole selection O(k n d). Ties go to the lowest position; chosen candidates are masked out.

    Normalisation, the class mean and the running sum are float64; the per-step product reads a float32
    copy of the features, since it is memory-bound and float32 halves the bytes (about 4x faster for
    n = 5000, d = 512), at a precision far below the gaps between candidates' distances in practice.
    """
    assert inputs.features is not None
    x = inputs.features.astype(np.float64)  # [n, d]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    mu = x.mean(axis=0)  # [d]
    sq_norms = np.einsum("nd,nd->n", x, x)  # [n], 1 except for all-zero rows
    x32 = x.astype(np.float32)  # [n, d]
    chosen_sum = np.zeros_like(mu)  # [d] sum of the features chosen so far
    taken = np.zeros(inputs.n, dtype=bool)
    out = np.empty(k, dtype=np.int64)
    for j in range(k):
        r = (j + 1) * mu - chosen_sum  # [d]
        score = sq_norms - 2.0 * (x32 @ r.astype(np.float32))  # [n] squared distance up to a constant
        score[taken] = np.inf
        i = int(np.argmin(score))
        out[j] = i
        taken[i] = True
        chosen_sum += x[i]
    return out


def entropy_of(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of ``probs [n, C]`` -> ``[n]``; ``0 log 0 = 0``."""
    p = np.asarray(probs, dtype=np.float64)
    safe = np.where(p > 0, p, 1.0)  # log(1) = 0 makes zero-probability terms vanish
    return -(p * np.log(safe)).sum(axis=1)


@register_selector("entropy", needs=("probs",))
def entropy(k: int, inputs: SelectionInputs, rng: np.random.Generator | None) -> np.ndarray:
    """The ``k`` candidates of highest predictive entropy, most uncertain first; equal entropies keep
    dataset order."""
    assert inputs.probs is not None
    h = entropy_of(inputs.probs)  # [n]
    # lexsort sorts by the last key first: descending entropy, then ascending dataset index.
    return np.lexsort((inputs.indices, -h))[:k]


def mean_logsumexp(mc_logits: np.ndarray) -> np.ndarray:
    """``mean_m logsumexp_c logits[n, m, c]`` -> ``[n]``: minus the energy, averaged over the MC samples."""
    z = np.asarray(mc_logits, dtype=np.float64)
    top = z.max(axis=-1, keepdims=True)
    lse = top[..., 0] + np.log(np.exp(z - top).sum(axis=-1))  # [n, M]
    return lse.mean(axis=1)


@register_selector("energy", needs=("mc_logits",))
def energy(k: int, inputs: SelectionInputs, rng: np.random.Generator | None) -> np.ndarray:
    """The ``k`` candidates of highest energy (lowest MC-mean logsumexp, the official ``energy`` rule), highest
    first; equal scores keep dataset order."""
    assert inputs.mc_logits is not None
    return np.lexsort((inputs.indices, mean_logsumexp(inputs.mc_logits)))[:k]


def mc_softmax_variance(mc_logits: np.ndarray) -> np.ndarray:
    """Unbiased variance over the M samples of each class's softmax probability, summed over classes ->
    ``[n]`` (0 with a single sample, where the unbiased estimate is undefined)."""
    p = _softmax(mc_logits)  # [n, M, C]
    if p.shape[1] < 2:
        return np.zeros(p.shape[0])
    return p.var(axis=1, ddof=1).sum(axis=1)


@register_selector("variance", needs=("mc_logits",))
def variance(k: int, inputs: SelectionInputs, rng: np.random.Generator | None) -> np.ndarray:
    """The ``k`` candidates whose MC predictions vary least (the official ``variance`` rule: ascending summed
    variance of the softmax over samples), least first; equal scores keep dataset order."""
    assert inputs.mc_logits is not None
    return np.lexsort((inputs.indices, mc_softmax_variance(inputs.mc_logits)))[:k]


__all__ = [
    "INPUT_KINDS",
    "SelectionInputs",
    "Selector",
    "check_k",
    "entropy_of",
    "get_selector",
    "inputs_by_class",
    "list_selectors",
    "mc_softmax_variance",
    "mean_logsumexp",
    "predictive_probs",
    "register_selector",
]
