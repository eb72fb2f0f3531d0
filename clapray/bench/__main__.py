"""``python -m clapray.bench <subcommand> [options]``: measure what a sweep would cost before running it.

Each subcommand lives in its own module, registered in :data:`SUBCOMMANDS` by name; the module provides
``DESCRIPTION`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``. Every module is imported
to build the command line, so keep module tops light and import heavy dependencies (torch, Ray) inside
``main``: an optional dependency of one benchmark then never breaks another.

    python -m clapray.bench variants                     # step time and memory of every prompt variant
    python -m clapray.bench variants --backbone ViT-B-16 --batch 8
    python -m clapray.bench cache                        # naive vs frozen-feature-cache trial, speed-up
    python -m clapray.bench ray                          # Ray Tune/Train overhead per trial
    python -m clapray.bench eval-noise                   # how much one model's Last moves with the MC draws
    python -m clapray.bench yaml                         # cost of refusing hostile YAML vs yaml.safe_load
    python -m clapray.bench headroom                     # zero-shot vs linear-probe ceiling of frozen features
"""

from __future__ import annotations

import argparse
import importlib
import sys

from clapray.errors import exit_on_user_error

# name -> module implementing the subcommand; add an entry to plug in a new benchmark.
SUBCOMMANDS: dict[str, str] = {
    "variants": "clapray.bench.variants",
    "cache": "clapray.bench.cache",
    "ray": "clapray.bench.ray_overhead",
    "eval-noise": "clapray.bench.eval_noise",
    "yaml": "clapray.bench.hostile_yaml",
    "headroom": "clapray.bench.headroom",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clapray.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION))
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.subcommand])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
