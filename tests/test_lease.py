"""The store lease: one owner at a time, refusals name the owner, dead owners are taken over, on local disks
and on S3 (a local moto server)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clapray.results.lease import LEASE_FILE, LeaseRecord, SweepBusy, SweepLease, owner_is_dead


def test_second_owner_is_refused_naming_the_first_and_release_frees_the_lease(tmp_path: Path) -> None:
    first = SweepLease(str(tmp_path))
    record = first.acquire()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["token"] == record.token
    assert oct((tmp_path / LEASE_FILE).stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    with pytest.raises(SweepBusy) as refused:
        SweepLease(str(tmp_path)).acquire()
    message = str(refused.value)
    assert f"host {socket.gethostname()}, pid {os.getpid()}," in message and "\n" not in message
    first.release()
    assert not (tmp_path / LEASE_FILE).exists()
    SweepLease(str(tmp_path)).acquire()  # free again


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_dead_owner_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    stale = LeaseRecord(token="old", host=socket.gethostname(), pid=dead_pid, process_started=None,
                        started_at="2020-01-01T00:00:00+00:00", heartbeat=time.time())
    (tmp_path / LEASE_FILE).write_text(json.dumps(stale.__dict__))
    record = SweepLease(str(tmp_path)).acquire()
    assert record.token != "old" and json.loads((tmp_path / LEASE_FILE).read_text())["pid"] == os.getpid()


def test_staleness_rules() -> None:
    host, now = "this-host", 1000.0
    alive = LeaseRecord("t", host, os.getpid(), None, "x", heartbeat=0.0)
    assert owner_is_dead(alive, host=host, now=now, stale_after_s=60) is None  # same host: the pid decides
    reused = LeaseRecord("t", host, os.getpid(), process_started=-5.0, started_at="x", heartbeat=now)
    assert "another process" in owner_is_dead(reused, host=host, now=now, stale_after_s=60)
    remote = LeaseRecord("t", "other-host", 1, None, "x", heartbeat=now - 30)
    assert owner_is_dead(remote, host=host, now=now, stale_after_s=60) is None
    assert "no heartbeat for 90s" in owner_is_dead(remote, host=host, now=now + 60, stale_after_s=60)


def test_a_silent_owner_on_another_host_is_taken_over_after_the_timeout(tmp_path: Path) -> None:
    remote = SweepLease(str(tmp_path), host="other-host", stale_after_s=1.0)
    remote.acquire()
    with pytest.raises(SweepBusy, match="host other-host"):
        SweepLease(str(tmp_path), stale_after_s=1.0).acquire()
    time.sleep(1.5)  # no heartbeat thread: the lease goes stale
    taker = SweepLease(str(tmp_path), stale_after_s=1.0)
    taker.acquire()
    # The old owner learns it at its next heartbeat, and does not delete the new owner's lease on release.
    assert remote.beat() is False and remote.lost_to is not None and remote.lost_to.token == taker.record.token
    assert "lost the sweep's lease to host" in str(remote.lost_error())
    remote.release()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["token"] == taker.record.token


def test_the_heartbeat_refreshes_the_lease_and_reports_a_loss(tmp_path: Path) -> None:
    lease = SweepLease(str(tmp_path), heartbeat_s=0.1)
    lease.acquire()
    lost = []
    lease.start_heartbeat(lost.append)
    first = json.loads((tmp_path / LEASE_FILE).read_text())["heartbeat"]
    time.sleep(0.5)
    assert json.loads((tmp_path / LEASE_FILE).read_text())["heartbeat"] > first and not lost
    (tmp_path / LEASE_FILE).write_text(json.dumps({**json.loads((tmp_path / LEASE_FILE).read_text()), "token": "x"}))
    deadline = time.time() + 5
    while not lost and time.time() < deadline:
        time.sleep(0.05)
    assert lost and "lost the sweep's lease" in str(lost[0])
    lease.release()


def _contend(root: str, barrier, results, filesystem_args) -> None:
    filesystem = None
    if filesystem_args:
        import pyarrow.fs as pafs

        filesystem = pafs.S3FileSystem(**filesystem_args)
    lease = SweepLease(root, filesystem=filesystem, settle_s=1.0)
    barrier.wait()
    try:
        lease.acquire()
        results.put(("won", os.getpid()))
        time.sleep(3)  # hold it while the others decide
        lease.release()
    except SweepBusy as err:
        results.put(("refused", str(err)))


def _race(root: str, filesystem_args: dict | None, contenders: int = 4) -> list[tuple[str, str]]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(contenders), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(root, barrier, results, filesystem_args)) for _ in range(contenders)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    return [results.get(timeout=5) for _ in procs]


def test_contenders_started_together_on_a_local_disk_one_wins(tmp_path: Path) -> None:
    outcomes = _race(str(tmp_path), None)
    winners = [o for o in outcomes if o[0] == "won"]
    assert len(winners) == 1, outcomes
    assert all(f"pid {winners[0][1]}," in msg for kind, msg in outcomes if kind == "refused"), outcomes


def test_contenders_started_together_on_s3_one_wins() -> None:
    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        import pyarrow.fs as pafs

        args = dict(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="test", secret_key="test",
                    region="us-east-1", allow_bucket_creation=True)
        fs = pafs.S3FileSystem(**args)
        fs.create_dir("lease-bucket")
        outcomes = _race("lease-bucket/sweep", args)
        assert len([o for o in outcomes if o[0] == "won"]) == 1, outcomes
        # A lease left by a dead owner elsewhere is taken over once its heartbeat is old enough.
        stale = SweepLease("lease-bucket/other", filesystem=fs, host="gone", stale_after_s=0.5, settle_s=0.2)
        stale.acquire()
        time.sleep(0.8)
        taker = SweepLease("lease-bucket/other", filesystem=fs, stale_after_s=0.5, settle_s=0.2)
        assert taker.acquire().host == socket.gethostname()
        with pytest.raises(SweepBusy, match=f"host {socket.gethostname()}"):
            SweepLease("lease-bucket/other", filesystem=fs, settle_s=0.2).acquire()
    finally:
        server.stop()
