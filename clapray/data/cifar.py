"""CIFAR-100 read from its python-pickle release (``cifar-100-python/{train,test,meta}``).

Each split file is a pickled dict with ``b"data"``: uint8 ``[N, 3072]``, one row per image holding the
red, green and blue 32x32 planes one after the other (row-major), and ``b"fine_labels"``: N ints in
``[0, 100)``; ``meta`` holds ``b"fine_label_names"`` in label order. Images are returned at 32x32; the
backbone's preprocessing upsamples them (bicubic, to 224 for ViT-B/16), as the official code does.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clapray.data.base import Benchmark, BenchmarkShape, register_benchmark
from clapray.data.templates import cifar_templates, class_names
from clapray.errors import DatasetNotFoundError

FOLDER = "cifar-100-python"
NUM_CLASSES = 100
IMAGE_SHAPE = (32, 32, 3)
_ROW = 32 * 32 * 3


def _how_to_get(root: Path) -> str:
    return f"set data.download: true on a connected machine or place {FOLDER}/ under {root}"


class _ReleaseUnpickler(pickle.Unpickler):
    """Builds only what the release's pickles hold (dicts, lists, bytes, ints and NumPy arrays), so a file
    under ``data.root`` that would run code when unpickled is refused rather than executed."""

    ALLOWED = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path, root: Path) -> dict[Any, Any]:
    """Load one pickle of the release; any unreadable, truncated or tampered file becomes a one-line user
    error."""
    try:
        with open(path, "rb") as f:
            obj = _ReleaseUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"CIFAR-100 file missing: {path}; {_how_to_get(root)}") from None
    except Exception as err:  # truncated/corrupt pickles raise EOFError, UnpicklingError, ValueError, ...
        raise DatasetNotFoundError(
            f"CIFAR-100 file unreadable ({type(err).__name__}): {path}; delete it and "
            f"{_how_to_get(root)}"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetNotFoundError(f"CIFAR-100 file is not a pickled dict: {path}; {_how_to_get(root)}")
    return obj


def _field(obj: dict[Any, Any], key: str, path: Path, root: Path) -> Any:
    # The release pickles byte-string keys; a re-pickled copy may use str keys.
    for k in (key.encode(), key):
        if k in obj:
            return obj[k]
    raise DatasetNotFoundError(f"CIFAR-100 file {path} has no {key!r} entry; {_how_to_get(root)}")


def _decode(s: Any) -> str:
    return s.decode("utf-8") if isinstance(s, bytes) else str(s)


def read_cifar_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``root/cifar-100-python/<split>``: uint8 RGB images ``[N, 32, 32, 3]``, int64 labels ``[N]``."""
    path = root / FOLDER / split
    obj = _unpickle(path, root)
    data = np.asarray(_field(obj, "data", path, root))
    labels = np.asarray(_field(obj, "fine_labels", path, root), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        raise DatasetNotFoundError(
            f"CIFAR-100 file {path}: expected uint8 data of shape [N, {_ROW}], got {data.dtype} "
            f"{list(data.shape)}; {_how_to_get(root)}"
        )
    if labels.shape != (data.shape[0],):
        raise DatasetNotFoundError(
            f"CIFAR-100 file {path}: {data.shape[0]} images but {labels.size} labels; {_how_to_get(root)}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetNotFoundError(
            f"CIFAR-100 file {path}: labels outside [0, {NUM_CLASSES}); {_how_to_get(root)}"
        )
    # [N, 3072] = [N, 3 planes, 32 rows, 32 cols] -> [N, 32, 32, 3] (HWC, what PIL expects).
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def read_cifar_meta(root: Path) -> tuple[str, ...]:
    """Fine label names from ``meta``, in label order, with ``_`` shown as a space."""
    path = root / FOLDER / "meta"
    names = _field(_unpickle(path, root), "fine_label_names", path, root)
    return tuple(_decode(n).replace("_", " ") for n in names)


class CifarSplit:
    """One CIFAR-100 split held in memory as ``[N, 32, 32, 3]`` uint8.

    Pickling keeps only the file location and the labels (a few hundred KB instead of 150 MB); the pixels
    are read again on first access in the receiving process, which needs the files at the same path
    (as every folder benchmark does).
    """

    def __init__(self, root: Path, split: str, images: np.ndarray, targets: np.ndarray):
        self.root = Path(root)
        self.split = split
        self._images: np.ndarray | None = images
        self.targets = targets
        self._fingerprint: str | None = None

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            images, targets = read_cifar_split(self.root, self.split)
            if not np.array_equal(targets, self.targets):
                raise DatasetNotFoundError(
                    f"CIFAR-100 file {self.root / FOLDER / self.split} changed since the benchmark was built"
                )
            self._images = images
        return self._images

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]), int(self.targets[index])

    def fingerprint(self) -> str:
        """Hash of the pixels and labels (computed once; ~0.2 s for the 50,000 training images)."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(f"cifar100/{self.split}/{len(self)}".encode())
            h.update(np.ascontiguousarray(self.images).data)
            h.update(self.targets.astype("<i8").tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_images"] = None
        return state


def _download(root: Path) -> None:
    """Fetch the release with torchvision (imported here: it is slow to import and rarely needed)."""
    try:
        from torchvision.datasets import CIFAR100  # noqa: PLC0415

        root.mkdir(parents=True, exist_ok=True)
        CIFAR100(str(root), train=True, download=True)
    except Exception as err:  # no network, DNS failure, bad checksum, unwritable root, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DatasetNotFoundError(
            f"CIFAR-100 download into {root} failed ({reason}); download on a connected machine or "
            f"place {FOLDER}/ under {root}"
        ) from None


@register_benchmark("cifar100", shape=BenchmarkShape(num_classes=100, default_num_tasks=10))
def build_cifar100(root: Path, *, download: bool = False) -> Benchmark:
    """CIFAR-100, 10 tasks of 10 classes, 2000 exemplars in total (reference §10, §12.3).

    ``download=True`` fetches the release with torchvision when ``root/cifar-100-python`` is incomplete.
    """
    root = Path(root)
    folder = root / FOLDER
    missing = [name for name in ("train", "test", "meta") if not (folder / name).is_file()]
    if missing and download:
        _download(root)
        missing = [name for name in ("train", "test", "meta") if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-100 not found: expected {folder}/{{train,test,meta}} (missing {', '.join(missing)}); "
            f"{_how_to_get(root)}"
        )

    names = class_names("cifar224")
    meta_names = read_cifar_meta(root)
    if meta_names != names:
        bad = next((i for i, (a, b) in enumerate(zip(names, meta_names, strict=False)) if a != b),
                   min(len(names), len(meta_names)))
        raise DatasetNotFoundError(
            f"CIFAR-100 meta at {folder / 'meta'} does not match the official class list "
            f"({len(meta_names)} names; first difference at label {bad}); {_how_to_get(root)}"
        )
    train = CifarSplit(root, "train", *read_cifar_split(root, "train"))
    test = CifarSplit(root, "test", *read_cifar_split(root, "test"))
    return Benchmark(
        name="cifar100",
        class_names=names,
        templates=cifar_templates(),
        train=train,
        test=test,
        class_order="seeded",
        default_num_tasks=10,
        default_memory=("total", 2000),
    )
