"""The optimisation phases of one task (§9, §11, §12.2): what each trains, on which data, with which loss.

Decided here and nowhere else; :class:`~clapray.learner.ContinualLearner` runs them in order:

* **main training** of task t, on the task's data plus the replay memory: VGA, the new adapter (and its
  task token), the prompt variant's parameters; KL and KD of task t only; warmup then cosine;
* **memory consolidation** after task t > 0 (class-balanced finetuning on the memory, replay on): every
  adapter; VGA stays frozen and in eval mode unless the variant declares otherwise (AttriCLIP); every
  task token when the variant declares ``task_tokens_train_in_consolidation`` (AttriCLIP), none otherwise;
  the variant's prompts when it declares ``trains_in_consolidation``; KL and KD of every seen task; lr x
  ``consolidation.lr_factor``, no warmup.

The compute budget (``budget.max_steps_per_task``) caps the optimiser steps of each phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clapray.config import RunConfig
from clapray.model.prompts.catalog import variant_spec
from clapray.schedule import effective_lr

PhaseName = Literal["train", "consolidate"]


@dataclass(frozen=True)
class Phase:
    """One optimisation phase of task ``task``.

    Attributes:
        name: ``train`` (main training) or ``consolidate`` (memory consolidation).
        task: the task the phase belongs to (0-based).
        epochs: passes over the phase's data.
        max_steps: cap on optimiser steps (the compute budget, ``budget.max_steps_per_task``), or None.
        lr: peak learning rate.
        warmup: linear warmup before the cosine decay (``optim.warmup``), or cosine from the start.
        regularized: tasks whose KL and KD terms enter the loss.
        adapters: ``current`` = only task ``task``'s adapter trains (it is created first); ``all`` = every adapter.
        task_tokens: which task tokens train (variants with task tokens): ``current`` = task ``task``'s,
            ``all`` = every seen task's, ``none``.
        vga: VGA trains (and its dropout is active); otherwise it is frozen in eval mode.
        prompt: the prompt variant's learned parameters train.
        data: ``task+memory`` = the task's training images plus the exemplar memory; ``memory`` = the memory.
    """

    name: PhaseName
    task: int
    epochs: int
    max_steps: int | None
    lr: float
    warmup: bool
    regularized: tuple[int, ...]
    adapters: Literal["current", "all"]
    task_tokens: Literal["current", "all", "none"]
    vga: bool
    prompt: bool
    data: Literal["task+memory", "memory"]


def main_training(task: int, cfg: RunConfig) -> Phase:
    """Main training of ``task`` (§9): its own KL and KD only; VGA, the new adapter (and the task's token) train."""
    return Phase(name="train", task=task, epochs=cfg.optim.epochs, max_steps=cfg.budget.max_steps_per_task,
                 lr=effective_lr(cfg.optim), warmup=True,
                 regularized=(task,), adapters="current", task_tokens="current", vga=True, prompt=True,
                 data="task+memory")


def consolidation(task: int, cfg: RunConfig) -> Phase | None:
    """Memory consolidation after ``task`` (§11), or ``None`` where it does not run: the first task, a
    replay-free run, ``method.consolidation.enabled: false``, or a variant that learns nothing."""
    spec = variant_spec(cfg.method.variant)
    if task == 0 or not cfg.uses_memory or not cfg.method.consolidation.enabled or not spec.learns:
        return None
    return Phase(name="consolidate", task=task, epochs=cfg.method.consolidation.epochs,
                 max_steps=cfg.budget.max_steps_per_task,
                 lr=effective_lr(cfg.optim) * cfg.method.consolidation.lr_factor, warmup=False,
                 regularized=tuple(range(task + 1)), adapters="all",
                 task_tokens="all" if spec.task_tokens_train_in_consolidation else "none",
                 vga=spec.vga_trains_in_consolidation,
                 prompt=spec.trains_in_consolidation, data="memory")


@dataclass
class PhaseStats:
    """The summed losses of a phase's optimiser steps; ``means`` gives the per-step means of the results."""

    steps: int = 0
    loss: float = 0.0
    ce: float = 0.0
    kd: float = 0.0
    kl: float = 0.0
    prompt: float | None = None  # the prompt variant's own weighted losses (AttriCLIP); None when it has none

    def add(self, loss: float, ce: float, kd: float, kl: float, prompt: float | None = None) -> None:
        self.steps += 1
        self.loss += loss
        self.ce += ce
        self.kd += kd
        self.kl += kl
        if prompt is not None:
            self.prompt = (self.prompt or 0.0) + prompt

    def means(self, prefix: str) -> dict[str, float]:
        n = max(self.steps, 1)
        out = {prefix: self.loss / n, f"{prefix}_ce": self.ce / n, f"{prefix}_kd": self.kd / n,
               f"{prefix}_kl": self.kl / n}
        if self.prompt is not None:
            out[f"{prefix}_prompt"] = self.prompt / n
        return out
