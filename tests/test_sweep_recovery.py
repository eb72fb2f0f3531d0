"""A sweep survives kills, a second driver, a changed sweep and a damaged store (slow: `kill` marker).

One small sweep (two CLAP trials of three tasks, one at a time) is driven through SIGKILLs of the driver and
everything it started (the `python -m clapray.sweep` process and its local Ray, every process of its
session) at four moments chosen by watching the store, then finished by running the same command again;
the store it leaves is then damaged and repaired, refused a changed sweep, and compacted. A second test
kills a worker node of a local multi-node cluster mid-trial.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from clapray.results import verify_consistency
from clapray.results.lease import HEARTBEAT_ENV, LEASE_FILE

REPO = Path(__file__).resolve().parents[1]
SMALL = ["set.backbone.model=clapray-tiny-vit", "set.backbone.pretrained=null", "grid.setting=[standard, replay_free]",
         "set.data.shapes.num_classes=6", "set.data.shapes.train_per_class=8", "set.data.shapes.test_per_class=4",
         "set.data.num_tasks=3", "set.optim.batch_size=8", "search.trials_per_cell=1", "seeds=[0]",
         "set.method.vga.ff_dim=64", "resources.max_concurrent_trials=1"]
NUM_TASKS = 3
HEARTBEAT_S = 2
ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", HEARTBEAT_ENV: str(HEARTBEAT_S)}

pytestmark = pytest.mark.kill


# --------------------------------------------------------------------------------------------------
# Driving the CLI


class Driver:
    """One `python -m clapray.sweep` in its own process group, output in a file."""

    def __init__(self, store: Path, log: Path, *extra: str) -> None:
        self.log = log
        overrides = sum((["--set", s] for s in (*SMALL, *extra)), [])
        self.handle = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clapray.sweep", "sweeps/quickstart.yaml", "--storage", str(store), *overrides],
            cwd=REPO, stdout=self.handle, stderr=subprocess.STDOUT, env={**os.environ, **ENV},
            start_new_session=True)

    def output(self) -> str:
        if not self.handle.closed:
            self.handle.flush()
        return self.log.read_text()

    def kill(self) -> None:
        """SIGKILL the driver and every process of its local Ray (GCS, raylet, dashboard, workers).

        Ray starts each worker in a process group of its own, so killing the driver's group would leave
        the trial's Train workers running on for seconds (training and checkpointing further); every
        process of the driver's session is killed instead, as a lost machine would lose them."""
        kill_session(self.proc.pid)
        self.proc.wait()
        self.handle.close()

    def wait(self, timeout: float = 600) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            self.handle.close()
        return rc

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 400) -> float:
        """Poll ``condition`` until it holds (seconds taken); fail if the driver exits first."""
        start = time.monotonic()
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"driver exited ({self.proc.returncode}) before {what}:\n{self.output()[-4000:]}")
            if time.monotonic() - start > timeout:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.output()[-4000:]}")
            time.sleep(0.1)
        return time.monotonic() - start


def _live_session_members(sid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields: state, ppid, pgrp, session, ...; zombies are dead already (and may never be reaped here).
        if fields[0] not in ("Z", "X") and int(fields[3]) == sid:
            pids.append(int(name))
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL every live process of session ``sid`` until none is left."""
    deadline = time.monotonic() + 30
    while (pids := _live_session_members(sid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    assert not _live_session_members(sid), "processes of the killed driver survived"


def feature_build_started(root: Path) -> Callable[[], bool]:
    # The cache entry is locked while its embeddings are encoded.
    return lambda: any(root.glob("feature_cache/*/.lock"))


def checkpoints_registered(root: Path, task: int, trials: int) -> Callable[[], bool]:
    """At least ``trials`` Train runs (worker groups) have registered the checkpoint of ``task`` (Train's own
    snapshot, written after the checkpoint's files are all persisted)."""
    def check() -> bool:
        count = 0
        for snapshot in root.glob("train_runs/*/checkpoint_manager_snapshot.json"):
            try:
                count += f"task_{task:03d}" in snapshot.read_text()
            except OSError:
                pass
        return count >= trials
    return check


def checkpoints_saved(root: Path, task: int, trials: int) -> Callable[[], bool]:
    """At least ``trials`` trials have saved the checkpoint of ``task`` (its learner file is in place, the
    last file a checkpoint gets, whichever executor wrote it)."""
    return lambda: len(list(root.glob(f"train_runs/*/task_{task:03d}/learner.pt"))) >= trials


def stored_rows(root: Path, table: str) -> pd.DataFrame:
    files = sorted((root / table).glob("*.parquet"))
    return pd.concat([pq.read_table(f).to_pandas() for f in files]) if files else pd.DataFrame()


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_complete_and_unduplicated(root: Path) -> pd.DataFrame:
    assert verify_consistency(root) == []
    runs = pd.read_parquet(root / "runs")
    tasks = pd.read_parquet(root / "tasks")
    accuracy = pd.read_parquet(root / "accuracy")
    assert len(runs) == 2 and set(runs["status"]) == {"finished"}, runs[["run_id", "status", "tasks_done"]]
    assert not runs.duplicated(["cell", "configuration", "seed"]).any()
    assert len(tasks) == 2 * NUM_TASKS and not tasks.duplicated(["run_id", "task"]).any()
    assert len(accuracy) == 2 * 6 and not accuracy.duplicated(["run_id", "task", "eval_task"]).any()
    calibration = pd.read_parquet(root / "calibration")
    assert not calibration.duplicated(["run_id", "task", "bin"]).any()
    return runs


def assert_rows_equal_plain_runs(root: Path) -> None:
    """Every trial's accuracy matrix equals an uninterrupted in-process run of its configuration."""
    import torch
    import yaml

    from clapray.config import RunConfig
    from clapray.learner import ContinualLearner
    from clapray.typed_config import from_mapping

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = pd.read_parquet(root / "runs")
        accuracy = pd.read_parquet(root / "accuracy")
        for _, run in runs.iterrows():
            cfg = from_mapping(RunConfig, yaml.safe_load(run["config_yaml"]), "runs.config_yaml")
            plain = ContinualLearner(cfg).run()
            expected = [acc for r in plain for acc in r.accuracy_row]
            stored = accuracy[accuracy["run_id"] == run["run_id"]].sort_values(["task", "eval_task"])["acc"]
            np.testing.assert_allclose(stored.to_numpy(), expected, atol=1e-6)
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> dict:
    """The sweep killed four times and finished by the same command; what each run printed and took."""
    base = tmp_path_factory.mktemp("kills")
    store, root = base / "store", base / "store" / "quickstart"
    timings: dict[str, float] = {}
    logs: dict[str, str] = {}
    start = time.monotonic()

    # 1. Two drivers started together: one takes the lease, the other refuses naming it; the winner is
    #    killed while it builds the feature cache.
    first, second = Driver(store, base / "a1.log"), Driver(store, base / "a2.log")
    rc_loser = None
    deadline = time.monotonic() + 300
    while rc_loser is None and time.monotonic() < deadline:
        for loser, winner in ((first, second), (second, first)):
            if loser.proc.poll() is not None:
                rc_loser, logs["loser"], survivor = loser.proc.returncode, loser.output(), winner
                break
        time.sleep(0.1)
    assert rc_loser == 2, logs.get("loser")
    logs["loser_pid_of_winner"] = str(survivor.proc.pid)
    timings["features"] = survivor.wait_until(feature_build_started(root), "the feature cache build")
    survivor.kill()
    logs["a"] = survivor.output()

    # 2. Mid-trial, once the first trial's task-0 checkpoint is saved (and tasks remain).
    driver = Driver(store, base / "b.log")
    timings["mid_trial"] = driver.wait_until(checkpoints_saved(root, 0, 1), "a saved task checkpoint")
    driver.kill()
    logs["b"] = driver.output()

    # 3. Right after the first trial's final checkpoint: its learning is complete, but Ray Tune has most
    #    likely not saved that trial's final result yet (it saves its state every >= 10 s).
    driver = Driver(store, base / "c.log")
    timings["trial_done"] = driver.wait_until(checkpoints_saved(root, NUM_TASKS - 1, 1), "a finished trial")
    driver.kill()
    logs["c"] = driver.output()

    # 4. Near the end: the second trial's final checkpoint is saved too.
    driver = Driver(store, base / "d.log")
    timings["both_done"] = driver.wait_until(checkpoints_saved(root, NUM_TASKS - 1, 2), "both trials done")
    driver.kill()
    logs["d"] = driver.output()

    # 5. The same command finishes the sweep.
    driver = Driver(store, base / "e.log")
    rc = driver.wait()
    logs["e"] = driver.output()
    timings["total"] = time.monotonic() - start
    print(f"kill test timings (s): {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}")
    return {"rc": rc, "root": root, "store": store, "logs": logs, "base": base}


def test_driver_killed_four_times_then_the_same_command_completes_the_sweep(killed_and_resumed):
    run = killed_and_resumed
    logs, root = run["logs"], run["root"]
    assert run["rc"] == 0, logs["e"][-4000:]
    # The second of two drivers started together refused in one line naming the owner's host and pid.
    refusal = [line for line in logs["loser"].splitlines() if line.startswith("error:")]
    assert len(refusal) == 1 and "already in use by host" in refusal[0], logs["loser"][-2000:]
    assert f"pid {logs['loser_pid_of_winner']}," in refusal[0]
    assert "Traceback" not in logs["loser"]
    assert "Traceback" not in logs["e"] and "did not include the specified metric" not in logs["e"]
    assert "sweep quickstart: 2 complete, 0 incomplete" in logs["e"]
    assert not (root / LEASE_FILE).exists()  # released at the end
    # Every re-run took over the killed driver's lease (same host, dead pid) and found it freshly beaten:
    # the heartbeat kept going all through each killed run (Ray Tune must not overwrite it, for one).
    for name in "bcde":
        ages = [int(a) for a in re.findall(r"taking over the lease of .* last heartbeat (\d+)s ago", logs[name])]
        assert len(ages) == 1 and ages[0] <= 5 * HEARTBEAT_S, (name, ages)
    assert_complete_and_unduplicated(root)
    assert_rows_equal_plain_runs(root)


def rerun(store: Path, log: Path, *extra: str) -> tuple[int, str]:
    driver = Driver(store, log, *extra)
    rc = driver.wait()
    return rc, driver.output()


def test_damaged_store_is_reported_then_restored_changed_sweep_refused_compact(killed_and_resumed):
    run = killed_and_resumed
    if run["rc"] != 0:
        pytest.skip("the kill test did not finish its sweep")
    store, base = run["store"], run["base"]
    root = store / "quickstart"
    before = {table: stored_rows(root, table).drop(columns=["updated_at"], errors="ignore")
              .sort_values(["run_id"] + (["task"] if table != "runs" else [])).reset_index(drop=True)
              for table in ("runs", "tasks", "accuracy")}

    # A changed sweep is refused before anything is written, naming the changed fields.
    digest = tree_digest(root)
    rc, out = rerun(store, base / "changed.log", "search.trials_per_cell=2", "seeds=[0,1]")
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in out, out[-2000:]
    assert "search.trials_per_cell (1 -> 2)" in errors[0] and "seeds ([0] -> [0, 1])" in errors[0]
    assert "--set name=" in errors[0]
    assert tree_digest(root) == digest

    # Damage: the whole runs table deleted, one accuracy file truncated.
    shutil.rmtree(root / "runs")
    victim = sorted((root / "accuracy").glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    problems = verify_consistency(root)
    assert any("runs: no row for run" in p for p in problems), problems
    assert any(f"accuracy: {victim} is unreadable" in p for p in problems), problems

    rc, out = rerun(store, base / "repair.log")
    assert rc == 0, out[-4000:]
    assert "store repaired: 2 run(s) restored from checkpoints" in out, out[-3000:]
    assert_complete_and_unduplicated(root)
    after = {table: stored_rows(root, table).drop(columns=["updated_at"], errors="ignore")
             .sort_values(["run_id"] + (["task"] if table != "runs" else [])).reset_index(drop=True)
             for table in ("runs", "tasks", "accuracy")}
    for table in ("tasks", "accuracy"):
        pd.testing.assert_frame_equal(after[table], before[table])
    # The run rows come back with their provenance (saved beside each checkpoint) and start time.
    keep = ["run_id", "status", "tasks_done", "avg_acc", "last_acc", "bwt", "config_hash", "dataset_fingerprint",
            "trainable_params", "used_feature_cache"]
    pd.testing.assert_frame_equal(after["runs"][keep], before["runs"][keep])
    assert list((root / "accuracy" / "_quarantine").iterdir())  # the damaged file is kept aside

    # Compaction: fewer files, the same rows for every reader, and the sweep still resumes as finished.
    counts = {t: len(list((root / t).glob("*.parquet"))) for t in ("runs", "tasks", "accuracy", "calibration")}
    proc = subprocess.run([sys.executable, "-m", "clapray.results", "compact", str(root)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    compacted = {t: len(list((root / t).glob("*.parquet"))) for t in counts}
    print(f"files per table before compact {counts}, after {compacted}")
    assert compacted == {t: 1 for t in counts}
    assert_complete_and_unduplicated(root)

    # Unrecoverable damage (rows and checkpoints gone) is refused loudly, naming the runs.
    shutil.rmtree(root / "tasks")
    shutil.rmtree(root / "train_runs")
    rc, out = rerun(store, base / "lost.log")
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "cannot be restored" in errors[0] and "trial-" in errors[0], out[-3000:]


@pytest.mark.parametrize("executor", ["worker_group", "in_trial"])
def test_a_killed_worker_node_mid_trial_is_survived(tmp_path, executor):
    """A local cluster: a head (the worker groups' trial drivers only) and two worker nodes; the node running
    the first trial's worker is killed after its first task. A worker group is restarted by Ray Train on the
    other node from that task's checkpoint; a trial whose worker runs inside it is retried there by Ray Tune
    and resumes from the same checkpoint. Either way the sweep completes as an uninterrupted one."""
    import socket

    from ray.cluster_utils import Cluster

    with socket.socket() as sock:  # the dashboard (Ray's state API, which Train needs) on a free port
        sock.bind(("127.0.0.1", 0))
        dashboard_port = sock.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {"train_driver": 10}, "include_dashboard": True, "dashboard_port": dashboard_port})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    store = tmp_path / "store"
    root = store / "quickstart"
    driver = None
    in_trial = executor == "in_trial"
    try:
        # Tasks of a few seconds (task 1 about 4 s), so the node dies while the first trial learns task 1.
        overrides = [*SMALL, f"resources.executor={executor}", "set.optim.epochs=200"]
        log = tmp_path / "node.log"
        handle = open(log, "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "clapray.sweep", "sweeps/quickstart.yaml", "--storage", str(store),
             "--address", cluster.address, *sum((["--set", s] for s in overrides), [])],
            cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **ENV}, start_new_session=True)
        driver = proc
        start = time.monotonic()
        saved = checkpoints_saved(root, 0, 1) if in_trial else checkpoints_registered(root, 0, 1)
        while not saved():
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() - start < 400, log.read_text()[-4000:]
            time.sleep(0.1)
        # The node whose raylet hosts the trial's worker: a Ray Train worker actor, or the trial itself.
        # (Ray Tune's function trainables are actors of class ImplicitFunc.)
        victim = _node_running(cluster, nodes, "ImplicitFunc" if in_trial else "RayTrainWorker")
        cluster.remove_node(victim, allow_graceful=False)
        rc = proc.wait(timeout=600)
        handle.close()
        out = log.read_text()
        assert rc == 0, out[-4000:]
        assert_complete_and_unduplicated(root)
        assert_rows_equal_plain_runs(root)
        assert "Traceback" not in out
        if in_trial:
            # Ray Tune saw the trial fail and retried it, once.
            retried = re.findall(r"seed 0  [^\n]*failed after task 1/3: .*retrying from its last checkpoint", out)
            assert len(retried) == 1, out[-4000:]
        else:
            # Ray Train saw the worker group fail and retried it.
            logs = Path(cluster.head_node.get_session_dir_path(), "logs", "train").glob("ray-train-*controller*.log")
            assert any("[FailurePolicy] RETRY" in f.read_text() for f in logs)
        # The trial resumed, not restarted: one "task 1/3" line per trial (the progress line shows the sampled
        # parameters between the seed and the task).
        assert len(re.findall(r"seed 0  [^\n]*  task 1/3  acc ", out)) == 2, out[-4000:]
        print(f"node kill test ({executor}): {time.monotonic() - start:.0f}s from the sweep's start")
    finally:
        if driver is not None and driver.poll() is None:
            kill_session(driver.pid)
            driver.wait()
        cluster.shutdown()


def _node_running(cluster, nodes, actor_class: str):
    """The worker node on which an actor whose class name contains ``actor_class`` is alive (state API
    through the head)."""
    import ray
    from ray.util.state import list_actors

    ray.init(address=cluster.address, log_to_driver=False)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            actors = list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")], limit=1000)
            hosts = {a.node_id for a in actors if actor_class in (a.class_name or "")}
            for node in nodes:
                if node.node_id in hosts:
                    return node
            time.sleep(0.5)
        raise AssertionError(f"no live {actor_class} actor found on a worker node")
    finally:
        ray.shutdown()
