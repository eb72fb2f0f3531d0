"""Continual-learning, calibration and novelty-detection metrics (method reference §13).

Modules: :mod:`~clapray.metrics.accuracy` (accuracies, the accuracy matrix and its summaries),
:mod:`~clapray.metrics.calibration` (ECE, reliability bins), :mod:`~clapray.metrics.novelty` (PhNDD), and
:mod:`~clapray.metrics.step` (all of them after one step of a run, as a TaskResult's fields).

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

import importlib
from typing import Any

# Names are imported on first use (PEP 562): the accuracy summaries need only numpy, so readers of a store
# (the report) use them without importing torch.
_EXPORTS = {
    "CalibrationBins": "clapray.metrics.calibration",
    "ContinualSummary": "clapray.metrics.accuracy",
    "NoveltyDetectionMetrics": "clapray.metrics.novelty",
    "accuracy_matrix": "clapray.metrics.accuracy",
    "average_forgetting": "clapray.metrics.accuracy",
    "average_incremental_accuracy": "clapray.metrics.accuracy",
    "average_incremental_accuracy_weighted": "clapray.metrics.accuracy",
    "backward_transfer": "clapray.metrics.accuracy",
    "calibration_bins": "clapray.metrics.calibration",
    "energy_score": "clapray.metrics.novelty",
    "expected_calibration_error": "clapray.metrics.calibration",
    "forward_transfer": "clapray.metrics.accuracy",
    "fpr_at_tpr": "clapray.metrics.novelty",
    "last_accuracy": "clapray.metrics.accuracy",
    "next_task_accuracies": "clapray.metrics.transfer",
    "last_accuracy_weighted": "clapray.metrics.accuracy",
    "novelty_detection_metrics": "clapray.metrics.novelty",
    "per_batch_ece": "clapray.metrics.calibration",
    "per_task_accuracy": "clapray.metrics.accuracy",
    "phndd_at_step": "clapray.metrics.novelty",
    "reliability_bins": "clapray.metrics.step",
    "stack_accuracy_rows": "clapray.metrics.accuracy",
    "step_accuracies": "clapray.metrics.accuracy",
    "step_accuracies_weighted": "clapray.metrics.accuracy",
    "step_backward_transfers": "clapray.metrics.accuracy",
    "step_forgetting": "clapray.metrics.accuracy",
    "step_metrics": "clapray.metrics.step",
    "summarize": "clapray.metrics.accuracy",
    "task_aware_accuracy": "clapray.metrics.accuracy",
    "task_aware_predictions": "clapray.metrics.accuracy",
    "top1_accuracy": "clapray.metrics.accuracy",
}

__all__ = [  # noqa: F822 (resolved through __getattr__)
    "CalibrationBins",
    "ContinualSummary",
    "NoveltyDetectionMetrics",
    "accuracy_matrix",
    "average_forgetting",
    "average_incremental_accuracy",
    "average_incremental_accuracy_weighted",
    "backward_transfer",
    "calibration_bins",
    "energy_score",
    "expected_calibration_error",
    "forward_transfer",
    "fpr_at_tpr",
    "last_accuracy",
    "next_task_accuracies",
    "last_accuracy_weighted",
    "novelty_detection_metrics",
    "per_batch_ece",
    "per_task_accuracy",
    "phndd_at_step",
    "reliability_bins",
    "stack_accuracy_rows",
    "step_accuracies",
    "step_accuracies_weighted",
    "step_backward_transfers",
    "step_forgetting",
    "step_metrics",
    "summarize",
    "task_aware_accuracy",
    "task_aware_predictions",
    "top1_accuracy",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
