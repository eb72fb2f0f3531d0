"""Continual-CLIP: the zero-shot baseline evaluated on a class-incremental scenario.

No training: after task t the classifier is the frozen CLIP's template-ensemble text features of the
classes seen so far, and every seen task's evaluation images are classified among them (§20,
``classifier/zero_shot.py``). It is the reference row of every table, and a complete run of the
foundation: config -> scenario -> backbone -> features -> per-task metrics.

Because nothing is trained and the image tower is frozen, every evaluation image is encoded exactly once
and each step only slices the logit matrix: [N_eval, C] = s * X [N_eval, d] @ T^T [d, C].
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from clapray.builders import build_backbone, build_scenario_from_config, resolve_device, seed_everything
from clapray.config import RunConfig
from clapray.evaluation import step_metrics
from clapray.records import TaskResult


@dataclass(frozen=True)
class EncodedSplit:
    """Every evaluation image of the scenario, encoded once."""

    features: torch.Tensor  # [N, d] L2-normalised image embeddings, fp32, on CPU
    labels: np.ndarray  # [N] remapped class ids (task t owns a contiguous block)
    tasks: np.ndarray  # [N] task id of each image


def encode_evaluation_images(backbone, scenario, cfg: RunConfig) -> EncodedSplit:
    """Encode every task's evaluation images (test split, or validation with eval.split = val)."""
    batch_size = cfg.eval.batch_size or cfg.optim.batch_size
    features, labels, tasks = [], [], []
    for t in range(scenario.num_tasks):
        subset = scenario.task_dataset(t, "eval", transform=backbone.preprocess)
        loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=cfg.data.num_workers)
        for images, targets, _indices in loader:
            features.append(backbone.encode_images(images.to(backbone.device)).float().cpu())
            labels.append(targets.numpy())
            tasks.append(np.full(len(targets), t, dtype=np.int64))
    return EncodedSplit(torch.cat(features), np.concatenate(labels), np.concatenate(tasks))


def evaluate_step(logits: torch.Tensor, encoded: EncodedSplit, scenario, step: int, cfg: RunConfig,
                  history: list[list[float]]) -> dict:
    """Metrics after task ``step`` from the full logit matrix [N, C] (all classes of the scenario)."""
    n_seen = int(scenario.task_bounds(step)[1])
    seen = torch.from_numpy(encoded.tasks <= step)
    future = None
    if cfg.eval.phndd and step < scenario.num_tasks - 1:
        future = logits[~seen][:, :n_seen]
    return step_metrics(logits[seen][:, :n_seen], encoded.labels[seen.numpy()], encoded.tasks[seen.numpy()], step,
                        np.asarray(scenario.task_of_class)[:n_seen], history,
                        batch_size=cfg.eval.batch_size or cfg.optim.batch_size, ece_bins=cfg.eval.ece_bins,
                        future_logits=future)


def run_zeroshot(cfg: RunConfig, on_task: Callable[[TaskResult], None] | None = None, *,
                 scenario=None) -> list[TaskResult]:
    """Evaluate the frozen CLIP after every task of the scenario; ``on_task`` sees each result."""
    from clapray.model.text_features import template_text_features

    start = time.perf_counter()
    device = resolve_device(cfg)
    seed_everything(cfg.seeds.init)
    backbone = build_backbone(cfg, device)
    scenario = scenario if scenario is not None else build_scenario_from_config(cfg)
    encoded = encode_evaluation_images(backbone, scenario, cfg)
    text = template_text_features(backbone, scenario.class_names, scenario.benchmark.templates).mean.float().cpu()
    logits = backbone.logit_scale * encoded.features @ text.T  # [N, C] over all classes in task order
    setup_s = time.perf_counter() - start

    results: list[TaskResult] = []
    history: list[list[float]] = []
    for step in range(scenario.num_tasks):
        t0 = time.perf_counter()
        fields = evaluate_step(logits, encoded, scenario, step, cfg, history)
        elapsed = time.perf_counter() - t0 + (setup_s if step == 0 else 0.0)
        result = TaskResult(task=step, num_tasks=scenario.num_tasks, timings={"evaluate": elapsed, "total": elapsed},
                            **fields)
        results.append(result)
        if on_task is not None:
            on_task(result)
    return results
