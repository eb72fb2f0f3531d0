"""The seeded randomness of a run: per-phase seeds and the epoch plan (order and flips of every batch).

Randomness is re-seeded from ``(seeds.init, task, phase)`` at the start of every phase
(:func:`seed_phase`), so a run resumed from the checkpoint of task t draws exactly what the uninterrupted
run drew. Each epoch's order and horizontal flips are drawn up front from a seeded generator
(:func:`epoch_plan`) rather than by a random transform inside a data loader, so a run on images and a run
on the cached embeddings of both views see the same views in the same batches.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clapray.data.transforms import view_transform


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and Python versions."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_phase(*parts: object) -> None:
    """Seed the global RNGs (dropout, MC noise) for one phase; shuffles and flips come from the epoch plan."""
    seed = derive_seed(*parts)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class PlannedViews:
    """Map-style dataset over a training plan: item ``k`` is image ``indices[k]`` in view ``flips[k]``.

    The flip of every position is drawn by the learner from a seeded generator, not by a random transform
    inside the loader, so training on images and training on cached embeddings of the two views see the
    same views in the same batches.
    """

    def __init__(self, split: Any, indices: np.ndarray, flips: np.ndarray, label_map: np.ndarray, preprocess: Any):
        self.split, self.indices, self.flips = split, np.asarray(indices), np.asarray(flips, dtype=bool)
        self.label_map = np.asarray(label_map, dtype=np.int64)
        self.views = (view_transform(preprocess, False), view_transform(preprocess, True))

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, k: int) -> tuple[Tensor, int]:
        image, label = self.split[int(self.indices[k])]
        return self.views[int(self.flips[k])](image), int(self.label_map[label])


def epoch_plan(n: int, generator: torch.Generator, rank: int = 0, world_size: int = 1
               ) -> tuple[np.ndarray, np.ndarray]:
    """One epoch over ``n`` items: ``(positions, flipped)`` of this rank, in batch order.

    Every rank draws the same permutation and flips from its copy of ``generator`` and takes an equal
    share (``rank::world_size``; the last ``n % world_size`` items are left out), so each step's global
    batch is one slice of the shared order and the gradient all-reduce never waits for a missing rank.
    """
    order = torch.randperm(n, generator=generator)
    flipped = torch.rand(n, generator=generator) < 0.5  # RandomHorizontalFlip(p=0.5), drawn up front
    usable = n - n % world_size
    return order[:usable][rank::world_size].numpy(), flipped[:usable][rank::world_size].numpy()


@dataclass(frozen=True)
class EvaluationBatches:
    """Evaluation images in the order they are fed, cut into the batches that are fed.

    Attributes:
        indices: [N] indices into the evaluation split, in loader order.
        batch_sizes: sizes of the consecutive batches (sum N); VGA's batch context is one batch.
    """

    indices: np.ndarray
    batch_sizes: tuple[int, ...]


def _chunks(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - start) for start in range(0, n, batch_size)]


def evaluation_batches(task_indices: list[np.ndarray], *, batch_size: int, mixed: bool, shuffled: bool,
                       seed: int, stream: str) -> EvaluationBatches:
    """How the evaluation images of several tasks are batched (§13, pitfall P1).

    ``task_indices[j]`` are task j's evaluation images in dataset order. With ``mixed`` false (the official
    per-task loaders) every task is cut into its own batches, so a batch (a VGA context) holds one task's
    images; with ``mixed`` the tasks are pooled first, so batches mix tasks. ``shuffled`` (the official
    default) puts the images in a random order first: per task, seeded by ``(seed, stream, j)`` and hence
    the same at every step of a run; pooled, seeded by ``(seed, stream)``. Sorted order (``shuffled``
    false) keeps dataset order, which on class-sorted data puts one or two classes in a batch.
    """
    def order(indices: np.ndarray, *key: object) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if not shuffled:
            return indices
        return indices[np.random.default_rng(derive_seed(seed, stream, *key)).permutation(len(indices))]

    if mixed:
        pooled = order(np.concatenate(task_indices) if task_indices else np.zeros(0, np.int64), "pooled")
        return EvaluationBatches(pooled, tuple(_chunks(len(pooled), batch_size)))
    parts = [order(indices, j) for j, indices in enumerate(task_indices)]
    sizes = [size for part in parts for size in _chunks(len(part), batch_size)]
    joined = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return EvaluationBatches(joined, tuple(sizes))
