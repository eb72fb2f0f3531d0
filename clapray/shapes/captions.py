"""Captions of pretraining images, composed from each image's attributes.

A caption names the image's class phrase ("red triangle", "striped red triangle") verbatim, or, when it
under-describes the image, the colour with a generic noun ("red object"), and, in several phrasings,
some of its nuisance attributes (size, drawing style, background, position), so the text tower learns
the colour and shape words in varied contexts. Only pretraining classes are ever
captioned (:mod:`clapray.shapes.pool`); the held-out continual classes never are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from clapray.shapes.attributes import ShapeAttributes

_PREFIXES: tuple[str, ...] = (
    "a photo of", "an image of", "a picture of", "a drawing of", "a rendering of", "a simple drawing of",
    "a small picture of", "a picture showing",
)
_STYLE_ADJECTIVES: Mapping[str, tuple[str, ...]] = {
    "filled": ("filled", "solid"),
    "outline": ("outlined", "hollow"),
    "shaded": ("shaded", "gradient-shaded"),
    "bordered": ("bordered",),
    "borderless": ("borderless",),
}
_STYLE_PHRASES: Mapping[str, tuple[str, ...]] = {
    "filled": ("filled in", "drawn solid"),
    "outline": ("drawn as an outline", "drawn in outline"),
    "shaded": ("with shading", "shaded from light to dark"),
    "bordered": ("with a border",),
    "borderless": ("without a border",),
}
_BACKGROUND_ADJECTIVES: Mapping[str, tuple[str, ...]] = {
    "plain": ("plain", "flat"),
    "gradient": ("fading", "gradient"),
    "noisy": ("noisy", "speckled"),
}

# Each form is one phrasing; slots are filled from the image's attributes. ``{cls}`` is the class
# phrase (or its under-described form) and appears in every form, so the text tower always sees the colour.
_FORMS: tuple[str, ...] = (
    "{prefix} {a_cls}.",
    "{prefix} the {cls}.",
    "the {cls} shape.",
    "{a_size} {cls} {style_phrase} on {a_bg} background.",
    "{a_cls} on {a_bg_adj} {bg} background",
    "{prefix} {a_size} {style} {cls}",
    "{a_style} {cls} {where}.",
    "{size} {cls}, {style}, {bg} background",
    "{prefix} {a_cls} on {bg}.",
    "there is {a_size} {cls} {where} of the picture.",
)


def _article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front ("an orange circle", "a red circle")."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _position(attrs: ShapeAttributes) -> str:
    """Where the shape sits, in words, from its centre (fractions of the image side, y down)."""
    x, y = attrs.center
    vertical = "top" if y < 0.4 else "bottom" if y > 0.6 else ""
    horizontal = "left" if x < 0.4 else "right" if x > 0.6 else ""
    if vertical and horizontal:
        return f"in the {vertical} {horizontal}"
    if horizontal:
        return f"on the {horizontal}"
    return f"at the {vertical}" if vertical else "in the middle"


# What a caption that does not name the shape calls it instead ("a red object on a beige background").
GENERIC_SHAPE_NOUNS: tuple[str, ...] = ("object", "figure", "thing")


def compose_caption(attrs: ShapeAttributes, variant: int, *, name_shape: bool = True) -> str:
    """A caption of one image from its attributes; ``variant`` (any int) picks the phrasing.

    The class phrase (``attrs.class_name``, e.g. "red triangle" or "striped red triangle") appears
    verbatim unless ``name_shape`` is false: then the shape word is replaced by a generic noun
    (:data:`GENERIC_SHAPE_NOUNS`) and the caption under-describes the image. ``variant`` is decomposed
    into choices of form, prefix and synonyms, so different variants give different phrasings of the
    same image.
    """
    v = int(variant)

    def pick(options: Sequence[str]) -> str:
        nonlocal v
        v, i = divmod(v, len(options))
        return options[i]

    form = pick(_FORMS)
    cls = attrs.class_name
    if not name_shape:
        cls = cls.rsplit(" ", 1)[0] + " " + pick(GENERIC_SHAPE_NOUNS)
    style = pick(_STYLE_ADJECTIVES[attrs.style])
    bg_adj = pick(_BACKGROUND_ADJECTIVES[attrs.background])
    bg = attrs.background_colour
    slots = {
        "prefix": pick(_PREFIXES),
        "cls": cls,
        "a_cls": _article(cls),
        "size": attrs.size,
        "a_size": _article(attrs.size),
        "style": style,
        "a_style": _article(style),
        "style_phrase": pick(_STYLE_PHRASES[attrs.style]),
        "bg": bg,
        "a_bg": _article(bg),
        "a_bg_adj": _article(bg_adj),
        "where": _position(attrs),
    }
    return form.format(**slots)


def _image_hash(purpose: str, seed: int, class_name: str, index: int) -> int:
    """A 64-bit hash of image ``index`` of a class, for one ``purpose``: deterministic, uniform."""
    digest = hashlib.sha256(f"{purpose}|{seed}|{class_name}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def caption_variant(seed: int, class_name: str, index: int) -> int:
    """The phrasing variant of image ``index`` of a class: deterministic, uniform over phrasings."""
    return _image_hash("clapray-caption", seed, class_name, index)


def mentions_shape(seed: int, class_name: str, index: int, rate: float) -> bool:
    """Whether the caption of image ``index`` of a class names its shape: true for a ``rate`` fraction."""
    return _image_hash("clapray-caption-shape", seed, class_name, index) / 2.0**64 < rate
