"""The deterministic renderer of the shapes world: one :class:`ShapeAttributes` -> one RGB image.

Shapes are polygons in unit coordinates, placed, rotated and rasterised at twice the size and
box-filtered down (anti-aliasing); fills, outlines, shading, patterns and backgrounds are drawn with
PIL operations only (no per-pixel Python), so a 32 px image takes well under a millisecond.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from clapray.shapes.attributes import BACKGROUND_COLOURS, COLOURS, SHAPES, ShapeAttributes

_SUPERSAMPLE = 2  # shapes are rasterised at twice the size and box-filtered down, for anti-aliasing

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


