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

from clapray.errors import exit_on_user_error
from clapray.sweep.describe import describe
from clapray.sweep.loader import load_sweep_config, resolve_sweep_argument


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clapray.sweep",
                                     description="A Ray Tune + Optuna + Ray Train sweep of CLAP4CLIP runs.")
    parser.add_argument("sweep", nargs="?", help="sweep YAML, or the name of a shipped sweep (default quickstart)")
    parser.add_argument("--dry-run", action="store_true", help="print cells, space and trial count; start nothing")
    parser.add_argument("--address", help="Ray cluster to connect to ('auto' on a cluster head); default: local")
    parser.add_argument("--storage", help="override the YAML's storage (local path or s3://bucket/prefix)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a sweep field, e.g. --set search.trials_per_cell=2")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's and Optuna's own output (worker logs, start-up notices) on the console")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sweep = load_sweep_config(resolve_sweep_argument(args.sweep), args.overrides)
    if args.storage:
        sweep = replace(sweep, storage=args.storage)
    if args.dry_run:
        print(describe(sweep))
        return 0
    from clapray.sweep.driver import run_sweep

    grid = run_sweep(sweep, address=args.address, verbose=args.verbose)
    return 0 if not grid.errors else 1


if __name__ == "__main__":
    sys.exit(main())
