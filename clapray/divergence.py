"""Divergence checks: a run stops with :class:`TrainingDiverged` wherever a value stops being finite.

A non-finite value can first appear in the loss, in the gradients (a finite loss whose backward pass
overflows), in the parameters after an optimiser step (a finite gradient times a huge learning rate), or
only in the logits at evaluation (finite parameters whose products overflow). The learner calls one check
at each of those points, so a diverged run ends with ``status = error`` and a reason naming where it went
wrong, instead of a traceback from whatever consumed the values next (e.g. the calibration metric's
"expected probabilities in [0, 1]"). :class:`TrainingDiverged` is deterministic: a sweep records it and
never retries the trial (``clapray.sweep.trial`` catches it in the worker).

Each check costs one reduction per tensor group and one host sync, small next to a training step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor


class TrainingDiverged(RuntimeError):
    """A loss, gradient, parameter or logit became NaN or infinite; the run ends with status ``error`` and
    this message."""


def _finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every element of every tensor is finite (the max-abs norm is NaN or inf otherwise)."""
    if not tensors:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors, norm_type=math.inf)).item())


def check_loss(value: float, where: str, agree: Callable[[bool], bool] | None = None) -> None:
    """The loss of a step. ``agree`` combines the verdict over data-parallel ranks (each rank's loss is its
    own share of the batch), so every rank stops at the same step."""
    finite = math.isfinite(value)
    if agree is not None:
        finite = agree(finite)
    if not finite:
        raise TrainingDiverged(f"non-finite loss {value} at {where}")


def check_gradients(params: Iterable[torch.nn.Parameter], where: str) -> None:
    """The gradients after backward (and after the all-reduce, so every rank sees the same values)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not _finite(grads):
        raise TrainingDiverged(f"non-finite gradients at {where}")


def check_parameters(params: Iterable[torch.nn.Parameter], where: str) -> None:
    """The trained parameters after an optimiser step."""
    values = [p.detach() for p in params]
    if not _finite(values):
        raise TrainingDiverged(f"non-finite parameters after the optimiser step at {where}")


def check_logits(logits: Tensor, where: str) -> None:
    """Logits at evaluation (or when the memory selectors score images), before any metric reads them."""
    if not _finite([logits]):
        raise TrainingDiverged(f"non-finite logits at {where}")
