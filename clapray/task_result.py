"""What a run reports: a :class:`TaskResult` after every task, and its :class:`RunProvenance`.

A :class:`TaskResult` is the unit of reporting: the run CLI prints it, the sweep forwards it to Ray Tune
and the results store turns it into Parquet rows. It is plain data (lists, floats), so it pickles and
serialises to JSON without torch. :class:`RunProvenance` is what the runs table records about a run beside
its configuration: what data it saw, what it trained, whether it read the frozen-feature cache.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NoveltyDetection:
    """Post-hoc novel data detection at one step: seen-task test images vs future-task ones (§13.6)."""

    auroc: float
    aupr: float
    fpr95: float  # the official rule: the threshold whose TPR is nearest 0.95 (energy-OOD reference code)
    fpr95_at_least: float  # the textbook rule: the smallest FPR with TPR >= 0.95


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin calibration of the top-1 prediction at one step: the data of a reliability diagram.

    Only non-empty bins are kept (so no field holds NaN and two equal results compare equal). ``bin``
    indexes the equal-width confidence bins ``[lower, upper)`` of ``n_bins``; bin ``n_bins`` holds the
    confidences of exactly 1.0 (``lower = upper = 1``), as :func:`clapray.metrics.calibration_bins`
    keeps them apart. ``confidence`` and ``accuracy`` are the bin's mean top-1 confidence and its
    fraction of correct predictions (both in [0, 1]).
    """

    n_bins: int
    bin: tuple[int, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    count: tuple[int, ...]
    confidence: tuple[float, ...]
    accuracy: tuple[float, ...]


@dataclass(frozen=True)
class TaskResult:
    """Metrics after training (and consolidating) task ``task`` (0-based), evaluated on tasks 0..task.

    Accuracies are percentages. ``accuracy_row[j]`` = a[task, j]; ``task_aware_row[j]`` the same with
    logits outside task j's classes masked; ``n_eval[j]`` the number of evaluation images of task j.
    """

    task: int
    num_tasks: int
    accuracy_row: tuple[float, ...]
    task_aware_row: tuple[float, ...]
    n_eval: tuple[int, ...]
    last_acc: float  # macro mean of accuracy_row (A_t)
    avg_acc: float  # mean of A_0..A_t so far
    bwt: float  # NaN at task 0
    ece: float  # dataset-level, over all seen test images
    ece_per_batch: float  # the official per-batch average
    phndd: NoveltyDetection | None  # None at the last task (no future images)
    losses: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: train, consolidate, evaluate, total
    peak_memory_mb: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)
    # Dataset-level reliability bins over all seen test images; None where a producer does not compute them.
    calibration: ReliabilityBins | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        """Inverse of :meth:`to_dict` (tuples restored, novelty detection rebuilt)."""
        data = dict(data)
        for key in ("accuracy_row", "task_aware_row", "n_eval"):
            data[key] = tuple(data[key])
        if data.get("phndd") is not None:
            data["phndd"] = NoveltyDetection(**data["phndd"])
        if data.get("calibration") is not None:
            bins = dict(data["calibration"])
            for key in ("bin", "lower", "upper", "count", "confidence", "accuracy"):
                bins[key] = tuple(bins[key])
            data["calibration"] = ReliabilityBins(**bins)
        return cls(**data)

    def summary_line(self) -> str:
        """``task  3/10  acc 71.20  avg 80.05  bwt -3.10  ece 0.061  12.3s``."""
        bwt = "   -  " if math.isnan(self.bwt) else f"{self.bwt:+6.2f}"
        return (f"task {self.task + 1:2d}/{self.num_tasks}  acc {self.last_acc:6.2f}  avg {self.avg_acc:6.2f}  "
                f"bwt {bwt}  ece {self.ece:.3f}  {self.timings.get('total', float('nan')):.1f}s")


@dataclass(frozen=True)
class RunProvenance:
    """Facts about a run that its configuration alone does not give, recorded in its ``runs`` row.

    Attributes:
        dataset_fingerprint: the benchmark's content fingerprint (files and split).
        trainable_params: parameters the method trains once every task is learned (0 for zero-shot).
        used_feature_cache: whether training and evaluation read the frozen-feature cache.
    """

    dataset_fingerprint: str | None = None
    trainable_params: int | None = None
    used_feature_cache: bool | None = None


@dataclass(frozen=True)
class SweepCoordinates:
    """Where a sweep trial sits in its sweep, recorded in its ``runs`` row (columns ``setting``, ``grid``,
    ``sampled``): its cell's grid coordinates (the ``setting`` axis by preset name) and the values the
    searcher sampled. Pairs rather than mappings, so the object stays hashable."""

    grid: tuple[tuple[str, Any], ...] = ()
    sampled: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, grid: dict[str, Any], sampled: dict[str, Any]) -> SweepCoordinates:
        return cls(tuple(grid.items()), tuple(sampled.items()))

    @property
    def setting(self) -> str | None:
        """The preset of the sweep's ``setting`` axis, None when the sweep has no such axis."""
        value = dict(self.grid).get("setting")
        return None if value is None else str(value)

    def grid_json(self) -> str:
        return json.dumps(dict(self.grid))

    def sampled_json(self) -> str:
        return json.dumps(dict(self.sampled))
