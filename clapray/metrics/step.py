"""Metrics of one evaluation step, from the logits of every seen task's evaluation images (§13).

Shared by every way of producing logits (the zero-shot baseline, the CLAP learner), so all report the
same numbers the same way: accuracies in percent, macro over task test sets, the official per-batch ECE
beside the dataset-level one, and novelty detection of future-task images with the energy score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from clapray.metrics.accuracy import (
    average_incremental_accuracy,
    backward_transfer,
    last_accuracy,
    stack_accuracy_rows,
    task_aware_predictions,
)
from clapray.metrics.calibration import CalibrationBins, calibration_bins, per_batch_ece
from clapray.metrics.novelty import phndd_at_step
from clapray.task_result import NoveltyDetection, ReliabilityBins


def step_metrics(seen_logits: torch.Tensor | np.ndarray, targets: np.ndarray, tasks: np.ndarray, step: int,
                 task_of_class: np.ndarray, history: list[list[float]], *, batch_sizes: Sequence[int],
                 ece_bins: int, future_logits: torch.Tensor | np.ndarray | None = None) -> dict:
    """The fields of a :class:`~clapray.task_result.TaskResult` after task ``step``.

    Args:
        seen_logits: [N, C_seen] logits (mean over MC samples) of the evaluation images of tasks 0..step,
            over the classes seen so far, rows in the order the evaluation batches were formed.
        targets: [N] remapped labels; tasks: [N] task of each image.
        task_of_class: [C_seen] task owning each seen class.
        history: accuracy rows of the earlier steps; this step's row is appended.
        batch_sizes: sizes of the real evaluation batches, consecutive in row order (sum N): the official
            per-batch ECE is the mean ECE over these batches, whatever the protocol formed them from.
        future_logits: [N_future, C_seen] logits of the images of tasks after ``step`` (novel data), or
            None to skip novelty detection.
    """
    logits = torch.as_tensor(seen_logits, dtype=torch.float32)
    preds = logits.argmax(dim=1).numpy()
    probs = torch.softmax(logits, dim=1).numpy()
    aware_preds = task_aware_predictions(logits.numpy(), targets, task_of_class)

    row, aware_row, counts = [], [], []
    for j in range(step + 1):
        in_task = tasks == j
        n = int(in_task.sum())
        counts.append(n)
        row.append(100.0 * float((preds[in_task] == targets[in_task]).mean()) if n else float("nan"))
        aware_row.append(100.0 * float((aware_preds[in_task] == targets[in_task]).mean()) if n else float("nan"))
    history.append(row)
    acc = stack_accuracy_rows(history)

    phndd = None
    if future_logits is not None and len(future_logits):
        detection = phndd_at_step(logits, torch.as_tensor(future_logits, dtype=torch.float32))
        phndd = NoveltyDetection(auroc=float(detection.auroc), aupr=float(detection.aupr),
                                 fpr95=float(detection.fpr95), fpr95_at_least=float(detection.fpr95_at_least))
    # One binning gives both the ECE and the reliability diagram's data, so the two always agree.
    bins = calibration_bins(probs, targets, n_bins=ece_bins)
    return dict(
        accuracy_row=tuple(row), task_aware_row=tuple(aware_row), n_eval=tuple(counts),
        last_acc=float(last_accuracy(acc)), avg_acc=float(average_incremental_accuracy(acc)),
        bwt=float(backward_transfer(acc)) if step > 0 else float("nan"),
        ece=float(bins.ece), phndd=phndd,
        ece_per_batch=per_batch_ece(probs, targets, batch_size=list(batch_sizes), n_bins=ece_bins),
        calibration=reliability_bins(bins))


def reliability_bins(bins: CalibrationBins) -> ReliabilityBins:
    """The non-empty rows of :func:`clapray.metrics.calibration.calibration_bins`, as plain data for a TaskResult."""
    keep = np.flatnonzero(bins.count > 0)
    return ReliabilityBins(
        n_bins=len(bins.count) - 1, bin=tuple(int(b) for b in keep),
        lower=tuple(float(bins.lower[b]) for b in keep), upper=tuple(float(bins.upper[b]) for b in keep),
        count=tuple(int(bins.count[b]) for b in keep),
        confidence=tuple(float(bins.confidence[b]) for b in keep),
        accuracy=tuple(float(bins.accuracy[b]) for b in keep))
