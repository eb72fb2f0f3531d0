"""The CLAP4CLIP continual learner: owns all state of one run and runs its task sequence (§9 - §13).

Per task t (§12.2):

1. set up the seen classes: template statistics, task blocks, the VGA task mask (built once per task,
   never per batch);
2. grow: add adapter t (older ones frozen) with its language-aware init (and task token t, AttriCLIP);
3. train on the task's data plus the replay memory: VGA + adapter t + the prompt variant's parameters,
   CE over M samples + KD_t + KL_t (+ the variant's own losses), SGD with warmup then cosine, optionally
   capped at ``budget.max_steps_per_task`` steps;
4. update the exemplar memory (:mod:`clapray.exemplars`);
5. consolidate (t > 0, replay on): all adapters (+ the prompts of CoOp, MaPLe, CoCoOp, AttriCLIP, + VGA and
   every task token for AttriCLIP) on the class-balanced memory, VGA frozen otherwise;
6. evaluate on tasks 0..t and report a :class:`~clapray.task_result.TaskResult`.

The prompt variant (:mod:`clapray.model.prompts`) supplies the image embeddings (``encode_images``: the
frozen tower, or MaPLe's prompted one) and, separately, the base text features of the seen classes for
each batch (``text_features``); the head turns them into logits. The zero-shot variant learns nothing:
no head, no training, logits s <x̂, t_c>.

Randomness is re-seeded from ``(seeds.init, task, phase)`` at the start of every phase, so a run resumed
from the checkpoint of task t draws exactly what the uninterrupted run drew and ends with the same
metrics. Nothing here imports Ray or Optuna: a Ray Train worker, the run CLI and the tests drive the same
object.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from clapray import divergence, phases
from clapray.builders import build_backbone, build_scenario_from_config, resolve_device, trainable_dtype
from clapray.checkpoint import load_checkpoint, numpy_rng_state, save_checkpoint, set_numpy_rng_state
from clapray.config import RunConfig
from clapray.data.memory import ExemplarMemory, resolve_memory_capacity
from clapray.data.scenario import TaskSubset
from clapray.divergence import TrainingDiverged
from clapray.errors import UserError
from clapray.exemplars import update_memory
from clapray.features import ImageFeatures
from clapray.features.provide import features_for, uses_feature_cache
from clapray.losses import mc_cross_entropy
from clapray.metrics.step import step_metrics
from clapray.metrics.transfer import next_task_accuracies
from clapray.model.clap import ClapHead, HeadOutput, final_learned_parameter_count
from clapray.model.prompts import PromptText, build_prompt_variant, variant_class
from clapray.model.prompts.zeroshot import zero_shot_logits
from clapray.model.text_features import template_text_features
from clapray.progress import ProgressHook, batch_ticker
from clapray.sampling import PlannedViews, derive_seed, epoch_plan, evaluation_batches, seed_phase
from clapray.schedule import cosine_with_warmup, warmup_steps
from clapray.task_result import RunProvenance, TaskResult
from clapray.task_setup import TaskSetup, task_setup
from clapray.usage import peak_memory_mb

CHECKPOINT_VERSION = 4  # 3: a LayerNorm per adapter head (mu_norm, sigma_norm); 4: plain values only (NumPy's RNG
# state as a tensor), read with weights_only=True

# TrainingDiverged lives in clapray.divergence; callers have always caught it here.
__all__ = ["CHECKPOINT_VERSION", "ContinualLearner", "TaskSetup", "TrainingDiverged"]


class ContinualLearner:
    """One CLAP4CLIP run. ``run()`` trains the remaining tasks; ``state_dict()`` checkpoints it."""

    def __init__(self, cfg: RunConfig, *, backbone=None, scenario=None, device: torch.device | None = None,
                 features: ImageFeatures | None = None, feature_store: str | None = None,
                 progress: ProgressHook | None = None):
        """``features``: precomputed embeddings of the benchmark (a sweep shares them); ``feature_store``:
        where to keep (and look for) them otherwise; without either they are computed in memory on first
        use. All three only apply when :func:`~clapray.features.provide.uses_feature_cache` holds.
        ``progress``: called after every optimiser step and evaluation batch (:mod:`clapray.progress`);
        may also be set later as the attribute ``progress``."""
        self.cfg = cfg
        self.progress = progress
        self.device = device or resolve_device(cfg)
        self.backbone = backbone if backbone is not None else build_backbone(cfg, self.device)
        self.scenario = scenario if scenario is not None else build_scenario_from_config(cfg)
        self.batch_size = cfg.optim.batch_size
        self.eval_batch_size = cfg.eval.batch_size or cfg.optim.batch_size
        self.replay = cfg.uses_memory
        self.memory_capacity = resolve_memory_capacity(cfg.memory, self.scenario.benchmark.default_memory,
                                     replay_free=cfg.budget.replay_free)
        # Hand-crafted prompts give constant text features: encode every class's templates once per run.
        self.templates = template_text_features(self.backbone, self.scenario.class_names,
                                                self.scenario.benchmark.templates)
        variant = variant_class(cfg.method.variant).spec
        if variant.per_image_queries and cfg.method.prior == "data_driven":
            raise UserError(f"method.prior: data_driven is not available with variant {variant.name} "
                            "(per-image text features); use standard or language_aware")
        # fp32, or half for the official all-fp16 model (backbone.precision: fp16, §2).
        self.module_dtype = trainable_dtype(cfg, self.device)
        seed_phase(cfg.seeds.init, "init")
        self.head = (ClapHead(self.backbone.embed_dim, self.backbone.logit_scale, cfg.method,
                              task_tokens=variant.uses_task_tokens, dtype=self.module_dtype).to(self.device)
                     if variant.learns else None)
        # The variant's own parameters are drawn from a phase of their own, so adding a variant never shifts
        # the head's init.
        seed_phase(cfg.seeds.init, "init", "prompt")
        self.prompt = build_prompt_variant(cfg.method.variant, self.backbone, self.templates, cfg.method.prompt)
        self.prompt.learned.to(self.module_dtype)
        self.memory = ExemplarMemory()
        self.tasks_done = 0
        self.history: list[TaskResult] = []
        self._acc_rows: list[list[float]] = []
        self.uses_feature_cache = uses_feature_cache(cfg)
        self._features = features if self.uses_feature_cache else None
        self._feature_store = feature_store
        if self._features is not None:
            self._check_features(self._features)
        # Data-parallel training when a process group is up (Ray Train workers): every rank draws the
        # same shuffle, takes its equal share of it and all-reduces the gradients, so one optimiser step
        # sees the global batch. Evaluation and memory selection run identically on every rank.
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if distributed else 0
        self.world_size = torch.distributed.get_world_size() if distributed else 1

    # ------------------------------------------------------------------------------------------------
    # The task loop

    @property
    def num_tasks(self) -> int:
        return self.scenario.num_tasks

    def run(self, on_task: Callable[[TaskResult], None] | None = None,
            after_task: Callable[[ContinualLearner], None] | None = None) -> list[TaskResult]:
        """Learn every task not done yet. ``on_task`` gets each result; ``after_task`` the learner (to save)."""
        for task in range(self.tasks_done, self.num_tasks):
            result = self.learn_task(task)
            if after_task is not None:
                after_task(self)
            if on_task is not None:
                on_task(result)
        return self.history

    def learn_task(self, task: int) -> TaskResult:
        """Grow, train, update the memory, consolidate and evaluate task ``task`` (§12.2)."""
        if task != self.tasks_done:
            raise RuntimeError(f"task {task} cannot follow {self.tasks_done} finished tasks")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        setup = self.setup_task(task)
        main = consolidated = phases.PhaseStats()
        if self.head is not None:
            main = self.run_phase(phases.main_training(task, self.cfg), setup)
        train_s = time.perf_counter() - start

        t0 = time.perf_counter()
        if self.replay and self.head is not None:
            self._update_memory(task, setup)
        consolidation = phases.consolidation(task, self.cfg)
        if consolidation is not None:
            consolidated = self.run_phase(consolidation, setup)
        consolidate_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        seed_phase(self.cfg.seeds.init, task, "evaluate")
        fields = self.evaluate_task(task, setup)
        transfer = fields.pop("next_task", {})
        evaluate_s = time.perf_counter() - t0

        losses = main.means("train") if self.head is not None else {}  # zero-shot has no loss
        if consolidated.steps:
            losses.update(consolidated.means("consolidation"))
        result = TaskResult(
            task=task, num_tasks=self.num_tasks, losses=losses,
            timings={"train": train_s, "consolidate": consolidate_s, "evaluate": evaluate_s,
                     "total": time.perf_counter() - start},
            peak_memory_mb=peak_memory_mb(self.device),
            extra={"n_steps": main.steps, "n_consolidation_steps": consolidated.steps,
                   "memory_size": len(self.memory), "trainable_params": self.trainable_parameter_count(),
                   **transfer},
            **fields)
        self.history.append(result)
        self.tasks_done = task + 1
        return result

    def run_phase(self, phase: phases.Phase, setup: TaskSetup) -> phases.PhaseStats:
        """Choose the parameters and the data of ``phase`` and fit them (see :mod:`clapray.phases`)."""
        params = self.phase_parameters(phase, setup)
        seed_phase(self.cfg.seeds.init, phase.task, phase.name)
        if phase.data == "memory":
            indices = self.memory.indices()
        else:
            indices = self.scenario.train_indices(phase.task)
            if self.replay and len(self.memory):
                indices = np.concatenate([indices, self.memory.indices()])
        return self._fit(indices, setup, params, phase)

    # ------------------------------------------------------------------------------------------------
    # Pieces of a task

    def setup_task(self, task: int) -> TaskSetup:
        return task_setup(self.scenario, self.templates, task, self.device,
                          task_tokens=self.head is not None and self.head.task_tokens is not None)

    def phase_parameters(self, phase: phases.Phase, setup: TaskSetup) -> list[torch.nn.Parameter]:
        """What ``phase`` trains. Main training first grows the head for its task: the new adapter (with its
        language-aware init, §8) and task token; consolidation trains every adapter."""
        if phase.adapters == "current":
            seed_phase(self.cfg.seeds.init, phase.task, "grow")
            self.head.grow(phase.task, setup.template_mean, setup.template_variance)
        params = self.head.trainable(phase.task, phase.adapters, phase.task_tokens)
        if phase.vga and self.head.vga is not None:
            params += list(self.head.vga.parameters())
        if phase.prompt:
            params += self.prompt.trainable_parameters()
        return params

    def _learnable(self) -> list[torch.nn.Parameter]:
        """Every parameter an optimiser may touch: the head's and the prompt variant's."""
        return [*(self.head.parameters() if self.head is not None else ()), *self.prompt.parameters()]

    def forward_batch(self, x: Tensor, text: PromptText, setup: TaskSetup, n_samples: int, *,
                      regularize: Sequence[int] = (), labels: Tensor | None = None) -> HeadOutput:
        """Logits [M, B, C_seen] (and KL/KD terms) of image embeddings ``x`` [B, d] given the batch's text."""
        if self.head is None:
            # A variant that learns nothing (Continual-CLIP): s <x̂, t_c>, one "sample".
            zero = x.new_zeros(())
            return HeadOutput(zero_shot_logits(x, text.queries, self.backbone.logit_scale)[None], zero, zero)
        return self.head(x, text.queries, setup.slices, setup.mask, n_samples, regularize=regularize,
                         template_mean=setup.template_mean, labels=labels, image_text=text.per_image)

    def step_loss(self, images: Tensor, labels: Tensor, setup: TaskSetup, regularize: Sequence[int]
                  ) -> tuple[Tensor, dict[str, Tensor | None]]:
        """The training objective of one batch of images (§9) and its unweighted terms."""
        x = self.prompt.encode_images(images.to(self.device, non_blocking=True))  # [B, d]
        return self.embedding_loss(x, labels, setup, regularize)

    def embedding_loss(self, x: Tensor, labels: Tensor, setup: TaskSetup, regularize: Sequence[int]
                       ) -> tuple[Tensor, dict[str, Tensor | None]]:
        """The training objective of one batch of image embeddings ``x`` [B, d] and its unweighted terms
        (ce, kd, kl, prompt)."""
        x = x.to(self.module_dtype)
        text = self.prompt.text_features(setup.num_seen, x)
        labels = labels.to(self.device)
        method = self.cfg.method
        out = self.forward_batch(x, text, setup, method.mc_samples_train, regularize=regularize, labels=labels)
        ce = mc_cross_entropy(out.logits, labels)
        loss = ce + method.kd_weight * out.kd + method.kl_weight * out.kl
        if text.loss is not None:
            loss = loss + text.loss
        return loss, {"ce": ce, "kd": out.kd, "kl": out.kl, "prompt": text.loss}

    def _loader(self, indices: np.ndarray, transform, batch_size: int) -> DataLoader:
        """Training-split images ``indices`` through ``transform``, in order: ``(image, label, index)``."""
        subset = TaskSubset(self.scenario.benchmark.train, indices, self.scenario.label_map, transform)
        return self._make_loader(subset, batch_size)

    def _make_loader(self, dataset, batch_size: int) -> DataLoader:
        """An in-order loader (the epoch plan already decided the order)."""
        workers = self.cfg.data.num_workers
        # A loader draws its workers' base seed from its generator, else from the global RNG: a private one
        # keeps the global stream (MC noise, dropout) the same whether images or cached embeddings are read.
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator().manual_seed(0),
                          num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    # ------------------------------------------------------------------------------------------------
    # Image embeddings: the frozen-feature cache or the image tower, behind one pair of generators

    def _check_features(self, features: ImageFeatures) -> None:
        bench = self.scenario.benchmark
        if features.train.shape[1] != len(bench.train) or features.test.shape[0] != len(bench.test):
            raise ValueError(f"features of key {features.key} hold {features.train.shape[1]} train / "
                             f"{features.test.shape[0]} test images, the benchmark {len(bench.train)} / "
                             f"{len(bench.test)}")
        if features.dim != self.backbone.embed_dim:
            raise ValueError(f"features of key {features.key} have dim {features.dim}, the backbone "
                             f"{self.backbone.embed_dim}")

    @property
    def features(self) -> ImageFeatures | None:
        """The benchmark's cached embeddings (computed or loaded on first use), or ``None`` when not used."""
        if self._features is None and self.uses_feature_cache:
            # Loaders draw a base seed from the global RNG: computing the features must not shift the
            # draws of whichever phase first needs them (a resumed run needs them at another point).
            with torch.random.fork_rng(devices=[]):
                self._features, _ = features_for(self.cfg, self.backbone, self.scenario.benchmark,
                                                 store_root=self._feature_store, progress=self.progress)
            self._check_features(self._features)
        return self._features

    def _train_batches(self, indices: np.ndarray, flips: np.ndarray, batch_size: int
                       ) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x [B, d], labels [B])`` of training images ``indices`` in views ``flips``, in that order."""
        labels = torch.as_tensor(self.scenario.label_map[np.asarray(self.scenario.benchmark.train.targets)[indices]])
        features = self.features
        if features is not None:
            idx, flip = torch.as_tensor(indices), torch.as_tensor(flips)
            for s in range(0, len(idx), batch_size):
                x = features.train_views(idx[s:s + batch_size], flip[s:s + batch_size])
                yield x.to(self.device, non_blocking=True), labels[s:s + batch_size].to(self.device)
            return
        dataset = PlannedViews(self.scenario.benchmark.train, indices, flips, self.scenario.label_map,
                               self.backbone.preprocess)
        for images, batch_labels in self._make_loader(dataset, batch_size):
            yield self.prompt.encode_images(images.to(self.device, non_blocking=True)), batch_labels.to(self.device)

    def _image_batches(self, split: Any, indices: np.ndarray, batch_sizes: Sequence[int] | None = None
                       ) -> Iterator[Tensor]:
        """Embeddings ``[B, d]`` of ``split[indices]`` in its evaluation view (no flip), in order, in
        consecutive batches of ``batch_sizes`` (default: the evaluation batch)."""
        bs = self.eval_batch_size
        if batch_sizes is None:
            batch_sizes = [min(bs, len(indices) - s) for s in range(0, len(indices), bs)]
        bounds = np.cumsum([0, *batch_sizes])
        features = self.features
        if features is not None:
            table = features.test if split is self.scenario.benchmark.test else features.train[0]
            idx = torch.from_numpy(np.array(indices, dtype=np.int64))  # a copy: scenario arrays are read-only
            for start, end in zip(bounds[:-1], bounds[1:], strict=True):
                yield table[idx[start:end]].to(self.device, non_blocking=True)
            return
        subset = TaskSubset(split, indices, self.scenario.label_map, self.backbone.preprocess)
        images = iter(self._make_loader(subset, bs))
        pending: list[Tensor] = []
        for size in batch_sizes:
            # Re-cut the loader's fixed-size batches into the planned ones (which never cross a task).
            while sum(len(p) for p in pending) < size:
                pending.append(next(images)[0])
            joined = torch.cat(pending)
            pending = [joined[size:]] if len(joined) > size else []
            yield self.prompt.encode_images(joined[:size].to(self.device, non_blocking=True))

    def _fit(self, indices: np.ndarray, setup: TaskSetup, params: Sequence[torch.nn.Parameter],
             phase: phases.Phase) -> phases.PhaseStats:
        """SGD of ``params`` over ``indices`` (training-split images) for the phase's epochs; returns the
        mean losses."""
        stats = phases.PhaseStats()
        if len(indices) == 0 or not params:
            return stats
        epochs, lr, regularize = phase.epochs, phase.lr, phase.regularized
        plan_rng = torch.Generator().manual_seed(derive_seed(self.cfg.seeds.init, setup.task, phase.name, "plan"))
        rank_batch = max(1, self.batch_size // self.world_size)
        share = (len(indices) - len(indices) % self.world_size) // self.world_size
        steps_per_epoch = math.ceil(share / rank_batch)
        total = epochs * steps_per_epoch
        if phase.max_steps is not None:
            total = min(total, phase.max_steps)
        optim = self.cfg.optim
        lrs = cosine_with_warmup(total, lr, lr * optim.min_lr_factor,
                                 warmup_steps(optim, total, steps_per_epoch) if phase.warmup else 0)
        for p in self._learnable():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.SGD(params, lr=float(lrs[0]) if total else lr, momentum=optim.momentum,
                                    weight_decay=optim.weight_decay)
        self.head.train()
        self.prompt.train()
        if self.head.vga is not None and not phase.vga:
            self.head.vga.eval()  # consolidation: VGA frozen, no dropout (§11)
        step = 0
        while step < total:
            positions, flips = epoch_plan(len(indices), plan_rng, self.rank, self.world_size)
            for x, labels in self._train_batches(indices[positions], flips, rank_batch):
                if step >= total:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = float(lrs[step])
                loss, terms = self.embedding_loss(x, labels, setup, regularize)
                value = float(loss.detach())
                where = f"task {setup.task}, {phase.name} step {step}"
                divergence.check_loss(value, where, agree=self._all_finite)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._all_reduce_gradients(params)
                divergence.check_gradients(params, where)
                optimizer.step()
                divergence.check_parameters(params, where)
                stats.add(value, *(float(terms[k].detach()) for k in ("ce", "kd", "kl")),
                          prompt=None if terms["prompt"] is None else float(terms["prompt"].detach()))
                step += 1
                if self.progress is not None:
                    self.progress(setup.task, phase.name, step, total)
        for p in self._learnable():
            p.requires_grad_(False)
        if self.world_size > 1 and stats.steps:
            # Report the losses averaged over ranks, as one model was trained on the global batch.
            sums = torch.tensor([stats.loss, stats.ce, stats.kd, stats.kl, stats.prompt or 0.0], device=self.device,
                                dtype=torch.float64)
            torch.distributed.all_reduce(sums)
            stats.loss, stats.ce, stats.kd, stats.kl, prompt = (sums / self.world_size).tolist()
            stats.prompt = None if stats.prompt is None else prompt
        return stats

    def _all_finite(self, finite: bool) -> bool:
        """Whether the loss is finite on every rank (one decision for all, so no rank waits alone)."""
        if self.world_size == 1:
            return finite
        flag = torch.tensor([0.0 if finite else 1.0], device=self.device)
        torch.distributed.all_reduce(flag)
        return flag.item() == 0.0

    def _all_reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        if self.world_size == 1:
            return
        for p in params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world_size

    @torch.no_grad()
    def _update_memory(self, task: int, setup: TaskSetup) -> None:
        """Shrink (or re-select) old classes to the new per-class budget and choose exemplars of the new ones
        (§10; the protocol is :mod:`clapray.exemplars`'s)."""
        seed_phase(self.cfg.seeds.init, task, "memory")  # the MC draws the model-based selectors read

        def predict(indices: np.ndarray, flips: np.ndarray | None, samples: bool) -> tuple[Tensor, Tensor | None]:
            tick = batch_ticker(self.progress, task, "memory", math.ceil(len(indices) / self.eval_batch_size))
            if flips is None:
                batches = self._image_batches(self.scenario.benchmark.train, indices)
            else:
                batches = (x for x, _ in self._train_batches(indices, flips, self.eval_batch_size))
            return self._predict(batches, setup, want_features=True, samples=samples, tick=tick)

        update_memory(self.memory, task=task, k=self.memory_capacity.per_class(setup.num_seen),
                      new_indices=self.scenario.train_indices(task), targets=np.asarray(self.scenario.train_targets),
                      options=self.cfg.memory, seed=self.cfg.seeds.init, batch_size=self.eval_batch_size,
                      predict=predict)

    @torch.no_grad()
    def _predict(self, batches: Iterator[Tensor], setup: TaskSetup, *, want_features: bool = False,
                 samples: bool = False, tick: Callable[[], None] | None = None) -> tuple[Tensor, Tensor | None]:
        """Mean-over-samples logits [N, C_seen] (every sample, [M, N, C_seen], with ``samples``) and the
        embeddings [N, d] of batches of image embeddings, head in eval mode; ``tick`` is called after each batch."""
        if self.head is not None:
            self.head.eval()
        self.prompt.eval()
        # Text features that do not depend on the images (all but CoCoOp and AttriCLIP) are encoded once.
        fixed = None if self.prompt.spec.image_conditioned else self.prompt.text_features(setup.num_seen)
        logits, feats = [], []
        for x in batches:
            if want_features:
                feats.append(x.float().cpu())
            x = x.to(self.module_dtype)
            text = fixed if fixed is not None else self.prompt.text_features(setup.num_seen, x)
            out = self.forward_batch(x, text, setup, self.cfg.method.mc_samples_eval)
            logits.append((out.logits if samples else out.logits.mean(dim=0)).float().cpu())
            if tick is not None:
                tick()
        return torch.cat(logits, dim=-2), (torch.cat(feats) if want_features else None)

    @torch.no_grad()
    def evaluate_task(self, task: int, setup: TaskSetup) -> dict[str, Any]:
        """Accuracy row, calibration and novelty detection after ``task`` (§13), and under ``next_task`` the
        inputs of forward transfer (:mod:`clapray.metrics.transfer`; empty at the last task, without novelty
        detection, whose future-task images they reuse, or when the variant's image tower is not frozen)."""
        scenario, options = self.scenario, self.cfg.eval
        # The batch order is drawn from the data seed, so runs that differ only in their training see the
        # same evaluation batches (paired comparisons), at every step of a run.
        batching = dict(batch_size=self.eval_batch_size, shuffled=options.order == "shuffled",
                        seed=self.cfg.seeds.class_order)
        seen = evaluation_batches([scenario.eval_indices(j) for j in range(task + 1)],
                                  mixed=options.protocol == "mixed", stream="seen", **batching)
        later = None
        if options.phndd and task < self.num_tasks - 1:
            # The images of every later task as one stream (official): batches mix the future tasks.
            later = evaluation_batches([scenario.eval_indices(j) for j in range(task + 1, self.num_tasks)],
                                       mixed=True, stream=f"future-after-{task}", **batching)
        batches = len(seen.batch_sizes) + (len(later.batch_sizes) if later else 0)
        tick = batch_ticker(self.progress, task, "evaluate", batches)
        logits = self._predict(self._image_batches(scenario.eval_split, seen.indices, seen.batch_sizes), setup,
                               tick=tick)[0]
        targets = np.asarray(scenario.eval_targets)[seen.indices]
        tasks = np.asarray(scenario.task_of_class)[targets]
        divergence.check_logits(logits, f"evaluation after task {task}")
        future, next_task = None, {}
        if later is not None:
            # The frozen tower's embeddings are what zero-shot CLIP sees: only then is it the reference.
            frozen = self.prompt.spec.image_tower_frozen
            future, embeddings = self._predict(
                self._image_batches(scenario.eval_split, later.indices, later.batch_sizes), setup,
                want_features=frozen, tick=tick)
            divergence.check_logits(future, f"novelty detection after task {task}")
            if frozen:
                next_task = self._next_task_transfer(task, future, embeddings, later.indices)
        fields = step_metrics(logits, targets, tasks, task, setup.task_of_class, self._acc_rows,
                              batch_sizes=seen.batch_sizes, ece_bins=options.ece_bins, future_logits=future)
        return {**fields, "next_task": next_task}

    def _next_task_transfer(self, task: int, future: Tensor, embeddings: Tensor, indices: np.ndarray
                            ) -> dict[str, float]:
        """Forward transfer's inputs after ``task`` (:mod:`clapray.metrics.transfer`): the accuracy on task
        ``task + 1``'s images with its classes added as zero-shot classes, and zero-shot CLIP's."""
        scenario = self.scenario
        targets = np.asarray(scenario.eval_targets)[indices]
        mine = np.asarray(scenario.task_of_class)[targets] == task + 1
        end = scenario.task_bounds(task + 1)[1]
        text = self.templates.mean[:end].float().cpu()
        reference = zero_shot_logits(embeddings[mine], text, self.backbone.logit_scale)
        before, zero_shot = next_task_accuracies(future[mine].numpy(), reference.numpy(), targets[mine])
        return {"next_task_acc": before, "next_task_zero_shot_acc": zero_shot}

    def reevaluate(self, *, seed: int, mc_samples: int | None = None, order: str | None = None) -> dict[str, Any]:
        """Evaluate the current model on every seen task again, with the Monte-Carlo draws of ``seed`` (and
        optionally another M or batch order): the spread over seeds is the evaluation noise of a number.

        Changes no state of the run (history, accuracy rows, RNG streams); returns the fields
        :meth:`evaluate_task` returns (``last_acc``, ``avg_acc`` over this evaluation's row only, ...).
        """
        if self.tasks_done == 0:
            raise RuntimeError("reevaluate needs a learned task")
        cfg = self.cfg
        changed = dataclasses.replace(
            cfg, method=dataclasses.replace(cfg.method, mc_samples_eval=mc_samples or cfg.method.mc_samples_eval),
            eval=dataclasses.replace(cfg.eval, order=order or cfg.eval.order))
        rows = self._acc_rows
        try:
            self.cfg, self._acc_rows = changed, [list(r) for r in rows[:-1]]
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(derive_seed(seed, "reevaluate"))
                task = self.tasks_done - 1
                return self.evaluate_task(task, self.setup_task(task))
        finally:
            self.cfg, self._acc_rows = cfg, rows

    # ------------------------------------------------------------------------------------------------
    # Bookkeeping

    def trainable_parameter_count(self) -> int:
        """Parameters the method learns so far: VGA, every adapter (and task token), and the prompt
        variant's trained parameters (the frozen backbone, and MaPLe's deep prompts under the official
        flag, excluded)."""
        head = sum(p.numel() for p in self.head.parameters()) if self.head is not None else 0
        return head + self.prompt.learned_parameter_count()

    def final_trainable_parameter_count(self) -> int:
        """Trainable parameters once every task is learned (:func:`final_learned_parameter_count`)."""
        return final_learned_parameter_count(self.head, self.prompt, self.num_tasks)

    def provenance(self) -> RunProvenance:
        """What the runs table records about this run beside its configuration."""
        return RunProvenance(dataset_fingerprint=self.scenario.benchmark.fingerprint(),
                             trainable_params=self.final_trainable_parameter_count(),
                             used_feature_cache=self.uses_feature_cache)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run after ``tasks_done`` tasks."""
        return {
            "version": CHECKPOINT_VERSION,
            "config_hash": self.cfg.config_hash(),
            "tasks_done": self.tasks_done,
            "num_adapters": len(self.head.adapters) if self.head is not None else 0,
            "head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()} if self.head is not None else {},
            "prompt": {k: v.detach().cpu() for k, v in self.prompt.state_dict().items()},
            "memory": self.memory.state_dict(),
            "history": [r.to_dict() for r in self.history],
            "accuracy_rows": [list(r) for r in self._acc_rows],
            "rng": {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(), "python": random.getstate()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != CHECKPOINT_VERSION:
            raise UserError(f"checkpoint version {state.get('version')!r} is not {CHECKPOINT_VERSION}")
        if state["config_hash"] != self.cfg.config_hash():
            raise UserError("checkpoint was written by a different configuration "
                            f"(hash {state['config_hash']}, this run {self.cfg.config_hash()})")
        if self.head is not None:
            setup = self.setup_task(max(state["tasks_done"] - 1, 0))
            # Re-create the adapters (and task tokens) of the finished tasks; their values come from the state.
            for task in range(max(state["num_adapters"], state["tasks_done"])):
                self.head.grow(task, setup.template_mean, setup.template_variance)
            self.head.load_state_dict(state["head"])
        self.prompt.load_state_dict(state["prompt"])
        self.memory = ExemplarMemory.from_state_dict(state["memory"])
        self.history = [TaskResult.from_dict(r) for r in state["history"]]
        self._acc_rows = [list(r) for r in state["accuracy_rows"]]
        self.tasks_done = state["tasks_done"]
        torch.set_rng_state(state["rng"]["torch"])
        set_numpy_rng_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    def save(self, path: Path) -> None:
        """Write a checkpoint atomically (temporary file, then rename)."""
        save_checkpoint(self.state_dict(), path)

    def load(self, path: Path) -> None:
        """Continue from a checkpoint written by :meth:`save`. It holds tensors and plain Python values only, so
        it is read with ``weights_only=True``: a file that would run code when unpickled (planted in a run
        directory or a shared store) is refused with one line, and its code never runs."""
        self.load_state_dict(load_checkpoint(path))
