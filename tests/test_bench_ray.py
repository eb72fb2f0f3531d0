"""``python -m clapray.bench ray`` end to end: the per-phase breakdown of every trial from the timeline of
every Ray process, the efficiency line, the stored results checked against plain runs, and ``--save``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from clapray.bench.ray_breakdown import PHASES
from clapray.sweep.cost import BenchFile

REPO = Path(__file__).resolve().parents[1]


def test_bench_ray_breaks_each_trial_down_and_saves_measured_seconds(tmp_path):
    saved = tmp_path / "_bench" / "ray.json"
    # Ray's own temp dir (or the caller's RAY_TMPDIR): a pytest tmp_path is too deep for its socket paths.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Both executors, side by side: a Ray Train worker group per trial, then the worker inside the trial.
    proc = subprocess.run([sys.executable, "-m", "clapray.bench", "ray", "--trials", "2", "--tasks", "1",
                           "--images", "2", "--concurrent", "2", "--variant", "coop", "--save", str(saved),
                           "--executor", "worker_group,in_trial"],
                          capture_output=True, text=True, cwd=REPO, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("stored results equal the plain runs': yes") == 2
    # One row per trial with every phase (the marks of the driver, the controller's run and the worker all
    # arrived), then the mean; a worker group spends time starting its worker, a worker inside the trial none.
    lines = out.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("trial ")]
    assert len(headers) == 2
    for header, executor in zip(headers, ("worker_group", "in_trial"), strict=True):
        assert all(phase in lines[header] for phase in PHASES)
        rows = lines[header + 1:header + 4]
        assert len(rows) == 3 and rows[2].startswith("mean")
        assert all(len(row.split()) == 1 + len(PHASES) + 1 for row in rows)
        worker_start = float(rows[2].split()[1 + PHASES.index("worker start")])
        assert (worker_start > 0) == (executor == "worker_group"), rows[2]
    assert out.count("efficiency: ") == 2 and "x 2 slot(s))" in out
    comparison = out[out.index("executor  "):]
    assert re.search(r"^worker_group +\d+\.\d\d +\d+\.\d% +yes$", comparison, re.M), comparison
    assert re.search(r"^in_trial vs worker_group: orchestration x\d\.\d\d \(-\d+\.\d\ds per trial\)$", comparison, re.M)
    bench = BenchFile.load(saved)
    assert bench.concurrent == 2 and bench.orchestration_s_per_trial > 0
    assert set(bench.learning_s_per_task) == {"coop"} and bench.learning_s_per_task["coop"] > 0
