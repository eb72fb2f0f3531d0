"""Frozen image embeddings, computed once per (backbone, weights, dataset, preprocessing, view).

For every variant whose image tower stays frozen, a training image has exactly two possible embeddings
(the only augmentation is a horizontal flip, §12.4) and a test image one. :func:`encode_benchmark`
computes all of them in large no-grad batches; :class:`FeatureStore` keeps them on disk (a local
directory, or any pyarrow filesystem such as S3) under a key that fingerprints everything they depend
on, verified by a SHA-256 on every load, so a corrupt or partial file is rebuilt rather than used.

Layout of one entry: ``<root>/<key>/features.npy`` (float32, ``[2 * N_train + N_test, d]``: the
original training views, then the flipped ones, then the test images) and ``manifest.json`` (shapes,
checksum, fingerprint), written last, so an entry without a manifest is an unfinished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
from torch import Tensor

from clapray.fileio import directory_lock, resolve_filesystem, write_bytes_atomic
from clapray.progress import ProgressHook

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when what an entry holds changes; it is part of every key."""

FEATURES_NAME = "features.npy"
MANIFEST_NAME = "manifest.json"
BUILD_LOG_NAME = "builds.log"


@dataclass(frozen=True)
class ImageFeatures:
    """Frozen embeddings of one benchmark.

    Attributes:
        train: ``[2, N_train, d]``; ``train[0]`` the original views, ``train[1]`` the mirrored ones, in
            the benchmark's training-split order.
        test: ``[N_test, d]`` in the test-split order.
        key: the cache key they were stored under.
    """

    train: Tensor
    test: Tensor
    key: str

    def train_views(self, indices: Tensor, flipped: Tensor) -> Tensor:
        """``[B, d]``: the embedding of training image ``indices[b]`` in view ``flipped[b]`` (one gather)."""
        return self.train[flipped.long(), indices.long()]

    @property
    def dim(self) -> int:
        return int(self.train.shape[-1])

    @property
    def nbytes(self) -> int:
        return self.train.numel() * self.train.element_size() + self.test.numel() * self.test.element_size()

    def to_array(self) -> np.ndarray:
        """The on-disk layout ``[2 * N_train + N_test, d]`` (see the module docstring)."""
        n, d = self.train.shape[1], self.train.shape[2]
        return torch.cat([self.train.reshape(2 * n, d), self.test]).numpy()

    @classmethod
    def from_array(cls, array: np.ndarray, n_train: int, key: str) -> ImageFeatures:
        flat = torch.from_numpy(np.ascontiguousarray(array))
        d = flat.shape[1]
        return cls(train=flat[: 2 * n_train].reshape(2, n_train, d), test=flat[2 * n_train:], key=key)


def cache_key(fingerprint: Mapping[str, Any]) -> str:
    """A short stable hash (20 hex characters) of a JSON-able fingerprint."""
    blob = json.dumps({"cache_version": CACHE_VERSION, **fingerprint}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (a local weights file is identified by content, not by name)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Encoding


class _Views(torch.utils.data.Dataset):
    """Preprocessed images of ``split`` through one fixed transform (no labels needed)."""

    def __init__(self, split: Any, transform: Callable[[Any], Tensor]):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> Tensor:
        return self.transform(self.split[i][0])


def _encode_split(backbone: Any, split: Any, transform: Callable[[Any], Tensor], *, batch_size: int,
                  num_workers: int, tick: Callable[[], None] = lambda: None) -> Tensor:
    device = backbone.device
    loader = torch.utils.data.DataLoader(_Views(split, transform), batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, pin_memory=device.type == "cuda")
    parts = []
    for images in loader:
        parts.append(backbone.encode_images(images.to(device, non_blocking=True)).float().cpu())
        tick()
    return torch.cat(parts) if parts else torch.zeros(0, backbone.embed_dim)


def encode_benchmark(backbone: Any, benchmark: Any, key: str, *, batch_size: int = 256,
                     num_workers: int = 0, progress: ProgressHook | None = None) -> ImageFeatures:
    """Every training image in both views and every test image through the frozen image tower.

    ``backbone.encode_images`` runs without gradients, under the backbone's precision (bf16 autocast on
    GPU) and returns L2-normalised embeddings; they are kept in float32. ``progress`` hears of every batch
    (phase ``encode``, task -1; :mod:`clapray.progress`).
    """
    from clapray.data.transforms import view_transform

    total = 2 * math.ceil(len(benchmark.train) / batch_size) + math.ceil(len(benchmark.test) / batch_size)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(-1, "encode", done, total)

    options = dict(batch_size=batch_size, num_workers=num_workers, tick=tick)
    original = _encode_split(backbone, benchmark.train, view_transform(backbone.preprocess, False), **options)
    flipped = _encode_split(backbone, benchmark.train, view_transform(backbone.preprocess, True), **options)
    test = _encode_split(backbone, benchmark.test, backbone.preprocess, **options)
    return ImageFeatures(train=torch.stack([original, flipped]), test=test, key=key)


# --------------------------------------------------------------------------------------------------
# Storage


class FeatureStore:
    """Entries of :class:`ImageFeatures` under ``root`` (a local path or a URI such as ``s3://b/p``)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = os.fspath(root)
        self.fs, self.path = resolve_filesystem(os.fspath(root))

    def entry(self, key: str) -> str:
        return f"{self.path}/{key}"

    def _read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def _write(self, path: str, data: bytes) -> None:
        """Write ``path`` whole: atomically on a local disk; object stores put an object whole or not at all."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            write_bytes_atomic(Path(path), data)
        else:
            with self.fs.open_output_stream(path) as f:
                f.write(data)

    def load(self, key: str) -> ImageFeatures | None:
        """The entry of ``key``, or ``None`` if it is missing, unfinished or fails its checksum."""
        entry = self.entry(key)
        try:
            manifest = json.loads(self._read(f"{entry}/{MANIFEST_NAME}"))
        except (FileNotFoundError, OSError, ValueError):
            return None
        try:
            blob = self._read(f"{entry}/{FEATURES_NAME}")
        except (FileNotFoundError, OSError):
            logger.warning("feature cache %s: %s is missing; rebuilding", entry, FEATURES_NAME)
            return None
        if hashlib.sha256(blob).hexdigest() != manifest.get("sha256"):
            logger.warning("feature cache %s: %s does not match its checksum (corrupt or partial); rebuilding",
                           entry, FEATURES_NAME)
            return None
        try:
            array = np.load(io.BytesIO(blob), allow_pickle=False)
            n_train = int(manifest["n_train"])
            if array.shape != (2 * n_train + int(manifest["n_test"]), int(manifest["dim"])):
                raise ValueError(f"shape {array.shape}")
        except (ValueError, KeyError, TypeError) as err:
            logger.warning("feature cache %s: unreadable (%s); rebuilding", entry, err)
            return None
        return ImageFeatures.from_array(array, n_train, key)

    def save(self, features: ImageFeatures, fingerprint: Mapping[str, Any], build_s: float) -> None:
        """Store ``features``; the manifest goes last, so a crash leaves no entry that looks complete."""
        entry = self.entry(features.key)
        buf = io.BytesIO()
        np.save(buf, features.to_array(), allow_pickle=False)
        blob = buf.getvalue()
        self._write(f"{entry}/{FEATURES_NAME}", blob)
        manifest = {
            "key": features.key, "sha256": hashlib.sha256(blob).hexdigest(), "n_train": int(features.train.shape[1]),
            "n_test": int(features.test.shape[0]), "dim": features.dim, "build_s": round(build_s, 3),
            "fingerprint": dict(fingerprint),
        }
        self._write(f"{entry}/{MANIFEST_NAME}", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())

    def record_build(self, key: str, seconds: float, n_images: int) -> None:
        """Append one line per encoding pass to ``<key>/builds.log`` (how often the tower really ran)."""
        if not isinstance(self.fs, pafs.LocalFileSystem):
            return  # object stores cannot append; the manifest's build_s records the last build
        path = Path(self.entry(key)) / BUILD_LOG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} encoded {n_images} images in {seconds:.2f}s\n")

    def build_count(self, key: str) -> int:
        path = Path(self.entry(key)) / BUILD_LOG_NAME
        return len(path.read_text().splitlines()) if path.is_file() else 0

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Serialise builders of ``key`` on this machine (an advisory lock; a no-op on object stores)."""
        if not isinstance(self.fs, pafs.LocalFileSystem):
            yield
            return
        with directory_lock(Path(self.entry(key))):
            yield


def load_or_build(store: FeatureStore, key: str, fingerprint: Mapping[str, Any],
                  build: Callable[[], ImageFeatures], log: Callable[[str], None] | None = None
                  ) -> tuple[ImageFeatures, bool]:
    """``(features, built)``: the stored entry, or a fresh one built (once, under the lock) and stored."""
    found = store.load(key)
    if found is not None:
        return found, False
    with store.locked(key):
        found = store.load(key)  # another process may have built it while this one waited
        if found is not None:
            return found, False
        start = time.perf_counter()
        features = build()
        seconds = time.perf_counter() - start
        store.save(features, fingerprint, seconds)
        store.record_build(key, seconds, 2 * int(features.train.shape[1]) + int(features.test.shape[0]))
        if log is not None:
            log(f"feature cache: encoded {2 * features.train.shape[1] + features.test.shape[0]} image views in "
                f"{seconds:.1f}s -> {store.entry(key)}")
        return features, True
