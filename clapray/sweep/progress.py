"""What a person watching a sweep reads: where the sweep stands, what each trial tried, what it is doing.

* :class:`SweepPlan` and :class:`SweepClock`: ``3/12 trials, elapsed 4m10s, ETA 6m05s`` from every trial's
  state and the tasks finished since this driver started (a resumed sweep counts the trials finished
  before it, but estimates its speed from its own work only).
* :func:`short_params`: a trial's sampled values, ``kd_weight=12.5 mc_samples_train=10``.
* :class:`HeartbeatPoller`: the newest heartbeat of every running trial, read from the store's
  ``_progress/`` folder (:mod:`clapray.progress`: the trial's rank 0 writes it, on whichever node it runs).
* :func:`failure_reason`: a failed trial's one-line reason, from Ray Tune's ``error.txt``.
* :func:`wait_with_heartbeats`: ``ray.get`` of one-time work (the feature cache) with its progress lines.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clapray.progress import Heartbeat, format_duration, heartbeat_interval, read_heartbeat

# Trial states that will not change again in this run (callbacks.TRIAL_STATES).
ENDED_STATES = ("done", "stopped", "failed")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class SweepPlan:
    """What the progress lines need of a sweep: its metric, and per cell its trials and tasks."""

    metric: str
    mode: str
    trials: Mapping[str, int]  # cell -> trials of the cell (configurations x seeds)
    num_tasks: Mapping[str, int]  # cell -> tasks of its scenario

    @classmethod
    def of(cls, sweep: Any, num_tasks: Mapping[str, int]) -> SweepPlan:
        trials = {c.name: sweep.trials_for(c) * len(sweep.seeds) for c in sweep.cells()}
        return cls(sweep.search.metric, sweep.search.mode, trials, dict(num_tasks))

    @property
    def total_trials(self) -> int:
        return sum(self.trials.values())


@dataclass(frozen=True)
class TrialProgress:
    """One trial as the clock sees it: its cell, its state (callbacks.TRIAL_STATES) and tasks done."""

    cell: str
    state: str
    tasks_done: int


def remaining_tasks(plan: SweepPlan, trials: Iterable[TrialProgress]) -> int:
    """Tasks still to run: those of trials not ended, and every task of the trials not yet created (the
    searcher creates them as slots free up). A trial stopped early counts as ended: its rest never runs."""
    created: dict[str, int] = {}
    left = 0
    for t in trials:
        created[t.cell] = created.get(t.cell, 0) + 1
        if t.state not in ENDED_STATES:
            left += max(plan.num_tasks.get(t.cell, 0) - t.tasks_done, 0)
    for cell, quota in plan.trials.items():
        left += max(quota - created.get(cell, 0), 0) * plan.num_tasks.get(cell, 0)
    return left


class SweepClock:
    """The sweep-wide part of every progress line: ``3/12 trials, elapsed 4m10s, ETA 6m05s``.

    The ETA is the remaining tasks over this driver's rate of finished tasks (every trial at once, so
    concurrency is included); before the first task finishes it is unknown (``-``).
    """

    def __init__(self, plan: SweepPlan, clock: Callable[[], float] = time.monotonic):
        self.plan = plan
        self.clock = clock
        self.start = clock()
        self.tasks_finished = 0

    def task_finished(self) -> None:
        self.tasks_finished += 1

    def eta_s(self, trials: Sequence[TrialProgress]) -> float:
        left = remaining_tasks(self.plan, trials)
        if left == 0:
            return 0.0
        elapsed = self.clock() - self.start
        if self.tasks_finished == 0 or elapsed <= 0:
            return math.nan
        return left * elapsed / self.tasks_finished

    def line(self, trials: Sequence[TrialProgress]) -> str:
        ended = sum(t.state in ENDED_STATES for t in trials)
        return (f"{ended}/{self.plan.total_trials} trials, elapsed {format_duration(self.clock() - self.start)}, "
                f"ETA {format_duration(self.eta_s(trials))}")


def short_name(field: str, others: Iterable[str]) -> str:
    """A field's last dotted component, or more of it where that alone is ambiguous among ``others``."""
    parts = field.split(".")
    for k in range(1, len(parts) + 1):
        tail = ".".join(parts[-k:])
        if not any(o != field and (o == tail or o.endswith("." + tail)) for o in others):
            return tail
    return field


def short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def short_params(params: Mapping[str, Any] | None) -> str:
    """``kd_weight=12.5 mc_samples_train=10`` (empty when nothing was sampled)."""
    params = dict(params or {})
    return " ".join(f"{short_name(k, params)}={short_value(v)}" for k, v in params.items())


def failure_reason(error_file: str | None, limit: int = 240) -> str:
    """The last line of a trial's error file (the exception, colour codes removed), or a generic reason."""
    if not error_file:
        return "trial failed (no error file)"
    try:
        with open(error_file, errors="replace") as fh:
            lines = [_ANSI.sub("", line).strip() for line in fh.read().splitlines()]
    except OSError:
        return "trial failed (error file unreadable)"
    lines = [line for line in lines if line]
    if not lines:
        return "trial failed"
    text = lines[-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


class HeartbeatPoller:
    """The new heartbeats of the trials asked about, at most once every ``every`` seconds.

    Only heartbeats taken after the poller started count (a resumed sweep's files hold old ones), and each
    is returned once.
    """

    def __init__(self, path_of: Callable[[str], str], *, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.path_of = path_of
        # Poll twice per heartbeat interval, within [0.2 s, 5 s]: cheap locally, a few GETs on S3.
        self.every = every if every is not None else min(max(heartbeat_interval() / 2, 0.2), 5.0)
        self.clock = clock
        self._next = clock()
        self._since = time.time()
        self._seen: dict[str, float] = {}

    def poll(self, keys: Iterable[str]) -> list[tuple[str, Heartbeat]]:
        now = self.clock()
        if now < self._next:
            return []
        self._next = now + self.every
        out = []
        for key in keys:
            beat = read_heartbeat(self.path_of(key))
            if beat is None or beat.at < self._since or beat.at <= self._seen.get(key, -math.inf):
                continue
            self._seen[key] = beat.at
            out.append((key, beat))
        return out


def wait_with_heartbeats(refs: Sequence[Any], paths: Sequence[str], say: Callable[[str], None], prefix: str
                         ) -> list[Any]:
    """``ray.get(refs)``, printing the heartbeats the tasks write to ``paths`` meanwhile."""
    import ray

    poller = HeartbeatPoller(lambda path: path)
    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=poller.every)
        for _, beat in poller.poll(paths):
            say(f"{prefix}{beat.describe()}")
    return ray.get(list(refs))
