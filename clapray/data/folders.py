"""Benchmarks stored as image files: ImageNet100, ImageNet-R, CUB200 and VTAB.

Layouts under the data root (the official code's, reference §12.3):

* ``imagenet100/{train,val}/<wnid>/*.JPEG``: ImageNet-1k classes 0-99, one folder per WordNet id.
* ``imagenet-r/<wnid>/<file>`` (the extracted ``imagenet-r.tar``) or the official code's prepared copy
  ``imagenet-r/{train,test}/<wnid>/<file>``, read through the shipped fixed 24,000 / 6,000 split lists.
* ``cub/{train,test}/<class folder>/*`` and ``vtab/{train,test}/<class folder>/*``: ImageFolder layout,
  label = position of the class folder in sorted order.

Building a benchmark lists files with ``os.scandir`` (one directory read per class, no image opened) and
checks the tree against what the benchmark expects, so a wrong or partial copy fails at once with a
one-line :class:`~clapray.errors.DatasetNotFoundError` instead of deep inside training.
"""

from __future__ import annotations

import hashlib
import operator
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from clapray.data.base import Benchmark, BenchmarkShape, check_class_names, register_benchmark
from clapray.data.templates import (
    CUB_TEMPLATES,
    VTAB_TEMPLATES,
    imagenet100_wnids,
    imagenet_templates,
    read_package_text,
)
from clapray.data.templates import (
    class_names as official_class_names,
)
from clapray.errors import DatasetNotFoundError, UserError

# What torchvision's ImageFolder accepts, compared case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageListSplit:
    """A split given by image paths relative to ``base`` and their labels; images load lazily.

    ``sizes`` (bytes per file, from the listing) enter the fingerprint, so replacing an image by a different
    file changes it without reading any pixels.
    """

    def __init__(self, base: Path, rel_paths: Sequence[str], targets: np.ndarray, sizes: np.ndarray):
        if not (len(rel_paths) == len(targets) == len(sizes)):
            raise ValueError("rel_paths, targets and sizes must have the same length")
        self.base = Path(base)
        self.rel_paths: tuple[str, ...] = tuple(rel_paths)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.rel_paths)

    def path(self, index: int) -> Path:
        return self.base / self.rel_paths[index]

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        with Image.open(self.path(index)) as img:
            # convert() returns a loaded copy, so the file is closed on return.
            return img.convert("RGB"), int(self.targets[index])

    def fingerprint(self) -> str:
        """Hash of relative paths, labels and file sizes."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update("\n".join(self.rel_paths).encode())
            h.update(b"\0")
            h.update(self.targets.astype("<i8").tobytes())
            h.update(self.sizes.astype("<i8").tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


# ----------------------------------------------------------------------------------------- listing


def _is_image(entry: os.DirEntry) -> bool:
    return (not entry.name.startswith(".") and entry.name.lower().endswith(IMAGE_EXTENSIONS)
            and entry.is_file())


def list_class_folders(split_dir: Path, dataset: str, how_to_get: str) -> list[str]:
    """Sorted names of the sub-directories of ``split_dir`` (the classes, ImageFolder order)."""
    try:
        with os.scandir(split_dir) as it:
            return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetNotFoundError(
            f"{dataset} not found: expected folder {split_dir}; {how_to_get}"
        ) from None


def scan_class_folders(split_dir: Path, folders: Sequence[str]) -> ImageListSplit:
    """List the images of every class folder; label = index in ``folders``; files sorted by name."""
    rel_paths: list[str] = []
    counts: list[int] = []
    sizes: list[int] = []
    for folder in folders:
        with os.scandir(split_dir / folder) as it:
            entries = sorted((e for e in it if _is_image(e)), key=operator.attrgetter("name"))
        rel_paths.extend(f"{folder}/{e.name}" for e in entries)
        sizes.extend(e.stat().st_size for e in entries)
        counts.append(len(entries))
    targets = np.repeat(np.arange(len(folders), dtype=np.int64), counts)
    return ImageListSplit(split_dir, rel_paths, targets, np.asarray(sizes, dtype=np.int64))


def check_class_folders(split_dir: Path, found: Sequence[str], expected: Sequence[str] | int,
                        dataset: str, how_to_get: str) -> None:
    """Fail unless ``found`` has the expected number of folders (and names, when given)."""
    n_expected = expected if isinstance(expected, int) else len(expected)
    if len(found) != n_expected:
        raise DatasetNotFoundError(
            f"{dataset} at {split_dir}: expected {n_expected} class folders, found {len(found)}; {how_to_get}"
        )
    if not isinstance(expected, int) and list(found) != list(expected):
        unexpected = sorted(set(found) - set(expected))
        missing = [name for name in expected if name not in set(found)]
        raise DatasetNotFoundError(
            f"{dataset} at {split_dir}: class folder {unexpected[0]!r} is not expected "
            f"(missing {missing[0]!r} and {len(missing) - 1} more); {how_to_get}"
        )


def _image_folder_splits(root: Path, folder: str, splits: tuple[str, str], expected: Sequence[str] | int,
                         dataset: str, how_to_get: str) -> tuple[list[str], ImageListSplit, ImageListSplit]:
    """Scan ``root/folder/{train,test}``; both splits must hold the same (expected) class folders."""
    result = []
    folders0: list[str] = []
    for split in splits:
        split_dir = root / folder / split
        folders = list_class_folders(split_dir, dataset, how_to_get)
        check_class_folders(split_dir, folders, expected, dataset, how_to_get)
        if result and folders != folders0:
            first = next(a for a, b in zip(folders, folders0, strict=False) if a != b)
            raise DatasetNotFoundError(
                f"{dataset} at {root / folder}: class folders of {splits[0]} and {split} differ "
                f"(first: {first!r}); {how_to_get}"
            )
        folders0 = folders
        scanned = scan_class_folders(split_dir, folders)
        empty = np.flatnonzero(np.bincount(scanned.targets, minlength=len(folders)) == 0)
        if empty.size:
            raise DatasetNotFoundError(
                f"{dataset} at {split_dir}: {empty.size} class folder(s) hold no images "
                f"(first: {split_dir / folders[empty[0]]}); {how_to_get}"
            )
        result.append(scanned)
    return folders0, result[0], result[1]


# -------------------------------------------------------------------------------------- ImageNet100


@register_benchmark("imagenet100", shape=BenchmarkShape(num_classes=100, default_num_tasks=10))
def build_imagenet100(root: Path) -> Benchmark:
    """ImageNet-1k classes 0-99 (tench ... goose), 10 tasks, 20 exemplars per class, 80 templates."""
    root = Path(root)
    wnids = imagenet100_wnids()
    how = (f"place ImageNet-1k train/val folders of classes 0-99 ({wnids[0]} ... {wnids[-1]}) "
           f"under {root / 'imagenet100'}/{{train,val}}")
    _, train, test = _image_folder_splits(root, "imagenet100", ("train", "val"), wnids, "ImageNet100", how)
    return Benchmark(
        name="imagenet100",
        class_names=check_class_names(official_class_names("imagenet100"), 100, "labels.json[imagenet100]"),
        templates=imagenet_templates(),
        train=train,
        test=test,
        default_num_tasks=10,
        default_memory=("per_class", 20),
    )


# --------------------------------------------------------------------------------------- ImageNet-R

IMAGENET_R_LISTS = {"train": "imagenetr_train.txt.gz", "test": "imagenetr_test.txt.gz"}
IMAGENET_R_CLASSES = 200


def parse_split_list(text: str, source: str) -> tuple[list[str], np.ndarray]:
    """Parse ``<relative/path> <label>`` lines (the official split-list format)."""
    paths: list[str] = []
    labels: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        path, _, label = line.strip().rpartition(" ")
        if not path or not label.isdigit():
            raise UserError(f"{source}:{lineno}: expected '<relative/path> <label>', got {line.strip()!r}")
        paths.append(path)
        labels.append(label)
    return paths, np.asarray(labels, dtype=np.int64)


def _read_list(split: str, override: str | Path | None) -> tuple[list[str], np.ndarray]:
    if override is None:
        name = IMAGENET_R_LISTS[split]
        return parse_split_list(read_package_text(name), f"clapray/data/files/{name}")
    path = Path(override)
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"cannot read ImageNet-R {split} list {path}: {err.strerror}") from None
    return parse_split_list(text, str(path))


def _list_sizes(base: Path, rel_paths: Sequence[str]) -> np.ndarray:
    """File size of every listed path, -1 where missing; one ``scandir`` per directory."""
    dirs: dict[str, dict[str, int]] = {}
    sizes = np.empty(len(rel_paths), dtype=np.int64)
    for i, rel in enumerate(rel_paths):
        parent, _, name = rel.rpartition("/")
        listing = dirs.get(parent)
        if listing is None:
            try:
                with os.scandir(base / parent) as it:
                    listing = {e.name: e.stat().st_size for e in it if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                listing = {}
            dirs[parent] = listing
        sizes[i] = listing.get(name, -1)
    return sizes


def _strip_split_prefix(rel: str) -> str:
    """``train/<wnid>/<file>`` -> ``<wnid>/<file>`` (the tarball has no split folders)."""
    head, sep, tail = rel.partition("/")
    return tail if sep and head in ("train", "test") else rel


@register_benchmark("imagenet_r", shape=BenchmarkShape(num_classes=IMAGENET_R_CLASSES, default_num_tasks=10))
def build_imagenet_r(root: Path, *, train_list: str | Path | None = None,
                     test_list: str | Path | None = None) -> Benchmark:
    """ImageNet-R with the official fixed split (24,000 train / 6,000 test), 10 tasks of 20 classes.

    The split lists hold ``train/<wnid>/<file> <label>``. Files are looked up in the official prepared
    layout ``imagenet-r/train/...`` when ``imagenet-r/train`` exists, otherwise in the extracted tarball
    ``imagenet-r/<wnid>/<file>`` (the ``train/`` or ``test/`` prefix dropped). ``train_list`` /
    ``test_list`` replace the shipped lists (same format).
    """
    root = Path(root)
    base = root / "imagenet-r"
    how = f"extract imagenet-r.tar under {root} (giving {base}/<wnid>/<file>)"
    if not base.is_dir():
        raise DatasetNotFoundError(f"ImageNet-R not found: expected folder {base}; {how}")
    prepared = (base / "train").is_dir()
    splits = {}
    for split, override in (("train", train_list), ("test", test_list)):
        listed, labels = _read_list(split, override)
        if labels.size and (labels.min() < 0 or labels.max() >= IMAGENET_R_CLASSES):
            raise UserError(f"ImageNet-R {split} list: labels must lie in [0, {IMAGENET_R_CLASSES})")
        rel_paths = listed if prepared else [_strip_split_prefix(p) for p in listed]
        sizes = _list_sizes(base, rel_paths)
        missing = np.flatnonzero(sizes < 0)
        if missing.size:
            raise DatasetNotFoundError(
                f"ImageNet-R at {root}: {missing.size} of {len(rel_paths)} files of the {split} split list "
                f"are missing (first: {base / rel_paths[missing[0]]}); {how}"
            )
        splits[split] = ImageListSplit(base, rel_paths, labels, sizes)
    return Benchmark(
        name="imagenet_r",
        class_names=check_class_names(official_class_names("imagenetr"), IMAGENET_R_CLASSES,
                                      "labels.json[imagenetr]"),
        templates=imagenet_templates(),
        train=splits["train"],
        test=splits["test"],
        default_num_tasks=10,
        default_memory=("per_class", 20),
    )


# ------------------------------------------------------------------------------------------- CUB200


@register_benchmark("cub200", shape=BenchmarkShape(num_classes=200, default_num_tasks=10))
def build_cub200(root: Path) -> Benchmark:
    """CUB-200-2011 in ImageFolder layout, 10 tasks of 20 classes; names from ``labels.json["cub"]``.

    Class folders are taken in sorted order, which for the usual ``001.Black_footed_Albatross`` ...
    ``200.Common_Yellowthroat`` names is the order of the official name list.
    """
    root = Path(root)
    how = f"place the CUB-200 train/test ImageFolder copy under {root / 'cub'}/{{train,test}}"
    _, train, test = _image_folder_splits(root, "cub", ("train", "test"), 200, "CUB200", how)
    return Benchmark(
        name="cub200",
        class_names=check_class_names(official_class_names("cub"), 200, "labels.json[cub]"),
        templates=CUB_TEMPLATES,
        train=train,
        test=test,
        default_num_tasks=10,
        default_memory=("per_class", 20),
    )


# --------------------------------------------------------------------------------------------- VTAB

VTAB_CLASSES = 50
_NUMBER_PREFIX = re.compile(r"^\d+[._\-\s]+")


def folder_class_name(folder: str) -> str:
    """Readable class name of a class folder: a leading ``012.`` / ``012_`` index dropped, ``_`` -> space."""
    return _NUMBER_PREFIX.sub("", folder).replace("_", " ").strip()


def _vtab_shape(*, class_names: Sequence[str] | None = None) -> BenchmarkShape:
    if class_names is not None:
        check_class_names(tuple(class_names), VTAB_CLASSES, "vtab class_names")
    return BenchmarkShape(num_classes=VTAB_CLASSES, default_num_tasks=5)


@register_benchmark("vtab", shape=_vtab_shape)
def build_vtab(root: Path, *, class_names: Sequence[str] | None = None) -> Benchmark:
    """The VTAB 5x10 class-incremental set (Resisc45, DTD, Oxford-Pets, EuroSAT, Flowers; 10 classes each).

    Identity class order, so each task is one source dataset in folder order. The official loader's name
    list is not released in source form; names are derived from the class folders (see
    :func:`folder_class_name`) unless ``class_names`` (50 names in sorted-folder order) is given.
    """
    root = Path(root)
    how = f"place the VTAB-5x10 train/test ImageFolder copy under {root / 'vtab'}/{{train,test}}"
    folders, train, test = _image_folder_splits(root, "vtab", ("train", "test"), VTAB_CLASSES, "VTAB", how)
    names = tuple(class_names) if class_names is not None else tuple(folder_class_name(f) for f in folders)
    return Benchmark(
        name="vtab",
        class_names=check_class_names(names, VTAB_CLASSES, "vtab class_names"),
        templates=VTAB_TEMPLATES,
        train=train,
        test=test,
        class_order="identity",
        default_num_tasks=5,
        default_memory=("per_class", 20),
    )
