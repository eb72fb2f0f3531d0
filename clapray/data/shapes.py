"""``shapes``: a procedurally generated image benchmark that needs no download.

Every class is a combination of attributes that reads naturally in a prompt: a colour and a shape
("red triangle"), and beyond the 144 colour x shape combinations a fill pattern as well ("striped red
triangle"), up to :data:`MAX_CLASSES` classes. Within a class, images vary in nuisance attributes: size,
position, rotation, drawing style and background. Each image's attributes are exposed as a
:class:`ShapeAttributes` so captions can be composed from them.

Images are rendered lazily and deterministically: image ``k`` of class ``c`` in split ``s`` is a pure
function of ``(seed, s, c, k)`` (and the image size), where ``c`` is the class's position in the canonical
enumeration, not in the requested subset. Hence a "red triangle" looks the same whichever classes it is
built with, any image can be produced in any order on any worker, and building a benchmark renders
nothing. An optional on-disk cache renders a split once into a memory-mapped ``.npy`` array.

Run ``python tests/test_shapes.py`` to measure the rendering speed.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from clapray.data.base import Benchmark, BenchmarkShape, register_benchmark
from clapray.errors import ConfigError, UserError

# Bump whenever drawing or sampling changes what any image looks like: it is part of every fingerprint
# and cache key, so stale caches and recorded results are never mistaken for the new images.
GENERATOR_VERSION = 1

RGB = tuple[int, int, int]

# Shape colours, chosen pairwise far apart in RGB (>= 80) so the colour word is never ambiguous.
COLOURS: Mapping[str, RGB] = MappingProxyType({
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 130, 20),
    "purple": (130, 40, 180),
    "pink": (245, 120, 190),
    "brown": (120, 70, 30),
    "cyan": (30, 200, 220),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "grey": (128, 128, 128),
})

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "hexagon", "cross",
    "ring", "diamond", "pentagon", "heart", "crescent", "arrow",
)

# Class-level fill pattern. "plain" adds no word to the class name; the others are used only once all
# plain colour x shape combinations are taken.
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")

SIZES: tuple[str, ...] = ("small", "medium", "large")
# Circumradius of the shape as a fraction of the image side, per size word.
SIZE_EXTENTS: Mapping[str, tuple[float, float]] = MappingProxyType({
    "small": (0.16, 0.22),
    "medium": (0.24, 0.30),
    "large": (0.32, 0.40),
})

# Drawing styles. Plain classes are "filled", "outline" or "shaded" (a light-to-dark gradient of the
# class colour). Patterned classes keep their pattern (an outline-only drawing would hide it), so they
# vary only in whether a solid border surrounds the pattern.
PLAIN_STYLES: tuple[str, ...] = ("filled", "outline", "shaded")
PATTERN_STYLES: tuple[str, ...] = ("bordered", "borderless")
STYLES: tuple[str, ...] = PLAIN_STYLES + PATTERN_STYLES

BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noisy")

# Background colours are named too (captions mention them). A background is only used for a shape
# colour at least MIN_CONTRAST away, so the shape never blends into it.
BACKGROUND_COLOURS: Mapping[str, RGB] = MappingProxyType({
    "white": (250, 250, 250),
    "light grey": (205, 205, 205),
    "dark grey": (70, 70, 70),
    "black": (15, 15, 15),
    "beige": (230, 215, 180),
    "light blue": (185, 210, 240),
    "pale green": (200, 230, 195),
    "lavender": (215, 200, 235),
    "navy": (25, 35, 85),
    "dark green": (25, 75, 45),
})
MIN_CONTRAST = 110.0

ROTATION_RANGE = 40.0  # degrees either way; keeps hearts, arrows and triangles recognisably upright
MAX_CLASSES = len(COLOURS) * len(SHAPES) * len(PATTERNS)

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

SPLIT_IDS: Mapping[str, int] = MappingProxyType({"train": 0, "test": 1})

DEFAULT_NUM_CLASSES = 50
_MIN_IMAGE_SIZE, _MAX_IMAGE_SIZE = 8, 1024
_SUPERSAMPLE = 2  # shapes are rasterised at twice the size and box-filtered down, for anti-aliasing


# --------------------------------------------------------------------------------------------------
# Classes


@dataclass(frozen=True)
class ShapeClass:
    """A class: the attributes every image of it shares."""

    colour: str
    shape: str
    pattern: str = "plain"

    @property
    def name(self) -> str:
        words = [self.colour, self.shape] if self.pattern == "plain" else [self.pattern, self.colour, self.shape]
        return " ".join(words)


def _canonical_classes() -> tuple[ShapeClass, ...]:
    """Enumerate every class in a fixed order whose every prefix is varied.

    Within one pattern, classes come in diagonals of the colour x shape grid: each run of 12 holds every
    shape once and every colour once, and consecutive runs shift the colours, so any prefix (say the
    first 50) has every shape and every colour about equally often.
    """
    colours, n_c, n_s = list(COLOURS), len(COLOURS), len(SHAPES)
    out: list[ShapeClass] = []
    for pattern in PATTERNS:
        for k in range(n_c * n_s):
            diagonal, s = divmod(k, n_s)
            out.append(ShapeClass(colours[(s + diagonal) % n_c], SHAPES[s], pattern))
    return tuple(out)


_CLASSES: tuple[ShapeClass, ...] = _canonical_classes()
_CLASS_IDS: Mapping[str, int] = MappingProxyType({c.name: i for i, c in enumerate(_CLASSES)})
assert len(_CLASS_IDS) == MAX_CLASSES


def all_shape_classes(max_classes: int | None = None) -> list[str]:
    """The canonical class list (names), or its first ``max_classes`` entries."""
    names = [c.name for c in _CLASSES]
    return names if max_classes is None else names[:max_classes]


def shape_class(name: str) -> ShapeClass:
    """The attributes of a class given by name; unknown names raise :class:`UserError`."""
    try:
        return _CLASSES[_CLASS_IDS[name]]
    except KeyError:
        raise UserError(f"shapes: classes: unknown class {name!r}{_did_you_mean(name)}") from None


def _class_id(name: str) -> int:
    """Position of a class in the canonical enumeration: what its images are seeded with."""
    if name not in _CLASS_IDS:
        shape_class(name)  # raises, with suggestions
    return _CLASS_IDS[name]


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(str(name), _CLASS_IDS, n=3)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _allowed_backgrounds() -> Mapping[str, tuple[str, ...]]:
    table = {}
    for colour, rgb in COLOURS.items():
        ok = tuple(name for name, bg in BACKGROUND_COLOURS.items() if math.dist(rgb, bg) >= MIN_CONTRAST)
        assert len(ok) >= 3, f"too few background colours contrast with {colour}"
        table[colour] = ok
    return MappingProxyType(table)


_BACKGROUNDS_FOR: Mapping[str, tuple[str, ...]] = _allowed_backgrounds()


# --------------------------------------------------------------------------------------------------
# Shape outlines, in unit coordinates (y up, every vertex within radius 1 of the origin)


def _regular(n: int, start_deg: float = 90.0) -> np.ndarray:
    a = np.deg2rad(start_deg) + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    a = np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _cross(arm: float = 0.3) -> np.ndarray:
    # A plus sign whose arm tips touch the unit circle.
    w, L = arm, math.sqrt(1 - arm * arm)
    return np.array([(w, L), (w, w), (L, w), (L, -w), (w, -w), (w, -L),
                     (-w, -L), (-w, -w), (-L, -w), (-L, w), (-w, w), (-w, L)])


def _heart(n: int = 64) -> np.ndarray:
    t = 2 * np.pi * np.arange(n) / n
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, y], axis=1)


def _crescent(cut_radius: float = 0.85, offset: float = 0.5, n: int = 48) -> np.ndarray:
    # The part of the unit circle outside a cut circle centred at (offset, 0): the outer arc runs
    # anticlockwise through the left-most point, the inner arc back along the cut circle.
    x0 = (1 - cut_radius ** 2 + offset ** 2) / (2 * offset)
    y0 = math.sqrt(1 - x0 * x0)
    t0 = math.atan2(y0, x0)
    outer_t = np.linspace(t0, 2 * np.pi - t0, n)
    p0 = math.atan2(y0, x0 - offset)
    inner_t = np.linspace(2 * np.pi - p0, p0, n)[1:-1]
    outer = np.stack([np.cos(outer_t), np.sin(outer_t)], axis=1)
    inner = np.stack([offset + cut_radius * np.cos(inner_t), cut_radius * np.sin(inner_t)], axis=1)
    return np.concatenate([outer, inner])


def _arrow() -> np.ndarray:
    return np.array([(-1.0, 0.22), (0.15, 0.22), (0.15, 0.6), (1.0, 0.0),
                     (0.15, -0.6), (0.15, -0.22), (-1.0, -0.22)])


def _normalised(points: np.ndarray) -> np.ndarray:
    """Centre on the bounding box and scale so the farthest vertex lies on the unit circle."""
    points = points - (points.min(axis=0) + points.max(axis=0)) / 2
    return points / np.linalg.norm(points, axis=1).max()


# Each shape is a list of (polygon, is_hole). Holes are cut out of the fill; in outline drawings their
# border is drawn like any other.
_OUTLINES: Mapping[str, tuple[tuple[np.ndarray, bool], ...]] = MappingProxyType({
    "circle": ((_regular(64), False),),
    "square": ((_regular(4, 45.0), False),),
    "triangle": ((_regular(3), False),),
    "star": ((_star(), False),),
    "hexagon": ((_regular(6, 0.0), False),),
    "cross": ((_cross(), False),),
    "ring": ((_regular(64), False), (0.55 * _regular(64), True)),
    # A tall rhombus, so no rotation of a square ever looks like it.
    "diamond": ((np.array([(0.0, 1.0), (0.6, 0.0), (0.0, -1.0), (-0.6, 0.0)]), False),),
    "pentagon": ((_regular(5), False),),
    "heart": ((_normalised(_heart()), False),),
    "crescent": ((_normalised(_crescent()), False),),
    "arrow": ((_normalised(_arrow()), False),),
})
assert set(_OUTLINES) == set(SHAPES)


# --------------------------------------------------------------------------------------------------
# Attributes


# Uniform draws that fix an image's fine details, by position in ``ShapeAttributes.details``.
DETAIL_FIELDS: tuple[str, ...] = (
    "pattern angle", "pattern phase across", "pattern phase along", "shading angle",
    "background gradient angle", "noise offset x", "noise offset y", "noise orientation",
)


@dataclass(frozen=True)
class ShapeAttributes:
    """Everything that determines one image; :func:`render_shape` is a pure function of it.

    ``shape``, ``colour`` and ``pattern`` are the class; the rest are nuisance attributes.
    ``center`` is (x, y) as fractions of the image side (y down), ``extent`` the shape's circumradius as
    a fraction of the image side and ``rotation`` degrees anticlockwise. ``details`` holds uniforms in
    [0, 1) for the fine details no caption mentions (named by :data:`DETAIL_FIELDS`).
    """

    shape: str
    colour: str
    pattern: str
    size: str
    style: str
    background: str
    background_colour: str
    rotation: float
    center: tuple[float, float]
    extent: float
    details: tuple[float, ...]

    @property
    def class_name(self) -> str:
        return ShapeClass(self.colour, self.shape, self.pattern).name


def sample_attributes(seed: int, split: str, class_name: str, index: int) -> ShapeAttributes:
    """The attributes of image ``index`` of a class in a split: a pure function of the arguments."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    return _sample(seed, SPLIT_IDS[split], _class_id(class_name), index)


def _sample(seed: int, split_id: int, cls_id: int, index: int) -> ShapeAttributes:
    cls = _CLASSES[cls_id]
    rng = np.random.default_rng([seed, split_id, cls_id, index])
    # One call for every draw: at this size the per-call overhead is what costs.
    u = rng.random(8 + len(DETAIL_FIELDS)).tolist()
    size = SIZES[int(u[0] * len(SIZES))]
    lo, hi = SIZE_EXTENTS[size]
    extent = lo + (hi - lo) * u[1]
    # Keep the whole shape (any rotation) inside the image with a small margin.
    margin = extent + 0.04
    center = (margin + (1 - 2 * margin) * u[2], margin + (1 - 2 * margin) * u[3])
    rotation = ROTATION_RANGE * (2 * u[4] - 1)
    styles = PLAIN_STYLES if cls.pattern == "plain" else PATTERN_STYLES
    style = styles[int(u[5] * len(styles))]
    background = BACKGROUNDS[int(u[6] * len(BACKGROUNDS))]
    allowed = _BACKGROUNDS_FOR[cls.colour]
    background_colour = allowed[int(u[7] * len(allowed))]
    return ShapeAttributes(
        shape=cls.shape, colour=cls.colour, pattern=cls.pattern, size=size, style=style,
        background=background, background_colour=background_colour, rotation=rotation,
        center=center, extent=extent, details=tuple(u[8:]),
    )


# --------------------------------------------------------------------------------------------------
# Rendering


_PATTERN_PERIOD = 32  # pixels per pattern repeat in the pattern source images
_PATTERN_SOURCE = 512  # side of the pattern source images; mapped shapes stay well inside it


@functools.cache
def _pattern_source(pattern: str) -> Image.Image:
    """A large axis-aligned pattern (255 = class colour) that affine transforms place on a shape."""
    u = (np.arange(_PATTERN_SOURCE) % _PATTERN_PERIOD + 0.5) / _PATTERN_PERIOD  # position in a repeat
    across, down = u[None, :], u[:, None]
    if pattern == "striped":
        on = np.broadcast_to(across < 0.55, (_PATTERN_SOURCE, _PATTERN_SOURCE))
    elif pattern == "dotted":
        on = (across - 0.5) ** 2 + (down - 0.5) ** 2 < 0.38 ** 2
    elif pattern == "checkered":
        on = (across < 0.5) != (down < 0.5)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return Image.fromarray(np.where(on, 255, 0).astype(np.uint8), "L")


# A vertical ramp whose row 128 + v holds v for v in [0, 255], clamped beyond: affine transforms of it
# give linear gradients in any direction without per-pixel Python or numpy work.
_RAMP_OFFSET = 128
_RAMP = Image.fromarray(
    np.tile(np.clip(np.arange(512) - _RAMP_OFFSET, 0, 255).astype(np.uint8)[:, None], (1, 8)), "L")


def _ramp(size: int, angle: float, scale: float, origin: tuple[float, float], offset: float) -> Image.Image:
    """An L image whose value is ``offset + scale * ((x, y) - origin) . (cos angle, sin angle)``, clamped."""
    c, s = math.cos(angle), math.sin(angle)
    k = _RAMP_OFFSET + offset - scale * (c * origin[0] + s * origin[1])
    return _RAMP.transform((size, size), Image.Transform.AFFINE, (0, 0, 4, scale * c, scale * s, k))


@functools.lru_cache(maxsize=8)
def _noise_texture(size: int) -> Image.Image:
    """A fixed texture (RGB around 128) twice the image side: blotches plus grain.

    Noisy backgrounds add a crop of it (at an offset and orientation picked per image) to the
    background colour: far cheaper than drawing fresh noise, and still deterministic.
    """
    rng = np.random.default_rng(20_240_601)  # fixed: the texture is part of the generator
    side = 2 * size
    blotch = rng.uniform(-30, 30, size=(9, 9, 1)) + rng.uniform(-8, 8, size=(9, 9, 3))
    blotch_img = Image.fromarray((128 + blotch).astype(np.uint8), "RGB")
    smooth = np.asarray(blotch_img.resize((side, side), Image.Resampling.BILINEAR), dtype=np.int16)
    grain = rng.integers(-12, 13, size=(side, side, 1), dtype=np.int16)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8), "RGB")


_ORIENTATIONS: tuple[Image.Transpose | None, ...] = (None, *Image.Transpose)


def _placed(points: np.ndarray, attrs: ShapeAttributes, side: int) -> list[float]:
    """Unit-coordinate polygon -> flat pixel coordinate list for ImageDraw."""
    a = math.radians(attrs.rotation)
    c, s = math.cos(a), math.sin(a)
    r = attrs.extent * side
    # x = cx + r (c px - s py), y = cy - r (s px + c py): rotate anticlockwise, then flip y (image y is down).
    transform = np.array([[r * c, -r * s], [-r * s, -r * c]])
    xy = points @ transform + (attrs.center[0] * side, attrs.center[1] * side)
    return xy.ravel().tolist()


def _background(attrs: ShapeAttributes, size: int) -> Image.Image:
    base = BACKGROUND_COLOURS[attrs.background_colour]
    plain = Image.new("RGB", (size, size), base)
    if attrs.background == "plain":
        return plain
    if attrs.background == "gradient":
        # Fade up to 40% towards black for light colours and towards white for dark ones.
        target = (0, 0, 0) if sum(base) > 3 * 127 else (255, 255, 255)
        angle = 2 * math.pi * attrs.details[4]
        # The ramp runs 0 -> 1 across the image's diagonal extent along ``angle``.
        span = size * (abs(math.cos(angle)) + abs(math.sin(angle)))
        weight = _ramp(size, angle, 0.4 * 255 / span, (size / 2, size / 2), 0.4 * 255 / 2)
        return Image.composite(Image.new("RGB", (size, size), target), plain, weight)
    if attrs.background == "noisy":
        texture = _noise_texture(size)
        x, y = int(attrs.details[5] * size), int(attrs.details[6] * size)
        crop = texture.crop((x, y, x + size, y + size))
        orientation = _ORIENTATIONS[int(attrs.details[7] * len(_ORIENTATIONS))]
        if orientation is not None:
            crop = crop.transpose(orientation)
        return ImageChops.add(plain, crop, 1.0, -128)
    raise ValueError(f"unknown background {attrs.background!r}")


def _shaded(attrs: ShapeAttributes, size: int) -> Image.Image:
    """The class colour, dark on one side of the shape and light on the other.

    Never far enough from the class colour to read as another palette colour.
    """
    rgb = COLOURS[attrs.colour]
    light = tuple(round(v + 0.25 * (255 - v)) for v in rgb)
    dark = tuple(round(0.75 * v) for v in rgb)
    r = attrs.extent * size
    weight = _ramp(size, 2 * math.pi * attrs.details[3], 127.5 / r,
                   (attrs.center[0] * size, attrs.center[1] * size), 127.5)
    return Image.composite(Image.new("RGB", (size, size), light), Image.new("RGB", (size, size), dark), weight)


def shape_coverage(attrs: ShapeAttributes, image_size: int) -> np.ndarray:
    """The shape's coverage (alpha) at ``image_size``: uint8 [S, S], 255 = fully the shape colour."""
    return np.asarray(_coverage(attrs, image_size))


def _coverage(attrs: ShapeAttributes, image_size: int) -> Image.Image:
    side = image_size * _SUPERSAMPLE
    r = attrs.extent * side
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    polygons = [(_placed(p, attrs, side), hole) for p, hole in _OUTLINES[attrs.shape]]
    if attrs.style == "outline":
        width = max(2 * _SUPERSAMPLE, round(0.16 * r))
        for xy, _ in polygons:
            draw.polygon(xy, outline=255, width=width)
    else:
        for xy, hole in polygons:
            draw.polygon(xy, fill=0 if hole else 255)
    if attrs.pattern != "plain":
        # Map the pattern source onto the shape: rotated, scaled so a repeat spans ``period`` pixels,
        # and shifted by a per-image phase; output pixel (x, y) reads source (a x + b y + c, d x + e y + f).
        period = max(4.0 * _SUPERSAMPLE, 0.5 * r)
        angle = 2 * math.pi * attrs.details[0]
        k = _PATTERN_PERIOD / period
        c, s = k * math.cos(angle), k * math.sin(angle)
        cx, cy = attrs.center[0] * side, attrs.center[1] * side
        mid = _PATTERN_SOURCE / 2
        ox = mid + _PATTERN_PERIOD * attrs.details[1] - (c * cx + s * cy)
        oy = mid + _PATTERN_PERIOD * attrs.details[2] - (-s * cx + c * cy)
        pattern = _pattern_source(attrs.pattern).transform(
            (side, side), Image.Transform.AFFINE, (c, s, ox, -s, c, oy))
        mask = ImageChops.multiply(mask, pattern)
        if attrs.style == "bordered":
            draw = ImageDraw.Draw(mask)
            width = max(_SUPERSAMPLE, round(0.1 * r))
            for xy, _ in polygons:
                draw.polygon(xy, outline=255, width=width)
    return mask.reduce(_SUPERSAMPLE)


def render_shape(attrs: ShapeAttributes, image_size: int) -> Image.Image:
    """Draw one image (RGB, ``image_size`` square) from its attributes; deterministic."""
    image = _background(attrs, image_size)  # always a fresh image, so it can be drawn on in place
    foreground = _shaded(attrs, image_size) if attrs.style == "shaded" else COLOURS[attrs.colour]
    image.paste(foreground, (0, 0, image_size, image_size), _coverage(attrs, image_size))
    return image


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
        self._class_ids = tuple(_class_id(n) for n in self.class_names)
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
        return _sample(self.seed, SPLIT_IDS[self.split], self._class_ids[label], k)

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
        if not isinstance(name, str) or name not in _CLASS_IDS:
            raise UserError(f"shapes: classes: unknown class {name!r}{_did_you_mean(str(name))}")
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
