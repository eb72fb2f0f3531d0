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

from clapray import metrics
from clapray.builders import build_backbone, build_scenario_from_config, resolve_device, seed_everything
from clapray.config import RunConfig
from clapray.records import NoveltyDetection, TaskResult


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
                  history: list[list[float]]) -> tuple[dict, np.ndarray]:
    """Metrics after task ``step`` from the full logit matrix [N, C] (all classes of the scenario)."""
    n_seen = int(sum(len(scenario.classes_of_task(t)) for t in range(step + 1)))
    seen = encoded.tasks <= step
    seen_logits = logits[torch.from_numpy(seen)][:, :n_seen]  # [n_seen_images, n_seen]
    targets = encoded.labels[seen]
    tasks = encoded.tasks[seen]
    preds = seen_logits.argmax(dim=1).numpy()
    probs = torch.softmax(seen_logits, dim=1).numpy()
    task_of_class = np.asarray(scenario.task_of_class)[:n_seen]
    aware_preds = metrics.task_aware_predictions(seen_logits.numpy(), targets, task_of_class)

    row, aware_row, counts = [], [], []
    batch = cfg.eval.batch_size or cfg.optim.batch_size
    batch_ece_sum, n_batches = 0.0, 0
    for j in range(step + 1):
        in_task = tasks == j
        counts.append(int(in_task.sum()))
        row.append(100.0 * float((preds[in_task] == targets[in_task]).mean()))
        aware_row.append(100.0 * float((aware_preds[in_task] == targets[in_task]).mean()))
        # The official protocol: ECE per test batch of one task's loader, averaged over all batches.
        task_batches = -(-counts[-1] // batch)
        batch_ece_sum += task_batches * metrics.per_batch_ece(probs[in_task], targets[in_task], batch_size=batch,
                                                              n_bins=cfg.eval.ece_bins)
        n_batches += task_batches
    history.append(row)
    acc = np.full((step + 1, step + 1), np.nan)
    for t, r in enumerate(history):
        acc[t, : len(r)] = r

    phndd = None
    if cfg.eval.phndd and step < scenario.num_tasks - 1:
        future_logits = logits[torch.from_numpy(~seen)][:, :n_seen]
        detection = metrics.novelty_detection_metrics(metrics.energy_score(seen_logits.numpy()),
                                                      metrics.energy_score(future_logits.numpy()))
        phndd = NoveltyDetection(auroc=float(detection.auroc), aupr=float(detection.aupr),
                                 fpr95=float(detection.fpr95_nearest), fpr95_at_least=float(detection.fpr95))
    return dict(
        accuracy_row=tuple(row), task_aware_row=tuple(aware_row), n_eval=tuple(counts),
        last_acc=float(metrics.last_accuracy(acc)), avg_acc=float(metrics.average_incremental_accuracy(acc)),
        bwt=float(metrics.backward_transfer(acc)) if step > 0 else float("nan"),
        ece=float(metrics.expected_calibration_error(probs, targets, n_bins=cfg.eval.ece_bins)),
        ece_per_batch=batch_ece_sum / n_batches, phndd=phndd), acc


def run_zeroshot(cfg: RunConfig, on_task: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
    """Evaluate the frozen CLIP after every task of the scenario; ``on_task`` sees each result."""
    from clapray.model.text_features import template_text_features

    start = time.perf_counter()
    device = resolve_device(cfg)
    seed_everything(cfg.seeds.init)
    backbone = build_backbone(cfg, device)
    scenario = build_scenario_from_config(cfg)
    encoded = encode_evaluation_images(backbone, scenario, cfg)
    text = template_text_features(backbone, scenario.class_names, scenario.benchmark.templates).mean.float().cpu()
    logits = backbone.logit_scale * encoded.features @ text.T  # [N, C] over all classes in task order
    setup_s = time.perf_counter() - start

    results: list[TaskResult] = []
    history: list[list[float]] = []
    for step in range(scenario.num_tasks):
        t0 = time.perf_counter()
        fields, _ = evaluate_step(logits, encoded, scenario, step, cfg, history)
        elapsed = time.perf_counter() - t0 + (setup_s if step == 0 else 0.0)
        result = TaskResult(task=step, num_tasks=scenario.num_tasks, timings={"evaluate": elapsed, "total": elapsed},
                            **fields)
        results.append(result)
        if on_task is not None:
            on_task(result)
    return results
