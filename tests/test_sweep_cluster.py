"""Where a sweep runs (clapray.sweep.cluster): local means local (127.0.0.1 only, whatever RAY_ADDRESS says),
--address fails within a minute with one line, trials fit the cluster, and a plain `ray start --head` cluster
with token authentication and no custom resources runs a sweep."""

from __future__ import annotations

import importlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from clapray.errors import UserError
from clapray.sweep.cluster import DRIVER_CPU, TRAIN_DRIVER, NodeKind, TrialFootprint, plan_trials

ROOT = Path(__file__).resolve().parents[1]
RAY_BIN = Path(sys.executable).parent / "ray"

SMALL = """name: probe
output_dir: out
device: cpu
backbone: {model: clapray-tiny-vit, pretrained: null}
data: {dataset: shapes, num_tasks: 2, num_workers: 0, shapes: {num_classes: 4, train_per_class: 4, test_per_class: 2}}
method: {mc_samples_train: 2, mc_samples_eval: 2, vga: {ff_dim: 32}}
optim: {epochs: 1, batch_size: 8, lr_rule: fixed}
budget: {max_steps_per_task: 2}
seeds: {class_order: 0, init: 0}
"""
# Two cells: a normal learning rate, and one that diverges deterministically (at task 1).
SWEEP = """name: probe
base: small.yaml
grid: {optim.lr: [0.001, 100.0]}
seeds: [0]
storage: store
scheduler: none
resources: {workers_per_trial: 1, cpus_per_worker: 1, executor: worker_group}
retries: 2
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_processes(ray_tmp: Path) -> list:
    """Processes that belong to the Ray using ``ray_tmp``: its path in their command line or RAY_TMPDIR."""
    import ray  # noqa: F401 - puts Ray's bundled psutil on the path

    psutil = importlib.import_module("psutil")  # after Ray: the import order matters here

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            if str(ray_tmp) in " ".join(proc.info["cmdline"] or []) or (
                    (proc.info["environ"] or {}).get("RAY_TMPDIR") == str(ray_tmp)):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_ray_under(ray_tmp: Path) -> None:
    """Stop the Ray this test started, by pid (never `ray stop`, which stops every Ray of the user)."""
    for proc in ray_processes(ray_tmp):
        try:
            proc.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass


def sweep_cli(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clapray.sweep", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def base_env(ray_tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(ROOT), RAY_TMPDIR=str(ray_tmp), RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5")
    return env


# --------------------------------------------------------------------------------------------------
# Fitting trials to a cluster (no Ray)


def test_trials_use_train_driver_where_it_exists_and_run_as_many_as_the_workers_nodes_hold():
    nodes = (NodeKind({"CPU": 8.0, TRAIN_DRIVER: 32.0}), NodeKind({"CPU": 4.0, "GPU": 1.0}, count=8))
    placement = plan_trials(TrialFootprint(1, 4, 1.0), nodes, max_concurrent_trials=None, where="the cluster")
    assert dict(placement.driver_resources) == {"cpu": 0, TRAIN_DRIVER: 1}
    assert placement.max_concurrent_trials == 8  # one trial per GPU worker node
    assert placement.note == ("trials: at most 8 at once, what the cluster holds (1 worker(s) of {CPU: 4, GPU: 1} "
                              "per trial); set resources.max_concurrent_trials to run fewer")
    # The sweep's own cap wins when lower, and never raises the count above what fits.
    assert plan_trials(TrialFootprint(1, 4, 1.0), nodes, max_concurrent_trials=3,
                       where="c").max_concurrent_trials == 3
    assert plan_trials(TrialFootprint(1, 4, 1.0), nodes, max_concurrent_trials=50,
                       where="c").max_concurrent_trials == 8


def test_fractional_gpus_pack_several_trials_per_gpu():
    nodes = (NodeKind({"CPU": 8.0, TRAIN_DRIVER: 32.0}), NodeKind({"CPU": 4.0, "GPU": 1.0}, count=8))
    # 0.25 GPU and 1 CPU per worker: 4 trials on each 4-CPU, 1-GPU node, 32 on 8 nodes (= the 32 driver slots).
    assert plan_trials(TrialFootprint(1, 1, 0.25), nodes, max_concurrent_trials=None,
                       where="c").max_concurrent_trials == 32
    # CPUs bind before the GPU does: 2 CPUs per worker leave room for 2 trials per node.
    assert plan_trials(TrialFootprint(1, 2, 0.25), nodes, max_concurrent_trials=None,
                       where="c").max_concurrent_trials == 16
    # Two-worker trials take two bundles each; the driver slots bind when fewer than the workers allow.
    few_slots = (NodeKind({"CPU": 8.0, TRAIN_DRIVER: 5.0}), NodeKind({"CPU": 4.0, "GPU": 1.0}, count=8))
    assert plan_trials(TrialFootprint(2, 1, 0.25), nodes, max_concurrent_trials=None,
                       where="c").max_concurrent_trials == 16
    assert plan_trials(TrialFootprint(1, 1, 0.25), few_slots, max_concurrent_trials=None,
                       where="c").max_concurrent_trials == 5
    # A local Ray (2 CPUs, 1000 driver slots): the CPUs decide, not the slots.
    local = (NodeKind({"CPU": 2.0, TRAIN_DRIVER: 1000.0}),)
    assert plan_trials(TrialFootprint(1, 1, 0.0), local, max_concurrent_trials=None,
                       where="c").max_concurrent_trials == 2
    # A node type the autoscaler may add without bound: no cap from here.
    unbounded = (NodeKind({"CPU": 8.0, TRAIN_DRIVER: 32.0}), NodeKind({"CPU": 4.0, "GPU": 1.0}, count=-1))
    assert plan_trials(TrialFootprint(1, 1, 0.25), unbounded, max_concurrent_trials=None,
                       where="c").max_concurrent_trials == 32


def test_a_trial_with_its_worker_inside_holds_the_workers_resources_itself():
    """executor in_trial: Tune places each trial process on the worker's CPUs and GPU share (any node, not the
    driver slots), as many at once as the nodes hold."""
    nodes = (NodeKind({"CPU": 8.0, TRAIN_DRIVER: 5.0}), NodeKind({"CPU": 4.0, "GPU": 1.0}, count=8))
    placement = plan_trials(TrialFootprint(1, 1, 0.25, in_trial=True), nodes, max_concurrent_trials=None, where="c")
    assert dict(placement.driver_resources) == {"cpu": 1.0, "gpu": 0.25}
    # 4 per 4-CPU, 1-GPU node; the head has no GPU for the bundle.
    assert placement.max_concurrent_trials == 32  # not the 5 driver slots: in-trial trials do not use them
    assert placement.note == ("trials: at most 32 at once, what c holds ({CPU: 1, GPU: 0.25} per trial, its worker "
                              "inside the trial's process); set resources.max_concurrent_trials to run fewer")
    cpu_only = plan_trials(TrialFootprint(1, 2, 0.0, in_trial=True), (NodeKind({"CPU": 2.0, TRAIN_DRIVER: 1000.0}),),
                           max_concurrent_trials=None, where="c")
    assert dict(cpu_only.driver_resources) == {"cpu": 2.0} and cpu_only.max_concurrent_trials == 1
    # Without train_driver anywhere nothing changes: no driver CPU to add, no note about it.
    plain = plan_trials(TrialFootprint(1, 1, 0.0, in_trial=True), (NodeKind({"CPU": 2.0}),), max_concurrent_trials=None,
                        where="c")
    assert dict(plain.driver_resources) == {"cpu": 1.0} and plain.max_concurrent_trials == 2
    assert "train_driver" not in plain.note
    assert plan_trials(TrialFootprint(1, 1, 0.25, in_trial=True), nodes, max_concurrent_trials=3,
                       where="c").max_concurrent_trials == 3
    unbounded = (NodeKind({"CPU": 8.0}), NodeKind({"CPU": 4.0, "GPU": 1.0}, count=-1))
    assert plan_trials(TrialFootprint(1, 1, 0.25, in_trial=True), unbounded, max_concurrent_trials=None,
                       where="c").max_concurrent_trials is None


def test_without_train_driver_drivers_reserve_a_little_cpu_and_trials_are_capped():
    """2 CPUs, 1-CPU workers: two trials would need 2.2 CPUs with their drivers, so one at a time; otherwise
    Tune could start enough drivers to hold every CPU their workers wait for."""
    placement = plan_trials(TrialFootprint(1, 1, 0.0), (NodeKind({"CPU": 2.0}),), max_concurrent_trials=None,
                            where="the cluster at x")
    assert dict(placement.driver_resources) == {"cpu": DRIVER_CPU}
    assert placement.max_concurrent_trials == 1
    assert placement.note.startswith("note: the cluster at x advertises no train_driver resource")
    wide = plan_trials(TrialFootprint(2, 1, 0.5), (NodeKind({"CPU": 16.0, "GPU": 2.0}, count=3),),
                       max_concurrent_trials=None, where="c")
    assert wide.max_concurrent_trials == 6  # GPUs bound it: 6 GPUs / (2 workers x 0.5)
    assert plan_trials(TrialFootprint(2, 1, 0.5), (NodeKind({"CPU": 16.0, "GPU": 2.0}, count=3),),
                       max_concurrent_trials=2, where="c").max_concurrent_trials == 2


def test_infeasible_trials_are_refused_with_one_line():
    nodes = (NodeKind({"CPU": 2.0, TRAIN_DRIVER: 1000.0}),)
    with pytest.raises(UserError, match=r"^resources: one Ray Train worker needs 64 CPU on one node, but the "
                                        r"largest node of this machine has 2 CPU"):
        plan_trials(TrialFootprint(1, 64, 0.0), nodes, max_concurrent_trials=None, where="this machine")
    with pytest.raises(UserError, match="needs 1 CPU, 1 GPU on one node, but the largest node of this machine has "
                                        "2 CPU, 0 GPU"):
        plan_trials(TrialFootprint(1, 1, 1.0), nodes, max_concurrent_trials=None, where="this machine")
    with pytest.raises(UserError, match="a trial needs 3 workers of .* at once, but this machine can hold 2"):
        plan_trials(TrialFootprint(3, 1, 0.0), nodes, max_concurrent_trials=None, where="this machine")
    # Node types an autoscaler may still launch count: 8 GPU workers that do not exist yet make it feasible.
    scaling = nodes + (NodeKind({"CPU": 4.0, "GPU": 1.0}, count=8),)
    plan_trials(TrialFootprint(4, 1, 1.0), scaling, max_concurrent_trials=None, where="c")


# --------------------------------------------------------------------------------------------------
# --address that cannot be used: one line, quickly


def test_address_with_nothing_listening_fails_fast_with_one_line(tmp_path):
    (tmp_path / "small.yaml").write_text(SMALL)
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    start = time.perf_counter()
    proc = sweep_cli(["sweep.yaml", "--address", f"127.0.0.1:{free_port()}"], tmp_path, base_env(tmp_path / "ray"),
                     timeout=120)
    assert time.perf_counter() - start < 60
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --address 127.0.0.1:") and "nothing answers" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.yaml", "sweep.yaml"]


def test_address_of_a_server_that_is_not_ray_fails_within_a_minute(tmp_path):
    server = socket.socket()
    server.bind(("0.0.0.0", 0))  # Ray resolves 127.0.0.1 to this machine's address
    server.listen(16)  # accepts and never answers, like a firewall or another service
    try:
        (tmp_path / "small.yaml").write_text(SMALL)
        (tmp_path / "sweep.yaml").write_text(SWEEP)
        start = time.perf_counter()
        proc = sweep_cli(["sweep.yaml", "--dry-run", "--address", f"127.0.0.1:{server.getsockname()[1]}"], tmp_path,
                         base_env(tmp_path / "ray"), timeout=120)
        elapsed = time.perf_counter() - start
    finally:
        server.close()
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, lines
    assert "did not answer as a Ray cluster" in lines[0] or "does not answer as a Ray cluster" in lines[0]
    assert elapsed < 60, elapsed


def test_a_cluster_of_another_ray_version_is_refused(monkeypatch):
    """What the GCS check concludes from the cluster's metadata (Ray's client is replaced by a stub)."""
    import ray
    import ray._raylet
    from ray._common.usage import usage_lib

    from clapray.sweep import cluster

    monkeypatch.setattr(ray._raylet, "GcsClient", lambda address: object())
    monkeypatch.setattr(usage_lib, "get_cluster_metadata", lambda client: {"ray_version": "2.9.0"})
    problem = cluster._gcs_problem("10.0.0.1:6379", timeout_s=10)
    assert problem == (f"the cluster runs Ray 2.9.0, this machine Ray {ray.__version__}; install the same version "
                       "on both")
    monkeypatch.setattr(usage_lib, "get_cluster_metadata", lambda client: {"ray_version": ray.__version__})
    assert cluster._gcs_problem("10.0.0.1:6379", timeout_s=10) is None

    def unauthenticated(client):
        raise RuntimeError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect")

    monkeypatch.setattr(usage_lib, "get_cluster_metadata", unauthenticated)
    assert cluster._gcs_problem("10.0.0.1:6379", timeout_s=10).startswith("the cluster requires token authentication")


# --------------------------------------------------------------------------------------------------
# Local means local


LISTENERS = textwrap.dedent("""
    import json, time
    from clapray.sweep.cluster import start_local_ray
    start_local_ray()
    import psutil, ray
    time.sleep(3)  # let the agents open their ports
    me = psutil.Process()
    sockets = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            sockets += [[proc.name(), c.laddr.ip, c.laddr.port] for c in proc.net_connections(kind="inet")
                        if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    print(json.dumps({"sockets": sockets, "gcs": ray.get_runtime_context().gcs_address,
                      "nodes": len(ray.nodes()), "resources": ray.cluster_resources()}))
    ray.shutdown()
""")


def test_a_local_sweep_ignores_ray_address_and_listens_on_loopback_only(tmp_path):
    """RAY_ADDRESS and Ray's ray_current_cluster file both name another cluster; the sweep's Ray is its own,
    and every listening socket of every one of its processes (GCS, raylet, agents, dashboard, metrics) is on
    127.0.0.1."""
    import ipaddress

    ray_tmp = Path(f"/tmp/clapray-test-ray-{secrets.token_hex(4)}")  # short: Ray's socket paths have a limit
    (ray_tmp / "ray").mkdir(parents=True)
    (ray_tmp / "ray" / "ray_current_cluster").write_text("10.11.12.13:6379")
    env = {**base_env(ray_tmp), "RAY_ADDRESS": "10.11.12.13:6379"}
    try:
        proc = subprocess.run([sys.executable, "-c", LISTENERS], env=env, capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)
    finally:
        kill_ray_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["gcs"].startswith("127.0.0.1:") and found["nodes"] == 1
    assert found["resources"].get(TRAIN_DRIVER) == 1000  # its own Ray, with its own resources
    names = {name for name, _, _ in found["sockets"]}
    assert {"gcs_server", "raylet"} <= names and len(found["sockets"]) >= 6, found["sockets"]
    outside = [s for s in found["sockets"] if not ipaddress.ip_address(s[1]).is_loopback
               and not (s[1].startswith("::ffff:") and ipaddress.ip_address(s[1][7:]).is_loopback)]
    assert outside == [], outside


# --------------------------------------------------------------------------------------------------
# A plain `ray start --head` cluster: token authentication, no custom resources


@pytest.fixture
def plain_cluster(tmp_path):
    """`ray start --head` with 2 CPUs, token authentication, no train_driver; killed by pid afterwards."""
    ray_tmp = Path(f"/tmp/clapray-test-ray-{secrets.token_hex(4)}")  # short: Ray's socket paths have a limit
    ray_tmp.mkdir()
    port = free_port()
    token = secrets.token_hex(32)
    env = {**base_env(ray_tmp), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    start = subprocess.run([str(RAY_BIN), "start", "--head", f"--port={port}", "--num-cpus=2",
                            "--include-dashboard=false", "--disable-usage-stats"], env=env, capture_output=True,
                           text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        address = (ray_tmp / "ray" / "ray_current_cluster").read_text().strip()
        yield address, env
    finally:
        kill_ray_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_sweep_on_a_plain_ray_start_cluster(plain_cluster, tmp_path):
    address, env = plain_cluster
    (tmp_path / "small.yaml").write_text(SMALL)
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    # Without RAY_AUTH_MODE=token the driver is refused; it says what to export, in one line, quickly.
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    refused = sweep_cli(["sweep.yaml", "--dry-run", "--address", address], tmp_path, no_token, timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"error: --address {address}: the cluster requires token authentication: export RAY_AUTH_MODE=token and "
        "give this machine the cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"]
    # With it, the sweep runs: worker groups, and no train_driver on this cluster, so the drivers reserve CPU,
    # one trial at a time.
    proc = sweep_cli(["sweep.yaml", "--address", address], tmp_path, env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"note: the cluster at {address} advertises no train_driver resource" in proc.stdout
    assert "at most 1 trial(s) at once" in proc.stdout
    runs = pd.read_parquet(tmp_path / "store" / "probe" / "runs").set_index("cell")
    assert runs.loc["lr=0.001", "status"] == "finished"
    # The diverging trial is an error with its reason, reported once: Ray Train did not retry it (retries: 2),
    # and Ray Tune saw a finished trial, not a failure (the exit code is 0).
    assert runs.loc["lr=100", "status"] == "error" and "non-finite" in runs.loc["lr=100", "error"]
    assert "diverged" in proc.stdout and proc.stdout.count("RETRY") == 0
