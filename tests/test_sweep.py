"""The sweep end to end on a local Ray: Parquet results, failure and retry, resume, dry runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clapray.config import RunConfig
from clapray.results import verify_consistency
from clapray.typed_config import from_mapping

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))


def sweep_cli(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "clapray.sweep", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_dry_runs(path):
    """The plan is printed and the dry run succeeds; a GPU sweep on a machine without GPUs (planned here, run
    on a cluster) says in a note that this machine could not run it, as its real run here would refuse."""
    from clapray.sweep import load_sweep_config
    from clapray.sweep.cluster import local_node

    proc = sweep_cli(str(path.relative_to(REPO)), "--dry-run", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "total:" in proc.stdout and "cells (" in proc.stdout and "Traceback" not in proc.stderr
    res, here = load_sweep_config(path).resources, local_node().resources
    fits = res.cpus_per_worker <= here["CPU"] and res.gpus_per_worker <= here.get("GPU", 0.0)
    note = "note: not runnable on this machine: resources: one Ray Train worker needs"
    assert (note in proc.stdout) != fits
    if not fits:
        assert res.gpus_per_worker > 0 and not here.get("GPU")  # only a GPU sweep gets a note; others exit 2


def test_bad_sweep_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbase: tiny\ngrid:\n  method.vga.depht: [1, 2]\n")
    proc = sweep_cli(str(bad), "--dry-run", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "grid.method.vga.depht" in proc.stderr


# The shipped quickstart sweep on the tiny random-weight backbone (no pretraining) and its two CLAP cells.
SMALL = ["set.backbone.model=clapray-tiny-vit", "set.backbone.pretrained=null", "grid.setting=[standard, replay_free]",
         "set.data.shapes.num_classes=6", "set.data.shapes.train_per_class=8", "set.data.shapes.test_per_class=4",
         "set.data.num_tasks=3", "set.optim.batch_size=8", "search.trials_per_cell=1", "seeds=[0]",
         "set.method.vga.ff_dim=64"]


# Lines Ray and Optuna print at start-up that the sweep's console filters (clapray.sweep.console).
NOISE = ("Token authentication is enabled", "PYTHON worker processes have been started", "A new study created",
         "Using an existing study", "Started a local Ray instance")


def test_sweep_survives_a_failed_trial_resumes_and_matches_a_plain_run(tmp_path):
    """An injected failure after task 1 of every trial: Ray Tune retries each trial (its worker runs inside
    it), which resumes from its checkpoint; the store ends complete and unduplicated, and its numbers equal
    a plain in-process run of the same config.
    Running the command again starts no new trial. The console names each trial's parameters, the sweep's
    k/N, elapsed time and ETA, shows heartbeats inside tasks, and none of Ray's or Optuna's start-up noise."""
    overrides = sum((["--set", s] for s in SMALL), [])
    # A heartbeat at every step (a task of this size lasts about a second), polled every 0.2 s.
    env = {"CLAPRAY_FAIL_AFTER_TASK": f"1:{tmp_path / 'markers'}", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
           "CLAPRAY_HEARTBEAT_S": "0"}
    proc = sweep_cli("sweeps/quickstart.yaml", "--storage", str(tmp_path / "store"), *overrides, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list((tmp_path / "markers").iterdir())) == 2  # each trial failed once
    # ... and the console said so, naming the failure, as Ray Tune retried it.
    retried = re.findall(r"^setting=\S+  \S+  seed 0  .*failed after task 2/3: .*injected failure after task 1; "
                         r"retrying from its last checkpoint", proc.stdout, re.M)
    assert len(retried) == 2, proc.stdout[-3000:]
    root = tmp_path / "store" / "quickstart"
    runs = pd.read_parquet(root / "runs")
    tasks = pd.read_parquet(root / "tasks")
    accuracy = pd.read_parquet(root / "accuracy")
    assert len(runs) == 2 and set(runs["status"]) == {"finished"}
    assert set(runs["cell"]) == {"setting=standard", "setting=replay_free"}
    assert len(tasks) == 2 * 3 and not tasks.duplicated(["run_id", "task"]).any()
    assert len(accuracy) == 2 * (1 + 2 + 3)
    assert verify_consistency(root) == []
    assert "finished" in proc.stdout and "Traceback" not in proc.stdout
    # The live view: every progress line carries its cell's counts and best metric; one line per cell at the end.
    assert re.search(r"^setting=standard +\[1 done, 0 running, 0 pending, 0 stopped, 0 failed; best avg_acc \d",
                     proc.stdout, re.M), proc.stdout[-3000:]
    # Ray Tune's TensorBoard logger stays on and its event files land beside the store.
    assert list(root.glob("trial_driver_*/events.out.tfevents.*"))
    assert_console_is_readable(proc, root, num_tasks=3, trials=2)

    # The store documents itself: the grid axis and the sampled values are columns, forgetting and forward
    # transfer are stored per run, and the README's Table 1 query (DuckDB) reads it without parsing `cell`.
    assert set(runs["setting"]) == {"standard", "replay_free"}
    assert [json.loads(g) for g in runs["grid"]] == [{"setting": s} for s in runs["setting"]]
    for sampled, kd in zip(runs["sampled"], runs["method.kd_weight"], strict=True):
        assert set(json.loads(sampled)) == {"method.kd_weight", "method.mc_samples_train"}
        assert json.loads(sampled)["method.kd_weight"] == kd
    assert str(runs["started_at"].dtype) == "datetime64[ms, UTC]"
    for _, run in runs.iterrows():
        mine = tasks[tasks["run_id"] == run["run_id"]]
        assert run["forgetting"] == pytest.approx(mine.sort_values("task")["forgetting"].iloc[-1])
        assert run["fwt"] == pytest.approx((mine["next_task_acc"] - mine["next_task_zero_shot_acc"]).mean())
        assert mine["next_task_acc"].notna().sum() == 2  # every task but the last
    duckdb = pytest.importorskip("duckdb")
    from test_results_docs import readme_block

    table1 = duckdb.sql(readme_block("sql", "The paper's Table 1").replace("results/variants-table1",
                                                                          str(root))).df()
    standard = runs[runs["setting"] == "standard"].iloc[0]
    assert table1[["variant", "inference"]].values.tolist() == [["handcrafted", "VI"]]
    assert table1["shapes_cl_Avg"].iloc[0] == f"{standard['avg_acc']:.2f} ± nan (n=1)"

    # The resumed trials' numbers equal an uninterrupted in-process run of the same configuration.
    import torch

    from clapray.learner import ContinualLearner

    torch.set_num_threads(1)
    for _, run in runs.iterrows():
        import yaml

        cfg = from_mapping(RunConfig, yaml.safe_load(run["config_yaml"]), "runs.config_yaml")
        plain = [r.last_acc for r in ContinualLearner(cfg).run()]
        stored = tasks[tasks["run_id"] == run["run_id"]].sort_values("task")["last_acc"].to_numpy()
        np.testing.assert_allclose(stored, plain, atol=1e-6)

    # The README's first three queries run on this store and answer what they claim.
    namespace = run_readme_queries(root)
    assert len(namespace["best"]) == 2 and set(namespace["best"]["avg_acc_count"]) == {1}
    assert set(namespace["per_task"]["task"]) == {0, 1, 2} and len(namespace["per_task"]) == 6
    assert len(namespace["curve"]) == 2

    # Again: nothing new runs, nothing changes.
    before = {p: p.stat().st_mtime_ns for p in root.glob("tasks/*.parquet")}
    again = sweep_cli("sweeps/quickstart.yaml", "--storage", str(tmp_path / "store"), *overrides, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming sweep" in again.stdout and "2 complete" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in root.glob("tasks/*.parquet")} == before
    assert not [n for n in NOISE if n in again.stdout + again.stderr]


def assert_console_is_readable(proc: subprocess.CompletedProcess, root: Path, *, num_tasks: int, trials: int) -> None:
    """What a person watching the sweep needs, and none of the start-up noise (README, Watching a sweep)."""
    out = proc.stdout
    # Every trial line: cell, trial, seed, the sampled parameters in short form, then k/N, elapsed, ETA.
    task_lines = re.findall(rf"^setting=\S+  \S+  seed 0  kd_weight=[\d.]+ mc_samples_train=\d+  "
                            rf"task \d/{num_tasks}  acc .*\| \d/{trials} trials, elapsed \S+, ETA \S+$", out, re.M)
    assert len(task_lines) >= trials * num_tasks, out[-3000:]
    assert re.search(rf"\| {trials}/{trials} trials, elapsed \S+, ETA 0s$", out, re.M), out[-3000:]
    assert re.search(r"ETA \d+(m\d\d)?s$", out, re.M)  # a real estimate once tasks have finished
    # At least one heartbeat from inside a task (the trial's rank 0 writes it, the driver polls it).
    assert re.search(rf"^setting=\S+  \S+  seed 0  kd_weight=\S+ mc_samples_train=\d+  \.\.\. task \d/{num_tasks}  "
                     rf"(train|memory|consolidate|evaluate) (step|batch) \d+/\d+  \[", out, re.M), out[-3000:]
    assert not [n for n in NOISE if n in out + proc.stderr], proc.stderr[-3000:]
    assert out.strip().splitlines()[-1] == f"report: python -m clapray.report {root}"


def run_readme_queries(root: Path) -> dict:
    """Execute the README's 'Reading the results' code block against ``root``."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Reading the results"):]
    block = section[section.index("```python") + len("```python"):]
    code = block[: block.index("```")].replace('root = "results/quickstart"', f"root = {str(root)!r}")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_sweep_of_eight_trials_encodes_the_images_once(tmp_path):
    """The sweep computes the frozen embeddings in one Ray task and every trial reads them from the object
    store: one encoding pass in the cache's build log, every run marked as having used it. The trial of
    seed 3 is made to fail after its first task (no retries): its line gives the reason and the log."""
    sweep = tmp_path / "eight.yaml"
    sweep.write_text(
        "name: eight\nbase: tiny\n"
        "set: {method.variant: handcrafted, data.num_tasks: 2, data.shapes.num_classes: 4,\n"
        "      data.shapes.train_per_class: 6, data.shapes.test_per_class: 3, optim.batch_size: 8,\n"
        "      method.vga.ff_dim: 64, method.mc_samples_train: 2, method.mc_samples_eval: 2}\n"
        "search: {algorithm: random, seed: 0, metric: avg_acc, trials_per_cell: 1}\n"
        "seeds: [0, 1, 2, 3, 4, 5, 6, 7]\nscheduler: none\n"
        "resources: {workers_per_trial: 1, gpus_per_worker: 0, cpus_per_worker: 1, max_concurrent_trials: null}\n"
        "retries: 0\nstorage: results\n")
    proc = sweep_cli(str(sweep), "--storage", str(tmp_path / "store"),
                     env={"CLAPRAY_FAIL_AFTER_TASK": f"0:{tmp_path / 'markers'}:3"})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # a trial failed for good
    assert "feature cache: 1 entry (1 encoded, 0 loaded)" in proc.stdout
    root = tmp_path / "store" / "eight"
    runs = pd.read_parquet(root / "runs")
    assert len(runs) == 8 and runs["used_feature_cache"].all()
    assert runs.set_index("seed")["status"].to_dict() == {s: "error" if s == 3 else "finished" for s in range(8)}
    failed = re.findall(r"^base  (\S+)  seed 3  FAILED after task 1/2: (.*) \(full log: (\S+error\.txt)\)  \[",
                        proc.stdout, re.M)
    assert len(failed) == 1, proc.stdout[-3000:]
    assert failed[0][1] == "clapray.sweep.trial.InjectedFailure: injected failure after task 0"
    # The log is Tune's error.txt in the trial's folder of the store, with the worker's traceback.
    log = Path(failed[0][2])
    assert log.is_file() and log.is_relative_to(root) and 'File "' in log.read_text()  # a traceback
    assert "InjectedFailure: injected failure after task 0" in log.read_text()
    assert "Traceback" not in proc.stdout and not [n for n in NOISE if n in proc.stdout + proc.stderr]
    # Tune's own dump of the traceback stays in error.txt, off the console.
    assert "Traceback" not in proc.stderr and "Trials did not complete" not in proc.stderr, proc.stderr[-3000:]
    logs = list((root / "feature_cache").glob("*/builds.log"))
    assert len(logs) == 1 and len(logs[0].read_text().splitlines()) == 1


def test_asha_stops_a_trial_and_its_reused_process_runs_the_next(tmp_path):
    """Workers inside the trials (the default) under ASHA: Tune ends a stopped trial's function at its report
    and runs every next trial in the same process (one slot: one process for all 8 trials); the stopped
    trial is recorded as stopped with the rows of the tasks it finished, equal to a plain run's."""
    from clapray.sweep.timeline import TIMELINE_ENV, read

    overrides = [s for s in SMALL if not s.startswith("search.trials_per_cell")] + [
        "search.trials_per_cell=4", "resources.max_concurrent_trials=1", "scheduler.asha.grace_tasks=1",
        "scheduler.asha.reduction_factor=2"]
    timeline = tmp_path / "timeline"
    timeline.mkdir()
    proc = sweep_cli("sweeps/quickstart.yaml", "--storage", str(tmp_path / "store"),
                     *sum((["--set", s] for s in overrides), []), env={TIMELINE_ENV: str(timeline)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = tmp_path / "store" / "quickstart"
    assert verify_consistency(root) == []
    runs = pd.read_parquet(root / "runs")
    tasks = pd.read_parquet(root / "tasks")
    assert len(runs) == 8 and set(runs["status"]) == {"finished", "stopped"}, runs[["status", "tasks_done"]]
    stopped = runs[runs["status"] == "stopped"]
    assert (stopped["tasks_done"] < 3).all() and (runs[runs["status"] == "finished"]["tasks_done"] == 3).all()
    assert tasks.groupby("run_id").size().to_dict() == dict(zip(runs["run_id"], runs["tasks_done"], strict=True))
    drivers = {e["pid"] for e in read(timeline) if e["role"] == "driver" and e["event"] == "enter"}
    assert len(drivers) == 1, drivers
    import torch
    import yaml

    from clapray.learner import ContinualLearner

    torch.set_num_threads(1)
    for _, run in stopped.iterrows():
        cfg = from_mapping(RunConfig, yaml.safe_load(run["config_yaml"]), "runs.config_yaml")
        plain = [r.last_acc for r in ContinualLearner(cfg).run()][: run["tasks_done"]]
        stored = tasks[tasks["run_id"] == run["run_id"]].sort_values("task")["last_acc"].to_numpy()
        np.testing.assert_allclose(stored, plain, atol=1e-6)


def test_a_stopped_or_failed_trial_keeps_the_provenance_its_workers_recorded(tmp_path):
    """The driver records an ASHA stop or a failure through the same identity and writer factory as the
    trial's workers; the run row keeps every provenance column the workers wrote."""
    from types import SimpleNamespace

    from test_results import fake_results

    from clapray.sweep.callbacks import StoreStatusCallback
    from clapray.sweep.spec import TrialIdentity, TrialSpec
    from clapray.task_result import RunProvenance

    spec = TrialSpec(sweep="s", store=str(tmp_path), metric="avg_acc", workers_per_trial=1, gpus_per_worker=0.0,
                     cpus_per_worker=1, retries=0)
    provenance = RunProvenance(dataset_fingerprint="fp", trainable_params=123, used_feature_cache=True)
    cfg = from_mapping(RunConfig, {"name": "t"}, "test")
    callback = StoreStatusCallback(spec, {"base": 3})
    history = fake_results()
    for trial_id, last in (("stopped", {"tasks_done": 1}), ("failed", None)):
        config = {"cell": "base", "seed": 0, "configuration": "base#0", "run": cfg.to_dict()}
        writer = TrialIdentity.of("s", trial_id, config).open_writer(str(tmp_path), cfg, provenance)
        writer.write_task(history[0], history[:1])  # what the trial's rank 0 wrote after its first task
        trial = SimpleNamespace(trial_id=trial_id, config=config, last_result=last, error_file=None)
        if last is None:
            callback.on_trial_error(0, [trial], trial)
        else:
            callback.on_trial_complete(0, [trial], trial)
    runs = pd.read_parquet(tmp_path / "runs").set_index("trial_id")
    assert runs.loc["stopped", "status"] == "stopped" and runs.loc["failed", "status"] == "error"
    for column, value in (("dataset_fingerprint", "fp"), ("trainable_params", 123), ("used_feature_cache", True)):
        assert runs[column].tolist() == [value, value], column
    for column in ("git_sha", "package_versions", "python_version", "config_hash", "config_yaml", "started_at"):
        assert runs[column].notna().all(), column


def test_a_failing_status_write_is_contained_and_recorded(tmp_path, capsys):
    """The store-status callback never raises into Ray Tune: a failed write is reported on stderr and kept
    for the driver, which records the status again from Tune's final state."""
    from types import SimpleNamespace

    from clapray.sweep import callbacks
    from clapray.sweep.spec import TrialSpec

    store = tmp_path / "store"
    store.mkdir()
    (store / "runs").write_text("not a folder")  # every write into runs/ fails
    spec = TrialSpec(sweep="s", store=str(store), metric="avg_acc", workers_per_trial=1, gpus_per_worker=0.0,
                     cpus_per_worker=1, retries=0)
    cfg = from_mapping(RunConfig, {"name": "t"}, "test")
    callback = callbacks.StoreStatusCallback(spec, {"base": 3})
    config = {"cell": "base", "seed": 0, "configuration": "base#0", "run": cfg.to_dict()}
    trial = SimpleNamespace(trial_id="t1", config=config, last_result={"tasks_done": 1}, error_file=None)
    before = len(callbacks.RECORDING_FAILURES)
    callback.on_trial_complete(0, [trial], trial)
    callback.on_trial_error(0, [trial], trial)
    assert len(callbacks.RECORDING_FAILURES) == before + 2
    assert "trial t1: could not record its stop" in callbacks.RECORDING_FAILURES[before]
    assert "could not record" in capsys.readouterr().err


def test_a_changed_sweep_is_refused_before_anything_is_written(tmp_path):
    """The README's own example after a quickstart: more trials and seeds on the finished store."""
    from clapray.sweep.loader import load_sweep_config
    from clapray.sweep.resolved import save_sweep

    store = tmp_path / "store"
    sweep = load_sweep_config(REPO / "sweeps" / "quickstart.yaml", [f"storage={store}"])
    save_sweep(sweep, str(store / "quickstart"))
    (store / "quickstart" / "runs").mkdir()
    (store / "quickstart" / "runs" / "trial-x.parquet").write_bytes(b"rows")
    digest = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    proc = sweep_cli("sweeps/quickstart.yaml", "--storage", str(store), "--set", "search.trials_per_cell=4",
                     "--set", "seeds=[0,1,2,3,4]", timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert "changed: search.trials_per_cell (2 -> 4), seeds ([0, 1, 2] -> [0, 1, 2, 3, 4])" in line
    assert "--set name=quickstart-2" in line
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == digest
    assert not list(store.rglob("*.lease"))
