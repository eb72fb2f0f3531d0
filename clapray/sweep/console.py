"""A quiet console for the sweep driver: Ray's and Optuna's start-up chatter filtered, unless ``--verbose``.

A sweep's console should carry its own progress lines (:mod:`clapray.sweep.callbacks`). Left alone, Ray
and Optuna add lines that tell a researcher nothing actionable:

* Ray's token-authentication notice at every ``ray.init`` (``authentication_token_setup``), and its INFO
  lines (``Started a local Ray instance``, Tune's ``Wrote the latest version of all result files``);
* the raylet's ``N PYTHON worker processes have been started ... maximum expected startup concurrency``
  warnings, printed straight to stdout by Ray's error listener whenever a sweep starts its workers;
* Optuna's ``A new study created in ...`` / ``Using an existing study ...`` INFO lines, one per cell;
* Ray Tune's whole traceback of every failed trial (the sweep prints the reason and names Tune's
  ``error.txt``, which holds it) and its closing "Trials did not complete" list.

:func:`quiet_console` drops those records from their loggers and those lines from stdout and stderr by
pattern (the raylet's arrive as text, not log records); every other line, warnings and errors included,
passes. With ``verbose`` nothing is changed (and the driver sets Ray's ``log_to_driver``, so the workers'
own output reaches the console too).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence

# Lines printed to stdout/stderr as text that are dropped (each matched anywhere in the line). Ray's log
# handler is created by ray.init, inside quiet_console, so it writes to the filtered stream too.
NOISE_LINES: tuple[re.Pattern[str], ...] = (
    re.compile(r"PYTHON worker processes have been started on node"),
    re.compile(r"Token authentication is enabled for this Ray cluster"),
    re.compile(r"Started a local Ray instance"),
    re.compile(r"Wrote the latest version of all result files and experiment state"),
)
# Loggers whose records below a level, or starting with one of some texts, are dropped: (name, lowest level
# kept, texts). A filter on the logger, not its level: ray.init reconfigures logging (dictConfig), which
# resets the levels of Ray's loggers but keeps their filters. A logger's filter sees only the records logged
# to that logger itself. "Trials did not complete" repeats the sweep's own summary line.
QUIET_LOGGERS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("ray._private.authentication.authentication_token_setup", logging.ERROR, ()),
    ("ray._private.worker", logging.WARNING, ()),
    ("ray.tune.tune", logging.WARNING, ("Trials did not complete",)),
)
# Environment while quiet: Ray Tune logs every failed trial's whole traceback (its error.txt, which the
# sweep's failure line names) unless this is 0.
QUIET_ENVIRONMENT = {"TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}


class _Quiet(logging.Filter):
    """Drops records below ``level`` and records whose message starts with one of ``texts``."""

    def __init__(self, level: int, texts: tuple[str, ...]):
        super().__init__()
        self.level = level
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level and not str(record.msg).startswith(self.texts)


class FilteredStream(io.TextIOBase):
    """A text stream that forwards whole lines to ``target`` except those matching ``patterns``."""

    def __init__(self, target, patterns: Sequence[re.Pattern[str]] = NOISE_LINES):
        self.target = target
        self.patterns = patterns
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        kept = [line + "\n" for line in lines if not any(p.search(line) for p in self.patterns)]
        if kept:
            self.target.write("".join(kept))
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def close_partial(self) -> None:
        """Forward a last line without a newline (unless it is noise)."""
        if self._partial and not any(p.search(self._partial) for p in self.patterns):
            self.target.write(self._partial)
        self._partial = ""

    def isatty(self) -> bool:
        return bool(getattr(self.target, "isatty", lambda: False)())

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self.target, "encoding", "utf-8")

    def fileno(self) -> int:
        return self.target.fileno()


@contextlib.contextmanager
def quiet_console(verbose: bool = False) -> Iterator[None]:
    """Filter the start-up noise of Ray and Optuna while the block runs (module docstring)."""
    if verbose:
        yield
        return
    saved = []
    for name, level, texts in QUIET_LOGGERS:
        logger, quiet = logging.getLogger(name), _Quiet(level, texts)
        logger.addFilter(quiet)
        saved.append((logger, quiet))
    environment = {key: os.environ.get(key) for key in QUIET_ENVIRONMENT}
    os.environ.update(QUIET_ENVIRONMENT)
    # Optuna configures its library logger (level INFO) when first imported, so set it through its API.
    import optuna

    optuna_level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(optuna_level, optuna.logging.WARNING))
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = FilteredStream(out), FilteredStream(err)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, FilteredStream):
                stream.close_partial()
                stream.flush()
        sys.stdout, sys.stderr = out, err
        for logger, quiet in saved:
            logger.removeFilter(quiet)
        for key, value in environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        optuna.logging.set_verbosity(optuna_level)


def ray_started_line(context, address: str | None) -> str:
    """One line on the Ray the sweep uses: where it is, its dashboard, and where its workers log (the full
    output of every Train worker, which the console leaves out without ``--verbose``)."""
    info = getattr(context, "address_info", None) or {}
    where = f"connected to {address}" if address else "a local Ray on this machine"
    dashboard = getattr(context, "dashboard_url", None)
    parts = [f"ray: {where}"]
    if dashboard:
        parts.append(f"dashboard http://{dashboard}" if "://" not in dashboard else f"dashboard {dashboard}")
    if info.get("session_dir"):
        parts.append(f"worker logs in {info['session_dir']}/logs (this node)")
    return "; ".join(parts)
