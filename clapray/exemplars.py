"""Choosing the exemplars after a task's main training (method reference §10, P8).

The exemplar memory (:class:`~clapray.data.memory.ExemplarMemory`) and the selection rules
(:mod:`clapray.data.selectors`) are plain NumPy; this module decides what the rules see: which candidates,
which view of their images, and which outputs of the current model. ``memory.selection`` picks one of two
protocols for the model-based selectors (herding, entropy, energy, variance):

* ``official`` (the released code's ``select_indices``): the model runs over the old memory followed by
  the new task's training images, in that order and in evaluation batches (``eval.batch_size``, by default
  the training batch, which is what the official selection loaders use; the batches are also the VGA's
  contexts); every seen class is selected again, old classes from their stored exemplars; herding reads
  the L2-normalised MC-mean logits over all seen classes, entropy the softmax of the MC-mean logits,
  energy and variance the M samples.
* ``clapray``: the model runs over the new task's images only; old classes keep their first ``k``
  exemplars; herding reads the image embeddings (as iCaRL does), the others the same outputs as above.

``first_k`` and ``random`` never look at the model: old classes keep a prefix and new ones take their
first (or a random) ``k`` under both protocols, which is what the official ``random`` (= first-k) does.

The candidates are seen in the evaluation view unless ``memory.selection_views: train``, which draws a
seeded random horizontal flip per image, as the official selection loaders (built on the training
transform) do by accident. ``memory.official_mc_reshape`` rebuilds the official code's mis-arranged MC
samples for energy and variance (:func:`official_mc_interleave`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from clapray.config import MemoryConfig
from clapray.data.memory import ExemplarMemory
from clapray.data.selectors import SelectionInputs, get_selector, inputs_by_class, predictive_probs
from clapray.sampling import derive_seed

Predict = Callable[[np.ndarray, "np.ndarray | None", bool], "tuple[Any, Any]"]
"""``predict(indices, flips, samples)`` -> (logits, embeddings) of training images ``indices`` in order,
in evaluation batches: logits ``[M, N, C]`` when ``samples`` else their mean ``[N, C]``, embeddings
``[N, d]``; ``flips`` None = the evaluation view, else a flip per image. Tensors or arrays."""


def official_mc_interleave(mc_logits: np.ndarray, batch_size: int) -> np.ndarray:
    """The official code's ``[N, M, C]`` arrangement of MC logits computed in batches of ``batch_size``.

    The official energy and variance selectors collect each batch's ``[M, B, C]`` output with
    ``list.extend`` (one ``[B, C]`` block per sample), concatenate and reshape to ``[N, M, C]``, so the
    "samples" of row n are consecutive rows of the sample-major blocks: a mix of images of the batch and of
    MC draws. Well defined given the batch boundaries, which is what this reproduces.

    Args:
        mc_logits: ``[M, N, C]``, candidate order, computed in consecutive batches of ``batch_size``.
    """
    m, n, c = mc_logits.shape
    blocks = [mc_logits[:, s:s + batch_size].reshape(-1, c) for s in range(0, n, batch_size)]  # [M * B_b, C]
    return np.concatenate(blocks).reshape(n, m, c) if blocks else np.zeros((0, m, c), mc_logits.dtype)


def _numpy(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if hasattr(value, "detach"):
        return value.detach().float().cpu().numpy()
    return np.asarray(value)


def update_memory(memory: ExemplarMemory, *, task: int, k: int, new_indices: np.ndarray, targets: np.ndarray,
                  options: MemoryConfig, seed: int, batch_size: int, predict: Predict) -> None:
    """Update ``memory`` after ``task``: ``k`` exemplars per seen class (see the module docstring).

    Args:
        new_indices: the task's training images (dataset indices, ascending).
        targets: remapped class id of every training image (indexed by dataset index).
        options: the run's ``memory`` section (selector, selection, selection_views, official_mc_reshape).
        seed: ``seeds.init``; the random selector's generator and the flips derive from it and ``task``.
        batch_size: the evaluation batch ``predict`` uses (needed to rebuild the official MC arrangement).
    """
    selector = get_selector(options.selector)
    rng = np.random.default_rng([seed, task])
    new_indices = np.asarray(new_indices, dtype=np.int64)
    if not selector.needs:
        memory.update(inputs_by_class(new_indices, targets[new_indices]), k, selector, rng)
        return
    official = options.selection == "official"
    old_indices = memory.indices() if official else np.empty(0, dtype=np.int64)
    candidates = np.concatenate([old_indices, new_indices])
    labels = targets[candidates]
    flips = None
    if options.selection_views == "train":
        flips = np.random.default_rng(derive_seed(seed, task, "memory", "views")).random(len(candidates)) < 0.5
    samples = "mc_logits" in selector.needs
    logits, embeddings = predict(candidates, flips, samples)
    logits = _numpy(logits)
    mean = logits.mean(axis=0) if samples else logits  # [N, C]
    inputs: dict[str, Any] = {}
    if "features" in selector.needs:
        # Herding normalises its features itself: official = the MC-mean logits, clapray = the embeddings.
        inputs["features"] = mean if official else _numpy(embeddings)
    if "probs" in selector.needs:
        inputs["probs"] = predictive_probs(mean)
    if samples:
        inputs["mc_logits"] = (official_mc_interleave(logits, batch_size) if options.official_mc_reshape
                               else logits.transpose(1, 0, 2))
    by_class = inputs_by_class(candidates, labels, **inputs)
    reselect = None
    if official:
        reselect = {c: by_class.pop(c, SelectionInputs(np.empty(0, dtype=np.int64))) for c in memory.classes}
    memory.update(by_class, k, selector, rng, reselect=reselect)
