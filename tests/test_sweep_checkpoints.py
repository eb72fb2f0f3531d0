"""A sweep trial's per-task checkpoints (``clapray.sweep.task_checkpoints``): one layout for both executors,
the newest loadable one resumed, a partial one skipped, old ones pruned, local disks and S3 alike."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from clapray.sweep import task_checkpoints as tc


def checkpoint_files(tmp: Path, task: int) -> Path:
    """A checkpoint folder as a worker leaves it before persisting: the learner's state and its provenance."""
    local = tmp / f"local-{task}"
    local.mkdir()
    (local / tc.LEARNER_FILE).write_text(json.dumps({"task": task}))
    (local / "provenance.json").write_text(json.dumps({"trainable_params": task}))
    return local


def read_task(folder: Path) -> int:
    return json.loads((folder / tc.LEARNER_FILE).read_text())["task"]


def test_persisted_checkpoints_resume_from_the_newest_and_keep_two(tmp_path):
    run = str(tmp_path / "train_runs" / "train-abc")
    assert tc.newest(run, read_task) is None  # a trial that never saved one starts afresh
    for task in range(4):
        tc.persist(checkpoint_files(tmp_path, task), run, task)
        assert tc.newest(run, read_task) == task
    # Ray Train's CheckpointConfig(num_to_keep=2), kept by hand: tasks 2 and 3 remain, each complete.
    assert sorted(p.name for p in Path(run).iterdir()) == ["task_002", "task_003"]
    assert sorted(p.name for p in (Path(run) / "task_003").iterdir()) == ["learner.pt", "provenance.json"]
    # Folders ordered by task number, not by name or time; other entries (Train's run state) ignored.
    (Path(run) / "checkpoint_manager_snapshot.json").write_text("{}")
    (Path(run) / "task_notanumber").mkdir()
    assert [Path(p).name for p in tc.task_folders(run)] == ["task_003", "task_002"]


def test_a_partial_newest_checkpoint_falls_back_to_the_previous_task(tmp_path):
    """A kill while task 3's checkpoint is written leaves its folder without a readable learner: the trial
    resumes from task 2 (and learns task 3 again), never from a half-written state."""
    run = str(tmp_path / "train-abc")
    for task in (1, 2):
        tc.persist(checkpoint_files(tmp_path, task), run, task)
    partial = Path(run) / "task_003"
    partial.mkdir()
    (partial / "provenance.json").write_text("{}")  # written first; the learner never arrived
    assert tc.newest(run, read_task) == 2
    (partial / tc.LEARNER_FILE).write_text('{"tas')  # truncated
    assert tc.newest(run, read_task) == 2


def test_the_learner_file_is_written_last_and_atomically(tmp_path, monkeypatch):
    """Whoever sees ``learner.pt`` sees a complete checkpoint: the kill tests and the resume rely on it."""
    import clapray.sweep.task_checkpoints as module

    order = []
    real = module.write_bytes_atomic
    monkeypatch.setattr(module, "write_bytes_atomic", lambda path, data: (order.append(path.name), real(path, data)))
    local = checkpoint_files(tmp_path, 0)
    (local / "zz-extra.json").write_text("{}")
    tc.persist(local, str(tmp_path / "run"), 0)
    assert order[-1] == tc.LEARNER_FILE and sorted(order) == sorted(["learner.pt", "provenance.json", "zz-extra.json"])


def test_the_store_recovery_reads_the_same_layout(tmp_path):
    """What the sweep's recovery restores lost rows from is what the in-trial worker wrote."""
    import torch
    from test_results import fake_results

    from clapray.sweep.recovery import latest_checkpoint
    from clapray.sweep.spec import TrialSpec
    from clapray.task_result import TaskResult

    spec = TrialSpec(sweep="s", store=str(tmp_path / "s"), metric="avg_acc", workers_per_trial=1,
                     gpus_per_worker=0.0, cpus_per_worker=1, retries=0, in_trial=True)
    history = fake_results()[:2]
    local = tmp_path / "local"
    local.mkdir()
    torch.save({"history": [r.to_dict() for r in history]}, local / tc.LEARNER_FILE)
    (local / "provenance.json").write_text(json.dumps({"dataset_fingerprint": "f", "trainable_params": 7,
                                                       "used_feature_cache": True}))
    tc.persist(local, spec.run_folder("t1"), 1)
    restored, provenance = latest_checkpoint(spec, "t1")
    assert [(r.task, r.accuracy_row, r.avg_acc) for r in restored] == [(r.task, r.accuracy_row, r.avg_acc)
                                                                       for r in history]
    assert isinstance(restored[0], TaskResult) and provenance.trainable_params == 7
    assert latest_checkpoint(spec, "other") is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_checkpoints_on_s3_round_trip(monkeypatch, tmp_path):
    """On an object store each file is one PUT (whole or absent) and a resume reads a local copy."""
    moto_server = pytest.importorskip("moto.server")
    import pyarrow.fs as pafs

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        bucket = f"clapray-ckpt-{os.getpid()}"
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="test",
                          secret_key="test", region="us-east-1", allow_bucket_creation=True).create_dir(bucket)
        from clapray.sweep.spec import TrialSpec

        spec = TrialSpec(sweep="s", store=f"s3://{bucket}/s?endpoint_override=127.0.0.1:{port}&scheme=http",
                         metric="avg_acc", workers_per_trial=1, gpus_per_worker=0.0, cpus_per_worker=1, retries=0)
        run = spec.run_folder("t1")
        for task in range(3):
            tc.persist(checkpoint_files(tmp_path, task), run, task)
        assert tc.newest(run, read_task) == 2
        assert [p.rsplit("/", 1)[-1] for p in tc.task_folders(run)] == ["task_002", "task_001"]
    finally:
        server.stop()
