"""``python -m clapray.bench ray``: what Ray Tune + Ray Train add to a trial, measured.

Runs the same N short trials twice in one process: first in plain Python (one
:class:`~clapray.learner.ContinualLearner` after another), then as a sweep on a local Ray, one trial
at a time (``max_concurrent_trials: 1``), so the difference is the orchestration: Ray start-up, the
Tune trial driver, the Train worker group and its process group, reporting, checkpoints and the
Parquet writes. Results go to a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

from clapray.model.prompts.catalog import DEFAULT_VARIANT

DESCRIPTION = "Ray Tune/Train overhead: N short trials as a sweep against the same trials in plain Python"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=4, help="number of trials (seeds) (default 4)")
    parser.add_argument("--tasks", type=int, default=2, help="tasks per trial (default 2)")
    parser.add_argument("--images", type=int, default=8, help="training images per class (default 8)")


def _sweep_yaml(trials: int, tasks: int, images: int) -> str:
    seeds = ", ".join(str(s) for s in range(trials))
    return f"""name: bench-ray
base: tiny
set:
  method.variant: {DEFAULT_VARIANT}
  data.num_tasks: {tasks}
  data.shapes.num_classes: {2 * tasks}
  data.shapes.train_per_class: {images}
  data.shapes.test_per_class: 4
  optim.epochs: 1
  optim.batch_size: 8
search: {{algorithm: random, seed: 0, metric: avg_acc, trials_per_cell: 1}}
seeds: [{seeds}]
scheduler: none
resources: {{workers_per_trial: 1, gpus_per_worker: 0, cpus_per_worker: 1, max_concurrent_trials: 1}}
retries: 0
storage: results
"""


def main(args: argparse.Namespace) -> int:
    import torch

    from clapray.errors import UserError
    from clapray.learner import ContinualLearner
    from clapray.sweep import load_sweep_config
    from clapray.sweep.driver import configure_ray_environment, run_sweep

    for name in ("trials", "tasks", "images"):
        if getattr(args, name) < 1:
            raise UserError(f"bench ray: --{name}: expected an integer >= 1, got {getattr(args, name)}")
    with tempfile.TemporaryDirectory(prefix="clapray-bench-ray-") as tmp:
        path = Path(tmp) / "bench-ray.yaml"
        path.write_text(_sweep_yaml(args.trials, args.tasks, args.images))
        sweep = load_sweep_config(path, [f"storage={tmp}/store"])
        cell = sweep.cells()[0]
        configs = [sweep.run_config_for(cell, {}, seed, output_dir=f"{tmp}/plain") for seed in sweep.seeds]

        torch.set_num_threads(1)  # what a trial's worker uses (cpus_per_worker: 1)
        plain = []
        for cfg in configs:
            start = time.perf_counter()
            ContinualLearner(cfg).run()
            plain.append(time.perf_counter() - start)

        import ray

        configure_ray_environment()
        start = time.perf_counter()
        ray.init(resources={"train_driver": 1000}, log_to_driver=False, include_dashboard=False)
        ray_init = time.perf_counter() - start
        try:
            start = time.perf_counter()
            grid = run_sweep(sweep, out=io.StringIO())
            ray_wall = time.perf_counter() - start
        finally:
            ray.shutdown()
        failed = len(grid.errors)

    n = args.trials
    plain_total = sum(plain)
    print(f"{n} trials x {args.tasks} tasks, shapes {2 * args.tasks} classes, tiny backbone, 1 CPU per trial")
    print(f"{'':<28}{'total s':>10}{'per trial s':>14}")
    print(f"{'plain Python':<28}{plain_total:>10.2f}{plain_total / n:>14.2f}")
    print(f"{'Ray sweep (sequential)':<28}{ray_wall:>10.2f}{ray_wall / n:>14.2f}")
    print(f"{'ray.init (once)':<28}{ray_init:>10.2f}")
    if failed:
        print(f"warning: {failed} trial(s) failed; the overhead below includes their retries")
    print(f"overhead: {(ray_wall - plain_total) / n:.2f}s per trial, {ray_wall / plain_total:.1f}x the plain time")
    return 0
