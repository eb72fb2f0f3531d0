"""Cross-dataset sequences: several benchmarks learned one after the other in one label space.

Dataset ``i`` keeps its labels shifted by the number of classes before it, and its label range becomes
one *segment* of the chained benchmark: the scenario draws the class order within every segment and
keeps the segments in sequence, so no task mixes datasets (the official code's two-dataset ``offset``
path, reference §12.3, CDCL row).
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clapray.data.base import (
    Benchmark,
    BenchmarkShape,
    LabeledImages,
    benchmark_shape,
    build_benchmark,
    register_benchmark,
)
from clapray.errors import UserError


class ChainedSplit:
    """Concatenation of splits with label offsets: index ``j`` of part ``i`` is global index
    ``starts[i] + j`` and its label is ``offsets[i] + label``."""

    def __init__(self, parts: Sequence[LabeledImages], offsets: Sequence[int]):
        self.parts = tuple(parts)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        lengths = np.asarray([len(p) for p in self.parts], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)])  # [P + 1]
        self.targets = np.concatenate(
            [np.asarray(p.targets, dtype=np.int64) + off for p, off in zip(self.parts, self.offsets, strict=False)]
        ) if self.parts else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(part, index within the part) of a global index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        return part, int(index - self.starts[part])

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        part, local = self.locate(int(index))
        image, label = self.parts[part][local]
        return image, int(label) + int(self.offsets[part])

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for part, off in zip(self.parts, self.offsets, strict=False):
            h.update(f"{part.fingerprint()}+{int(off)};".encode())
        return h.hexdigest()


def _unique_names(benchmarks: Sequence[Benchmark]) -> tuple[str, ...]:
    """Concatenated class names; a name used by two datasets gets `` (<dataset>)`` appended on each use.

    Both classes are kept (they are different label ids), but identical prompt text would give them
    identical text features; the suffix keeps them apart and makes the clash visible in every report.
    """
    counts = Counter(name for b in benchmarks for name in set(b.class_names))
    clashes = sorted(name for name, n in counts.items() if n > 1)
    if clashes:
        warnings.warn(
            f"chained datasets share {len(clashes)} class name(s) (e.g. {clashes[0]!r}); "
            "they are suffixed with the dataset name",
            stacklevel=3,
        )
    clash_set = set(clashes)
    # The dataset name tells the classes apart unless the same dataset appears twice: then number it.
    dataset_counts = Counter(b.name for b in benchmarks)
    seen: Counter[str] = Counter()
    tags = []
    for b in benchmarks:
        seen[b.name] += 1
        tags.append(b.name if dataset_counts[b.name] == 1 else f"{b.name} {seen[b.name]}")
    return tuple(f"{name} ({tag})" if name in clash_set else name
                 for b, tag in zip(benchmarks, tags, strict=False) for name in b.class_names)


def _union(template_lists: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """Union of template lists, first occurrence order (deterministic, unlike a set)."""
    return tuple(dict.fromkeys(t for templates in template_lists for t in templates))


def chain_benchmarks(benchmarks: Sequence[Benchmark], name: str | None = None) -> Benchmark:
    """Chain benchmarks into one with disjoint label ranges, learned in the given order.

    * labels: dataset ``i`` is offset by the class count of datasets ``0..i-1``; segments record the
      ranges (a chained input contributes its own segments, shifted).
    * class names: concatenated; clashing names are suffixed, see :func:`_unique_names`.
    * templates: the union of all datasets' templates (first-occurrence order), applied to every
      class, as the official code does with several datasets (``IncrementalDataset.get_prompts``).
    * class order: ``"identity"`` only when every dataset uses it, otherwise ``"seeded"`` in each segment.
    * tasks: the sum of the datasets' default task counts; memory: the common policy when all datasets
      agree, else 20 exemplars per class (the policy of every benchmark except CIFAR-100).
    """
    if len(benchmarks) < 2:
        raise UserError(f"a dataset sequence needs at least two datasets, got {len(benchmarks)}")
    offsets = np.cumsum([0] + [b.num_classes for b in benchmarks[:-1]]).tolist()
    segments = tuple((int(start + off), int(end + off))
                     for b, off in zip(benchmarks, offsets, strict=False) for start, end in b.segments)
    memories = {b.default_memory for b in benchmarks}
    return Benchmark(
        name=name or "+".join(b.name for b in benchmarks),
        class_names=_unique_names(benchmarks),
        templates=_union([b.templates for b in benchmarks]),
        train=ChainedSplit([b.train for b in benchmarks], offsets),
        test=ChainedSplit([b.test for b in benchmarks], offsets),
        class_order="identity" if all(b.class_order == "identity" for b in benchmarks) else "seeded",
        default_num_tasks=sum(b.default_num_tasks for b in benchmarks),
        default_memory=memories.pop() if len(memories) == 1 else ("per_class", 20),
        segments=segments,
    )


CDCL_SEQUENCE = ("imagenet100", "cifar100")


def _checked_sequence(sequence: Sequence[str], dataset_options: Mapping[str, Mapping[str, Any]] | None
                      ) -> tuple[tuple[str, ...], dict[str, Mapping[str, Any]]]:
    sequence = tuple(sequence)
    if "cdcl" in sequence:
        raise UserError("cdcl: sequence cannot contain 'cdcl' itself")
    if len(set(sequence)) != len(sequence):
        raise UserError(f"cdcl: sequence lists a dataset twice: {list(sequence)}")
    if len(sequence) < 2:
        raise UserError(f"a dataset sequence needs at least two datasets, got {len(sequence)}")
    options = dict(dataset_options or {})
    unknown = sorted(set(options) - set(sequence))
    if unknown:
        raise UserError(f"cdcl: dataset_options for {unknown} which are not in sequence {list(sequence)}")
    return sequence, options


def _cdcl_shape(*, sequence: Sequence[str] = CDCL_SEQUENCE,
                dataset_options: Mapping[str, Mapping[str, Any]] | None = None) -> BenchmarkShape | None:
    """The chained shape, as :func:`chain_benchmarks` lays it out (``None`` if a part has no shape)."""
    sequence, options = _checked_sequence(sequence, dataset_options)
    parts = [benchmark_shape(name, **dict(options.get(name, {}))) for name in sequence]
    if any(part is None for part in parts):
        return None
    segments, offset = [], 0
    for part in parts:
        segments += [(start + offset, end + offset) for start, end in part.segments]
        offset += part.num_classes
    return BenchmarkShape(num_classes=offset, default_num_tasks=sum(p.default_num_tasks for p in parts),
                          segments=tuple(segments))


@register_benchmark("cdcl", shape=_cdcl_shape)
def build_cdcl(root: Path, *, sequence: Sequence[str] = CDCL_SEQUENCE,
               dataset_options: Mapping[str, Mapping[str, Any]] | None = None) -> Benchmark:
    """Cross-dataset continual learning: ImageNet100 then CIFAR-100 (20 tasks of 10) by default.

    ``sequence`` sets which registered datasets are chained and in which order (the paper's text is
    ambiguous about the order, reference §12.3); ``dataset_options`` passes builder options per dataset,
    e.g. ``{"cifar100": {"download": True}}``. All datasets are read from the same ``root``.
    """
    sequence, options = _checked_sequence(sequence, dataset_options)
    parts = [build_benchmark(name, root, **dict(options.get(name, {}))) for name in sequence]
    return chain_benchmarks(parts, name="cdcl")
