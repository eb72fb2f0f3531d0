"""What every batch of a task shares, computed once when the task starts (§12.2, P16).

The template statistics of the classes seen so far, the class block of every seen task and the VGA's
inter-task mask (built once per task, never per batch as the official code does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from clapray.model.text_features import TemplateFeatures
from clapray.model.vga import task_attention_mask


@dataclass(frozen=True)
class TaskSetup:
    """What every batch of task ``task`` shares."""

    task: int
    text: Tensor  # [C_seen, d] template-ensemble text features (normalised); variants supply their own per batch
    template_mean: Tensor  # [C_seen, d] mean of normalised template embeddings, not re-normalised
    template_variance: Tensor  # [C_seen, d] per-dim unbiased variance over templates
    slices: tuple[tuple[int, int], ...]  # class block of every seen task
    mask: Tensor  # [C_seen, C_seen] bool, VGA self-attention blocked across tasks ([C + T, C + T] with task tokens)
    task_of_class: np.ndarray  # [C_seen]

    @property
    def num_seen(self) -> int:
        return self.text.shape[0]


def task_setup(scenario, templates: TemplateFeatures, task: int, device: torch.device, *,
               task_tokens: bool) -> TaskSetup:
    """The :class:`TaskSetup` of ``task`` in ``scenario`` (a class-incremental scenario), on ``device``;
    ``task_tokens``: the VGA queries include one token per seen task (AttriCLIP)."""
    n_seen = scenario.task_bounds(task)[1]
    task_of_class = np.asarray(scenario.task_of_class[:n_seen])
    return TaskSetup(
        task=task, text=templates.mean[:n_seen].to(device),
        template_mean=templates.template_mean_unnormalised[:n_seen].to(device),
        template_variance=templates.template_variance[:n_seen].to(device),
        slices=tuple(scenario.task_bounds(i) for i in range(task + 1)),
        mask=task_attention_mask(task_of_class, device=device, task_tokens=task_tokens), task_of_class=task_of_class)
