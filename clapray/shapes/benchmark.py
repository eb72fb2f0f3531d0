"""The ``shapes`` and ``shapes_cl`` benchmarks: procedurally generated images that need no download.

``shapes`` builds any subset of the canonical classes (:mod:`clapray.shapes.attributes`); ``shapes_cl``
draws its classes from the ones held out from the mini-CLIP's pretraining (:func:`split_classes`), so a
zero-shot accuracy above chance on it is transfer to unseen combinations, as with real CLIP on a
downstream dataset. Importing this module registers both with :mod:`clapray.data.base`.

Images are rendered lazily and deterministically: image ``k`` of class ``c`` in split ``s`` is a pure
function of ``(seed, s, c, k)`` (and the image size), where ``c`` is the class's position in the canonical
enumeration, not in the requested subset. Hence a "red triangle" looks the same whichever classes it is
built with, any image can be produced in any order on any worker, and building a benchmark renders
nothing. An optional on-disk cache renders a split once into a memory-mapped ``.npy`` array.

Run ``python tests/test_shapes.py`` to measure the rendering speed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from clapray.data.base import Benchmark, BenchmarkShape, register_benchmark
from clapray.errors import ConfigError, UserError
from clapray.shapes.attributes import (
    COLOURS,
    GENERATOR_VERSION,
    MAX_CLASSES,
    SHAPES,
    SPLIT_IDS,
    ShapeAttributes,
    all_shape_classes,
    class_id,
    did_you_mean,
    is_shape_class,
    sample_attributes_by_id,
)
from clapray.shapes.render import render_shape

# Articles are avoided ("a orange circle") by using "the" wherever a class name follows.
TEMPLATES: tuple[str, ...] = (
    "a photo of the {}.",
    "a drawing of the {}.",
    "a rendering of the {}.",
    "an image of the {}.",
    "a small picture of the {}.",
    "a simple drawing of the {}.",
    "a picture showing the {}.",
    "the {} shape.",
)


DEFAULT_NUM_CLASSES = 50
_MIN_IMAGE_SIZE, _MAX_IMAGE_SIZE = 8, 1024


# --------------------------------------------------------------------------------------------------
# Splits


class ShapesSplit:
    """One split of the benchmark: ``len(class_names) * per_class`` images, rendered on demand.

    Images are laid out class-major: index ``i`` is image ``i % per_class`` of class
    ``i // per_class``, so ``targets`` is known without rendering. Picklable; a cache file, if any, is
    memory-mapped lazily in each process.
    """

    def __init__(self, class_names: Sequence[str], split: str, *, per_class: int, image_size: int,
                 seed: int, cache_root: Path | None = None):
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.split = split
        self.per_class = int(per_class)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self._class_ids = tuple(class_id(n) for n in self.class_names)
        self.targets: np.ndarray = np.repeat(np.arange(len(self.class_names), dtype=np.int64), self.per_class)
        self.cache_path: Path | None = (
            None if cache_root is None else Path(cache_root) / "shapes" / self.fingerprint() / "images.npy")
        self._images: np.ndarray | None = None  # the memory-mapped cache, opened on first use
        self._cache_unusable = False

    # -- the LabeledImages protocol ----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        i = self._check_index(index)
        label = int(self.targets[i])
        images = self._cached_images()
        if images is not None:
            return Image.fromarray(np.array(images[i]), "RGB"), label
        return render_shape(self.attributes(i), self.image_size), label

    def fingerprint(self) -> str:
        """Hash of every generation parameter and the generator version."""
        params = {
            "benchmark": "shapes", "version": GENERATOR_VERSION, "split": self.split, "seed": self.seed,
            "image_size": self.image_size, "per_class": self.per_class, "classes": list(self.class_names),
        }
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]

    # -- extras ------------------------------------------------------------------------------------

    def attributes(self, index: int) -> ShapeAttributes:
        """The attributes image ``index`` is drawn from (class and nuisance)."""
        i = self._check_index(index)
        label, k = divmod(i, self.per_class)
        return sample_attributes_by_id(self.seed, SPLIT_IDS[self.split], self._class_ids[label], k)

    def render(self, index: int) -> np.ndarray:
        """Image ``index`` rendered afresh (ignoring any cache), as uint8 [S, S, 3]."""
        return np.asarray(render_shape(self.attributes(index), self.image_size))

    def materialize(self) -> None:
        """Make sure the cache file exists and is valid, rendering the whole split if it is not."""
        if self.cache_path is None:
            raise ValueError("this split was built without a cache")
        self._images, self._cache_unusable = None, False
        if self._open_cache() is not None:
            return
        # Render into a private temporary file and rename it into place: a crashed or concurrent writer
        # never leaves a partial file under the final name.
        tmp = self.cache_path.with_name(f".{self.cache_path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=self._cache_shape())
            for i in range(len(self)):
                out[i] = self.render(i)
            out.flush()
            del out
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.cache_path)
        except OSError as err:
            raise UserError(f"shapes: cannot write the image cache {self.cache_path}: {err}; "
                            "free some space or choose another data root, or turn the cache off") from None
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # the directory itself is unusable; the error above says so
        if self._open_cache() is None:
            raise RuntimeError(f"shapes: cache {self.cache_path} failed verification right after writing")

    def _cache_shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.image_size, self.image_size, 3)

    def _open_cache(self) -> np.ndarray | None:
        """Memory-map the cache file if it exists and passes verification, else ``None``."""
        assert self.cache_path is not None
        try:
            images = np.load(self.cache_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if images.shape != self._cache_shape() or images.dtype != np.uint8:
            return None
        # Spot-check a few images against fresh renderings: catches files whose header survived but
        # whose content did not (zero-filled or overwritten data), at the cost of a few renders.
        n = len(self)
        for i in sorted({0, n // 3, (2 * n) // 3, n - 1}):
            if not np.array_equal(images[i], self.render(i)):
                return None
        self._images = images
        return images

    def _cached_images(self) -> np.ndarray | None:
        if self.cache_path is None or self._cache_unusable:
            return None
        if self._images is None and self._open_cache() is None:
            # The file vanished or went bad after the build: rendering on demand gives identical
            # images, so fall back to it rather than have every worker rewrite the cache.
            self._cache_unusable = True
            return None
        return self._images

    def _check_index(self, index: int) -> int:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a split of {n} images")
        return i

    def __getstate__(self) -> dict:
        # The memory map belongs to this process; the receiving process reopens it.
        state = self.__dict__.copy()
        state["_images"] = None
        state["_cache_unusable"] = False
        return state

    def __repr__(self) -> str:
        return (f"ShapesSplit({self.split!r}, classes={len(self.class_names)}, per_class={self.per_class}, "
                f"image_size={self.image_size}, seed={self.seed}, cached={self.cache_path is not None})")


# --------------------------------------------------------------------------------------------------
# Builder


def _check_int(field: str, value: object, lo: int, hi: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and value >= lo and (hi is None or value <= hi):
        return int(value)  # type: ignore[arg-type]
    expected = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
    raise ConfigError("shapes", field, expected, value)


def _resolve_classes(num_classes: int | None, classes: Sequence[str] | None) -> tuple[str, ...]:
    if classes is None:
        n = DEFAULT_NUM_CLASSES if num_classes is None else _check_int("num_classes", num_classes, 2, MAX_CLASSES)
        return tuple(all_shape_classes(n))
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise ConfigError("shapes", "classes", "a list of class names", classes)
    names = tuple(classes)
    for name in names:
        if not is_shape_class(name):
            raise UserError(f"shapes: classes: unknown class {name!r}{did_you_mean(str(name))}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"shapes: classes: listed more than once: {', '.join(map(repr, dupes))}")
    if len(names) < 2:
        raise ConfigError("shapes", "classes", "at least 2 class names", list(names))
    if num_classes is not None and _check_int("num_classes", num_classes, 2, MAX_CLASSES) != len(names):
        raise UserError(f"shapes: num_classes: {num_classes} does not match the {len(names)} names in classes")
    return names


def checked_shapes_options(num_classes: int | None = None, train_per_class: int = 100, test_per_class: int = 20,
                           image_size: int = 64, seed: int = 0, cache: bool = False,
                           classes: Sequence[str] | None = None) -> tuple[tuple[str, ...], int, int, int, int]:
    """(class names, train and test images per class, image size, seed) after the builder's checks."""
    names = _resolve_classes(num_classes, classes)
    train_n = _check_int("train_per_class", train_per_class, 1)
    test_n = _check_int("test_per_class", test_per_class, 1)
    size = _check_int("image_size", image_size, _MIN_IMAGE_SIZE, _MAX_IMAGE_SIZE)
    seed = _check_int("seed", seed, 0)
    if not isinstance(cache, bool):
        raise ConfigError("shapes", "cache", "true or false", cache)
    return names, train_n, test_n, size, seed


def _shapes_shape(**options) -> BenchmarkShape:
    return BenchmarkShape(num_classes=len(checked_shapes_options(**options)[0]), default_num_tasks=10, generated=True)


@register_benchmark("shapes", shape=_shapes_shape)
def build_shapes(
    root: Path,
    *,
    num_classes: int | None = None,
    train_per_class: int = 100,
    test_per_class: int = 20,
    image_size: int = 64,
    seed: int = 0,
    cache: bool = False,
    classes: Sequence[str] | None = None,
) -> Benchmark:
    """Build the ``shapes`` benchmark.

    ``num_classes`` takes the first classes of the canonical list (default 50, at most
    :data:`MAX_CLASSES`); ``classes`` names them explicitly instead, in the given order. ``seed`` is the
    generation seed (what the images look like), independent of any class-order seed. Without ``cache``
    building renders nothing; with it, each split is rendered once into
    ``root/shapes/<fingerprint>/images.npy`` (reused while valid) and memory-mapped.
    """
    names, train_n, test_n, size, seed = checked_shapes_options(num_classes, train_per_class, test_per_class,
                                                                image_size, seed, cache, classes)
    cache_root = Path(root) if cache else None
    train = ShapesSplit(names, "train", per_class=train_n, image_size=size, seed=seed, cache_root=cache_root)
    test = ShapesSplit(names, "test", per_class=test_n, image_size=size, seed=seed, cache_root=cache_root)
    if cache:
        # Rendering here, once, beats every data-loading worker discovering a missing cache at once.
        train.materialize()
        test.materialize()
    return Benchmark(
        name="shapes", class_names=names, templates=TEMPLATES, train=train, test=test,
        class_order="seeded", default_num_tasks=10, default_memory=("per_class", 20),
    )


# --------------------------------------------------------------------------------------------------
# shapes_cl: the classes held out from the mini-CLIP's pretraining

# Default: 50 classes, 10 tasks of 5, 100 training and 40 test images per class (2,000 test images: one
# image is 0.05 points, so differences of a few points are measurable).
CL_DEFAULT_NUM_CLASSES = 50
CL_DEFAULT_TEST_PER_CLASS = 40


def split_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(continual, pretraining) class names, both in canonical order.

    The canonical enumeration walks the colour x shape grid in diagonals of 12 classes, each holding
    every colour and every shape once. The first five diagonals (60 classes) are held out for continual
    learning: each colour is held out with five shapes and seen in pretraining with the other seven,
    and likewise each shape. Being a prefix of the canonical list, they also contain the default
    ``shapes`` benchmark (its first 50 classes), so zero-shot on that is transfer too.
    """
    plain = all_shape_classes(len(COLOURS) * len(SHAPES))
    held_out = 5 * len(SHAPES)
    return tuple(plain[:held_out]), tuple(plain[held_out:])


CONTINUAL_CLASSES, PRETRAIN_CLASSES = split_classes()
"""Names of the continual-learning classes (60) and the pretraining classes (84), canonical order."""


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= len(
            CONTINUAL_CLASSES):
        raise ConfigError("shapes_cl", "num_classes", f"an integer in [2, {len(CONTINUAL_CLASSES)}] (the classes "
                          "held out from pretraining)", num_classes)
    return num_classes


def _shapes_cl_shape(*, num_classes: int = CL_DEFAULT_NUM_CLASSES, **options) -> BenchmarkShape:
    checked_shapes_options(classes=CONTINUAL_CLASSES[:_check_num_classes(num_classes)], **options)
    return BenchmarkShape(num_classes=num_classes, default_num_tasks=10, generated=True)


@register_benchmark("shapes_cl", shape=_shapes_cl_shape)
def build_shapes_cl(
    root: Path,
    *,
    num_classes: int = CL_DEFAULT_NUM_CLASSES,
    train_per_class: int = 100,
    test_per_class: int = CL_DEFAULT_TEST_PER_CLASS,
    image_size: int = 64,
    seed: int = 0,
    cache: bool = False,
) -> Benchmark:
    """The first ``num_classes`` (at most 60) held-out classes as a ``shapes`` benchmark."""
    classes = CONTINUAL_CLASSES[:_check_num_classes(num_classes)]
    bench = build_shapes(root, classes=classes, train_per_class=train_per_class,
                         test_per_class=test_per_class, image_size=image_size, seed=seed, cache=cache)
    return dataclasses.replace(bench, name="shapes_cl")
