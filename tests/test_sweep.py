"""The sweep end to end on a local Ray: Parquet results, failure and retry, resume, dry runs."""

from __future__ import annotations

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
    """The plan is printed and the dry run succeeds; a sweep whose trial does not fit this machine (the GPU
    sweeps on a CPU box) says so in a note, as its real run here would refuse."""
    from clapray.sweep import load_sweep_config
    from clapray.sweep.cluster import local_node

    proc = sweep_cli(str(path.relative_to(REPO)), "--dry-run", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "total:" in proc.stdout and "cells (" in proc.stdout and "Traceback" not in proc.stderr
    res, here = load_sweep_config(path).resources, local_node().resources
    fits = res.cpus_per_worker <= here["CPU"] and res.gpus_per_worker <= here.get("GPU", 0.0)
    note = "note: not runnable on this machine: resources: one Ray Train worker needs"
    assert (note in proc.stdout) != fits


def test_bad_sweep_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbase: quickstart\ngrid:\n  method.vga.depht: [1, 2]\n")
    proc = sweep_cli(str(bad), "--dry-run", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "grid.method.vga.depht" in proc.stderr


# The shipped quickstart on the tiny random-weight backbone (no pretraining) and its two CLAP cells.
SMALL = ["set.backbone.model=clapray-tiny-vit", "set.backbone.pretrained=null", "grid.setting=[standard, replay_free]",
         "set.data.shapes.num_classes=6", "set.data.shapes.train_per_class=8", "set.data.shapes.test_per_class=4",
         "set.data.num_tasks=3", "set.optim.batch_size=8", "search.trials_per_cell=1",
         "set.method.vga.ff_dim=64"]


def test_sweep_survives_a_failed_trial_resumes_and_matches_a_plain_run(tmp_path):
    """An injected failure after task 1 of every trial: Train resumes each from its checkpoint; the
    store ends complete and unduplicated, and its numbers equal a plain in-process run of the same config.
    Running the command again starts no new trial."""
    overrides = sum((["--set", s] for s in SMALL), [])
    env = {"CLAPRAY_FAIL_AFTER_TASK": f"1:{tmp_path / 'markers'}", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    proc = sweep_cli("sweeps/quickstart.yaml", "--storage", str(tmp_path / "store"), *overrides, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list((tmp_path / "markers").iterdir())) == 2  # each trial failed once
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
    store: one encoding pass in the cache's build log, every run marked as having used it."""
    sweep = tmp_path / "eight.yaml"
    sweep.write_text(
        "name: eight\nbase: quickstart\n"
        "set: {method.variant: handcrafted, data.num_tasks: 2, data.shapes.num_classes: 4,\n"
        "      data.shapes.train_per_class: 6, data.shapes.test_per_class: 3, optim.batch_size: 8,\n"
        "      method.vga.ff_dim: 64, method.mc_samples_train: 2, method.mc_samples_eval: 2}\n"
        "search: {algorithm: random, seed: 0, metric: avg_acc, trials_per_cell: 1}\n"
        "seeds: [0, 1, 2, 3, 4, 5, 6, 7]\nscheduler: none\n"
        "resources: {workers_per_trial: 1, gpus_per_worker: 0, cpus_per_worker: 1, max_concurrent_trials: null}\n"
        "retries: 0\nstorage: results\n")
    proc = sweep_cli(str(sweep), "--storage", str(tmp_path / "store"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "feature cache: 1 entry (1 encoded, 0 loaded)" in proc.stdout
    root = tmp_path / "store" / "eight"
    runs = pd.read_parquet(root / "runs")
    assert len(runs) == 8 and set(runs["status"]) == {"finished"} and runs["used_feature_cache"].all()
    logs = list((root / "feature_cache").glob("*/builds.log"))
    assert len(logs) == 1 and len(logs[0].read_text().splitlines()) == 1


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
                     "--set", "seeds=[0,1,2]", timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert "changed: search.trials_per_cell (2 -> 4), seeds ([0] -> [0, 1, 2])" in line
    assert "--set name=quickstart-2" in line
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == digest
    assert not list(store.rglob("*.lease"))
