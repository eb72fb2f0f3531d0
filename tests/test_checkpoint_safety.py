"""Nothing read back from a run directory, a store or the data root runs code (clapray.checkpoint, the CIFAR
unpickler): a planted file whose unpickling would create a marker file is refused with one line, and the
marker never appears."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest_data import write_fake_cifar

from clapray.checkpoint import load_checkpoint
from clapray.config import load_run_config, shipped_config_path
from clapray.data import build_benchmark
from clapray.errors import DatasetNotFoundError, UserError
from clapray.learner import ContinualLearner

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.shapes.num_classes=4", "data.shapes.train_per_class=4", "data.shapes.test_per_class=2",
        "data.num_tasks=2", "method.mc_samples_train=2", "method.mc_samples_eval=2", "method.vga.ff_dim=32",
        "optim.batch_size=8", "budget.max_steps_per_task=2"]


class Payload:
    """Unpickling this runs ``touch <marker>``: what a hostile file planted in a shared store would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path, fmt: str) -> None:
    if fmt == "torch.save":  # the zip format of a real checkpoint, the payload inside its data.pkl
        torch.save({"version": 3, "head": Payload(marker)}, path)
    else:  # a bare pickle under the checkpoint's name
        path.write_bytes(pickle.dumps(Payload(marker), protocol=2))


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_the_payload_is_real_and_is_refused(tmp_path, fmt):
    marker, path = tmp_path / "PWNED", tmp_path / "learner.pt"
    plant(path, marker, fmt)
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: not a readable checkpoint")
    assert not marker.exists()
    # The same file read the way checkpoints were read before runs the payload: the test plants real code.
    with contextlib.suppress(RuntimeError):  # a bare pickle then fails torch's magic-number check, too late
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_learner_refuses_a_planted_checkpoint_and_resumes_from_a_real_one(tmp_path):
    cfg = load_run_config(shipped_config_path("tiny"), TINY)
    learner = ContinualLearner(cfg)
    learner.learn_task(0)
    learner.save(tmp_path / "learner.pt")
    again = ContinualLearner(cfg)
    again.load(tmp_path / "learner.pt")  # a genuine checkpoint loads under weights_only=True
    assert again.tasks_done == 1
    assert json.dumps(again.history[0].to_dict(), sort_keys=True) == json.dumps(learner.history[0].to_dict(),
                                                                                sort_keys=True)
    plant(tmp_path / "learner.pt", tmp_path / "PWNED", "torch.save")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        ContinualLearner(cfg).load(tmp_path / "learner.pt")
    assert not (tmp_path / "PWNED").exists()


def test_the_run_cli_refuses_a_planted_checkpoint(tmp_path):
    """A finished run's checkpoint replaced by a payload: re-running exits 2 with one line, runs no code and
    changes nothing in the store."""
    args = [sys.executable, "-m", "clapray.run", "tiny", "--out", str(tmp_path / "out"),
            *sum((["--set", s] for s in TINY), [])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (checkpoint,) = (tmp_path / "out").glob("*/checkpoint.pt")
    runs_before = pd.read_parquet(tmp_path / "out" / "runs")
    plant(checkpoint, tmp_path / "PWNED", "torch.save")
    stored = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.parquet")}
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines() == [f"error: {checkpoint}: not a readable checkpoint (it holds objects "
                                                 "a checkpoint never has, which could run code); it was not loaded"]
    assert not (tmp_path / "PWNED").exists()
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.parquet")} == stored
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / "runs"), runs_before)


def test_a_planted_cifar_file_is_refused(tmp_path):
    write_fake_cifar(tmp_path)
    build_benchmark("cifar100", tmp_path)  # the release format loads through the restricted unpickler
    marker = tmp_path / "PWNED"
    (tmp_path / "cifar-100-python" / "meta").write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(DatasetNotFoundError, match="CIFAR-100 file unreadable"):
        build_benchmark("cifar100", tmp_path)
    assert not marker.exists()
