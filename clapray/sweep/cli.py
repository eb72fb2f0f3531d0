"""``python -m clapray.sweep [SWEEP] [--dry-run] [--address A] [--storage S] [--set F=V ...]``.

SWEEP is a sweep YAML or the name of a shipped sweep (``quickstart``, ``ablation``, ``variants``,
``resource``; default ``quickstart``)::

    python -m clapray.sweep sweeps/quickstart.yaml               # a local Ray on this machine
    python -m clapray.sweep quickstart                           # the same, by name
    python -m clapray.sweep sweeps/ablation.yaml --dry-run       # cells, space and trial count; no Ray
    python -m clapray.sweep sweeps/ablation.yaml --address auto --storage s3://bucket/prefix   # on a cluster
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from clapray.errors import ConfigError, UserError, exit_on_user_error
from clapray.sweep.cluster import local_node
from clapray.sweep.describe import describe
from clapray.sweep.loader import load_sweep_config, resolve_sweep_argument
from clapray.sweep.model import SweepOptions
from clapray.sweep.preflight import check_resources, check_sweep


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clapray.sweep",
                                     description="A Ray Tune + Optuna + Ray Train sweep of CLAP4CLIP runs.")
    parser.add_argument("sweep", nargs="?", help="sweep YAML, or the name of a shipped sweep (default quickstart)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check everything a run would, print cells, space and trial count; start nothing")
    parser.add_argument("--address", help="Ray cluster to connect to ('auto' on a cluster head); default: local")
    parser.add_argument("--storage", help="override the YAML's storage (local path or s3://bucket/prefix)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a sweep field, e.g. --set search.trials_per_cell=2")
    parser.add_argument("--bench-file", metavar="FILE",
                        help="measured seconds per trial (written by `python -m clapray.bench ray --save FILE`) for "
                             "the dry run's cost estimate; default <storage>/_bench/ray.json when it exists")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's and Optuna's own output (worker logs, start-up notices) on the console")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = resolve_sweep_argument(args.sweep)
    sweep = load_sweep_config(path, args.overrides)
    storage_label = f"{path}: storage"
    if args.storage is not None:
        storage_label = "--storage"
        try:  # the YAML's storage rules, for the flag too
            SweepOptions(name=sweep.name, seeds=sweep.seeds, seed_fields=sweep.seed_fields, retries=sweep.retries,
                         storage=args.storage)
        except ConfigError as err:
            raise UserError(f"--storage: expected {err.expected}, got {err.got_text}") from None
        sweep = replace(sweep, storage=args.storage)
    # Everything checked before anything is written or started; --dry-run stops right after (printing the
    # plan before the resources check, so a sweep meant for a cluster still shows what it would run).
    check_sweep(sweep, address=args.address, storage_label=storage_label, dry_run=args.dry_run)
    if args.dry_run:
        bench = _bench_file(sweep, args.bench_file)  # a bad file is refused before anything is printed
        print(describe(sweep), flush=True)
        if args.address is None and sweep.resources.gpus_per_worker > 0 and not local_node().resources.get("GPU"):
            # A GPU sweep dry-run on a machine without GPUs is planned here and run on a cluster: say that this
            # machine cannot run it (its real run here exits 2). Any other trial that does not fit this machine
            # is refused like its real run.
            try:
                placement = check_resources(sweep, address=None)
            except UserError as err:
                print(f"note: not runnable on this machine: {err}; a real run here exits 2 "
                      "(check a cluster with --dry-run --address HOST:PORT)")
                _print_cost_estimate(sweep, bench, None)
                return 0
        else:
            placement = check_resources(sweep, address=args.address)
        if placement.note:
            print(placement.note)
        _print_cost_estimate(sweep, bench, placement.max_concurrent_trials)
        return 0
    if args.address is None:
        check_resources(sweep, address=None)  # before a local Ray starts; a cluster is checked once connected
    from clapray.sweep.driver import run_sweep

    grid = run_sweep(sweep, address=args.address, verbose=args.verbose)
    return 0 if not grid.errors else 1


def _bench_file(sweep, bench_file: str | None):
    """``(path, BenchFile)`` of measured seconds for the cost estimate: ``--bench-file``, else
    ``<storage>/_bench/ray.json``; ``(path, None)`` when there is none (or storage is S3), UserError when unusable."""
    from pathlib import Path

    from clapray.sweep.cost import BenchFile, default_bench_path

    if bench_file is not None:
        path = Path(bench_file)
        if not path.is_file():
            raise UserError(f"--bench-file: {bench_file} is not a file (write one with `python -m clapray.bench ray "
                            f"--save {bench_file}`)")
        return path, BenchFile.load(path)
    if sweep.storage.startswith("s3://"):
        return None, None
    path = default_bench_path(sweep.storage_path())
    return path, (BenchFile.load(path) if path.is_file() else None)


def _print_cost_estimate(sweep, bench, concurrent: int | None) -> None:
    """Trials x measured seconds per trial of each cell's variant (:mod:`clapray.sweep.cost`)."""
    from clapray.sweep.cost import cell_costs, estimate_lines
    from clapray.sweep.driver import cell_task_counts

    path, measured = bench
    if path is None:
        return
    if measured is None:
        print(f"cost: no measured seconds at {path} (python -m clapray.bench ray --save {path})")
        return
    for line in estimate_lines(cell_costs(sweep, cell_task_counts(sweep), measured), measured, str(path), concurrent):
        print(line)


if __name__ == "__main__":
    sys.exit(main())
