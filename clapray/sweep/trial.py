"""One sweep trial: a Ray Tune function trainable that runs the learner in a Ray Train run.

``trial_driver`` is the Tune trial. It runs a Ray Train trainer whose worker runs ``train_worker``: the
learner's task loop with a checkpoint and a report after every task. Rank 0 writes the trial's rows to the
Parquet store before reporting, with deterministic file names, so a retried task overwrites its rows. Where
the worker runs is the sweep's ``resources.executor``:

* ``in_trial`` (one worker; the default): Ray Train's local mode runs the training function inside the trial's
  own process, which Ray Tune gave the worker's CPUs and GPU share. No controller or worker process per trial,
  and a process Tune reuses for the next trial keeps torch and the learner imported. The worker persists each
  task's checkpoint to the trial's run folder and reports to Ray Tune itself (:class:`TaskReports`). A failed
  trial is retried by Ray Tune and resumes from the newest checkpoint there.
* ``worker_group``: a Train controller and worker actors per trial (:func:`trainer_class`: a ``TorchTrainer``
  for several workers, Ray Train's ``DataParallelTrainer`` without a process group for one); the trial process
  holds no data (on a cluster it runs on the ``train_driver`` resource). A failed worker group is restarted by
  Ray Train from the last task's checkpoint; a failed trial is restarted by Ray Tune and finds the same Train
  run (its name is derived from the trial id), so it resumes from the same checkpoint.

Both keep the same checkpoint layout (:mod:`clapray.sweep.task_checkpoints`), so either resumes the other's.

A trial's checkpoints can outlive the Tune state that knows it: a sweep driver killed after a trial's last task
but before Ray Tune saved that trial's final result restores the trial as still running. It then resumes from
the final checkpoint with nothing left to train; the workers report the final task's metrics again (from the
checkpoint) so that Tune, ASHA and the searcher see the trial complete, and rank 0 first rewrites the trial's
rows if the store lacks them. (Reporting nothing would end the trial with Tune's stale last result: no metric at
all, Ray Tune's "Trial returned a result which did not include the specified metric(s)" error that stops the
whole sweep, or an earlier task's, recording a finished trial as stopped.)
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from clapray.progress import FileSink, Throttled, progress_path
from clapray.sweep import task_checkpoints, timeline
from clapray.sweep.spec import PROVENANCE_FILE, TrialIdentity, TrialSpec, WorkerPlan, trial_run_config

# This module is imported by three kinds of Ray process per trial: the Tune trial driver, the Train
# controller (which unpickles the trainer's callbacks) and every Train worker. Only the workers need torch,
# open_clip and the learner (seconds of imports each on a busy machine), so those are imported inside
# ``train_worker``; ``ray.train.torch`` (which imports torch) only where a trial has several workers.

# Fault injection for tests and drills: "TASK:MARKER" makes the worker raise right after finishing task
# TASK, once (the marker file records that it happened), e.g. CLAPRAY_FAIL_AFTER_TASK=2:/tmp/failed-once;
# "TASK:MARKER:SEED" only in the trials of init seed SEED.
FAIL_AFTER_TASK_ENV = "CLAPRAY_FAIL_AFTER_TASK"


class InjectedFailure(RuntimeError):
    """Raised once by :func:`maybe_inject_failure` to exercise retries."""


def maybe_inject_failure(task: int, trial_key: str, seed: int | None = None) -> None:
    spec = os.environ.get(FAIL_AFTER_TASK_ENV)
    if not spec:
        return
    at, _, rest = spec.partition(":")
    marker_dir, _, only_seed = rest.partition(":")
    if only_seed and seed != int(only_seed):
        return
    marker = Path(marker_dir) / f"failed-{trial_key}"
    if int(at) == task and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("1")
        raise InjectedFailure(f"injected failure after task {task}")


def task_metrics(result, num_tasks: int) -> dict[str, Any]:
    """What Tune, ASHA and the searcher see after a task (rank 0's numbers)."""
    phndd = result.phndd
    return {
        "task": result.task, "tasks_done": result.task + 1, "num_tasks": num_tasks,
        "last_acc": result.last_acc, "avg_acc": result.avg_acc,
        "bwt": result.bwt if math.isfinite(result.bwt) else 0.0, "ece": result.ece,
        "ece_per_batch": result.ece_per_batch,
        "phndd_auroc": phndd.auroc if phndd else float("nan"),
        "task_wall_s": result.timings.get("total", float("nan")), "diverged": False,
    }


def train_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: the learner's remaining tasks, reporting after each."""
    plan: WorkerPlan = loop_config["plan"]
    spec, identity, cfg = plan.spec, plan.identity, plan.run
    timeline.mark("worker", "enter", identity.trial_id)
    import torch

    from clapray.learner import ContinualLearner, TrainingDiverged

    timeline.mark("worker", "imported", identity.trial_id)
    # One intra-op thread per CPU the worker was given: the default (all cores) oversubscribes a node
    # running several trials and can make a CPU trial 20x slower.
    torch.set_num_threads(max(1, int(spec.cpus_per_worker)))
    if spec.in_trial:
        # Ray Train's APIs refuse to run inside a Ray Tune trial, so its local mode is a pass-through here:
        # the one worker is rank 0, and Ray Tune gave this process its GPU share (CUDA_VISIBLE_DEVICES).
        rank = 0
        device = torch.device("cuda" if spec.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu")
    else:
        from ray.train.torch import get_device

        rank = ray.train.get_context().get_world_rank()
        device = get_device()
    features = None
    if plan.features is not None:
        # The embeddings the sweep computed once, straight from Ray's object store (any node).
        from clapray.features.provide import from_shareable

        features = from_shareable(ray.get(plan.features[0]))
    learner = ContinualLearner(cfg, device=device, features=features, feature_store=spec.feature_store)
    resume_learner(learner, spec.run_folder(identity.trial_id), from_train_run=not spec.in_trial)
    reports = TaskReports(spec.in_trial, spec.run_folder(identity.trial_id))
    writer = identity.open_writer(spec.store, cfg, learner.provenance()) if rank == 0 else None
    if rank == 0:
        # Heartbeats inside each task, for the driver's console (it may run on another node).
        learner.progress = Throttled(FileSink(progress_path(spec.store, identity.run_id)), learner.num_tasks)
    timeline.mark("worker", "learner_ready", identity.trial_id)
    if learner.num_tasks and learner.tasks_done == learner.num_tasks:
        report_completed_run(learner, writer, reports)
        return
    start = time.perf_counter()
    for task in range(learner.tasks_done, learner.num_tasks):
        timeline.mark("worker", "task_start", identity.trial_id)
        try:
            result = learner.learn_task(task)
        except TrainingDiverged as err:
            # Deterministic: retrying would diverge again. Record it and end the trial.
            if writer is not None:
                writer.mark("error", str(err))
            reports.send({"tasks_done": task, "diverged": True, "num_tasks": learner.num_tasks,
                          spec.metric: float("nan")})
            return
        timeline.mark("worker", "task_end", identity.trial_id)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if writer is not None:
                gpu_s = (time.perf_counter() - start) if device.type == "cuda" else None
                writer.write_task(result, learner.history, gpu_s=gpu_s)
                checkpoint = Path(folder)
                learner.save(checkpoint / task_checkpoints.LEARNER_FILE)
                # What the store's run row records beside the config, so a lost row can be restored from here.
                provenance = learner.provenance()
                (checkpoint / PROVENANCE_FILE).write_text(json.dumps({
                    "dataset_fingerprint": provenance.dataset_fingerprint,
                    "trainable_params": provenance.trainable_params,
                    "used_feature_cache": provenance.used_feature_cache}))
            reports.send(task_metrics(result, learner.num_tasks), checkpoint, task)
        timeline.mark("worker", "reported", identity.trial_id)
        maybe_inject_failure(task, identity.run_id, identity.seed)
    timeline.mark("worker", "exit", identity.trial_id)


def resume_learner(learner, folder: str, *, from_train_run: bool) -> None:
    """Continue ``learner`` from the trial's newest task checkpoint, if it has one.

    A worker group's Ray Train run (``from_train_run``) hands over the checkpoint its own state registered;
    otherwise (the worker runs in the trial's process, or Train's run state was lost before it registered a
    checkpoint it had persisted) the newest loadable ``task_<k>`` folder of the trial's run folder is the
    one (:mod:`clapray.sweep.task_checkpoints`: a folder is complete once its learner loads)."""
    from clapray.checkpoint import load_checkpoint

    checkpoint = ray.train.get_checkpoint() if from_train_run else None
    if checkpoint is not None:
        with checkpoint.as_directory() as local:
            learner.load(Path(local) / task_checkpoints.LEARNER_FILE)
        return
    state = task_checkpoints.newest(folder, lambda local: load_checkpoint(local / task_checkpoints.LEARNER_FILE))
    if state is not None:
        learner.load_state_dict(state)


@dataclass(frozen=True)
class TaskReports:
    """How a trial's worker reports a task (its metrics, and rank 0's checkpoint folder) to Ray.

    In a worker group, through ``ray.train.report``: the controller persists the checkpoint in the trial's run
    folder and passes the metrics to Ray Tune. Inside the trial's process (where Ray Train's report refuses
    to run: it is a Tune trial), the checkpoint is persisted to the same folder here, then the metrics go
    straight to Ray Tune: the searcher, the scheduler and the sweep's callbacks see the same
    results either way. Ray Tune answers a report of a trial it stopped (ASHA) by ending the training
    function there."""

    in_trial: bool
    run_folder: str

    def send(self, metrics: dict[str, Any], checkpoint: Path | None = None, task: int | None = None) -> None:
        if not self.in_trial:
            ray.train.report(metrics, checkpoint=None if checkpoint is None
                             else ray.train.Checkpoint.from_directory(str(checkpoint)),
                             checkpoint_dir_name=None if task is None else task_checkpoints.folder_name(task))
            return
        if checkpoint is not None and task is not None:
            task_checkpoints.persist(checkpoint, self.run_folder, task)
        ray.tune.report(metrics)


def report_completed_run(learner, writer, reports: TaskReports) -> None:
    """A resumed trial whose every task is done: make sure the store has its rows, report the last task.

    Rank 0 rewrites the rows from the checkpoint's history unless the store already holds all of them
    (a compacted run always does); every rank reports, as Ray Train expects of each worker."""
    if writer is not None and writer.compacted_in is None and not writer.holds_complete_run(learner.num_tasks):
        writer.write_task(learner.history[-1], learner.history)
    reports.send(task_metrics(learner.history[-1], learner.num_tasks))


class TimelineCallback(ray.train.UserCallback):
    """Marks each report as the Train controller registers it (``bench ray``'s timeline; see
    :mod:`clapray.sweep.timeline`)."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id

    def after_report(self, run_context, metrics, checkpoint) -> None:
        timeline.mark("controller", "report_registered", self.trial_id)


def trial_driver(config: dict[str, Any], feature_refs: dict[str, list[Any]] | None = None) -> None:
    """The Tune trial: build and fit the trial's Ray Train trainer.

    A trial of one worker runs under Ray Train's ``DataParallelTrainer`` without a torch backend: no
    process group to set up (the learner trains identically without one, see
    :class:`~clapray.learner.ContinualLearner`), and neither this process nor the Train controller imports
    torch. Several workers need the process group: a ``TorchTrainer``.
    """
    from clapray.features.groups import feature_group

    trial_id = ray.tune.get_context().get_trial_id()
    timeline.mark("driver", "enter", trial_id)
    spec: TrialSpec = config["trainer"]
    cfg = trial_run_config(config, trial_id)
    plan = WorkerPlan(spec=spec, identity=TrialIdentity.of(spec.sweep, trial_id, config), run=cfg,
                      features=(feature_refs or {}).get(feature_group(cfg)))
    if spec.in_trial:
        # Ray Train's local mode: the training function runs here, in this Tune trial's process (which holds
        # the worker's CPUs and GPU share), and reports to Ray Tune itself (:class:`TaskReports`).
        trainer = trainer_class(1)(train_worker, train_loop_config={"plan": plan},
                                   scaling_config=ray.train.ScalingConfig(num_workers=0),
                                   run_config=ray.train.RunConfig(name=spec.run_name(trial_id)))
    else:
        callbacks = [TuneReportCallback()] + ([TimelineCallback(trial_id)] if timeline.enabled() else [])
        trainer = trainer_class(spec.workers_per_trial)(
            train_worker,
            train_loop_config={"plan": plan},
            scaling_config=ray.train.ScalingConfig(num_workers=spec.workers_per_trial,
                                                   use_gpu=spec.gpus_per_worker > 0,
                                                   resources_per_worker=spec.worker_resources()),
            run_config=ray.train.RunConfig(
                name=spec.run_name(trial_id),  # in spec.run_folder(trial_id)
                storage_path=spec.train_storage,
                failure_config=ray.train.FailureConfig(max_failures=spec.retries),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=task_checkpoints.KEEP),
                callbacks=callbacks,
            ),
        )
    timeline.mark("driver", "fit", trial_id)
    trainer.fit()
    timeline.mark("driver", "fitted", trial_id)


def trainer_class(workers: int) -> type:
    """Ray Train's trainer for a trial of ``workers`` workers (see :func:`trial_driver`)."""
    if workers == 1:
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

        return _without_dataset_manager(DataParallelTrainer)
    from ray.train.torch import TorchTrainer

    return _without_dataset_manager(TorchTrainer)


@functools.cache
def _without_dataset_manager(trainer: type) -> type:
    """``trainer`` without Ray Data's per-run ``DatasetManager`` actor when the run has no Ray Datasets.

    Ray Train adds its datasets callback to every run, and it starts one more actor process per trial
    (importing Ray Data) that a sweep, which gives its workers no Ray Datasets, never calls. Filtering the
    default callbacks (a Ray-internal hook: should Ray rename it, the override is simply never called and
    every run keeps the callback) saves that process's start-up CPU on every trial."""
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    class WithoutDatasetManager(trainer):
        def _create_default_callbacks(self) -> list:
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    WithoutDatasetManager.__name__ = WithoutDatasetManager.__qualname__ = trainer.__name__
    return WithoutDatasetManager
