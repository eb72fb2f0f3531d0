"""One writer of a store at a time: a lease file, ``<store>/_driver.lease`` (JSON).

A sweep driver holds the lease of its sweep's store (``<storage>/<sweep>``) for as long as it runs, and
``python -m clapray.results compact`` holds it while it rewrites files, so neither runs beside a sweep.

The lease names its owner (host, pid, the process's start time, when the sweep started) and carries a
heartbeat the owner refreshes every ``heartbeat_s`` seconds, plus a random token that tells owners apart.
A driver that finds a live lease refuses with one line naming the owner (:class:`SweepBusy`, exit 2). A
lease is *stale*, and is taken over, when its owner is known dead (same host and that pid no longer runs
the process that wrote it) or its heartbeat is older than ``stale_after_s`` (another host: the owner may
have died with its machine; this compares clocks, so hosts must keep them roughly in sync).

Guarantees, by kind of storage:

* **Local or shared POSIX disk.** Reading, judging and writing the lease happen under an exclusive
  ``flock`` of ``<store>/.lock``, so of two drivers starting together exactly one gets the lease, and a
  stale lease is taken over by exactly one. (NFS gives flock the semantics of its byte-range locks.)
* **Object stores (S3, GCS).** ``pyarrow.fs`` has no create-if-absent, so the driver writes its lease,
  waits ``settle_s`` (2 s) and reads it back: the last writer wins and every other driver sees the
  winner's token and refuses. Two drivers are only both admitted when one reads "no lease" and writes
  more than ``settle_s`` later than the other's read-back, i.e. when a process stalls for seconds between
  two adjacent requests. The heartbeat then catches it: an owner that finds another token in the lease
  has lost it, stops its sweep (as on Ctrl-C) and exits 2, so two drivers never keep running together.

A lease left by a killed driver on this host is taken over at once; one whose owner ran on another host
after ``stale_after_s`` (default 120 s; env ``CLAPRAY_LEASE_STALE_S``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.fs as pafs

from clapray.errors import UserError
from clapray.fileio import directory_lock, is_object_store, resolve_filesystem, write_bytes_atomic

# Not .json: Ray Tune copies every .json and .pkl file of the experiment folder (the store) to its staging
# folder on restore and uploads them back every few seconds, which would overwrite the live lease with a
# stale copy.
LEASE_FILE = "_driver.lease"
HEARTBEAT_ENV = "CLAPRAY_LEASE_HEARTBEAT_S"
STALE_ENV = "CLAPRAY_LEASE_STALE_S"

log = logging.getLogger(__name__)


class SweepBusy(UserError):
    """Another live driver holds the sweep's lease."""


class LeaseLost(UserError):
    """This driver's lease was taken over by another driver while the sweep ran."""


@dataclass(frozen=True)
class LeaseRecord:
    """What the lease file holds."""

    token: str
    host: str
    pid: int
    process_started: float | None  # the owner process's start (ticks since boot, Linux), to tell a reused pid apart
    started_at: str  # ISO time the owner took the lease
    heartbeat: float  # epoch s of the owner's last heartbeat

    def describe(self, now: float | None = None) -> str:
        age = (now or time.time()) - self.heartbeat
        return f"host {self.host}, pid {self.pid}, since {self.started_at}, last heartbeat {age:.0f}s ago"


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start_time(pid: int) -> float | None:
    """When ``pid`` started, in clock ticks since boot (Linux), to tell a reused pid from its first owner."""
    fields = _proc_stat(pid)
    return float(fields[19]) if fields and len(fields) > 19 else None


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed child its parent has not reaped yet still has a pid: it is dead all the same.
    fields = _proc_stat(pid)
    return not (fields and fields[0] in ("Z", "X"))


def owner_is_dead(record: LeaseRecord, *, host: str, now: float, stale_after_s: float) -> str | None:
    """Why ``record``'s owner counts as dead (a reason to take the lease over), or None if it may live."""
    if record.host == host:
        if not _pid_runs(record.pid):
            return f"pid {record.pid} no longer runs"
        started = _process_start_time(record.pid)
        if record.process_started is not None and started is not None and started != record.process_started:
            return f"pid {record.pid} now runs another process"
        return None
    if now - record.heartbeat > stale_after_s:
        return f"no heartbeat for {now - record.heartbeat:.0f}s (> {stale_after_s:.0f}s)"
    return None


class SweepLease:
    """The lease of the sweep whose store is ``root`` (a local path or an ``s3://`` URI)."""

    def __init__(self, root: str, *, heartbeat_s: float | None = None, stale_after_s: float | None = None,
                 settle_s: float = 2.0, host: str | None = None,
                 filesystem: pafs.FileSystem | None = None) -> None:
        self.uri = root
        self.fs, self.root = resolve_filesystem(root, filesystem)
        self.path = f"{self.root}/{LEASE_FILE}"
        self.object_store = is_object_store(self.fs)
        self.heartbeat_s = float(heartbeat_s if heartbeat_s is not None else os.environ.get(HEARTBEAT_ENV, 10))
        self.stale_after_s = float(stale_after_s if stale_after_s is not None else os.environ.get(STALE_ENV, 120))
        self.settle_s = settle_s if self.object_store else 0.0
        self.host = host or socket.gethostname()
        self.record: LeaseRecord | None = None
        self.lost_to: LeaseRecord | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- file access ---------------------------------------------------------------------------------

    def read(self) -> LeaseRecord | None:
        try:
            with self.fs.open_input_stream(self.path) as fh:
                data = json.loads(fh.readall())
            return LeaseRecord(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as err:
            if self.fs.get_file_info(self.path).type == pafs.FileType.NotFound:
                return None
            # A lease we cannot parse was not written by a live driver of this version: treat it as stale.
            log.warning("%s: unreadable lease (%s), treated as stale", self.path, err)
            return LeaseRecord(token="unreadable", host="?", pid=-1, process_started=None, started_at="?",
                               heartbeat=0.0)

    def _write(self, record: LeaseRecord) -> None:
        data = json.dumps(asdict(record), indent=1).encode()
        if self.object_store:
            with self.fs.open_output_stream(self.path) as fh:
                fh.write(data)
        else:
            write_bytes_atomic(Path(self.path), data)

    def _delete(self) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass

    def _critical(self):
        """Mutual exclusion of read-judge-write on local disks (object stores: write-then-verify)."""
        if self.object_store:
            return nullcontext()
        return directory_lock(Path(self.root))

    # -- acquire, heartbeat, release -----------------------------------------------------------------

    def acquire(self) -> LeaseRecord:
        """Take the lease, or raise :class:`SweepBusy` naming the live owner."""
        self.fs.create_dir(self.root, recursive=True)
        now = time.time()
        mine = LeaseRecord(token=uuid.uuid4().hex, host=self.host, pid=os.getpid(),
                           process_started=_process_start_time(os.getpid()),
                           started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), heartbeat=now)
        with self._critical():
            current = self.read()
            if current is not None:
                why = owner_is_dead(current, host=self.host, now=now, stale_after_s=self.stale_after_s)
                if why is None:
                    raise self._busy(current)
                log.warning("taking over the lease of %s: %s", current.describe(now), why)
            self._write(mine)
        if self.settle_s:
            time.sleep(self.settle_s)
            winner = self.read()
            if winner is None or winner.token != mine.token:
                raise self._busy(winner or current)  # type: ignore[arg-type]
        self.record = mine
        return mine

    def _busy(self, owner: LeaseRecord | None) -> SweepBusy:
        who = owner.describe() if owner is not None else "another driver"
        return SweepBusy(f"{self.uri}: this store is already in use by {who} (a sweep driver, or compact); wait "
                         f"for it to finish or stop it (a dead owner's lease is taken over automatically)")

    def beat(self) -> bool:
        """Refresh the heartbeat; False (and ``lost_to`` set) when another driver holds the lease now."""
        assert self.record is not None
        with self._critical():
            current = self.read()
            if current is None or current.token != self.record.token:
                self.lost_to = current
                return False
            self.record = LeaseRecord(**{**asdict(self.record), "heartbeat": time.time()})
            self._write(self.record)
        return True

    def start_heartbeat(self, on_lost: Callable[[LeaseLost], None]) -> None:
        def loop() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    if not self.beat():
                        on_lost(self.lost_error())
                        return
                except Exception as err:  # a storage hiccup: try again at the next beat
                    log.warning("lease heartbeat failed: %s", err)

        self._thread = threading.Thread(target=loop, name="sweep-lease-heartbeat", daemon=True)
        self._thread.start()

    def lost_error(self) -> LeaseLost:
        who = self.lost_to.describe() if self.lost_to is not None else "nobody (the lease file was removed)"
        return LeaseLost(f"{self.uri}: this driver lost the sweep's lease to {who}; it stopped its trials, "
                         f"the other driver goes on with the sweep")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.record is None:
            return
        try:
            with self._critical():
                current = self.read()
                if current is not None and current.token == self.record.token:
                    self._delete()
        except OSError as err:
            log.warning("could not release the lease %s: %s", self.path, err)
        self.record = None


def interrupt_main(err: LeaseLost) -> None:
    """What a driver does when its lease is lost: say so, and stop the sweep the way Ctrl-C does (Ray Tune
    saves its state and stops the trials)."""
    print(f"error: {err}", flush=True)
    os.kill(os.getpid(), signal.SIGINT)


@contextmanager
def held_lease(root: str, *, on_lost: Callable[[LeaseLost], None] = interrupt_main) -> Iterator[SweepLease]:
    """Hold the sweep's lease (heartbeat running) for the block; raise :class:`LeaseLost` after it if the
    lease was taken over meanwhile."""
    lease = SweepLease(root)
    lease.acquire()
    lease.start_heartbeat(on_lost)
    try:
        yield lease
    finally:
        lease.release()
    if lease.lost_to is not None:
        raise lease.lost_error()
