"""Learning-rate rules and the per-iteration warmup + cosine schedule (method reference §12.1).

Official code: lr = base lr x batch / 20, linear warmup over 30 % of the task's steps starting from 0,
then cosine down to lr x 1e-3; consolidation: lr / 10, no warmup. Paper: lr 1e-3 as given, one warmup
epoch. A fresh schedule is built for every task and every consolidation phase.
"""

from __future__ import annotations

import math

import numpy as np

from clapray.config import OptimConfig


def effective_lr(optim: OptimConfig) -> float:
    """The learning rate SGD starts from after warmup: ``lr x batch / 20`` (code) or ``lr`` (paper)."""
    return optim.lr * optim.batch_size / 20.0 if optim.lr_rule == "batch_scaled" else optim.lr


def warmup_steps(optim: OptimConfig, total_steps: int, steps_per_epoch: int) -> int:
    if optim.warmup == "fraction":
        return int(optim.warmup_fraction * total_steps)
    if optim.warmup == "epoch":
        return min(steps_per_epoch, max(total_steps - 1, 0))
    return 0


def cosine_with_warmup(total_steps: int, lr: float, final_lr: float, warmup: int = 0) -> np.ndarray:
    """Learning rate of every iteration, shape [total_steps].

    Warmup: ``warmup`` values evenly spaced strictly between 0 and ``lr`` (so the first step is not 0
    and the last warmup step is just below ``lr``). Then cosine from ``lr`` towards ``final_lr`` over
    the remaining steps: ``final + (lr - final) * (1 + cos(pi * s / n)) / 2`` for s = 0..n-1.
    """
    if total_steps <= 0:
        return np.zeros(0)
    warmup = min(max(warmup, 0), total_steps)
    ramp = lr * np.arange(1, warmup + 1) / (warmup + 1)
    n = total_steps - warmup
    steps = np.arange(n)
    cosine = final_lr + 0.5 * (lr - final_lr) * (1.0 + np.cos(math.pi * steps / max(n, 1)))
    return np.concatenate([ramp, cosine])
