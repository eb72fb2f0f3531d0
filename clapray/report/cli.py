"""``python -m clapray.report RESULTS [RESULTS ...] [--out DIR] [--by COLUMNS] [--metric NAMES]``.

Reads one or several results stores (sweep directories, local or ``s3://``), writes paper-style tables
(Markdown, CSV, LaTeX for the main table), figures (PNG) and ``index.md`` into DIR (default
``RESULTS/report``), and prints the path of the index last. Incomplete trials are left out and counted.
"""

from __future__ import annotations

import argparse
import difflib
import shlex
import sys
import tempfile
import time
from pathlib import Path

from clapray.errors import UserError, exit_on_user_error

DEFAULT_BY = ("variant", "inference")
DEFAULT_METRICS = ("avg_acc", "last_acc")
# Shorthands for the columns users mean most often.
ALIASES = {"deterministic": "inference", "method.deterministic": "inference", "dataset": "benchmark",
           "data.dataset": "benchmark", "method.variant": "variant"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clapray.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", metavar="RESULTS",
                        help="results store: a sweep directory such as results/quickstart, or s3://bucket/prefix/sweep")
    parser.add_argument("--out", metavar="DIR", help="where the report goes (default: RESULTS/report, the first store)")
    parser.add_argument("--by", metavar="COLUMNS", default=",".join(DEFAULT_BY),
                        help="comma-separated row columns of the main tables (default: variant,inference); "
                             "any runs column or one of variant, inference, benchmark, setting, cell, seed")
    parser.add_argument("--metric", metavar="NAMES", default=",".join(DEFAULT_METRICS),
                        help="comma-separated metric columns of the runs table (default: avg_acc,last_acc); "
                             "the first selects configurations and drives the figures")
    return parser


def _split(text: str, option: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"{option}: expected one or more comma-separated column names, got {text!r}")
    return items


def _check_columns(names: list[str], available: list[str], option: str, what: str) -> None:
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"{option}: {name!r} is not {what} of the runs table{hint}")


def resolve_options(runs, by_text: str, metric_text: str) -> tuple[list[str], list[str]]:
    import pandas as pd

    by = [ALIASES.get(b, b) for b in _split(by_text, "--by")]
    metrics = _split(metric_text, "--metric")
    _check_columns(by, list(runs.columns), "--by", "a column")
    numeric = [c for c in runs.columns
               if pd.api.types.is_numeric_dtype(runs[c]) and not pd.api.types.is_bool_dtype(runs[c])]
    _check_columns(metrics, numeric, "--metric", "a numeric column")
    return list(dict.fromkeys(by)), list(dict.fromkeys(metrics))


def _upload(local: Path, target: str) -> None:
    """Copy a finished report directory to a URI (``s3://...``) with pyarrow's filesystems."""
    import pyarrow.fs as pafs

    from clapray.fileio import resolve_filesystem

    fs, path = resolve_filesystem(target, None)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


MANIFEST = ".report-files"


def _remove_stale(report) -> None:
    """Delete what an earlier report in the same directory wrote and this one did not (a knob or cell
    that is gone), so the directory holds only what the index links; nothing else is touched."""
    manifest = report.out / MANIFEST
    written = {f for a in report.artefacts for f in a.files} | {"index.md"}
    if manifest.exists():
        for name in set(manifest.read_text().split()) - written:
            if name and "/" not in name and "\\" not in name and not name.startswith("."):
                (report.out / name).unlink(missing_ok=True)
    manifest.write_text("\n".join(sorted(written)) + "\n")


def make_report(results: list[str], *, out: str | None = None, by: str = ",".join(DEFAULT_BY),
                metric: str = ",".join(DEFAULT_METRICS), stream=None) -> str:
    """Build the report; return the index's path (a local path, or a URI for a remote ``out``)."""
    from clapray.fileio import child
    from clapray.report.build import build_report
    from clapray.report.index import write_index
    from clapray.report.load import load_store

    stream = stream or sys.stdout
    start = time.perf_counter()
    store = load_store(results)
    rows, metrics = resolve_options(store.runs, by, metric)
    print(f"read {len(store.roots)} store{'s' if len(store.roots) > 1 else ''}: {store.summary()}", file=stream)
    if len(store.incomplete):
        print(f"{len(store.incomplete)} incomplete trials are excluded from every table and figure "
              f"(listed in incomplete.md)", file=stream)
    target = out or child(results[0], "report")
    remote = "://" in target and not target.startswith("file://")
    # The index records the command that made it, spelled out from the options (not from sys.argv, which
    # is another program's when the report is made in-process).
    words = ["python", "-m", "clapray.report", *results, *(["--out", out] if out else [])]
    words += [*(["--by", by] if by != ",".join(DEFAULT_BY) else []),
              *(["--metric", metric] if metric != ",".join(DEFAULT_METRICS) else [])]
    command = " ".join(shlex.quote(w) for w in words)
    with tempfile.TemporaryDirectory(prefix="clapray-report-") as tmp:
        local = Path(tmp) if remote else Path(target.removeprefix("file://"))
        report = build_report(store, local, by=rows, metrics=metrics)
        index = write_index(report, store, command)
        _remove_stale(report)
        if remote:
            _upload(local, target)
            index_text = child(target, "index.md")
        else:
            index_text = str(index)
    n_tables = sum(a.kind == "table" for a in report.artefacts)
    n_figures = sum(a.kind == "figure" for a in report.artefacts)
    print(f"wrote {n_tables} tables and {n_figures} figures in {time.perf_counter() - start:.1f}s", file=stream)
    return index_text


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    index = make_report(args.results, out=args.out, by=args.by, metric=args.metric)
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
