"""Fake benchmark data in the real on-disk formats, for tests.

``FAKE_DATA`` maps every registered benchmark name to a :class:`FakeData` whose ``write(root)`` creates
a tiny copy of the dataset under ``root`` and returns the builder options, and whose ``mutate(root,
options)`` changes one file (or option) and returns the options to rebuild with. A benchmark registered
without an entry here fails ``test_every_benchmark_builds`` on purpose.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clapray.data.templates import class_names, imagenet100_wnids, read_package_text

Options = dict[str, Any]


@dataclass(frozen=True)
class FakeData:
    write: Callable[[Path], Options]
    num_classes: int
    mutate: Callable[[Path, Options], Options]


def _image_bytes(fmt: str, size: int = 6, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


JPEG = _image_bytes("JPEG")
PNG = _image_bytes("PNG")
BIGGER_PNG = _image_bytes("PNG", size=9, seed=1)  # a replacement of a different size


def write_image_folder(split_dir: Path, folders: list[str], per_class: int, ext: str = ".png") -> None:
    data = JPEG if ext.lower() in (".jpg", ".jpeg") else PNG
    for folder in folders:
        d = split_dir / folder
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            (d / f"img_{k}{ext}").write_bytes(data)


def _replace_first_file(split_dir: Path) -> None:
    first_folder = sorted(p for p in split_dir.iterdir() if p.is_dir())[0]
    first_file = sorted(first_folder.iterdir())[0]
    first_file.write_bytes(BIGGER_PNG)


# --------------------------------------------------------------------------------------------- CIFAR

def cifar_pattern(n: int, seed: int = 0) -> np.ndarray:
    """``[n, 32, 32, 3]`` uint8 images whose pixels encode (image, row, col, channel)."""
    i, r, c, ch = np.meshgrid(np.arange(n), np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    return ((i * 11 + r * 7 + c * 3 + ch * 85 + seed) % 256).astype(np.uint8)


def write_cifar_file(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write a split in the release format: rows of R, G, B planes, byte-string keys."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    obj = {b"filenames": [f"img_{k}.png".encode() for k in range(len(images))],
           b"fine_labels": [int(v) for v in labels], b"coarse_labels": [0] * len(images),
           b"data": rows, b"batch_label": b"fake"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_fake_cifar(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> Options:
    folder = root / "cifar-100-python"
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.tile(np.arange(100), per_class)
        write_cifar_file(folder / split, cifar_pattern(len(labels), seed=len(split)), labels)
    meta = {b"fine_label_names": [n.replace(" ", "_").encode() for n in class_names("cifar224")],
            b"coarse_label_names": [b"x"] * 20}
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return {}


def _mutate_cifar(root: Path, options: Options) -> Options:
    path = root / "cifar-100-python" / "train"
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="bytes")
    obj[b"data"][0, 0] ^= 1  # one channel value of one pixel
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return options


# ------------------------------------------------------------------------------------------ folders

def write_fake_imagenet100(root: Path) -> Options:
    wnids = list(imagenet100_wnids())
    write_image_folder(root / "imagenet100" / "train", wnids, 2, ".JPEG")
    write_image_folder(root / "imagenet100" / "val", wnids, 1, ".JPEG")
    return {}


def _mutate_imagenet100(root: Path, options: Options) -> Options:
    _replace_first_file(root / "imagenet100" / "train")
    return options


def imagenet_r_entries(split: str, labels: range, per_label: int) -> list[str]:
    """The first ``per_label`` lines of each label in the shipped split list."""
    taken: dict[int, int] = {}
    out = []
    for line in read_package_text(f"imagenetr_{split}.txt.gz").splitlines():
        label = int(line.rsplit(" ", 1)[1])
        if label in labels and taken.get(label, 0) < per_label:
            taken[label] = taken.get(label, 0) + 1
            out.append(line)
    return out


def write_fake_imagenet_r(root: Path, prepared: bool = False) -> Options:
    """A few real entries of the shipped lists, as files in the tarball (or prepared) layout."""
    options: Options = {}
    for split, per_label in (("train", 2), ("test", 1)):
        lines = imagenet_r_entries(split, range(3), per_label)
        for line in lines:
            rel = line.rsplit(" ", 1)[0]
            path = root / "imagenet-r" / (rel if prepared else rel.split("/", 1)[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(JPEG)
        list_path = root / f"imagenetr_{split}_small.txt"
        list_path.write_text("\n".join(lines) + "\n")
        options[f"{split}_list"] = str(list_path)
    return options


def _mutate_imagenet_r(root: Path, options: Options) -> Options:
    first = Path(options["train_list"]).read_text().split()[0]
    (root / "imagenet-r" / first.split("/", 1)[1]).write_bytes(BIGGER_PNG)
    return options


def write_fake_cub(root: Path) -> Options:
    folders = [f"{i + 1:03d}.{n.replace(' ', '_')}" for i, n in enumerate(class_names("cub"))]
    write_image_folder(root / "cub" / "train", folders, 1, ".jpg")
    write_image_folder(root / "cub" / "test", folders, 1, ".jpg")
    return {}


def _mutate_cub(root: Path, options: Options) -> Options:
    _replace_first_file(root / "cub" / "test")
    return options


VTAB_FOLDERS = [f"{i:02d}_class_{i}" for i in range(50)]


def write_fake_vtab(root: Path) -> Options:
    write_image_folder(root / "vtab" / "train", VTAB_FOLDERS, 1)
    write_image_folder(root / "vtab" / "test", VTAB_FOLDERS, 1)
    return {}


def _mutate_vtab(root: Path, options: Options) -> Options:
    _replace_first_file(root / "vtab" / "train")
    return options


def write_fake_cdcl(root: Path) -> Options:
    write_fake_imagenet100(root)
    write_fake_cifar(root)
    return {}


def _mutate_cdcl(root: Path, options: Options) -> Options:
    return _mutate_cifar(root, options)


# ------------------------------------------------------------------------------------------- shapes

def _shapes_options(root: Path) -> Options:
    return {"num_classes": 10, "train_per_class": 4, "test_per_class": 2, "image_size": 16}


def _mutate_shapes(root: Path, options: Options) -> Options:
    return {**options, "seed": 1}


FAKE_DATA: dict[str, FakeData] = {
    "cifar100": FakeData(write_fake_cifar, 100, _mutate_cifar),
    "imagenet100": FakeData(write_fake_imagenet100, 100, _mutate_imagenet100),
    "imagenet_r": FakeData(write_fake_imagenet_r, 200, _mutate_imagenet_r),
    "cub200": FakeData(write_fake_cub, 200, _mutate_cub),
    "vtab": FakeData(write_fake_vtab, 50, _mutate_vtab),
    "cdcl": FakeData(write_fake_cdcl, 200, _mutate_cdcl),
    "shapes": FakeData(_shapes_options, 10, _mutate_shapes),
    "shapes_cl": FakeData(_shapes_options, 10, _mutate_shapes),
}
