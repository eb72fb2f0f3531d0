"""The sweep's console, without Ray: k/N and ETA, short parameters, failure reasons, heartbeat polling and
the filter of Ray's and Optuna's start-up noise (clapray.sweep.progress, clapray.sweep.console)."""

from __future__ import annotations

import io
import logging
import logging.config
import math
import time

import pytest

from clapray.progress import FileSink, Heartbeat, progress_path
from clapray.sweep.console import FilteredStream, quiet_console
from clapray.sweep.progress import (
    HeartbeatPoller,
    SweepClock,
    SweepPlan,
    TrialProgress,
    failure_reason,
    remaining_tasks,
    short_params,
)

PLAN = SweepPlan(metric="avg_acc", mode="max", trials={"zs": 1, "clap": 4}, num_tasks={"zs": 5, "clap": 10})


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_remaining_tasks_count_running_pending_and_not_yet_created_trials():
    trials = [TrialProgress("zs", "done", 5),
              TrialProgress("clap", "running", 3),   # 7 left
              TrialProgress("clap", "stopped", 4),   # stopped by ASHA: nothing left
              TrialProgress("clap", "pending", 0)]   # 10 left
    # One clap trial not created yet: 10 more.
    assert remaining_tasks(PLAN, trials) == 7 + 10 + 10
    assert remaining_tasks(PLAN, []) == 5 + 4 * 10


def test_sweep_clock_line_and_eta():
    clock = FakeClock()
    sweep = SweepClock(PLAN, clock=clock)
    trials = [TrialProgress("zs", "done", 5), TrialProgress("clap", "running", 2)]
    assert sweep.line(trials) == "1/5 trials, elapsed 0s, ETA -"  # no task finished yet: no rate
    clock.now += 70.0
    for _ in range(7):
        sweep.task_finished()  # 7 tasks in 70 s: 10 s per task
    left = remaining_tasks(PLAN, trials)  # 8 + 3 * 10
    assert sweep.eta_s(trials) == pytest.approx(10.0 * left)
    assert sweep.line(trials) == f"1/5 trials, elapsed 1m10s, ETA {left * 10 // 60}m{left * 10 % 60:02d}s"
    done = [TrialProgress("zs", "done", 5)] + [TrialProgress("clap", "done", 10)] * 4
    assert sweep.line(done).endswith("5/5 trials, elapsed 1m10s, ETA 0s")


def test_short_params_names_and_values():
    assert short_params({"method.kd_weight": 12.512345, "method.mc_samples_train": 10}) == \
        "kd_weight=12.51 mc_samples_train=10"
    # An ambiguous last component keeps enough of the path to tell the two apart.
    assert short_params({"method.vga.depth": 2, "method.prompt.maple_depth": 3, "model.depth": 1}) == \
        "vga.depth=2 maple_depth=3 model.depth=1"
    assert short_params({}) == "" and short_params(None) == ""


def test_failure_reason_is_the_last_line_without_colour_codes(tmp_path):
    error = tmp_path / "error.txt"
    error.write_text("\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1)\n  File x\n"
                     "clapray.sweep.trial.InjectedFailure: injected failure after task 0\n\n")
    assert failure_reason(str(error)) == "clapray.sweep.trial.InjectedFailure: injected failure after task 0"
    assert failure_reason(str(tmp_path / "missing.txt")) == "trial failed (error file unreadable)"
    assert failure_reason(None) == "trial failed (no error file)"
    error.write_text("x" * 1000)
    assert len(failure_reason(str(error))) == 240


def test_heartbeat_poller_returns_each_new_heartbeat_once(tmp_path):
    clock = FakeClock()
    store = str(tmp_path)
    old = Heartbeat(0, 3, "train", 1, 10, time.time() - 3600, 1)  # left by an earlier session
    FileSink(progress_path(store, "trial-a"))(old)
    poller = HeartbeatPoller(lambda key: progress_path(store, f"trial-{key}"), every=2.0, clock=clock)
    assert poller.poll(["a", "b"]) == []  # the old one is not news; b has none
    beat = Heartbeat(1, 3, "evaluate", 2, 4, time.time() + 1, 1)
    FileSink(progress_path(store, "trial-a"))(beat)
    assert poller.poll(["a"]) == []  # polled again too soon
    clock.now += 2.0
    assert poller.poll(["a"]) == [("a", beat)]
    clock.now += 2.0
    assert poller.poll(["a"]) == []  # already shown


def test_filtered_stream_drops_only_the_noise():
    target = io.StringIO()
    stream = FilteredStream(target)
    stream.write("setting=standard  t1  task 1/3\n\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes have ")
    stream.write("been started on node: abc with address: 1.2.3.4, which is 4x the maximum expected startup "
                 "concurrency (2).\nWARNING: a real warning\npartial")
    stream.close_partial()
    assert target.getvalue() == "setting=standard  t1  task 1/3\nWARNING: a real warning\npartial"


def test_quiet_console_filters_ray_and_optuna_start_up_lines_and_restores_everything(capsys, monkeypatch):
    import optuna

    monkeypatch.delenv("TUNE_PRINT_ALL_TRIAL_ERRORS", raising=False)

    verbosity = optuna.logging.get_verbosity()
    token = logging.getLogger("ray._private.authentication.authentication_token_setup")
    ray_logger = logging.getLogger("ray")
    try:
        with quiet_console():
            # What ray.init does: dictConfig gives "ray" a handler on (the then current) stderr and resets
            # the levels of the loggers below it; the filters quiet_console put there survive.
            logging.config.dictConfig({
                "version": 1, "disable_existing_loggers": False,
                "handlers": {"ray": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
                "loggers": {"ray": {"level": "INFO", "handlers": ["ray"], "propagate": False}}})
            token.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled")
            token.error("token file unreadable")  # errors still pass
            logging.getLogger("ray._private.worker").info("Started a local Ray instance.")
            logging.getLogger("ray._private.worker").warning("a real Ray warning")
            logging.getLogger("ray.tune.tune").error("Trials did not complete: [trial_1]")
            assert __import__("os").environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] == "0"
            optuna.logging.get_logger("optuna.storages").info("A new study created in Journal with name: s/c")
            print("(raylet) WARNING: 12 PYTHON worker processes have been started on node: n, which is 6x the "
                  "maximum expected startup concurrency (2).")
            print("kept line")
            assert optuna.logging.get_verbosity() >= optuna.logging.WARNING
    finally:
        ray_logger.handlers, ray_logger.propagate = [], True
        ray_logger.setLevel(logging.NOTSET)
    captured = capsys.readouterr()
    assert "kept line" in captured.out and "PYTHON worker processes" not in captured.out
    assert "token file unreadable" in captured.err and "Token authentication is enabled" not in captured.err
    assert "a real Ray warning" in captured.err and "Started a local Ray instance" not in captured.err
    assert "Trials did not complete" not in captured.err
    assert "A new study created" not in captured.err + captured.out
    assert optuna.logging.get_verbosity() == verbosity and not token.filters
    assert "TUNE_PRINT_ALL_TRIAL_ERRORS" not in __import__("os").environ


def test_verbose_changes_nothing(capsys):
    with quiet_console(verbose=True):
        print("(raylet) WARNING: 8 PYTHON worker processes have been started on node: n")
    assert "PYTHON worker processes" in capsys.readouterr().out


def test_the_printer_survives_pickling_without_its_stream_or_clocks():
    import pickle

    from clapray.sweep.callbacks import ProgressPrinter

    printer = ProgressPrinter(PLAN, store="/tmp/store", out=io.StringIO())
    printer.clock.task_finished()
    again = pickle.loads(pickle.dumps(printer))  # Ray Tune pickles callbacks with the experiment
    assert again.plan == PLAN and again.store == "/tmp/store" and again.clock.tasks_finished == 0
    assert again.heartbeats is not None and not math.isnan(again.clock.start)
