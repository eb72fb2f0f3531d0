"""``python -m clapray.run [CONFIG.yaml] [--set dotted.field=value ...]``: one run, in-process, no Ray.

Without a config file the embedded default (``clapray/configs/quickstart.yaml``: the generated shapes
benchmark and a tiny backbone on CPU) runs. The run writes into its own directory,
``<output_dir>/<name>-<config hash>/``: the resolved ``config.yaml`` and ``results.json`` (one entry
per task, rewritten atomically after every task so an interruption keeps every finished task).
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from clapray.config import RunConfig, describe_fields, load_run_config
from clapray.errors import UserError, exit_on_user_error
from clapray.records import TaskResult, write_json_atomic, write_text_atomic


def default_config_path() -> Path:
    return Path(str(resources.files("clapray") / "configs" / "quickstart.yaml"))


def shipped_config_paths() -> dict[str, Path]:
    """Run configs shipped with the package, by name (``quickstart``, ``cifar100``, ...)."""
    folder = Path(str(resources.files("clapray") / "configs"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_config_argument(value: str | None) -> Path:
    """A path, or the name of a shipped config (``cifar100``)."""
    if value is None:
        return default_config_path()
    path = Path(value)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    shipped = shipped_config_paths()
    if value in shipped:
        return shipped[value]
    raise UserError(f"{value}: no such config file, and no shipped config of that name "
                    f"(shipped: {', '.join(shipped)})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clapray.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="run YAML, or a shipped config name; default: quickstart")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field, e.g. --set memory.size=500 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--fields", action="store_true", help="list every config field with type, default, doc")
    return parser


def print_fields() -> None:
    for name, expected, default, doc in describe_fields(RunConfig):
        print(f"{name:34s} {expected:40s} default {default!r}\n{'':34s} {doc}")


def execute(cfg: RunConfig, *, out=None) -> list[TaskResult]:
    """Run ``cfg`` and write its directory; returns the per-task results."""
    out = out or sys.stdout
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    results: list[TaskResult] = []

    def on_task(result: TaskResult) -> None:
        results.append(result)
        print(result.summary_line(), file=out, flush=True)
        write_json_atomic(run_dir / "results.json", {
            "name": cfg.name, "config_hash": cfg.config_hash(), "tasks": [r.to_dict() for r in results]})

    if cfg.method.variant == "zeroshot":
        from clapray.zeroshot import run_zeroshot

        run_zeroshot(cfg, on_task=on_task)
    else:
        raise UserError(f"method.variant: {cfg.method.variant!r} needs the continual learner, which this "
                        "version does not include yet; use --set method.variant=zeroshot")
    final = results[-1]
    print(f"done: avg {final.avg_acc:.2f}  last {final.last_acc:.2f}  -> {run_dir}", file=out)
    return results


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.fields:
        print_fields()
        return 0
    path = resolve_config_argument(args.config)
    cfg = load_run_config(path, args.overrides)
    if args.dry_run:
        print(cfg.to_yaml(), end="")
        return 0
    execute(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
