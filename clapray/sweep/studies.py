"""Where a sweep's Optuna studies live: one journal file per sweep, one study per cell.

Optuna's JournalStorage with the file backend appends every ask and tell to one file, which works on any
POSIX (also shared) filesystem, survives a killed driver, and is what ``optuna-dashboard <file>`` and
``optuna.load_study(study_name=..., storage=JournalStorage(JournalFileBackend(<file>)))`` open, during and
after a sweep. A local store keeps it at ``<store>/optuna.journal``. An object store (``s3://``) cannot
hold an append-only file, so the driver keeps the journal in a local working copy
(``$CLAPRAY_CACHE/optuna/``, default ``~/.cache/clapray/optuna/``) and uploads it to
``<store>/optuna.journal`` after every change; a driver on another machine starts from that copy.

Study names are ``<sweep>/<cell>`` (:func:`study_name`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import optuna
import pyarrow.fs as pafs
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from clapray.fileio import child, resolve_filesystem, split_uri

JOURNAL_NAME = "optuna.journal"


def study_name(sweep: str, cell: str) -> str:
    """The Optuna study of one cell of a sweep."""
    return f"{sweep}/{cell}"


def journal_store_path(store: str) -> str:
    """Where a store keeps its journal (a path or URI; a URI's query string stays at its end)."""
    return child(store, JOURNAL_NAME)


class StudyJournal:
    """The journal of one sweep's studies: a local file, mirrored to an object store when the store is one.

    Picklable (the searcher is checkpointed by Ray Tune): only paths are kept; the storage object is opened
    on first use in each process.
    """

    def __init__(self, store: str):
        self.store = store
        self.remote = "://" in self.store and not self.store.startswith("file://")
        if self.remote:
            digest = hashlib.sha256(split_uri(self.store)[0].encode()).hexdigest()[:16]
            root = os.environ.get("CLAPRAY_CACHE")
            base = Path(root).expanduser() if root else Path.home() / ".cache" / "clapray"
            self.path = str(base / "optuna" / f"{digest}.journal")
        else:
            _, local = resolve_filesystem(self.store)
            self.path = f"{local}/{JOURNAL_NAME}"
        self._storage: JournalStorage | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_storage": None}

    @property
    def storage(self) -> JournalStorage:
        if self._storage is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            if self.remote and not Path(self.path).exists():
                self._download()
            self._storage = JournalStorage(JournalFileBackend(self.path))
        return self._storage

    def sync(self) -> None:
        """Upload the local journal to the object store (no-op for a local store)."""
        if not self.remote or not Path(self.path).exists():
            return
        fs, remote = resolve_filesystem(journal_store_path(self.store))
        with open(self.path, "rb") as src, fs.open_output_stream(remote) as dst:
            dst.write(src.read())

    def _download(self) -> None:
        fs, remote = resolve_filesystem(journal_store_path(self.store))
        if fs.get_file_info(remote).type != pafs.FileType.File:
            return
        with fs.open_input_stream(remote) as src:
            data = src.read()
        tmp = f"{self.path}.download"
        Path(tmp).write_bytes(data)
        os.replace(tmp, self.path)


def load_studies(store: str) -> dict[str, optuna.Study]:
    """Every study of a sweep's store, by study name (read-only use: reports, checks)."""
    journal = StudyJournal(store)
    if not journal.remote and not Path(journal.path).exists():
        return {}
    storage = journal.storage
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in storage.get_all_studies()}
