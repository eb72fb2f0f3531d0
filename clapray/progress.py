"""Progress inside a task: heartbeats of the learner's long loops, throttled, for a console or a file.

A task can take minutes (training, memory consolidation, evaluation) with nothing to report until it
ends. The learner calls its ``progress`` hook (:class:`ProgressHook`) after every optimiser step and
every evaluation batch; :class:`Throttled` turns those calls into a :class:`Heartbeat` at most once every
``interval`` seconds (``$CLAPRAY_HEARTBEAT_S``, default 10) and hands it to a sink:

* :class:`ConsoleSink` prints it (``python -m clapray.run``);
* :class:`FileSink` writes it as a small JSON file, ``<store>/_progress/<run_id>.json``, which a sweep
  driver on another machine polls (:mod:`clapray.sweep.progress`): the Train worker that writes it may
  run on any node, and the store is the one place both sides reach (a local disk or ``s3://``).

Nothing here imports torch or Ray: the learner stays a plain object and the driver reads heartbeats
without the learner's dependencies. A hook never raises into the learner: a heartbeat that cannot be
written is skipped (progress is advisory; results go through the store's writer).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol, TextIO

from clapray.errors import UserError

log = logging.getLogger(__name__)

HEARTBEAT_ENV = "CLAPRAY_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 10.0
# Under the store root; the leading underscore keeps it out of pyarrow's dataset discovery.
PROGRESS_DIR = "_progress"

# What each phase of a task counts (the learner's names): optimiser steps or evaluation batches.
# ``encode`` is the frozen-feature cache being built, outside any task (task -1).
PHASE_UNITS = {"train": "step", "consolidate": "step", "memory": "batch", "evaluate": "batch", "encode": "batch"}


class ProgressHook(Protocol):
    """What the learner calls: ``hook(task, phase, done, total)`` after each unit of work of a phase."""

    def __call__(self, task: int, phase: str, done: int, total: int) -> None: ...


@dataclass(frozen=True)
class Heartbeat:
    """Where a run is inside its current task.

    Attributes:
        task: the task being learnt (0-based); -1 for work outside a task (building the feature cache).
        num_tasks: tasks of the run.
        phase: ``train``, ``memory`` (choosing exemplars), ``consolidate`` or ``evaluate``.
        done: units of the phase finished (optimiser steps, or evaluation batches).
        total: units of the phase.
        at: wall-clock time (``time.time()``) it was taken.
        seq: counts the run's heartbeats, so a reader tells a new one from one it has shown.
    """

    task: int
    num_tasks: int
    phase: str
    done: int
    total: int
    at: float
    seq: int

    def describe(self) -> str:
        """``task 2/4  train step 120/500`` (``encode batch 3/40`` outside a task)."""
        work = f"{self.phase} {PHASE_UNITS.get(self.phase, 'step')} {self.done}/{self.total}"
        return work if self.task < 0 else f"task {self.task + 1}/{self.num_tasks}  {work}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Heartbeat | None:
        """The heartbeat in ``text``, or None when it is not one (a foreign or partly written file)."""
        try:
            data = json.loads(text)
            return cls(task=int(data["task"]), num_tasks=int(data["num_tasks"]), phase=str(data["phase"]),
                       done=int(data["done"]), total=int(data["total"]), at=float(data["at"]),
                       seq=int(data["seq"]))
        except (ValueError, TypeError, KeyError):
            return None


def heartbeat_interval() -> float:
    """Seconds between heartbeats: ``$CLAPRAY_HEARTBEAT_S`` (0 = every call), default 10."""
    text = os.environ.get(HEARTBEAT_ENV)
    if text is None or not text.strip():
        return DEFAULT_HEARTBEAT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UserError(f"${HEARTBEAT_ENV}: expected seconds >= 0 between heartbeats, got {text!r}")
    return value


class Throttled:
    """A :class:`ProgressHook` passing a :class:`Heartbeat` to ``sink`` at most once every ``interval`` s.

    The first heartbeat comes ``interval`` seconds after construction (a short task stays silent), then
    at most one per ``interval``.
    """

    def __init__(self, sink: Callable[[Heartbeat], None], num_tasks: int, *, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.sink = sink
        self.num_tasks = num_tasks
        self.interval = heartbeat_interval() if interval is None else interval
        self.clock = clock
        self._last = clock()
        self._seq = 0

    def __call__(self, task: int, phase: str, done: int, total: int) -> None:
        now = self.clock()
        if now - self._last < self.interval:
            return
        self._last = now
        self._seq += 1
        beat = Heartbeat(task=task, num_tasks=self.num_tasks, phase=phase, done=done, total=total,
                         at=time.time(), seq=self._seq)
        try:
            self.sink(beat)
        except Exception as err:  # advisory: never let a heartbeat stop the run
            log.warning("heartbeat not delivered: %s: %s", type(err).__name__, err)


class ConsoleSink:
    """Prints ``  ... task 2/4  train step 120/500`` lines."""

    def __init__(self, out: TextIO | None = None, prefix: str = "  ... "):
        self.out = out
        self.prefix = prefix

    def __call__(self, beat: Heartbeat) -> None:
        print(f"{self.prefix}{beat.describe()}", file=self.out or sys.stdout, flush=True)


def progress_path(store: str, name: str) -> str:
    """Where the heartbeat file ``name`` (a run id) lives under a store root (a path or URI)."""
    from clapray.fileio import child

    return child(child(store, PROGRESS_DIR), f"{name}.json")


class FileSink:
    """Writes each heartbeat over the file ``path`` (:func:`progress_path`: ``<store>/_progress/<name>.json``),
    whole: a reader sees the old or the new one (on an object store, one PUT)."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, beat: Heartbeat) -> None:
        write_heartbeat(self.path, beat)


def write_heartbeat(path: str, beat: Heartbeat) -> None:
    from pathlib import Path

    from clapray.fileio import resolve_filesystem, write_text_atomic

    if "://" not in path or path.startswith("file://"):
        write_text_atomic(Path(path.removeprefix("file://")), beat.to_json())
        return
    fs, key = resolve_filesystem(path)
    with fs.open_output_stream(key) as fh:
        fh.write(beat.to_json().encode())


def read_heartbeat(path: str) -> Heartbeat | None:
    """The heartbeat at ``path`` (a path or URI), or None when there is none (yet) or it is unreadable."""
    from clapray.fileio import resolve_filesystem

    try:
        fs, key = resolve_filesystem(path)
        with fs.open_input_stream(key) as fh:
            return Heartbeat.from_json(fh.read().decode())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def batch_ticker(hook: ProgressHook | None, task: int, phase: str, total: int) -> Callable[[], None] | None:
    """A counter of the ``total`` batches of ``phase`` that reports each one to ``hook`` (None without one)."""
    if hook is None:
        return None
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        hook(task, phase, done, total)

    return tick
