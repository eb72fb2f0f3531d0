"""From a :class:`~clapray.config.RunConfig` to the objects of a run: device, backbone, benchmark, scenario.

One place turns configuration into components, so the run CLI, the learner, the sweep workers and the
tests all build them the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from clapray.config import RunConfig
from clapray.errors import UserError
from clapray.model.catalog import MINI_CLIP_TAG

if TYPE_CHECKING:
    from clapray.data import Benchmark, ClassIncrementalScenario
    from clapray.model.backbone import Backbone


def resolve_device(cfg: RunConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but no CUDA device is visible; set device: cpu or auto")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def resolve_precision(cfg: RunConfig, device: torch.device) -> str:
    """``auto`` = bf16 autocast for the frozen towers on GPU, fp32 on CPU (bf16 matmuls are slow there)."""
    if cfg.backbone.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.backbone.precision


def trainable_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype:
    """dtype of the modules the method trains: half for ``precision: fp16`` (the official code casts VGA,
    adapters, task tokens and prompts to CLIP's fp16 and trains them so, §2), fp32 otherwise."""
    return torch.float16 if resolve_precision(cfg, device) == "fp16" else torch.float32




def resolve_pretrained(cfg: RunConfig) -> str | None:
    """The pretrained tag or checkpoint path to load; :data:`MINI_CLIP_TAG` becomes the cached checkpoint.

    The checkpoint is pretrained on first use (a few minutes on CPU), under a lock, so concurrent
    trials on one machine train it once; it is deterministic, so every machine trains the same bytes.
    """
    if cfg.backbone.pretrained != MINI_CLIP_TAG:
        return cfg.backbone.pretrained
    import sys

    from clapray.model.catalog import MINI_CLIP_MODELS
    from clapray.shapes.mini_clip import ensure_mini_clip

    if cfg.backbone.model not in MINI_CLIP_MODELS:
        raise UserError(f"backbone.pretrained: {MINI_CLIP_TAG} is the pretraining of backbone.model "
                        f"{' or '.join(MINI_CLIP_MODELS)}, but backbone.model is {cfg.backbone.model}")
    cache = None if cfg.backbone.cache_dir is None else Path(cfg.backbone.cache_dir).expanduser() / "mini-clip"
    return str(ensure_mini_clip(cache, log=lambda line: print(line, file=sys.stderr, flush=True),
                                model_name=cfg.backbone.model))


def build_backbone(cfg: RunConfig, device: torch.device | None = None) -> Backbone:
    from clapray.model.backbone import load_backbone

    device = device or resolve_device(cfg)
    pretrained = resolve_pretrained(cfg)
    # Random-init backbones (the tiny test configs) must not depend on the init seed of the adapters,
    # or two runs that differ only in seeds.init would compare different "pretrained" models.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return load_backbone(cfg.backbone.model, pretrained, cache_dir=cfg.backbone.cache_dir,
                             device=device, precision=resolve_precision(cfg, device))


def build_benchmark_from_config(cfg: RunConfig) -> Benchmark:
    from clapray.data import build_benchmark
    from clapray.validation import benchmark_request

    name, options = benchmark_request(cfg)
    return build_benchmark(name, cfg.data.root, **options)


def build_scenario_from_config(cfg: RunConfig, benchmark: Benchmark | None = None) -> ClassIncrementalScenario:
    from clapray.data import build_scenario

    benchmark = benchmark if benchmark is not None else build_benchmark_from_config(cfg)
    return build_scenario(benchmark, num_tasks=cfg.data.num_tasks, classes_per_task=cfg.data.classes_per_task,
                          initial_classes=cfg.data.initial_classes, class_order_seed=cfg.seeds.class_order,
                          val_fraction=cfg.data.val_fraction, evaluate_on=cfg.eval.split)
