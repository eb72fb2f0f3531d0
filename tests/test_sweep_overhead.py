"""What a trial costs besides its learning: light trial drivers, fewer Ray processes, the timeline that
``bench ray`` prints, measured seconds in a bench file and the dry run's cost estimate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clapray.bench.ray_breakdown import PHASES, efficiency, mean_phases, trial_breakdowns
from clapray.errors import ConfigError, UserError
from clapray.sweep.cost import BenchFile, CellCost, estimate_lines

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


# --------------------------------------------------------------------------------------------------
# The trial driver and the Train controller stay free of torch


def test_the_trial_driver_path_imports_no_torch():
    """What the Tune trial driver and the Train controller import for a one-worker trial: the trial module,
    the feature grouping and the trainer class. Importing torch there costs seconds per trial and process."""
    proc = run_python(
        "import os, sys\n"
        "os.environ['RAY_TRAIN_V2_ENABLED'] = '1'\n"
        "import clapray.sweep.trial as trial\n"
        "from clapray.features.groups import feature_group, uses_feature_cache\n"
        "trial.trainer_class(1)\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'clapray.learner') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n")
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_one_worker_trials_run_without_a_process_group_or_dataset_manager():
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.backend_setup import BackendSetupCallback
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from clapray.sweep.trial import trainer_class

    def fn(config):
        return None

    single = trainer_class(1)(fn, scaling_config=ScalingConfig(num_workers=1))
    assert isinstance(single, DataParallelTrainer) and not isinstance(single, TorchTrainer)
    callbacks = single._create_default_callbacks()
    assert not any(isinstance(c, DatasetsCallback) for c in callbacks)
    # Ray Train's default backend: no torch process group to set up for one worker.
    backend = next(c for c in callbacks if isinstance(c, BackendSetupCallback))
    assert type(backend._backend_config).__name__ == "BackendConfig"
    # Several workers all-reduce through torch.distributed: a TorchTrainer, still without the dataset manager.
    multi = trainer_class(2)(fn, scaling_config=ScalingConfig(num_workers=2))
    assert isinstance(multi, TorchTrainer)
    assert not any(isinstance(c, DatasetsCallback) for c in multi._create_default_callbacks())


# --------------------------------------------------------------------------------------------------
# The timeline's breakdown


def _event(role, event, t, pid, started, trial):
    return {"role": role, "event": event, "t": t, "pid": pid, "started": started, "trial": trial}


def _trial_events(trial, driver_pid, driver_started, t0, worker_pid):
    """A one-worker trial of two tasks whose driver enters at t0 (times in seconds)."""
    d, w = (lambda e, t: _event("driver", e, t, driver_pid, driver_started, trial),
            lambda e, t: _event("worker", e, t, worker_pid, t0 + 3.0, trial))
    return [d("enter", t0), d("fit", t0 + 0.5), w("enter", t0 + 4.0), w("imported", t0 + 6.0),
            w("learner_ready", t0 + 6.5), w("task_start", t0 + 6.5), w("task_end", t0 + 7.5), w("reported", t0 + 7.75),
            w("task_start", t0 + 7.75), w("task_end", t0 + 8.25), w("reported", t0 + 8.5), w("exit", t0 + 8.5),
            d("fitted", t0 + 9.0)]


def test_the_breakdown_splits_each_trial_into_phases_and_a_reused_driver_starts_at_its_previous_end():
    # Trial a: a fresh driver process started 2 s before its trial function ran. Trial b: the same driver
    # process (Tune reused it), entering 1 s after trial a returned.
    events = _trial_events("a", 10, 98.0, 100.0, 20) + _trial_events("b", 10, 98.0, 110.0, 21)
    a, b = trial_breakdowns(events)
    assert (a.trial, b.trial) == ("a", "b")
    assert a.phases == {"driver start": 2.0, "driver set-up": 0.5, "controller + group": 2.5, "worker start": 1.0,
                        "worker imports": 2.0, "learner set-up": 0.5, "learning": 1.5, "report + ckpt": 0.5,
                        "teardown": 0.5}
    assert a.span == pytest.approx(11.0) and sum(a.phases.values()) == pytest.approx(a.span)
    assert b.phases["driver start"] == pytest.approx(1.0)  # not the 12 s since the process itself started
    assert b.span == pytest.approx(10.0) and b.orchestration == pytest.approx(8.5)
    assert set(mean_phases([a, b])) == set(PHASES) and mean_phases([a, b])["driver start"] == pytest.approx(1.5)
    # A trial whose timeline is incomplete (its driver never returned) is left out, not half counted.
    assert [t.trial for t in trial_breakdowns(_trial_events("c", 11, 0.0, 1.0, 22)[:-1] + events)] == ["a", "b"]
    assert efficiency(3.0, 10.0, 2) == pytest.approx(0.15)


# --------------------------------------------------------------------------------------------------
# Measured seconds and the dry run's estimate


def test_bench_file_round_trips_and_refuses_bad_content_with_one_line(tmp_path):
    path = tmp_path / "_bench" / "ray.json"
    bench = BenchFile().with_measurement(orchestration_s_per_trial=4.0, concurrent=2, conditions="2 CPUs",
                                         variant="coop", learning_s_per_task=1.5)
    bench.save(path)
    again = BenchFile.load(path).with_measurement(orchestration_s_per_trial=3.0, concurrent=1, conditions="x",
                                                  variant="maple", learning_s_per_task=2.5)
    assert BenchFile.load(path) == bench
    assert dict(again.learning_s_per_task) == {"coop": 1.5, "maple": 2.5} and again.orchestration_s_per_trial == 3.0
    for content, field in (("{not json", "invalid JSON"), ('{"orchestration_s_per_trial": -1}', "orchestration"),
                           ('{"variants": {"coop": {"learning_s_per_task": "fast"}}}', "variants.coop"),
                           ('{"concurrent": 0}', "concurrent"), ("[1, 2]", "JSON object")):
        path.write_text(content)
        with pytest.raises(UserError, match=field) as err:
            BenchFile.load(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_estimate_is_trials_times_seconds_per_trial_per_variant():
    bench = BenchFile(orchestration_s_per_trial=4.0, conditions="c", learning_s_per_task={"coop": 2.0})
    costs = [CellCost("a", "coop", 10, 4.0 + 2.0 * 3), CellCost("b", "coop", 5, 4.0 + 2.0 * 3),
             CellCost("c", "maple", 7, None)]
    lines = estimate_lines(costs, bench, "f.json", concurrent=4)
    assert lines[1] == "  coop: 2 cell(s), 15 trial(s) x 10.0s = 150 slot-seconds"
    assert lines[2] == "  total: 150 slot-seconds; about 38s of wall time at 4 trials at once (measured variants only)"
    assert "not measured: maple" in lines[3]


def sweep_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clapray.sweep", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_dry_run_prints_the_cost_of_a_packed_gpu_sweep_from_the_bench_file(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"orchestration_s_per_trial": 4.0, "concurrent": 2, "conditions": "test",
                                 "variants": {"coop": {"learning_s_per_task": 2.0}}}))
    proc = sweep_cli("sweeps/ablation.yaml", "--dry-run", "--bench-file", str(bench))
    assert proc.returncode == 0, proc.stderr
    # ablation: CIFAR-100 in 10 tasks, 6 coop cells of 16 configurations x 3 seeds, 0.25 GPU per trial.
    assert "1 worker(s) per trial x (0.25 GPU, 1 CPU)" in proc.stdout
    assert "  coop: 6 cell(s), 288 trial(s) x 24.0s = 6912 slot-seconds" in proc.stdout
    # The default location, <storage>/_bench/ray.json, is read without the flag.
    store = tmp_path / "store"
    (store / "_bench").mkdir(parents=True)
    (store / "_bench" / "ray.json").write_text(bench.read_text())
    proc = sweep_cli("sweeps/ablation.yaml", "--dry-run", "--storage", str(store))
    assert proc.returncode == 0 and "coop: 6 cell(s), 288 trial(s)" in proc.stdout, proc.stderr


def test_dry_run_refuses_a_missing_or_bad_bench_file_with_one_line(tmp_path):
    proc = sweep_cli("sweeps/quickstart.yaml", "--dry-run", "--bench-file", str(tmp_path / "none.json"))
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: --bench-file: {tmp_path / 'none.json'} is not a file (write "
                                                f"one with `python -m clapray.bench ray --save "
                                                f"{tmp_path / 'none.json'}`)"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"orchestration_s_per_trial": "slow"}')
    proc = sweep_cli("sweeps/quickstart.yaml", "--dry-run", "--bench-file", str(bad))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "orchestration_s_per_trial: expected a number of seconds" in proc.stderr


def test_gpus_per_worker_above_one_must_be_whole():
    from clapray.sweep.model import ResourcesConfig

    assert ResourcesConfig(gpus_per_worker=0.25).gpus_per_worker == 0.25
    assert ResourcesConfig(gpus_per_worker=2.0).gpus_per_worker == 2.0
    with pytest.raises(ConfigError, match="gpus_per_worker"):
        ResourcesConfig(gpus_per_worker=1.5)


def test_trial_processes_are_reused_unless_a_scheduler_stops_worker_groups():
    from clapray.sweep import load_sweep_config
    from clapray.sweep.driver import reuses_trial_drivers

    assert reuses_trial_drivers(load_sweep_config(REPO / "sweeps" / "quickstart.yaml"))
    # With the worker inside the trial, Tune ends a stopped trial's function at its report: reused under ASHA.
    ablation = load_sweep_config(REPO / "sweeps" / "ablation.yaml")
    assert ablation.scheduler is not None and ablation.resources.in_trial and reuses_trial_drivers(ablation)
    # A worker group's trial blocks in fit(): under ASHA its process must be killed, not kept for reuse.
    assert not reuses_trial_drivers(load_sweep_config(REPO / "sweeps" / "ablation.yaml",
                                                      ["resources.executor=worker_group"]))
    assert reuses_trial_drivers(load_sweep_config(REPO / "sweeps" / "quickstart.yaml",
                                                  ["resources.executor=worker_group"]))


def test_the_executor_resolves_per_worker_count_and_refuses_in_trial_for_several_workers(tmp_path):
    from clapray.sweep import load_sweep_config
    from clapray.sweep.model import ResourcesConfig

    assert ResourcesConfig().in_trial and ResourcesConfig(executor="in_trial").in_trial
    assert not ResourcesConfig(workers_per_trial=2).in_trial  # auto: several workers need a worker group
    assert not ResourcesConfig(executor="worker_group").in_trial
    with pytest.raises(ConfigError, match="executor: expected worker_group or auto when workers_per_trial > 1"):
        ResourcesConfig(workers_per_trial=2, executor="in_trial")
    for value in ("local", "IN_TRIAL", ""):
        with pytest.raises(ConfigError, match="resources.executor"):
            load_sweep_config(REPO / "sweeps" / "quickstart.yaml", [f"resources.executor={value}"])


def test_a_sweep_resumes_under_another_executor_but_not_with_other_resources(tmp_path):
    """The executor changes how a trial runs, not what it computes (and both read the same checkpoints), so
    a store started under one resumes under the other; any other field still makes a changed sweep."""
    from clapray.sweep import load_sweep_config
    from clapray.sweep.resolved import SweepChanged, check_same_sweep, save_sweep

    root = str(tmp_path / "store")
    quickstart = REPO / "sweeps" / "quickstart.yaml"
    save_sweep(load_sweep_config(quickstart, ["resources.executor=worker_group"]), root)
    assert check_same_sweep(load_sweep_config(quickstart), root)
    assert check_same_sweep(load_sweep_config(quickstart, ["resources.executor=in_trial"]), root)
    with pytest.raises(SweepChanged, match=r"resources.cpus_per_worker \(1 -> 2\)"):
        check_same_sweep(load_sweep_config(quickstart, ["resources.cpus_per_worker=2"]), root)


def test_the_breakdown_of_a_trial_whose_worker_runs_inside_it():
    """executor in_trial: the worker's events come from the trial's own process, so there is no controller,
    group or worker start, and a reused process has nothing left to import."""
    def trial(name, t0, imports):
        d = lambda e, t: _event("driver", e, t, 10, 90.0, name)  # noqa: E731
        w = lambda e, t: _event("worker", e, t, 10, 90.0, name)  # noqa: E731
        return [d("enter", t0), d("fit", t0 + 0.1), w("enter", t0 + 0.2), w("imported", t0 + 0.2 + imports),
                w("learner_ready", t0 + 0.5 + imports), w("task_start", t0 + 0.5 + imports),
                w("task_end", t0 + 1.5 + imports), w("reported", t0 + 1.6 + imports), w("exit", t0 + 1.6 + imports),
                d("fitted", t0 + 1.7 + imports)]

    first, reused = trial_breakdowns(trial("a", 100.0, 3.0) + trial("b", 106.0, 0.0))
    assert first.phases["controller + group"] == pytest.approx(0.1) and first.phases["worker start"] == 0.0
    assert first.phases["worker imports"] == pytest.approx(3.0) and first.phases["driver start"] == pytest.approx(10.0)
    assert reused.phases["driver start"] == pytest.approx(106.0 - 104.7)
    assert reused.phases["worker imports"] == 0.0 and reused.orchestration == pytest.approx(0.7 + 1.3)
    assert sum(first.phases.values()) == pytest.approx(first.span)
