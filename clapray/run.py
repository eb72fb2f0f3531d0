"""``python -m clapray.run [CONFIG.yaml] [--out DIR] [--set dotted.field=value ...]``: one run, no Ray.

Without a config file the embedded default runs (``clapray/configs/shapes_cl.yaml``: CLAP4CLIP on the
generated ``shapes_cl`` benchmark with the mini-CLIP, pretrained on first use and cached; 4 tasks on CPU;
``tiny`` is the seconds-long smoke run on a random-weight backbone). Results go to the Parquet store under DIR
(default: the config's ``output_dir``): ``DIR/runs``, ``DIR/tasks``, ``DIR/accuracy``, one row set per
task as it finishes. The run's own directory ``DIR/<run id>/`` holds the resolved ``config.yaml`` and
the checkpoint of the last finished task; running the same command again continues from it, and does
nothing when the run is complete.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from clapray.config import RunConfig, load_run_config, resolve_config_argument
from clapray.errors import exit_on_user_error
from clapray.fileio import write_text_atomic
from clapray.task_result import TaskResult
from clapray.typed_config import describe_fields
from clapray.validation import (
    check_data_available,
    check_output_dir,
    check_run,
    check_run_directory_name,
    check_weights,
)

EXIT_RUN_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clapray.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?",
                        help="run YAML, or a shipped config name (tiny, shapes_cl, cifar100, ...); default: shapes_cl")
    parser.add_argument("--out", metavar="DIR", help="results store and run directory (default: output_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field, e.g. --set memory.size=500 (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check everything the run would check, print the resolved config and exit")
    parser.add_argument("--fields", action="store_true", help="list every config field with type, default, doc")
    return parser


def print_fields() -> None:
    for name, expected, default, doc in describe_fields(RunConfig):
        print(f"{name:34s} {expected:40s} default {default!r}\n{'':34s} {doc}")


def execute(cfg: RunConfig, *, out=None) -> list[TaskResult]:
    """Run (or continue) ``cfg``, writing the store under ``cfg.output_dir``; returns every task's result.

    Raises :class:`~clapray.learner.TrainingDiverged` after recording status ``error`` in ``runs``.
    """
    from clapray.results import RunWriter

    out = out or sys.stdout
    store = Path(cfg.output_dir)
    rid = cfg.run_id()
    run_dir = store / rid
    checkpoint = run_dir / "checkpoint.pt"
    start = time.perf_counter()

    from clapray.checkpoint import load_checkpoint
    from clapray.learner import ContinualLearner
    from clapray.progress import ConsoleSink, Throttled

    # The checkpoint is read first (safely, see clapray.checkpoint): a damaged or tampered one is refused
    # before anything is built.
    state = load_checkpoint(checkpoint) if checkpoint.exists() else None
    # Every variant, the zero-shot reference row included, runs through the learner (which builds no head
    # for a variant that learns nothing); its features land in the store's cache, shared by later runs.
    learner = ContinualLearner(cfg, feature_store=str(store / "feature_cache"))
    # A heartbeat inside long tasks (step i/n of train, consolidate, evaluate), every $CLAPRAY_HEARTBEAT_S s.
    learner.progress = Throttled(ConsoleSink(out), learner.num_tasks)
    if state is not None:
        learner.load_state_dict(state)
    writer = RunWriter(store, rid, cfg, provenance=learner.provenance())
    if learner.tasks_done:
        print(f"resuming {rid} after task {learner.tasks_done}/{learner.num_tasks}", file=out)
    if learner.tasks_done == learner.num_tasks:
        final = learner.history[-1]
        print(f"already finished: avg {final.avg_acc:.2f}  last {final.last_acc:.2f}  -> {store}", file=out)
        return learner.history
    # Directories are made only once data and model are known to load, so a mistake leaves nothing behind.
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())

    history: list[TaskResult] = list(learner.history)

    def on_task(result: TaskResult) -> None:
        history.append(result)
        writer.write_task(result, history)
        elapsed = time.perf_counter() - start
        print(f"{result.summary_line()}  elapsed {elapsed:.1f}s", file=out, flush=True)

    try:
        learner.run(on_task=on_task, after_task=lambda lr: lr.save(checkpoint))
    except KeyboardInterrupt:
        writer.mark("stopped", "interrupted")
        raise
    except Exception as err:
        writer.mark("error", f"{type(err).__name__}: {err}")
        raise
    final = history[-1]
    print(f"done: avg {final.avg_acc:.2f}  last {final.last_acc:.2f}  -> {store} (run {rid})", file=out)
    return history


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.fields:
        print_fields()
        return 0
    path = resolve_config_argument(args.config)
    cfg = load_run_config(path, args.overrides)
    # One validation pass, the same for --dry-run and a real run, before anything is written.
    if args.out is not None:
        check_output_dir(args.out, "--out")
        cfg = replace(cfg, output_dir=args.out)
    else:
        check_output_dir(cfg.output_dir, f"{path}: output_dir")
    check_run(cfg, str(path))
    check_run_directory_name(cfg, str(path))
    if args.dry_run:
        check_weights(cfg, str(path))
        print(cfg.to_yaml(), end="")
        return 0
    check_data_available(cfg)  # before any weights are fetched: a missing dataset is one line, at once
    check_weights(cfg, str(path))
    from clapray.learner import TrainingDiverged

    try:
        execute(cfg)
    except TrainingDiverged as err:
        print(f"run failed: {err} (recorded as status 'error')", file=sys.stderr)
        return EXIT_RUN_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
