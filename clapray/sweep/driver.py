"""The sweep driver: one Ray Tune + Optuna + Ray Train run over every cell of a sweep.

One Tune trial per (cell, sampled configuration, seed); each trial runs the full task sequence in a Ray
Train ``TorchTrainer`` and reports after every task, so ASHA rungs are task boundaries. Results land in
the Parquet store ``<storage>/<sweep name>/{runs,tasks,accuracy}`` as each task finishes. Running the
same command on an existing sweep resumes it: finished trials are not run again.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from typing import Any

from clapray.sweep.model import SweepConfig
from clapray.sweep.spec import TrialSpec


def sweep_root(sweep: SweepConfig) -> str:
    return f"{sweep.storage_path().rstrip('/')}/{sweep.name}"


def cell_task_counts(sweep: SweepConfig) -> dict[str, int]:
    """Tasks of every cell's scenario (cells may differ, e.g. VTAB has 5), from the benchmarks' shapes."""
    from clapray.validation import task_count

    counts = {}
    for cell in sweep.cells():
        # Any admissible draw will do: the task count comes from the data fields, which are not sampled.
        sampled: dict[str, Any] = {}
        for name, dist in sweep.active_space(cell).items():
            if sweep.is_active(name, cell, sampled):
                sampled[name] = dist.choices[0] if dist.kind == "choice" else dist.low
        counts[cell.name] = task_count(sweep.run_config_for(cell, sampled, sweep.seeds[0]))
    return counts


def configure_ray_environment() -> None:
    """Environment defaults for Ray, set before ``ray.init`` so a local Ray's processes inherit them."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    # Ray Tune's legacy reporter honours verbose=0 completely; the sweep prints its own progress lines.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Train's controller registers each report (and checkpoint) on its next poll of the workers, and notices
    # the end of training on one: the 2 s default costs several seconds per short trial (each report and the
    # teardown wait for a poll). A poll is one small remote call per worker; a local Ray inherits this.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def _prepare_pretrained_backbones(sweep: SweepConfig) -> None:
    """Pretrain the mini-CLIP here, once and visibly, when a cell uses it, before any trial waits for it.

    Trials on this machine then find it cached; a trial on another node of a cluster pretrains the same
    deterministic checkpoint itself (under a lock, so once per node).
    """
    from clapray.builders import MINI_CLIP_TAG, resolve_pretrained

    seen: set[tuple[str, str | None]] = set()
    for cell in sweep.cells():
        cfg = sweep.cell_config(cell)
        key = (cfg.backbone.model, cfg.backbone.cache_dir)
        if cfg.backbone.pretrained == MINI_CLIP_TAG and key not in seen:
            seen.add(key)
            resolve_pretrained(cfg)


def _share_features(sweep: SweepConfig, store_root: str, out) -> dict[str, list[Any]]:
    """Compute (or load) the frozen embeddings of every cell that uses the cache, once per group.

    One Ray task per group, with a trial worker's resources (its GPU, if trials have one), writes the
    entry to ``<store>/feature_cache`` and returns it into Ray's object store; every trial then reads
    that object instead of running the image tower. Returns ``{group: [ObjectRef]}``.
    """
    import ray

    from clapray.features.provide import build_shareable, feature_group, uses_feature_cache

    groups: dict[str, Any] = {}
    for cell in sweep.cells():
        cfg = sweep.cell_config(cell)
        if uses_feature_cache(cfg):
            groups.setdefault(feature_group(cfg), cfg)
    if not groups:
        return {}
    from clapray.progress import progress_path
    from clapray.sweep.progress import wait_with_heartbeats

    res = sweep.resources
    task = ray.remote(num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker, num_returns=2)(build_shareable)
    refs, built = {}, {}
    start = time.perf_counter()
    print(f"feature cache: loading or encoding {len(groups)} entr{'y' if len(groups) == 1 else 'ies'} of frozen image "
          f"embeddings (once per sweep) ...", file=out, flush=True)
    heartbeats = [progress_path(sweep_root(sweep), f"feature-cache-{i}") for i in range(len(groups))]
    for (group, cfg), heartbeat in zip(groups.items(), heartbeats, strict=True):
        refs[group], built[group] = task.remote(cfg, store_root, heartbeat)
    done = wait_with_heartbeats(list(built.values()), heartbeats,
                                lambda line: print(line, file=out, flush=True), "feature cache: ")
    print(f"feature cache: {len(groups)} entr{'y' if len(groups) == 1 else 'ies'} ({sum(done)} encoded, "
          f"{len(done) - sum(done)} loaded) in {time.perf_counter() - start:.1f}s; shared with every trial that "
          f"keeps the image tower frozen", file=out)
    return {group: [ref] for group, ref in refs.items()}


def run_sweep(sweep: SweepConfig, *, address: str | None = None, out=None, verbose: bool = False) -> Any:
    """Run (or resume) ``sweep``; returns Ray Tune's ResultGrid. ``verbose`` keeps Ray's and Optuna's own
    console output (:mod:`clapray.sweep.console`).

    Before anything is written: a changed sweep is refused (:mod:`clapray.sweep.resolved`) and the store's
    lease is taken (:mod:`clapray.results.lease`; a second driver is refused). A resumed sweep's store is
    then reconciled with Ray Tune's saved state, and again with its final state after the run
    (:mod:`clapray.sweep.recovery`).
    """
    from clapray.results.lease import held_lease
    from clapray.sweep.console import quiet_console, ray_started_line
    from clapray.sweep.resolved import check_same_sweep

    out = out or sys.stdout
    root = sweep_root(sweep)
    check_same_sweep(sweep, root)  # read-only: a refusal leaves the store as it was
    num_tasks = cell_task_counts(sweep)
    _prepare_pretrained_backbones(sweep)
    with quiet_console(verbose):
        if address:
            # The cluster first: an unusable --address fails within a minute, before the store is touched.
            from clapray.sweep.cluster import connect

            configure_ray_environment()
            print(ray_started_line(connect(address, verbose=verbose), address), file=out, flush=True)
        with held_lease(root) as lease:
            grid = _leased_run(sweep, root, num_tasks, lease, address=address, out=out, verbose=verbose)
    print(f"report: python -m clapray.report {root}", file=out, flush=True)
    return grid


def _leased_run(sweep: SweepConfig, root: str, num_tasks: dict[str, int], lease: Any, *, address: str | None,
                out, verbose: bool) -> Any:
    """The sweep under the store's lease: save the resolved sweep, run Tune, reconcile, summarise."""
    from clapray.sweep.resolved import check_same_sweep, save_sweep
    from clapray.sweep.summary import print_summary

    if not check_same_sweep(sweep, root):  # again under the lease: another driver may have saved one
        save_sweep(sweep, root)
    grid = _run_tuner(sweep, root, num_tasks, address=address, out=out, verbose=verbose)
    if lease.lost_to is None:
        _reconcile_after(sweep, root, num_tasks, out)
        print_summary(root, out)
    return grid


def _trial_spec(sweep: SweepConfig, root: str) -> TrialSpec:
    res = sweep.resources
    return TrialSpec(sweep=sweep.name, store=root, metric=sweep.search.metric,
                     workers_per_trial=res.workers_per_trial, gpus_per_worker=res.gpus_per_worker,
                     cpus_per_worker=res.cpus_per_worker, retries=sweep.retries, in_trial=res.in_trial)


def reuses_trial_drivers(sweep: SweepConfig) -> bool:
    """Whether a finished trial's process (Ray and this package imported; with the worker inside it, torch and
    the learner too) runs the next trial instead of a fresh process that starts and imports again (Tune's
    ``reuse_actors``).

    Always when the worker runs inside the trial: Ray Tune ends a stopped trial's training function at its
    next report, which is where the function waits whenever Tune decides (reports are synchronous). Not with
    ASHA for a worker group: Tune would keep a stopped trial's process for reuse while its function, blocked
    in the Train run's ``fit()``, kept training; killing that process is what stops the Train run (it owns
    the controller). Without a scheduler a trial ends only when its function returns or fails, and Tune never
    reuses a failed trial's process."""
    return sweep.resources.in_trial or sweep.scheduler is None


def _run_tuner(sweep: SweepConfig, root: str, num_tasks: dict[str, int], *, address: str | None, out,
               verbose: bool = False) -> Any:
    configure_ray_environment()
    import ray
    import ray.tune

    from clapray.sweep.callbacks import ProgressPrinter, StoreStatusCallback
    from clapray.sweep.cluster import cluster_nodes, connect, plan_trials, start_local_ray
    from clapray.sweep.console import ray_started_line
    from clapray.sweep.preflight import footprint
    from clapray.sweep.progress import SweepPlan
    from clapray.sweep.recovery import reconcile, restorable, trials_from_experiment
    from clapray.sweep.search import CellSearch, PerCellASHA
    from clapray.sweep.studies import StudyJournal
    from clapray.sweep.trial import trial_driver

    res = sweep.resources
    spec = _trial_spec(sweep, root)
    experiment = root
    restoring = restorable(experiment)
    # The store must hold what Tune's saved state implies before Tune acts on that state (and a store that
    # cannot be repaired is refused before Ray starts).
    repaired = reconcile(spec, trials_from_experiment(experiment) if restoring else [], num_tasks,
                         errored_resume=True)
    if repaired.line():
        print(repaired.line(), file=out, flush=True)
    if not ray.is_initialized():
        # A private Ray on 127.0.0.1 (its trial drivers on a logical resource, so they never compete with the
        # Train workers for CPUs), or the cluster at --address, which fails within a minute when unusable.
        context = connect(address, verbose=verbose) if address else start_local_ray(verbose=verbose)
        print(ray_started_line(context, address), file=out, flush=True)
    placement = plan_trials(footprint(sweep), cluster_nodes(), max_concurrent_trials=res.max_concurrent_trials,
                            where=f"the cluster at {address}" if address else "this machine")
    if placement.note:
        print(placement.note, file=out, flush=True)
    feature_refs = _share_features(sweep, spec.feature_store, out)
    trainable = ray.tune.with_resources(ray.tune.with_parameters(trial_driver, feature_refs=feature_refs),
                                        dict(placement.driver_resources))
    callbacks = [ProgressPrinter(SweepPlan.of(sweep, num_tasks), store=root, out=out),
                 StoreStatusCallback(spec, num_tasks)]
    tune_run_config = ray.tune.RunConfig(
        name=sweep.name, storage_path=sweep.storage_path(), verbose=0, callbacks=callbacks,
        failure_config=ray.tune.FailureConfig(max_failures=sweep.retries))
    if restoring:
        print(f"resuming sweep {sweep.name} from {experiment}", file=out)
        tuner = ray.tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True,
                                       param_space={"trainer": spec})
    else:
        scheduler = PerCellASHA(sweep, num_tasks=num_tasks) if sweep.scheduler is not None else None
        search = CellSearch(sweep, num_tasks=num_tasks, journal=StudyJournal(root))
        # A driver killed before Tune saved any state leaves studies with trials asked and never told.
        search.release_orphans()
        tuner = ray.tune.Tuner(
            trainable,
            param_space={"trainer": spec},
            tune_config=ray.tune.TuneConfig(
                search_alg=search, scheduler=scheduler,
                num_samples=sweep.trial_count(), max_concurrent_trials=placement.max_concurrent_trials,
                metric=sweep.search.metric, mode=sweep.search.mode,
                reuse_actors=reuses_trial_drivers(sweep)),
            run_config=tune_run_config)
    start = time.perf_counter()
    grid = tuner.fit()
    states = Counter(r.metrics.get("tasks_done", 0) >= num_tasks[r.config["cell"]] if r.metrics else False
                     for r in grid)
    print(f"sweep {sweep.name}: {states[True]} complete, {states[False]} incomplete trials in "
          f"{time.perf_counter() - start:.0f}s; results in {root}/{{runs,tasks,accuracy}}", file=out)
    return grid


def _reconcile_after(sweep: SweepConfig, root: str, num_tasks: dict[str, int], out) -> None:
    """Record again what a failed status write missed, and check the store against Tune's final state."""
    from clapray.sweep.callbacks import RECORDING_FAILURES
    from clapray.sweep.recovery import reconcile, trials_from_experiment

    if RECORDING_FAILURES:
        print(f"{len(RECORDING_FAILURES)} trial outcome(s) could not be recorded during the sweep; recording them "
              f"from Ray Tune's final state", file=out)
    # Tune's saved state, written as the run ended: the status of every trial, ended or (after Ctrl-C) not.
    repaired = reconcile(_trial_spec(sweep, root), trials_from_experiment(root), num_tasks)
    if repaired.line():
        print(repaired.line(), file=out, flush=True)
