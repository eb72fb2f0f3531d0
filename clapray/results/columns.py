"""Every fixed column of the store's tables: name, Arrow type, unit and meaning, in file order.

The schemas (:mod:`clapray.results.schema`) are built from these lists and the data dictionary
``docs/results-schema.md`` is generated from them (:mod:`clapray.results.docs`), so a column cannot be
added without its documentation, and the documentation cannot drift from the files. Units: accuracies
in percent (0-100), ECE and the novelty-detection scores as fractions in [0, 1], times in seconds,
memory in MiB.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

_F64 = pa.float64()
_I64 = pa.int64()
_STR = pa.string()
_BOOL = pa.bool_()
# Run timestamps: milliseconds since the epoch (Parquet has no seconds unit), time zone UTC; pandas reads
# them as datetime64[ms, UTC], DuckDB as TIMESTAMP WITH TIME ZONE.
TIMESTAMP = pa.timestamp("ms", tz="UTC")

PERCENT = "%"
FRACTION = "[0, 1]"
SECONDS = "s"
COUNT = "count"


@dataclass(frozen=True)
class Column:
    """One column: its name, Arrow type, unit (empty when it has none) and meaning."""

    name: str
    type: pa.DataType
    unit: str
    doc: str

    @property
    def pair(self) -> tuple[str, pa.DataType]:
        return self.name, self.type


def C(name: str, type_: pa.DataType, unit: str, doc: str) -> Column:  # noqa: N802 (a table of columns reads better)
    return Column(name, type_, unit, doc)


# --------------------------------------------------------------------------------------------------
# Id columns: given by the writer's caller, before run_id in every table (a sweep's; single runs have none).

SWEEP_ID_COLUMNS: tuple[Column, ...] = (
    C("sweep", _STR, "", "the sweep's name (a sweep store; runs of `python -m clapray.run` have no id columns)"),
    C("cell", _STR, "", "the grid cell, `axis=value` per grid axis joined by commas; the same coordinates are "
      "columns of `runs` (`setting`, the config fields, `grid`)"),
    C("trial_id", _STR, "", "Ray Tune's trial id"),
    C("seed", _I64, "", "the trial's seed: it sets `seeds.init`, and `seeds.class_order` too when the sweep's "
      "`seed_fields` lists it"),
    C("configuration", _STR, "", "the sampled configuration, `<cell>#<index>`: trials differing only in their "
      "seed share it (group by it, or by `cell` and the sampled fields, to aggregate over seeds)"),
)

# --------------------------------------------------------------------------------------------------
# runs

RUN_COLUMNS: tuple[Column, ...] = (
    C("run_id", _STR, "", "the run's name in the store and its file names: `trial-<trial_id>` in a sweep, "
      "`<name>-<config hash>` for `python -m clapray.run`"),
    C("status", _STR, "", "running, finished (every task done), stopped (by the scheduler) or error"),
    C("error", _STR, "", "why a run stopped or failed (the exception or the scheduler's decision); null otherwise"),
    C("setting", _STR, "", "the sweep's `setting` grid axis: the preset's name (standard, replay_free, budget or "
      "one of the sweep's own `settings`); null outside a sweep with a setting axis"),
    C("grid", _STR, "", "every grid coordinate of the run's cell as a JSON object, `{\"setting\": \"standard\", "
      "\"method.variant\": \"coop\"}` (settings by preset name); null outside a sweep"),
    C("sampled", _STR, "", "the values the searcher sampled for this run's configuration, as a JSON object of "
      "config fields; `{}` when nothing was sampled; null outside a sweep"),
    C("tasks_done", _I64, COUNT, "tasks finished and written"),
    C("num_tasks", _I64, COUNT, "tasks of the run's scenario"),
    C("avg_acc", _F64, PERCENT, "average incremental accuracy after the last finished task: mean of A_0..A_t, "
      "each A_i the macro mean over the seen tasks' test sets (the paper's Avg)"),
    C("last_acc", _F64, PERCENT, "A_t after the last finished task (the paper's Last once every task is done)"),
    C("bwt", _F64, PERCENT, "backward transfer after the last finished task: mean over earlier tasks j of "
      "a[t, j] - a[j, j]; NaN after one task"),
    C("forgetting", _F64, PERCENT, "average forgetting after the last finished task (Chaudhry et al., 2018): mean "
      "over earlier tasks j of the best accuracy task j had before minus a[t, j]; NaN after one task"),
    C("fwt", _F64, PERCENT, "forward transfer against zero-shot CLIP: mean over the finished tasks t < T-1 of "
      "`tasks.next_task_acc - tasks.next_task_zero_shot_acc`; NaN without novelty detection (`eval.phndd`) "
      "or when the image tower is not frozen (MaPLe)"),
    C("ece", _F64, FRACTION, "expected calibration error over every seen test image after the last finished task "
      "(15 bins by default, `eval.ece_bins`)"),
    C("ece_per_batch", _F64, FRACTION, "the official ECE: mean of the per-batch ECE over the evaluation batches"),
    C("phndd_auroc", _F64, FRACTION, "novelty detection (energy score; seen-task vs future-task test images): "
      "AUROC, mean over the steps that have future tasks"),
    C("phndd_aupr", _F64, FRACTION, "novelty detection: area under the precision-recall curve, mean over steps"),
    C("phndd_fpr95", _F64, FRACTION, "novelty detection: false-positive rate at the threshold whose TPR is nearest "
      "0.95 (the official rule), mean over steps"),
    C("phndd_fpr95_at_least", _F64, FRACTION, "novelty detection: the smallest FPR with TPR >= 0.95, mean over steps"),
    C("wall_s", _F64, SECONDS, "wall-clock seconds of the run's tasks (sum of `tasks.total_s`)"),
    C("gpu_s", _F64, SECONDS, "GPU-seconds of a sweep trial's rank 0 so far; NaN on CPU"),
    C("peak_memory_mb", _F64, "MiB", "peak memory over the tasks: the CUDA allocator's peak, or the process's peak "
      "resident set on CPU"),
    C("started_at", TIMESTAMP, "UTC", "when the run's first row was written (kept across resumes)"),
    C("updated_at", TIMESTAMP, "UTC", "when the row was last written"),
    C("git_sha", _STR, "", "HEAD of the clapray checkout that ran it; null for an installed copy"),
    C("git_dirty", _BOOL, "", "whether that checkout had uncommitted changes"),
    C("package_versions", _STR, "", "JSON object: versions of clapray, torch, open_clip_torch, numpy, pyarrow, "
      "pandas, ray, optuna"),
    C("python_version", _STR, "", "the Python version"),
    C("config_hash", _STR, "", "hash of every config field but `name` and `output_dir` (seed included)"),
    C("dataset_fingerprint", _STR, "", "the benchmark's content fingerprint (files and split)"),
    C("trainable_params", _I64, COUNT, "parameters the method trains once every task is learnt (0 for zero-shot)"),
    C("used_feature_cache", _BOOL, "", "whether training and evaluation read the frozen-feature cache"),
    C("config_yaml", _STR, "", "the complete resolved run config as YAML, every field, also those stored as null "
      "in the config columns (`python -m clapray.run <file>` reruns it)"),
)
# A runs file holds the id columns, these, one column per config field (CONFIG_COLUMN_DOC), then any extras.
CONFIG_COLUMN_DOC = ("one column per RunConfig field, dotted name, type from the field's annotation (tuples as a "
                     "JSON list); **null where the run never reads the field** given its variant, head and "
                     "setting (`RunConfig.unused_fields`: e.g. zero-shot has no KD weight or memory, the "
                     "deterministic head no Monte-Carlo samples or KL, a replay-free run no memory or "
                     "consolidation, each prompt variant only its own `method.prompt.*` options); `config_yaml` "
                     "keeps every value")

# --------------------------------------------------------------------------------------------------
# tasks: one row per finished task t of a run

TASK_HEAD: tuple[Column, ...] = (
    C("run_id", _STR, "", "the run (see `runs.run_id`)"),
    C("task", _I64, "", "the task just learnt, t (0-based)"),
    C("num_tasks", _I64, COUNT, "tasks of the run's scenario"),
    C("last_acc", _F64, PERCENT, "A_t: accuracy after task t, macro mean over the test sets of tasks 0..t"),
    C("avg_acc", _F64, PERCENT, "mean of A_0..A_t"),
    C("bwt", _F64, PERCENT, "backward transfer at t; NaN at t = 0"),
    C("forgetting", _F64, PERCENT, "average forgetting at t (see `runs.forgetting`); NaN at t = 0"),
    C("next_task_acc", _F64, PERCENT, "accuracy on task t+1's test images of the model after task t, over the "
      "classes of tasks 0..t+1, task t+1's classes scored with zero-shot CLIP's text features (no adapter, no "
      "prompt): acc[t, t+1] of forward transfer; NaN at the last task, without `eval.phndd`, or for MaPLe"),
    C("next_task_zero_shot_acc", _F64, PERCENT, "zero-shot CLIP on the same images and classes as `next_task_acc` "
      "(the reference b_{t+1}); `next_task_acc - next_task_zero_shot_acc` is task t+1's forward transfer"),
    C("ece", _F64, FRACTION, "ECE over the seen test images after task t"),
    C("ece_per_batch", _F64, FRACTION, "the official per-batch ECE after task t"),
    C("phndd_auroc", _F64, FRACTION, "novelty detection AUROC at t (NaN at the last task)"),
    C("phndd_aupr", _F64, FRACTION, "novelty detection AUPR at t"),
    C("phndd_fpr95", _F64, FRACTION, "novelty detection FPR at TPR nearest 0.95 at t"),
    C("phndd_fpr95_at_least", _F64, FRACTION, "novelty detection smallest FPR with TPR >= 0.95 at t"),
)
LOSS_DOCS: dict[str, str] = {
    "train": "main training of task t: mean total loss per step (CE + weighted KD + weighted KL + prompt terms)",
    "consolidation": "memory consolidation after task t: mean total loss per step",
}
LOSS_TERM_DOCS: dict[str, str] = {
    "ce": "cross-entropy over the Monte-Carlo samples", "kd": "language-aware distillation term (unweighted)",
    "kl": "KL to the prior (unweighted)", "prompt": "the prompt variant's own weighted losses (AttriCLIP)",
}
TIMING_DOCS: dict[str, str] = {
    "train": "main training of task t (growing the head included)",
    "consolidate": "exemplar selection and memory consolidation",
    "evaluate": "evaluation on the seen tasks (and the future ones, for novelty detection)",
    "total": "the whole task",
}
TASK_TAIL: tuple[Column, ...] = (
    C("peak_memory_mb", _F64, "MiB", "peak memory during task t (CUDA allocator, or the process's peak RSS on CPU)"),
    C("n_steps", _I64, COUNT, "optimiser steps of main training"),
    C("n_consolidation_steps", _I64, COUNT, "optimiser steps of memory consolidation"),
    C("memory_size", _I64, COUNT, "exemplars in the memory after task t"),
    C("other_metrics", _STR, "", "JSON object of losses and times outside the fixed columns (a new variant's); "
      "null when none"),
)

# --------------------------------------------------------------------------------------------------
# accuracy and calibration

ACCURACY_COLUMNS: tuple[Column, ...] = (
    C("run_id", _STR, "", "the run"),
    C("task", _I64, "", "t: the model after learning task t"),
    C("eval_task", _I64, "", "j <= t: the test set of task j"),
    C("acc", _F64, PERCENT, "a[t, j]: class-incremental accuracy (argmax over every class seen so far)"),
    C("task_aware_acc", _F64, PERCENT, "the same with the task id given (argmax within task j's classes)"),
    C("n_samples", _I64, COUNT, "test images of task j"),
)
CALIBRATION_COLUMNS: tuple[Column, ...] = (
    C("run_id", _STR, "", "the run"),
    C("task", _I64, "", "after learning task t"),
    C("n_bins", _I64, COUNT, "equal-width confidence bins of the diagram"),
    C("bin", _I64, "", "the bin index; bin `n_bins` holds the confidences of exactly 1"),
    C("lower", _F64, FRACTION, "the bin's lower confidence bound"),
    C("upper", _F64, FRACTION, "the bin's upper confidence bound"),
    C("count", _I64, COUNT, "test images whose top-1 confidence falls in the bin (empty bins have no row)"),
    C("mean_confidence", _F64, FRACTION, "their mean top-1 confidence"),
    C("accuracy", _F64, FRACTION, "their fraction of correct top-1 predictions"),
)
