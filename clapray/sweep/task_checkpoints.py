"""A sweep trial's per-task checkpoints: ``<store>/train_runs/train-<trial id>/task_<k>/``.

Each holds ``learner.pt`` (the learner's whole state, including the result of every task so far) and
``provenance.json`` (what the store's run row records beside the config). Both executors keep this layout:
a worker group's Ray Train run persists every reported checkpoint here itself (the folder is named by
``checkpoint_dir_name``); a trial whose worker runs inside the trial's process (Ray Train's local mode,
which persists nothing) writes it with :func:`persist`. So either executor resumes from what the other
wrote, and the store's recovery (:mod:`clapray.sweep.recovery`) reads one layout.

A folder counts only when its ``learner.pt`` loads: :func:`persist` writes it last (by rename on a local
disk; an object store's single PUT shows the whole object or none), so a kill mid-write leaves the previous
task's checkpoint as the newest loadable one.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pyarrow.fs as pafs

from clapray.fileio import is_object_store, resolve_filesystem, write_bytes_atomic

LEARNER_FILE = "learner.pt"
PREFIX = "task_"
KEEP = 2  # checkpoints kept per trial, as Ray Train's CheckpointConfig(num_to_keep=2) for a worker group

log = logging.getLogger(__name__)
T = TypeVar("T")


def folder_name(task: int) -> str:
    return f"{PREFIX}{task:03d}"


def task_folders(folder: str) -> list[str]:
    """Paths (on the folder's filesystem) of every ``task_<k>`` checkpoint folder, newest task first."""
    return [path for _, path in _numbered(folder)]


def _numbered(folder: str) -> list[tuple[int, str]]:
    """(task, path) of every ``task_<k>`` checkpoint folder of ``folder``, newest task first."""
    fs, base = resolve_filesystem(folder)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        suffix = info.base_name[len(PREFIX):]
        if info.type == pafs.FileType.Directory and info.base_name.startswith(PREFIX) and suffix.isdigit():
            found.append((int(suffix), info.path))
    return sorted(found, reverse=True)


def persist(local: Path, folder: str, task: int, keep: int = KEEP) -> None:
    """Copy the checkpoint files in ``local`` to ``folder/task_<task>``, ``learner.pt`` last, then remove the
    checkpoints of tasks before the ``keep`` newest."""
    fs, base = resolve_filesystem(folder)
    target = f"{base}/{folder_name(task)}"
    fs.create_dir(target, recursive=True)
    names = sorted((p.name for p in local.iterdir() if p.is_file()), key=lambda name: name == LEARNER_FILE)
    for name in names:
        data = (local / name).read_bytes()
        if is_object_store(fs):
            with fs.open_output_stream(f"{target}/{name}") as fh:
                fh.write(data)
        else:
            write_bytes_atomic(Path(target) / name, data)
    for number, old in _numbered(folder):
        if number <= task - keep:
            with contextlib.suppress(OSError):
                fs.delete_dir(old)


def newest(folder: str, read: Callable[[Path], T]) -> T | None:
    """``read`` of the newest task checkpoint of ``folder`` it can read (given the checkpoint as a local
    directory), or None when there is none. A checkpoint ``read`` fails on (a partial upload, a truncated or
    foreign file) is skipped with a warning for the one before it."""
    fs, _ = resolve_filesystem(folder)
    for path in task_folders(folder):
        try:
            with _local(fs, path) as local:
                return read(local)
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint: fall back to the previous one
            log.warning("%s: unreadable checkpoint (%s); trying the previous task's", path, err)
    return None


@contextlib.contextmanager
def _local(fs: pafs.FileSystem, path: str) -> Iterator[Path]:
    """Checkpoint folder ``path`` on ``fs`` as a local directory: itself on a local disk, else a temporary copy."""
    if isinstance(fs, pafs.LocalFileSystem):
        yield Path(path)
        return
    tmp = Path(tempfile.mkdtemp(prefix="clapray-checkpoint-"))
    try:
        pafs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
