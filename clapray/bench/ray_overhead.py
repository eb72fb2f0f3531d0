"""``python -m clapray.bench ray``: what Ray Tune + Ray Train add to a trial, measured.

Runs the same N short trials in one process: first in plain Python (one
:class:`~clapray.learner.ContinualLearner` after another), then as a sweep on a local Ray, ``--concurrent``
trials at a time (default 1), once per ``--executor`` (the trial's worker inside the trial's process, or a
Train worker group: the two side by side with ``--executor worker_group,in_trial``), so the difference is
the orchestration: the Tune trial process, the Train controller and worker group where there is one,
reporting, checkpoints and the Parquet writes. Every Ray process of the sweep
records a timeline (:mod:`clapray.sweep.timeline`), printed per trial and phase
(:mod:`clapray.bench.ray_breakdown`), with the sweep's efficiency: Σ learner time / (sweep wall x
concurrent slots). The stored results are checked against the plain runs (same config and seed, same
numbers). ``--save FILE`` writes the measured seconds as JSON for ``--dry-run`` cost estimates
(:mod:`clapray.sweep.cost`). Results go to a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from clapray.model.prompts.catalog import DEFAULT_VARIANT

DESCRIPTION = "Ray Tune/Train overhead: N short trials as a sweep against the same trials in plain Python"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=4, help="number of trials (seeds) (default 4)")
    parser.add_argument("--tasks", type=int, default=2, help="tasks per trial (default 2)")
    parser.add_argument("--images", type=int, default=8, help="training images per class (default 8)")
    parser.add_argument("--variant", default=DEFAULT_VARIANT,
                        help=f"prompt variant the trials train (default {DEFAULT_VARIANT})")
    parser.add_argument("--concurrent", type=int, default=1,
                        help="trials running at once in the sweep (default 1: sequential)")
    parser.add_argument("--executor", default="in_trial",
                        help="where each trial's worker runs: in_trial, worker_group, or both comma-separated "
                        "(e.g. worker_group,in_trial: the same trials swept once per executor, side by side) "
                        "(default in_trial)")
    parser.add_argument("--save", metavar="FILE", help="write the measured seconds per trial to FILE (JSON), "
                        "e.g. <storage>/_bench/ray.json, which `python -m clapray.sweep --dry-run` reads")


def _sweep_yaml(trials: int, tasks: int, images: int, concurrent: int, variant: str, executor: str) -> str:
    seeds = ", ".join(str(s) for s in range(trials))
    return f"""name: bench-ray
base: tiny
set:
  method.variant: {variant}
  data.num_tasks: {tasks}
  data.shapes.num_classes: {2 * tasks}
  data.shapes.train_per_class: {images}
  data.shapes.test_per_class: 4
  optim.epochs: 1
  optim.batch_size: 8
search: {{algorithm: random, seed: 0, metric: avg_acc, trials_per_cell: 1}}
seeds: [{seeds}]
scheduler: none
resources: {{workers_per_trial: 1, gpus_per_worker: 0, cpus_per_worker: 1, max_concurrent_trials: {concurrent},
             executor: {executor}}}
retries: 0
storage: results
"""


def main(args: argparse.Namespace) -> int:
    import torch

    from clapray.errors import UserError
    from clapray.learner import ContinualLearner
    from clapray.sweep import load_sweep_config

    for name in ("trials", "tasks", "images", "concurrent"):
        if getattr(args, name) < 1:
            raise UserError(f"bench ray: --{name}: expected an integer >= 1, got {getattr(args, name)}")
    from clapray.config import PROMPT_VARIANTS
    from clapray.sweep.model import EXECUTORS

    if args.variant not in PROMPT_VARIANTS:
        raise UserError(f"bench ray: --variant: expected one of {', '.join(PROMPT_VARIANTS)}, got {args.variant}")
    executors = [e.strip() for e in str(args.executor).split(",")]
    if not executors or any(e not in EXECUTORS[1:] for e in executors) or len(set(executors)) != len(executors):
        raise UserError(f"bench ray: --executor: expected in_trial, worker_group or both comma-separated, got "
                        f"{args.executor}")
    reports = []
    with tempfile.TemporaryDirectory(prefix="clapray-bench-ray-") as tmp:
        sweeps = {}
        for executor in executors:
            path = Path(tmp) / f"bench-ray-{executor}.yaml"
            path.write_text(_sweep_yaml(args.trials, args.tasks, args.images, args.concurrent, args.variant,
                                        executor))
            sweeps[executor] = load_sweep_config(path, [f"storage={tmp}/store-{executor}"])
        sweep = sweeps[executors[0]]
        cell = sweep.cells()[0]
        configs = [sweep.run_config_for(cell, {}, seed, output_dir=f"{tmp}/plain") for seed in sweep.seeds]

        torch.set_num_threads(1)  # what a trial's worker uses (cpus_per_worker: 1)
        plain, plain_results = [], {}
        for cfg in configs:
            start = time.perf_counter()
            history = ContinualLearner(cfg).run()
            plain.append(time.perf_counter() - start)
            plain_results[cfg.seeds.init] = [(r.task, r.avg_acc, r.last_acc) for r in history]
        for executor in executors:
            reports.append(_measure_sweep(args, executor, sweeps[executor], Path(tmp), plain, plain_results))
            print(reports[-1].text + "\n", flush=True)
    if len(reports) > 1:
        print(_comparison(reports))
    if args.save:
        _save(Path(args.save), args, reports[-1])
        print(f"measured seconds ({reports[-1].executor}) written to {args.save}")
    return 0 if all(r.ok for r in reports) else 1


def _measure_sweep(args, executor: str, sweep, tmp: Path, plain: list[float],
                   plain_results: dict[int, list[tuple]]) -> _Report:
    """One sweep of the bench's trials on a fresh local Ray, its timeline turned into the report."""
    import ray

    from clapray.sweep.cluster import start_local_ray
    from clapray.sweep.driver import configure_ray_environment, run_sweep
    from clapray.sweep.timeline import TIMELINE_ENV, read

    configure_ray_environment()
    timeline_dir = tmp / f"timeline-{executor}"
    timeline_dir.mkdir()
    os.environ[TIMELINE_ENV] = str(timeline_dir)  # inherited by every process of the Ray started below
    start = time.perf_counter()
    start_local_ray()  # the Ray a local sweep starts
    ray_init = time.perf_counter() - start
    try:
        start = time.perf_counter()
        grid = run_sweep(sweep, out=io.StringIO())
        ray_wall = time.perf_counter() - start
    finally:
        ray.shutdown()
        os.environ.pop(TIMELINE_ENV, None)
    same = _stored_equal_plain(f"{sweep.storage_path().rstrip('/')}/{sweep.name}", plain_results)
    return _report(args, executor, plain, ray_wall, ray_init, read(timeline_dir), len(grid.errors), same)


def _comparison(reports: list[_Report]) -> str:
    base = reports[0]
    lines = [f"{'executor':<14}{'orchestration s/trial':>23}{'efficiency':>12}{'stored = plain':>16}"]
    for r in reports:
        lines.append(f"{r.executor:<14}{r.orchestration_s:>23.2f}{r.efficiency:>12.1%}{'yes' if r.same else 'NO':>16}")
    for r in reports[1:]:
        lines.append(f"{r.executor} vs {base.executor}: orchestration x{r.orchestration_s / base.orchestration_s:.2f} "
                     f"({r.orchestration_s - base.orchestration_s:+.2f}s per trial)")
    return "\n".join(lines)


def _stored_equal_plain(store: str, plain: dict[int, list[tuple]]) -> bool:
    """Whether the sweep stored, for every seed, exactly the accuracies the plain runs computed."""
    from clapray.results import load_table

    tasks = load_table(store, "tasks")
    stored = {int(seed): [(int(r.task), float(r.avg_acc), float(r.last_acc)) for r in rows.sort_values("task")
                          .itertuples()] for seed, rows in tasks.groupby("seed")}
    return stored == plain


@dataclass(frozen=True)
class _Report:
    executor: str
    text: str
    orchestration_s: float  # per trial: sweep wall per trial and slot, minus the learning
    learning_s: float  # per trial
    efficiency: float
    same: bool  # the stored results equal the plain runs'
    failed: int

    @property
    def ok(self) -> bool:
        return self.same and not self.failed


def _report(args, executor: str, plain: list[float], ray_wall: float, ray_init: float, events: list[dict],
            failed: int, same: bool) -> _Report:
    from clapray.bench.ray_breakdown import PHASES, efficiency, mean_phases, trial_breakdowns

    n, slots = args.trials, args.concurrent
    plain_total = sum(plain)
    trials = trial_breakdowns(events)
    learning = sum(b.phases["learning"] for b in trials)
    lines = [f"{n} trials x {args.tasks} tasks, shapes {2 * args.tasks} classes, tiny backbone, 1 CPU per trial, "
             f"{slots} at a time, executor {executor}",
             f"{'':<28}{'total s':>10}{'per trial s':>14}",
             f"{'plain Python':<28}{plain_total:>10.2f}{plain_total / n:>14.2f}",
             f"{f'Ray sweep ({slots} at a time)':<28}{ray_wall:>10.2f}{ray_wall / n:>14.2f}",
             f"{'ray.init (once)':<28}{ray_init:>10.2f}"]
    if failed:
        lines.append(f"warning: {failed} trial(s) failed; the overhead below includes their retries")
    lines.append(f"overhead: {(ray_wall - plain_total) / n:.2f}s per trial, {ray_wall / plain_total:.1f}x the "
                 "plain time")
    if trials:
        header = f"{'trial':<14}" + "".join(f"{p:>{max(9, len(p) + 1)}}" for p in PHASES) + f"{'span':>8}"
        lines += ["", "where a trial's time goes (s):", header]
        for b in trials + [None]:
            phases = mean_phases(trials) if b is None else b.phases
            span = sum(t.span for t in trials) / len(trials) if b is None else b.span
            name = "mean" if b is None else b.trial
            lines.append(f"{name:<14}" + "".join(f"{phases[p]:>{max(9, len(p) + 1)}.2f}" for p in PHASES)
                         + f"{span:>8.2f}")
        outside = ray_wall * slots - sum(b.span for b in trials)
        lines.append(f"outside the trials' spans (sweep start-up, feature cache, Tune between trials): "
                     f"{outside / n:.2f}s per trial and slot")
    orchestration = ray_wall * slots / n - learning / max(1, len(trials))
    eff = efficiency(learning, ray_wall, slots)
    lines.append(f"orchestration: {orchestration:.2f}s per trial (slot time per trial minus its learning); "
                 f"efficiency: Σ learner {learning:.2f}s / (wall {ray_wall:.2f}s x {slots} slot(s)) = {eff:.1%}")
    lines.append(f"stored results equal the plain runs': {'yes' if same else 'NO'}")
    return _Report(executor, "\n".join(lines), orchestration, learning / max(1, len(trials)), eff, same, failed)


def _save(path: Path, args, report: _Report) -> None:
    from clapray.sweep.cost import BenchFile

    conditions = (f"{os.cpu_count()} CPUs, {args.trials} trials x {args.tasks} tasks of {args.images} images per "
                  f"class, {args.concurrent} at a time, executor {report.executor}, {time.strftime('%Y-%m-%d')}")
    BenchFile.load_or_empty(path).with_measurement(
        orchestration_s_per_trial=round(report.orchestration_s, 3), concurrent=args.concurrent,
        conditions=conditions, variant=args.variant,
        learning_s_per_task=round(report.learning_s / args.tasks, 4)).save(path)
