"""The generated ``shapes`` benchmark: registration, determinism, classes, pictures, cache, pickling.

Run this file directly (``python tests/test_shapes.py``) to print the rendering speed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clapray
import clapray.shapes.benchmark as shapes_benchmark
from clapray.data.base import Benchmark, LabeledImages, build_benchmark, list_benchmarks
from clapray.errors import UserError
from clapray.shapes.attributes import (
    BACKGROUND_COLOURS,
    BACKGROUNDS,
    COLOURS,
    MAX_CLASSES,
    MIN_CONTRAST,
    PATTERN_STYLES,
    PATTERNS,
    PLAIN_STYLES,
    SHAPES,
    SIZES,
    ShapeAttributes,
    all_shape_classes,
    sample_attributes,
    shape_class,
)
from clapray.shapes.benchmark import TEMPLATES, ShapesSplit, build_shapes
from clapray.shapes.render import render_shape, shape_coverage

SMALL = dict(num_classes=6, train_per_class=5, test_per_class=3, image_size=32)


def _bytes(split: LabeledImages, indices: list[int]) -> list[bytes]:
    return [split[i][0].tobytes() for i in indices]


def _digest(split: LabeledImages, indices: list[int]) -> str:
    h = hashlib.sha256()
    for b in _bytes(split, indices):
        h.update(b)
    return h.hexdigest()


# ------------------------------------------------------------------------------------- registration


def test_registered_and_built_through_the_registry(tmp_path: Path) -> None:
    assert "shapes" in list_benchmarks()
    bench = build_benchmark("shapes", tmp_path, **SMALL)
    assert isinstance(bench, Benchmark)
    assert bench.name == "shapes"
    assert bench.num_classes == 6 and bench.class_names == tuple(all_shape_classes(6))
    assert (bench.class_order, bench.default_num_tasks, bench.default_memory) == ("seeded", 10, ("per_class", 20))
    assert bench.templates == TEMPLATES
    assert isinstance(bench.train, LabeledImages) and isinstance(bench.test, LabeledImages)
    assert (len(bench.train), len(bench.test)) == (30, 18)
    image, label = bench.train[7]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (32, 32)
    assert label == 1 and isinstance(label, int)
    assert not any(tmp_path.iterdir()), "an uncached build must not write anything"


def test_default_options(tmp_path: Path) -> None:
    bench = build_shapes(tmp_path)
    assert bench.num_classes == 50
    assert (len(bench.train), len(bench.test)) == (5000, 1000)
    assert bench.train[0][0].size == (64, 64)


def test_building_renders_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("rendered while building")

    monkeypatch.setattr(shapes_benchmark, "render_shape", refuse)
    bench = build_shapes(tmp_path, num_classes=MAX_CLASSES, train_per_class=1000, test_per_class=1000)
    assert len(bench.train) == MAX_CLASSES * 1000
    assert bench.train.targets[-1] == MAX_CLASSES - 1
    bench.fingerprint()


def test_templates_are_natural() -> None:
    assert 6 <= len(TEMPLATES) <= 8 and len(set(TEMPLATES)) == len(TEMPLATES)
    for template in TEMPLATES:
        assert template.count("{}") == 1
        assert "_" not in template.format("red triangle")


# -------------------------------------------------------------------------------------- determinism


def test_same_seed_same_images_in_any_order(tmp_path: Path) -> None:
    a = build_shapes(tmp_path, **SMALL, seed=5)
    b = build_shapes(tmp_path, **SMALL, seed=5)
    indices = [29, 0, 13, 7, 22]
    assert _bytes(a.train, indices) == _bytes(b.train, indices[::-1])[::-1]
    assert _bytes(a.test, [0, 17]) == _bytes(b.test, [0, 17])
    assert a.fingerprint() == b.fingerprint()


def test_same_seed_same_images_in_another_process(tmp_path: Path) -> None:
    indices = [0, 5, 17, 29]
    here = _digest(build_shapes(tmp_path, **SMALL, seed=9).train, indices)
    code = (
        "import hashlib; from clapray.shapes.benchmark import build_shapes\n"
        f"b = build_shapes('.', **{SMALL!r}, seed=9)\n"
        "h = hashlib.sha256()\n"
        f"for i in {indices!r}: h.update(b.train[i][0].tobytes())\n"
        "print(h.hexdigest())\n"
    )
    repo = Path(clapray.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120, check=True)
    assert result.stdout.strip() == here


def test_seed_and_split_change_images(tmp_path: Path) -> None:
    a = build_shapes(tmp_path, **SMALL, seed=0)
    b = build_shapes(tmp_path, **SMALL, seed=1)
    # Index i < 3 * 6 is image i % 3 of the same class in both splits (test has 3 per class).
    train_same_class = [i // 3 * 5 + i % 3 for i in range(18)]
    for i in range(18):
        assert a.train[i][0].tobytes() != b.train[i][0].tobytes()
        assert a.train[train_same_class[i]][1] == a.test[i][1]
        assert a.train[train_same_class[i]][0].tobytes() != a.test[i][0].tobytes()
    assert a.train.fingerprint() != a.test.fingerprint()
    assert a.fingerprint() != b.fingerprint()


def test_class_images_do_not_depend_on_the_class_subset(tmp_path: Path) -> None:
    """A class looks the same whichever other classes it is built with (disjoint splits rely on it)."""
    full = build_shapes(tmp_path, num_classes=20, train_per_class=4, test_per_class=2, image_size=32)
    name = full.class_names[13]
    sub = build_shapes(tmp_path, classes=[name, full.class_names[2]], train_per_class=6, test_per_class=2,
                       image_size=32)
    assert sub.class_names == (name, full.class_names[2])
    assert _bytes(sub.train, [0, 1, 2, 3]) == _bytes(full.train, [52, 53, 54, 55])
    assert _bytes(sub.test, [0, 1]) == _bytes(full.test, [26, 27])
    assert sample_attributes(0, "train", name, 3) == full.train.attributes(55)


def test_attributes_determine_the_image(tmp_path: Path) -> None:
    bench = build_shapes(tmp_path, **SMALL)
    for i in (0, 11, 29):
        attrs = bench.train.attributes(i)
        assert isinstance(attrs, ShapeAttributes)
        assert attrs.class_name == bench.class_names[bench.train[i][1]]
        assert render_shape(attrs, 32).tobytes() == bench.train[i][0].tobytes()
        with pytest.raises(dataclasses.FrozenInstanceError):
            attrs.colour = "red"  # type: ignore[misc]
    assert bench.train[-1][0].tobytes() == bench.train[29][0].tobytes()
    with pytest.raises(IndexError):
        bench.train[30]


# ------------------------------------------------------------------------------------------ classes


def test_class_names_are_unique_natural_and_varied() -> None:
    names = all_shape_classes()
    assert len(names) == len(set(names)) == MAX_CLASSES == len(COLOURS) * len(SHAPES) * len(PATTERNS)
    assert len(COLOURS) >= 10 and len(SHAPES) >= 10
    for name in names:
        assert "_" not in name and name == name.strip() and "  " not in name
        cls = shape_class(name)
        assert cls.colour in name and cls.shape in name
    # Plain colour x shape classes come first, then the patterned ones.
    plain = len(COLOURS) * len(SHAPES)
    assert all(len(n.split()) == 2 for n in names[:plain])
    assert all(n.split()[0] in PATTERNS for n in names[plain:])
    assert all_shape_classes(50) == names[:50]
    # The first 50 are varied: every colour and every shape several times, never "all red first".
    first = [shape_class(n) for n in names[:50]]
    assert min(Counter(c.colour for c in first).values()) >= 3
    assert min(Counter(c.shape for c in first).values()) >= 3
    assert len({c.colour for c in first[:10]}) == 10


def test_colour_palette_is_distinct() -> None:
    for (a, rgb_a), (b, rgb_b) in itertools.combinations(COLOURS.items(), 2):
        assert math.dist(rgb_a, rgb_b) >= 80, (a, b)


@pytest.mark.parametrize("n", [2, 7, 144, 145, MAX_CLASSES])
def test_class_count_honoured(tmp_path: Path, n: int) -> None:
    bench = build_shapes(tmp_path, num_classes=n, train_per_class=2, test_per_class=1, image_size=16)
    assert bench.num_classes == n and len(set(bench.class_names)) == n
    assert np.array_equal(bench.train.targets, np.repeat(np.arange(n), 2))
    assert bench.test[n - 1][1] == n - 1


def test_explicit_class_subset(tmp_path: Path) -> None:
    chosen = ["checkered white arrow", "blue circle", "dotted red heart"]
    bench = build_shapes(tmp_path, classes=chosen, train_per_class=2, test_per_class=1, image_size=16)
    assert bench.class_names == tuple(chosen)
    for i in range(len(bench.train)):
        assert bench.train.attributes(i).class_name == chosen[bench.train[i][1]]
    same = build_shapes(tmp_path, classes=chosen, num_classes=3, train_per_class=2, test_per_class=1, image_size=16)
    assert same.fingerprint() == bench.fingerprint()


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_classes=0), f"shapes: num_classes: expected an integer in [2, {MAX_CLASSES}], got 0"),
        (dict(num_classes=1), f"shapes: num_classes: expected an integer in [2, {MAX_CLASSES}], got 1"),
        (dict(num_classes=MAX_CLASSES + 1), f"expected an integer in [2, {MAX_CLASSES}], got {MAX_CLASSES + 1}"),
        (dict(num_classes=True), "shapes: num_classes: expected an integer"),
        (dict(num_classes=2.0), "shapes: num_classes: expected an integer"),
        (dict(train_per_class=0), "shapes: train_per_class: expected an integer >= 1, got 0"),
        (dict(test_per_class=-1), "shapes: test_per_class: expected an integer >= 1, got -1"),
        (dict(image_size=4), "shapes: image_size: expected an integer in [8, 1024], got 4"),
        (dict(seed=-1), "shapes: seed: expected an integer >= 0, got -1"),
        (dict(cache="yes"), "shapes: cache: expected true or false"),
        (dict(classes=["red circle", "red cirlce"]), "shapes: classes: unknown class 'red cirlce' (did you mean"),
        (dict(classes=["blue circle", "blue circle"]), "shapes: classes: listed more than once: 'blue circle'"),
        (dict(classes=["blue circle"]), "shapes: classes: expected at least 2 class names"),
        (dict(classes="blue circle"), "shapes: classes: expected a list of class names"),
        (dict(classes=["blue circle", "red circle"], num_classes=3), "shapes: num_classes: 3 does not match"),
    ],
)
def test_bad_options_are_one_line_user_errors(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(UserError) as info:
        build_shapes(tmp_path, **options)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_options_are_keyword_only(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        build_shapes(tmp_path, 10)  # type: ignore[misc]


def test_targets_match_items(tmp_path: Path) -> None:
    bench = build_shapes(tmp_path, **SMALL)
    for split in (bench.train, bench.test):
        assert split.targets.dtype == np.int64 and split.targets.shape == (len(split),)
        assert [split[i][1] for i in range(len(split))] == split.targets.tolist()


# ------------------------------------------------------------------------------------------ pictures


def _nearest_colour(pixels: np.ndarray) -> np.ndarray:
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    return np.argmin(((pixels[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)


def test_dominant_colour_is_the_class_colour() -> None:
    """A large filled drawing of every class is mostly its colour, whatever the background.

    Drawn at 96 px so that pattern edges (mixtures of shape and background colour) stay a minority.
    """
    colour_names = list(COLOURS)
    for name in all_shape_classes():
        attrs = sample_attributes(0, "train", name, 0)
        style = "filled" if attrs.pattern == "plain" else "bordered"
        attrs = dataclasses.replace(attrs, style=style, size="large", extent=0.38, center=(0.5, 0.5),
                                    background="plain")
        image = np.asarray(render_shape(attrs, 96), dtype=np.float64).reshape(-1, 3)
        background = np.array(BACKGROUND_COLOURS[attrs.background_colour], dtype=np.float64)
        shape_pixels = image[np.abs(image - background).max(axis=1) > 40]
        assert len(shape_pixels) > 0.08 * len(image), name
        votes = Counter(_nearest_colour(shape_pixels).tolist())
        winner, count = votes.most_common(1)[0]
        assert colour_names[winner] == attrs.colour, (name, votes)
        assert count > 0.6 * len(shape_pixels), (name, votes)


def test_different_shapes_have_different_masks() -> None:
    base = sample_attributes(0, "train", "red circle", 0)
    for rotation in (-40.0, 0.0, 25.0):
        masks = {}
        for shape in SHAPES:
            attrs = dataclasses.replace(base, shape=shape, style="filled", rotation=rotation, center=(0.5, 0.5),
                                        extent=0.38)
            masks[shape] = shape_coverage(attrs, 64) > 127
            assert masks[shape].sum() > 0.1 * 64 * 64, shape
        for a, b in itertools.combinations(SHAPES, 2):
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.9, (a, b, rotation, iou)


def test_nuisance_attributes_vary_and_stay_in_bounds(tmp_path: Path) -> None:
    bench = build_shapes(tmp_path, num_classes=MAX_CLASSES, train_per_class=3, test_per_class=1, image_size=32)
    attrs = [bench.train.attributes(i) for i in range(0, len(bench.train), 2)]
    plain = [a for a in attrs if a.pattern == "plain"]
    patterned = [a for a in attrs if a.pattern != "plain"]
    assert {a.size for a in attrs} == set(SIZES)
    assert {a.background for a in attrs} == set(BACKGROUNDS)
    assert {a.style for a in plain} == set(PLAIN_STYLES)
    assert {a.style for a in patterned} == set(PATTERN_STYLES)
    assert len({a.background_colour for a in attrs}) == len(BACKGROUND_COLOURS)
    assert len({round(a.rotation) for a in attrs}) > 40
    for a in attrs:
        # The background never matches the shape colour.
        assert math.dist(COLOURS[a.colour], BACKGROUND_COLOURS[a.background_colour]) >= MIN_CONTRAST
    for a in attrs[::10]:
        # The whole shape is inside the image: nothing drawn on the border pixels.
        mask = shape_coverage(a, 32)
        assert mask.max() == 255
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()), a


def test_styles_patterns_and_backgrounds_change_the_picture() -> None:
    base = dataclasses.replace(sample_attributes(0, "train", "blue square", 0), style="filled", background="plain")
    variants = (
        {}, {"style": "outline"}, {"style": "shaded"}, {"background": "gradient"}, {"background": "noisy"},
        {"pattern": "striped", "style": "bordered"}, {"pattern": "striped", "style": "borderless"},
        {"pattern": "dotted", "style": "bordered"}, {"pattern": "checkered", "style": "bordered"},
    )
    pictures = [render_shape(dataclasses.replace(base, **v), 32).tobytes() for v in variants]
    assert len(set(pictures)) == len(pictures)
    # An outline covers less than the filled shape, a pattern less than its bordered version.
    filled = shape_coverage(base, 32).sum()
    assert shape_coverage(dataclasses.replace(base, style="outline"), 32).sum() < 0.8 * filled
    striped = dataclasses.replace(base, pattern="striped", style="borderless")
    assert shape_coverage(striped, 32).sum() < 0.8 * filled


# -------------------------------------------------------------------------------------------- cache


def _cache_file(split: ShapesSplit) -> Path:
    assert split.cache_path is not None
    return split.cache_path


CACHED = dict(num_classes=4, train_per_class=6, test_per_class=2, image_size=16, seed=3)


def test_cache_matches_lazy_rendering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lazy = build_shapes(tmp_path / "lazy", **CACHED)
    cached = build_shapes(tmp_path / "cache", **CACHED, cache=True)
    for split, lazy_split in ((cached.train, lazy.train), (cached.test, lazy.test)):
        path = _cache_file(split)
        assert path.is_file() and path.parent.parent == tmp_path / "cache" / "shapes"
        assert path.parent.name == split.fingerprint()
        array = np.load(path)
        assert array.shape == (len(split), 16, 16, 3) and array.dtype == np.uint8
        assert _bytes(split, list(range(len(split)))) == _bytes(lazy_split, list(range(len(split))))
    assert cached.fingerprint() == lazy.fingerprint()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]
    # Items come from the cache, not from rendering.
    expected = lazy.train[5][0].tobytes()
    monkeypatch.setattr(shapes_benchmark, "render_shape", lambda *a, **k: pytest.fail("rendered despite the cache"))
    assert cached.train[5][0].tobytes() == expected


def test_cache_is_reused(tmp_path: Path) -> None:
    first = build_shapes(tmp_path, **CACHED, cache=True)
    path = _cache_file(first.train)
    stamp = path.stat().st_mtime_ns
    again = build_shapes(tmp_path, **CACHED, cache=True)
    assert _cache_file(again.train) == path and path.stat().st_mtime_ns == stamp
    other = build_shapes(tmp_path, **{**CACHED, "seed": 4}, cache=True)
    assert _cache_file(other.train) != path


@pytest.mark.parametrize("damage", ["truncate", "zero_pixels", "wrong_shape", "garbage"])
def test_damaged_cache_is_regenerated(tmp_path: Path, damage: str) -> None:
    reference = _bytes(build_shapes(tmp_path / "ref", **CACHED).train, list(range(24)))
    path = _cache_file(build_shapes(tmp_path, **CACHED, cache=True).train)
    size = path.stat().st_size
    if damage == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(size // 2)
    elif damage == "zero_pixels":
        # The header survives; only the pixels are lost.
        header = size - 24 * 16 * 16 * 3
        with open(path, "r+b") as fh:
            fh.seek(header)
            fh.write(bytes(size - header))
    elif damage == "wrong_shape":
        np.save(path, np.zeros((24, 8, 8, 3), dtype=np.uint8))
    else:
        path.write_bytes(b"not an npy file")
    rebuilt = build_shapes(tmp_path, **CACHED, cache=True)
    assert path.stat().st_size == size
    assert _bytes(rebuilt.train, list(range(24))) == reference
    assert np.load(path).shape == (24, 16, 16, 3)


def test_unwritable_cache_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="shapes: cannot write the image cache"):
        build_shapes(blocker, **CACHED, cache=True)


def test_vanished_cache_falls_back_to_rendering(tmp_path: Path) -> None:
    bench = build_shapes(tmp_path, **CACHED, cache=True)
    expected = bench.train.render(3).tobytes()
    _cache_file(bench.train).unlink()
    assert bench.train[3][0].tobytes() == expected


@pytest.mark.parametrize("cache", [False, True])
def test_split_pickles(tmp_path: Path, cache: bool) -> None:
    bench = build_shapes(tmp_path, **CACHED, cache=cache)
    split = bench.train
    before = split[2][0].tobytes()  # opens the memory map when cached
    blob = pickle.dumps(split)
    assert len(blob) < 4096, "the pickle must carry parameters, not pixels or a memory map"
    clone = pickle.loads(blob)
    assert isinstance(clone, ShapesSplit)
    assert clone.fingerprint() == split.fingerprint()
    assert np.array_equal(clone.targets, split.targets)
    assert clone[2][0].tobytes() == before
    assert clone.attributes(2) == split.attributes(2)


def test_fingerprint_tracks_every_parameter(tmp_path: Path) -> None:
    base = build_shapes(tmp_path, **SMALL).train.fingerprint()
    assert build_shapes(tmp_path, **SMALL).train.fingerprint() == base
    for change in (dict(seed=1), dict(image_size=24), dict(train_per_class=6), dict(num_classes=7)):
        assert build_shapes(tmp_path, **{**SMALL, **change}).train.fingerprint() != base, change
    reordered = list(reversed(all_shape_classes(6)))
    assert build_shapes(tmp_path, **{**SMALL, "num_classes": None}, classes=reordered).train.fingerprint() != base


# -------------------------------------------------------------------------------------------- speed


def _images_per_second(image_size: int, count: int = 3000) -> float:
    import time

    split = ShapesSplit(all_shape_classes(), "train", per_class=count // MAX_CLASSES + 1, image_size=image_size,
                        seed=0)
    split[0]  # builds the shared pattern and noise textures
    start = time.perf_counter()
    for i in range(count):
        split[i]
    return count / (time.perf_counter() - start)


if __name__ == "__main__":
    for size in (32, 64, 224):
        print(f"{size:>4} px: {_images_per_second(size):7.0f} images/s (one process, all class kinds)")
