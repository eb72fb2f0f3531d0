"""The benchmark interface and its registry.

A *benchmark* is a labelled image collection with a train and a test split, class names and the prompt
templates the method uses for it (§12.3 of the method reference). Scenarios (class orders, tasks,
validation splits) are built on top of any benchmark by :mod:`clapray.data.scenario`.

Builders register themselves by name, with the *shape* of the benchmark (class count, default task count,
dataset segments), which is known without the data on disk::

    @register_benchmark("cifar100", shape=BenchmarkShape(num_classes=100, default_num_tasks=10))
    def build_cifar100(root: Path, **options) -> Benchmark: ...

and are looked up with :func:`build_benchmark`; :func:`benchmark_shape` answers from the shape alone, so a
config's task arithmetic is checked by ``--dry-run`` on a machine without the dataset. A test parametrised
over :func:`list_benchmarks` covers every entry (and checks each shape against the built benchmark), so a
new benchmark is tested as soon as it is registered.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from clapray.errors import UserError

ClassOrderKind = Literal["seeded", "identity"]


@runtime_checkable
class LabeledImages(Protocol):
    """A split of a benchmark: indexable RGB images with integer labels in ``[0, num_classes)``."""

    targets: np.ndarray  # [N] int64, the original (benchmark) label of every image

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Image.Image, int]: ...

    def fingerprint(self) -> str:
        """A short stable hash identifying the split's content (file list, sizes, labels)."""
        ...


@dataclass(frozen=True)
class Benchmark:
    """One dataset as the method sees it.

    ``segments`` lists the label ranges of chained datasets (cross-dataset CL): the class order is
    drawn within each segment and segments keep their sequence, so tasks never mix datasets.
    A single dataset has one segment covering all classes.
    """

    name: str
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    train: LabeledImages
    test: LabeledImages
    class_order: ClassOrderKind = "seeded"
    default_num_tasks: int = 10
    # The official code's memory policy for this dataset (§10): ("total", 2000) or ("per_class", 20).
    default_memory: tuple[Literal["total", "per_class"], int] = ("per_class", 20)
    segments: tuple[tuple[int, int], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.segments:
            object.__setattr__(self, "segments", ((0, len(self.class_names)),))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """Identifies benchmark content: names, templates and both splits."""
        import hashlib

        h = hashlib.sha256()
        for part in (self.name, *self.class_names, "|", *self.templates, self.train.fingerprint(),
                     self.test.fingerprint()):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class BenchmarkShape:
    """What a benchmark's class-incremental split depends on, known without reading its data: the number of
    classes, the default number of tasks and the label ranges of chained datasets (as :class:`Benchmark`),
    and whether its images are generated rather than read from disk."""

    num_classes: int
    default_num_tasks: int
    segments: tuple[tuple[int, int], ...] = field(default=())
    generated: bool = False  # rendered on the fly: nothing has to be on disk

    def __post_init__(self) -> None:
        if not self.segments:
            object.__setattr__(self, "segments", ((0, self.num_classes),))

    @classmethod
    def of(cls, benchmark: Benchmark) -> BenchmarkShape:
        return cls(benchmark.num_classes, benchmark.default_num_tasks, benchmark.segments)


BenchmarkBuilder = Callable[..., Benchmark]
# A benchmark's shape: fixed, or computed from the builder's options (``shape(**options)``), raising the
# builder's own UserError for options the builder would refuse.
ShapeSource = BenchmarkShape | Callable[..., BenchmarkShape]
_REGISTRY: dict[str, BenchmarkBuilder] = {}
_SHAPES: dict[str, ShapeSource] = {}


def register_benchmark(name: str, *, shape: ShapeSource | None = None
                       ) -> Callable[[BenchmarkBuilder], BenchmarkBuilder]:
    """Register ``builder(root: Path, **options) -> Benchmark`` under ``name``, with its ``shape``."""

    def decorate(builder: BenchmarkBuilder) -> BenchmarkBuilder:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"benchmark {name!r} is registered twice")
        _REGISTRY[name] = builder
        if shape is not None:
            _SHAPES[name] = shape
        return builder

    return decorate


def benchmark_shape(name: str, **options) -> BenchmarkShape | None:
    """The shape of benchmark ``name`` built with ``options``, without touching its data; ``None`` when its
    builder registered no shape. Unknown names and options the builder refuses raise its UserError."""
    get_benchmark_builder(name)
    shape = _SHAPES.get(name)
    if shape is None or isinstance(shape, BenchmarkShape):
        return shape
    return shape(**options)


def list_benchmarks() -> list[str]:
    return sorted(_REGISTRY)


def get_benchmark_builder(name: str) -> BenchmarkBuilder:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown dataset {name!r}{hint}; known: {', '.join(list_benchmarks())}") from None


def build_benchmark(name: str, root: str | Path, **options) -> Benchmark:
    """Build a registered benchmark; ``options`` are builder-specific (e.g. shapes' class count)."""
    return get_benchmark_builder(name)(Path(root), **options)


def check_class_names(names: Sequence[str], expected: int, source: str) -> tuple[str, ...]:
    if len(names) != expected:
        raise UserError(f"{source}: expected {expected} class names, got {len(names)}")
    return tuple(names)
