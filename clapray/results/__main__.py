"""``python -m clapray.results {compact,verify} STORE`` and ``schema``: a results store's maintenance and
its data dictionary.

    python -m clapray.results verify results/quickstart     # list every inconsistency; exit 1 if any
    python -m clapray.results compact results/quickstart    # fold ended runs into one file per table
    python -m clapray.results schema > docs/results-schema.md   # every table and column: type, unit, meaning

STORE is a store root (the folder holding ``runs/``, ``tasks/``, ...: ``<storage>/<sweep>`` for a sweep),
a local path or an ``s3://`` URI. ``compact`` takes the store's lease, so it refuses to run beside a sweep
driver (exit 2) and no driver starts while it runs.
"""

from __future__ import annotations

import argparse
import sys

from clapray.errors import UserError, exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clapray.results", description="Maintain a results store.")
    sub = parser.add_subparsers(dest="command", required=True)
    compact = sub.add_parser("compact", help="merge the files of ended runs into one file per table")
    compact.add_argument("store", help="store root: a local path or s3://bucket/prefix/<sweep>")
    verify = sub.add_parser("verify", help="check the store's consistency; exit 1 if it has problems")
    verify.add_argument("store", help="store root: a local path or s3://bucket/prefix/<sweep>")
    sub.add_parser("schema", help="print the data dictionary (every table and column) as Markdown")
    return parser


def _require_store(store: str) -> None:
    from clapray.fileio import resolve_filesystem
    from clapray.results.files import list_table

    fs, path = resolve_filesystem(store)
    if not any(list_table(fs, path, t).run_ids() or list_table(fs, path, t).unreadable
               for t in ("runs", "tasks", "accuracy")):
        raise UserError(f"{store}: no results store here (expected runs/, tasks/ and accuracy/ folders of "
                        f"Parquet files)")


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "schema":
        from clapray.results.docs import schema_markdown

        sys.stdout.write(schema_markdown())
        return 0
    _require_store(args.store)
    if args.command == "verify":
        from clapray.results import verify_consistency

        problems = verify_consistency(args.store)
        for problem in problems:
            print(problem)
        print(f"{args.store}: {'consistent' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    from clapray.results.compact import compact
    from clapray.results.lease import held_lease

    with held_lease(args.store):  # raises SweepBusy (exit 2) while a sweep driver holds the store
        print(compact(args.store).line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
