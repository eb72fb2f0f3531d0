"""``python -m clapray.bench cache``: one hand-crafted trial on images against the same trial on cached
embeddings, side by side in one process.

Both learners share one backbone and one scenario, so the comparison is the data path alone: the naive
trial sends every training batch (and every evaluation image) through the frozen image tower; the
cached one gathers the embeddings computed once (both flip views, :mod:`clapray.features`), which a
sweep computes once for all its trials. The default backbone has ViT-B/16's dimensions with random
weights and the image count is reduced so it finishes on a CPU in minutes; the last line is
``speedup: <ratio>x, metrics equal: <yes|no>``.
"""

from __future__ import annotations

import argparse
import time

DESCRIPTION = "frozen-feature cache: the same hand-crafted trial naive (tower every step) and cached"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="ViT-B-16", help="open_clip model, random weights (default ViT-B-16)")
    parser.add_argument("--classes", type=int, default=10, help="shapes classes (default 10)")
    parser.add_argument("--tasks", type=int, default=2, help="tasks (default 2)")
    parser.add_argument("--train-per-class", type=int, default=16, help="training images per class (default 16)")
    parser.add_argument("--test-per-class", type=int, default=8, help="test images per class (default 8)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per task (default 5, the official value)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")


class _CountingTower:
    """Wraps a prompt variant's ``encode_images`` to count the images the naive trial sends through the tower."""

    def __init__(self, prompt):
        self.encode, self.count = prompt.encode_images, 0

    def __call__(self, images, *args, **kwargs):
        self.count += int(images.shape[0])
        return self.encode(images, *args, **kwargs)


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from clapray.builders import build_backbone, build_scenario_from_config, resolve_device
    from clapray.config import load_run_config, shipped_config_path
    from clapray.errors import UserError
    from clapray.features.provide import features_for
    from clapray.learner import ContinualLearner
    from clapray.model.prompts.catalog import DEFAULT_VARIANT

    for name in ("classes", "tasks", "train_per_class", "test_per_class", "epochs"):
        if getattr(args, name) < 1:
            raise UserError(f"bench cache: --{name.replace('_', '-')}: expected an integer >= 1, "
                            f"got {getattr(args, name)}")
    overrides = [
        f"method.variant={DEFAULT_VARIANT}", f"backbone.model={args.backbone}", "backbone.pretrained=",
        f"device={args.device}", "data.dataset=shapes", f"data.shapes.num_classes={args.classes}",
        f"data.num_tasks={args.tasks}", f"data.shapes.train_per_class={args.train_per_class}",
        f"data.shapes.test_per_class={args.test_per_class}", f"optim.epochs={args.epochs}",
        "method.mc_samples_train=20", "method.mc_samples_eval=20", "data.num_workers=0",
    ]
    naive_cfg = load_run_config(shipped_config_path("tiny"), [*overrides, "data.feature_cache=false"])
    cached_cfg = load_run_config(shipped_config_path("tiny"), overrides)
    device = resolve_device(naive_cfg)
    backbone = build_backbone(naive_cfg, device)
    scenario = build_scenario_from_config(naive_cfg)
    batch = naive_cfg.optim.batch_size
    print(f"{args.backbone} (random weights, embed dim {backbone.embed_dim}) on {device.type}, shapes: "
          f"{args.classes} classes in {args.tasks} tasks, {args.train_per_class} train / {args.test_per_class} "
          f"test images per class, {args.epochs} epochs, batch {batch}, M = 20")

    per_task: list[int] = []
    start = time.perf_counter()
    learner = ContinualLearner(naive_cfg, backbone=backbone, scenario=scenario, device=device)
    tower = _CountingTower(learner.prompt)
    learner.prompt.encode_images = tower  # an instance attribute shadows the method for this learner only
    naive = learner.run(on_task=lambda result: per_task.append(tower.count - sum(per_task)))
    naive_s = time.perf_counter() - start

    start = time.perf_counter()
    features, _ = features_for(cached_cfg, backbone, scenario.benchmark)
    build_s = time.perf_counter() - start
    n_views = 2 * features.train.shape[1] + features.test.shape[0]
    start = time.perf_counter()
    cached = ContinualLearner(cached_cfg, backbone=backbone, scenario=scenario, device=device,
                              features=features).run()
    cached_s = time.perf_counter() - start

    # img/s: images the naive trial sent through the tower in that task, over each trial's task time.
    print(f"{'task':>4} {'naive s':>9} {'cached s':>9} {'naive img/s':>12} {'cached img/s':>13}")
    for a, b, seen in zip(naive, cached, per_task, strict=False):
        print(f"{a.task:>4} {a.timings['total']:>9.2f} {b.timings['total']:>9.2f} "
              f"{seen / a.timings['total']:>12.1f} {seen / b.timings['total']:>13.1f}")
    print(f"trial: naive {naive_s:.2f}s, cached {cached_s:.2f}s; the cache itself: {n_views} image views "
          f"encoded once in {build_s:.2f}s ({n_views / build_s:.1f} img/s), shared by every trial of a sweep")
    print(f"one trial including the cache build: {naive_s / (cached_s + build_s):.1f}x; "
          f"a sweep of 8 such trials: {8 * naive_s / (8 * cached_s + build_s):.1f}x")

    equal = all(
        np.allclose(a.accuracy_row, b.accuracy_row, atol=1e-6)
        and np.allclose([a.last_acc, a.avg_acc, a.ece], [b.last_acc, b.avg_acc, b.ece], atol=1e-5, equal_nan=True)
        and a.losses.keys() == b.losses.keys()
        and np.allclose([a.losses[k] for k in sorted(a.losses)], [b.losses[k] for k in sorted(b.losses)],
                        rtol=1e-4, atol=1e-6)
        for a, b in zip(naive, cached, strict=False))
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"speedup: {naive_s / cached_s:.1f}x, metrics equal: {'yes' if equal else 'no'}")
    return 0
