"""``python -m clapray.bench variants``: training-step time and peak memory of every prompt variant.

For each backbone, prompt variant and head (VI / w/o VI) the benchmark builds the real learner on a
one-task scenario of ``--classes`` generated classes and times, after ``--warmup`` untimed steps, the
learner's own training step (``ContinualLearner.step_loss``: image encoding, the variant's text
features, the CLAP head, the loss, backward and an SGD step on what main training updates) and an
evaluation batch (no autograd, ``mc_samples_eval`` samples), on random images of the backbone's input
size. Backbones are open_clip configs with random weights (``pretrained: null``): cost does not depend on
the weights, and nothing is downloaded. The default pair is the tiny test model and ViT-B/16's real
dimensions; on CPU the defaults (batch 2, 5 classes, one step) keep the run to a couple of minutes.

Columns: trainable parameters after the first task (VGA + one adapter (+ task token) + prompts), of
which prompt parameters; ms per training step and per evaluation batch (best of ``--steps``); memory of a
training step: on CUDA the allocator's peak above what was allocated before the step
(``max_memory_allocated``); on CPU, which keeps no allocator statistics, the activations the step holds
for backward (every distinct tensor autograd saves, parameters excluded), the part of a step's memory that
differs between variants. Zero-shot trains nothing: its training columns are empty.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

DESCRIPTION = "training-step time and peak memory of every prompt variant, VI and w/o VI"
DEFAULT_BACKBONES = ("clapray-tiny-vit", "ViT-B-16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", action="append", metavar="NAME",
                        help="open_clip model config, random weights (repeatable; default: "
                             + " and ".join(DEFAULT_BACKBONES) + ")")
    parser.add_argument("--variants", metavar="LIST", help="comma-separated prompt variants (default: all)")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per batch (default: 32 on CUDA, the official batch; 2 on CPU)")
    parser.add_argument("--classes", type=int, default=None,
                        help="seen classes (default: 100 on CUDA, CIFAR-100's last task; 5 on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 5 on CUDA, 1 on CPU)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed training steps first, which pay for kernel selection and allocator growth "
                             "(default 1)")
    parser.add_argument("--mc-samples", type=int, default=20, help="Monte-Carlo samples M (default 20, official)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")


@dataclass
class Row:
    backbone: str
    variant: str
    head: str
    params: int
    prompt_params: int
    train_ms: float | None
    eval_ms: float
    peak_mb: float | None


class StepMemory:
    """Memory of the code run inside: CUDA peak above the entry level, or (CPU) the activations saved for
    backward, counted once per storage, parameters and buffers of ``modules`` excluded."""

    def __init__(self, device, modules):
        self.device = device
        self.peak_mb = 0.0
        self._excluded = {t.untyped_storage().data_ptr() for m in modules
                          for t in [*m.parameters(), *m.buffers()]}

    def __enter__(self) -> StepMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._seen: set[int] = set()
        self._bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._excluded and key not in self._seen:
            self._seen.add(key)
            self._bytes += storage.nbytes()
        return tensor

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
            return
        self._hooks.__exit__(*exc)
        self.peak_mb = self._bytes / 2**20


def run_config(backbone: str, variant: str, deterministic: bool, args: argparse.Namespace):
    from clapray.config import (
        BackboneConfig,
        DataConfig,
        MethodConfig,
        OptimConfig,
        RunConfig,
        SeedConfig,
        ShapesConfig,
    )

    return RunConfig(
        name="bench", device=args.device,
        backbone=BackboneConfig(model=backbone, pretrained=None),
        data=DataConfig(dataset="shapes", num_tasks=1, num_workers=0,
                        shapes=ShapesConfig(num_classes=args.classes, train_per_class=1, test_per_class=1,
                                            image_size=32)),
        method=MethodConfig(variant=variant, deterministic=deterministic, mc_samples_train=args.mc_samples,
                            mc_samples_eval=args.mc_samples),
        optim=OptimConfig(batch_size=args.batch), seeds=SeedConfig(class_order=0, init=0))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(learner, images, labels, steps: int, warmup: int) -> tuple[float | None, float, float | None]:
    """(best ms per training step, best ms per evaluation batch, memory MB of a training step).

    The minimum over the timed steps, not the mean: on a shared machine every other process only adds time.
    """
    import torch

    from clapray import phases

    setup = learner.setup_task(0)
    train_ms = peak = None
    if learner.head is not None:
        params = learner.phase_parameters(phases.main_training(0, learner.cfg), setup)
        for p in learner._learnable():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.SGD(params, lr=1e-4)
        learner.head.train()
        learner.prompt.train()

        def step() -> None:
            loss, _ = learner.step_loss(images, labels, setup, regularize=(0,))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for _ in range(warmup):
            step()
        times, peaks = [], []
        for _ in range(steps):
            with StepMemory(learner.device, [learner.backbone.model, learner.head, learner.prompt]) as memory:
                _sync(learner.device)
                start = time.perf_counter()
                step()
                _sync(learner.device)
                times.append(time.perf_counter() - start)
            peaks.append(memory.peak_mb)
        train_ms, peak = 1000 * min(times), max(peaks)

    learner.prompt.eval()
    if learner.head is not None:
        learner.head.eval()
    times = []
    with torch.no_grad():
        # Zero-shot has had no training step to warm up with: its untimed passes are evaluation passes.
        untimed = warmup if learner.head is None else 0
        for i in range(untimed + steps):
            _sync(learner.device)
            start = time.perf_counter()
            x = learner.prompt.encode_images(images)
            text = learner.prompt.text_features(setup.num_seen, x)
            learner.forward_batch(x, text, setup, learner.cfg.method.mc_samples_eval)
            _sync(learner.device)
            if i >= untimed:
                times.append(time.perf_counter() - start)
    return train_ms, 1000 * min(times), peak


def bench_backbone(name: str, variants: list[str], args: argparse.Namespace) -> list[Row]:
    import torch

    from clapray.builders import build_backbone, build_scenario_from_config, resolve_device
    from clapray.learner import ContinualLearner
    from clapray.model.prompts.catalog import DEFAULT_VARIANT, VARIANTS

    base = run_config(name, DEFAULT_VARIANT, False, args)
    device = resolve_device(base)
    backbone = build_backbone(base, device)
    scenario = build_scenario_from_config(base)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, backbone.image_size, backbone.image_size, generator=generator).to(device)
    labels = torch.randint(0, args.classes, (args.batch,), generator=generator).to(device)
    rows = []
    for variant in variants:
        for deterministic in (False, True):
            if deterministic and not VARIANTS[variant].learns:
                continue  # no head: VI and w/o VI are the same model
            learner = ContinualLearner(run_config(name, variant, deterministic, args), backbone=backbone,
                                       scenario=scenario, device=device)
            train_ms, eval_ms, peak = measure(learner, images, labels, args.steps, args.warmup)
            learner.setup_task(0)
            rows.append(Row(backbone=name, variant=variant,
                            head="-" if learner.head is None else ("w/o VI" if deterministic else "VI"),
                            params=learner.trainable_parameter_count(),
                            prompt_params=learner.prompt.learned_parameter_count(),
                            train_ms=train_ms, eval_ms=eval_ms, peak_mb=peak))
            print(format_row(rows[-1]), flush=True)
            del learner
    return rows


HEADER = (f"{'backbone':18s} {'variant':12s} {'head':7s} {'params':>11s} {'prompt':>10s} "
          f"{'train ms/step':>14s} {'eval ms/batch':>14s} {'memory MB':>10s}")


def format_row(row: Row) -> str:
    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    return (f"{row.backbone:18s} {row.variant:12s} {row.head:7s} {row.params:>11,d} {row.prompt_params:>10,d} "
            f"{number(row.train_ms, '14.1f'):>14s} {number(row.eval_ms, '14.1f'):>14s} "
            f"{number(row.peak_mb, '10.1f'):>10s}")


def main(args: argparse.Namespace) -> int:
    import logging

    import torch

    from clapray.config import PROMPT_VARIANTS
    from clapray.errors import UserError

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    # CPU defaults keep the two default backbones within a minute or two; CUDA ones are a real sweep step.
    args.batch = args.batch if args.batch is not None else (32 if cuda else 2)
    args.classes = args.classes if args.classes is not None else (100 if cuda else 5)
    args.steps = args.steps if args.steps is not None else (5 if cuda else 1)
    if args.batch < 1 or args.classes < 2 or args.steps < 1 or args.mc_samples < 1 or args.warmup < 0:
        raise UserError("bench variants: --batch, --steps and --mc-samples must be >= 1, --classes >= 2 and "
                        "--warmup >= 0")
    variants = list(PROMPT_VARIANTS) if not args.variants else [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in variants if v not in PROMPT_VARIANTS]
    if unknown:
        raise UserError(f"--variants: expected names from {', '.join(PROMPT_VARIANTS)}, got {', '.join(unknown)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    # Random-weight backbones are intended here; open_clip and the loader would warn about each one.
    logging.getLogger().setLevel(logging.ERROR)
    backbones = args.backbone or list(DEFAULT_BACKBONES)
    device = "cuda" if cuda else "cpu"
    memory = "CUDA peak allocated above the step's start" if cuda else "activations saved for backward"
    print(f"batch {args.batch}, {args.classes} classes, M = {args.mc_samples}, {args.warmup} warm-up and "
          f"{args.steps} timed step(s), "
          f"{device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); memory MB = {memory}")
    print(HEADER)
    for name in backbones:
        bench_backbone(name, variants, args)
    return 0
