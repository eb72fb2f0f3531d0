"""Train and fixed-view transforms derived from the backbone's evaluation preprocessing.

open_clip's eval preprocess is ``Compose([Resize(bicubic), CenterCrop, <to RGB>, ToTensor, Normalize])``.
The official training transform is the same with ``RandomHorizontalFlip`` between the RGB conversion and
``ToTensor`` (reference §12.4), i.e. the flip acts on the resized, cropped image. Since the flip is the
only augmentation, a training image has exactly two views; :func:`view_transform` produces either one
deterministically, so both can be encoded once and cached.

torchvision is imported inside the functions: importing it loads ``torchvision.datasets`` and takes
seconds, and :mod:`clapray.data` must stay cheap to import.
"""

from __future__ import annotations

from typing import Any

from PIL import Image


class HorizontalFlip:
    """Always mirror a PIL image left-right (the deterministic half of ``RandomHorizontalFlip``)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _to_tensor_types() -> tuple[type, ...]:
    """Transform classes that turn a PIL image into a tensor (the flip must come before them)."""
    import torchvision.transforms as T  # noqa: PLC0415

    types: list[type] = [T.ToTensor, T.PILToTensor]
    try:
        from torchvision.transforms import v2  # noqa: PLC0415

        types += [v2.ToImage, v2.PILToTensor]
        if hasattr(v2, "ToTensor"):
            types.append(v2.ToTensor)
    except ImportError:
        pass
    return tuple(types)


def _steps(preprocess: Any) -> list[Any]:
    steps = getattr(preprocess, "transforms", None)
    if not isinstance(steps, (list, tuple)):
        raise TypeError(f"expected a torchvision Compose, got {type(preprocess).__name__}")
    return list(steps)


def _tensor_position(steps: list[Any]) -> int:
    types = _to_tensor_types()
    for i, step in enumerate(steps):
        if isinstance(step, types):
            return i
    raise ValueError("preprocess has no PIL-to-tensor step (ToTensor) to insert the flip before")


def _with_step(preprocess: Any, step: Any) -> Any:
    """A new Compose with ``step`` inserted right before the PIL-to-tensor conversion."""
    import torchvision.transforms as T  # noqa: PLC0415

    steps = _steps(preprocess)
    i = _tensor_position(steps)
    return T.Compose(steps[:i] + [step] + steps[i:])


def train_transform(preprocess: Any, flip_probability: float = 0.5) -> Any:
    """The official training transform: ``preprocess`` with ``RandomHorizontalFlip`` before ``ToTensor``."""
    import torchvision.transforms as T  # noqa: PLC0415

    return _with_step(preprocess, T.RandomHorizontalFlip(p=flip_probability))


def view_transform(preprocess: Any, flipped: bool) -> Any:
    """One fixed view of the training transform: the eval preprocess, mirrored when ``flipped``.

    ``view_transform(p, True)(img)`` equals ``view_transform(p, False)(img).flip(-1)`` exactly, because the
    mirror is applied after resizing and cropping and the remaining steps act per pixel.
    """
    import torchvision.transforms as T  # noqa: PLC0415

    if flipped:
        return _with_step(preprocess, HorizontalFlip())
    return T.Compose(_steps(preprocess))
