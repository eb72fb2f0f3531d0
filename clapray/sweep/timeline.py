"""Where a trial's time goes: timestamped events from every Ray process of a sweep, for ``bench ray``.

Off unless ``CLAPRAY_TIMELINE`` names a directory (the bench sets it before Ray starts, so every Ray process
inherits it). Each process appends JSON lines to ``<dir>/<pid>.jsonl``: ``{"role", "event", "t", "pid",
"started", "trial"}`` where ``t`` is the wall-clock time of the event and ``started`` the wall-clock time the
operating system started the process, so process start and import time can be told apart from the work.
Kept free of heavy imports: the trial driver and the Train controller import it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

TIMELINE_ENV = "CLAPRAY_TIMELINE"


def process_started() -> float:
    """Wall-clock time this process was started (Linux ``/proc``; the current time elsewhere)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # starttime, field 22 of stat, counted after the ")" of the command name
        hertz = os.sysconf("SC_CLK_TCK")
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / hertz
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def enabled() -> bool:
    return bool(os.environ.get(TIMELINE_ENV))


def mark(role: str, event: str, trial: str | None = None, at: float | None = None) -> None:
    """Record ``event`` of ``role`` (``driver``, ``controller``, ``worker``) now, or ``at`` a given time."""
    folder = os.environ.get(TIMELINE_ENV)
    if not folder:
        return
    record = {"role": role, "event": event, "t": time.time() if at is None else at, "pid": os.getpid(),
              "started": process_started(), "trial": trial}
    try:
        with open(Path(folder) / f"{os.getpid()}.jsonl", "a") as stream:
            stream.write(json.dumps(record) + "\n")
    except OSError:
        pass  # a measurement aid: never fail a trial for it


def read(folder: str | Path) -> list[dict]:
    """Every event recorded under ``folder``, in time order."""
    events = []
    for path in Path(folder).glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                events.append(json.loads(line))
    return sorted(events, key=lambda e: e["t"])
