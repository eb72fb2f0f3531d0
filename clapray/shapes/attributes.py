"""The vocabulary of the shapes world and what one image is made of.

Every class is a combination of attributes that reads naturally in a prompt: a colour and a shape
("red triangle"), and beyond the 144 colour x shape combinations a fill pattern as well ("striped red
triangle"), up to :data:`MAX_CLASSES` classes. Within a class, images vary in nuisance attributes: size,
position, rotation, drawing style and background. :func:`sample_attributes` draws them as a
:class:`ShapeAttributes`, a pure function of ``(seed, split, class, index)``, so captions can be
composed from them and :func:`clapray.shapes.render.render_shape` can draw them.

The class's position in the canonical enumeration (not in a requested subset) seeds its images, so a
"red triangle" looks the same whichever classes it is built with.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from clapray.errors import UserError

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

SPLIT_IDS: Mapping[str, int] = MappingProxyType({"train": 0, "test": 1})


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
        raise UserError(f"shapes: classes: unknown class {name!r}{did_you_mean(name)}") from None


def is_shape_class(name: object) -> bool:
    """Whether ``name`` is the name of a class of the canonical enumeration."""
    return isinstance(name, str) and name in _CLASS_IDS


def class_id(name: str) -> int:
    """Position of a class in the canonical enumeration: what its images are seeded with."""
    if name not in _CLASS_IDS:
        shape_class(name)  # raises, with suggestions
    return _CLASS_IDS[name]


def did_you_mean(name: str) -> str:
    """`` (did you mean 'a', 'b'?)`` with the closest class names, or an empty string."""
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
    return sample_attributes_by_id(seed, SPLIT_IDS[split], class_id(class_name), index)


def sample_attributes_by_id(seed: int, split_id: int, cls_id: int, index: int) -> ShapeAttributes:
    """:func:`sample_attributes` with the split and class given by id (:data:`SPLIT_IDS`, :func:`class_id`)."""
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


