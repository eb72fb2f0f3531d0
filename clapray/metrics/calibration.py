"""Calibration: the reliability bins, dataset-level ECE and the official per-batch ECE (§13.5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from clapray.metrics.inputs import ArrayLike, check_same_length, labels, scores_2d


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
    p = scores_2d(probs, "probs")
    y = labels(targets, "targets")
    check_same_length(p, y, "probs", "targets")
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
    batch_size: int | Sequence[int] = 32,
    n_bins: int = 15,
    *,
    from_logits: bool = False,
) -> float:
    """ECE as the reference evaluator reports it (§13.5): computed per test batch, then averaged.

    The ``N`` samples are split in order into consecutive batches: of ``batch_size`` each (the last,
    partial batch is a batch of its own), or of the given sizes when ``batch_size`` is a sequence (the
    real batches of a loader, e.g. one task's test loader after another). ``per_batch_ece = (1/B) Σ_k
    ECE(batch_k)`` with the unweighted mean over the ``B`` batches and ECE as in
    :func:`expected_calibration_error`. This is biased upwards with respect to the dataset-level ECE (few
    samples per bin).

    Args:
        probs: ``[N, C]`` probabilities (or logits with ``from_logits=True``), in test-loader order.
        targets: ``[N]`` labels.
        batch_size: evaluation batch size (32 in the reference runs), or the sizes of the consecutive
            batches (positive, summing to ``N``).
        n_bins: number of bins.
    """
    conf, correct = _confidences(probs, targets, from_logits)
    if isinstance(batch_size, (list, tuple, np.ndarray)):
        sizes = np.asarray(batch_size)
        if sizes.ndim != 1 or not np.issubdtype(sizes.dtype, np.integer) or (sizes < 1).any() \
                or int(sizes.sum()) != conf.size:
            raise ValueError(f"batch_size: expected positive integer batch sizes summing to {conf.size}")
        batch = np.repeat(np.arange(sizes.size), sizes)
    elif isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    else:
        batch = np.arange(conf.size) // int(batch_size)
    index, _ = _bin_index(conf, n_bins)
    size = int(n_bins) + 1
    n_batches = int(batch[-1]) + 1
    cell = batch * size + index  # one (batch, bin) cell per sample
    conf_sum = np.bincount(cell, weights=conf, minlength=n_batches * size).reshape(n_batches, size)
    correct_sum = np.bincount(cell, weights=correct, minlength=n_batches * size).reshape(n_batches, size)
    batch_len = np.bincount(batch, minlength=n_batches).astype(np.float64)
    ece_per_batch = np.abs(correct_sum - conf_sum).sum(axis=1) / batch_len
    return float(ece_per_batch.mean())
