"""Class names, prompt templates and split lists shipped as package data (``clapray/data/files``).

See ``files/ORIGIN.md`` for where every file comes from. The 80 CLIP ImageNet templates used for
ImageNet100 and ImageNet-R are not duplicated here: they are read from the installed ``open_clip``
package (``open_clip/zero_shot_metadata.py``, ``OPENAI_IMAGENET_TEMPLATES``).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from importlib import resources
from types import ModuleType

from clapray.errors import UserError

# The 18 CIFAR templates are in files/templates.json; the two-template lists below come from the
# official (compiled) CUB and VTAB loaders (method reference §12.3).
CUB_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}, a type of bird.",
    "a photo of the {}, a type of bird.",
)
VTAB_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
)

NUM_IMAGENET_TEMPLATES = 80


def read_package_text(name: str) -> str:
    """Text of ``files/<name>``; ``.gz`` files are decompressed."""
    resource = resources.files("clapray.data").joinpath("files", name)
    data = resource.read_bytes()
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8")


@functools.cache
def _labels() -> dict[str, list[str]]:
    return json.loads(read_package_text("labels.json"))


@functools.cache
def _templates() -> dict[str, list[str]]:
    return json.loads(read_package_text("templates.json"))


def class_names(key: str) -> tuple[str, ...]:
    """Official class names of one dataset (``labels.json`` key), with ``_`` shown as a space.

    The method writes every name into its prompts with underscores replaced by spaces (reference §3.1),
    so the benchmark stores them in that form: ``great_white_shark`` -> ``great white shark``.
    """
    return tuple(name.replace("_", " ") for name in _labels()[key])


def cifar_templates() -> tuple[str, ...]:
    """The 18 CIFAR templates of the official code (``templates.json["cifar224"]``)."""
    return tuple(_templates()["cifar224"])


@functools.cache
def imagenet100_wnids() -> tuple[str, ...]:
    """WordNet ids of ImageNet-1k classes 0-99 in class-id order (n01440764 tench ... n01855672 goose)."""
    return tuple(read_package_text("imagenet100_wnids.txt").split())


def _load_open_clip_metadata() -> ModuleType:
    """Load ``open_clip/zero_shot_metadata.py`` without importing the ``open_clip`` package.

    The metadata module is plain data (no imports), while ``import open_clip`` pulls in torch, timm and
    the model registry and takes seconds; building a benchmark must stay cheap.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the 80 CLIP ImageNet prompt templates come from open_clip: pip install open_clip_torch"
        )
    for location in spec.submodule_search_locations:
        path = f"{location}/zero_shot_metadata.py"
        module_spec = importlib.util.spec_from_file_location("_clapray_open_clip_zero_shot_metadata", path)
        if module_spec is None or module_spec.loader is None:
            continue
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except FileNotFoundError:
            continue
        return module
    # An unusual installation (e.g. zipped): fall back to a regular import.
    import open_clip.zero_shot_metadata as module  # noqa: PLC0415

    return module


@functools.cache
def imagenet_templates() -> tuple[str, ...]:
    """The 80 CLIP ImageNet templates as ``str.format`` patterns (``"a bad photo of a {}."``).

    open_clip stores them as one-argument functions; applying each to ``"{}"`` gives the pattern. The
    official ImageNet-R module lists the same 80 strings in another order; the order is irrelevant to the
    method, which only averages (and takes variances) over templates (reference §3.1).
    """
    metadata = _load_open_clip_metadata()
    templates = tuple(fn("{}") for fn in metadata.OPENAI_IMAGENET_TEMPLATES)
    if len(templates) != NUM_IMAGENET_TEMPLATES or any(t.count("{}") != 1 for t in templates):
        raise UserError(
            f"open_clip's OPENAI_IMAGENET_TEMPLATES changed: expected {NUM_IMAGENET_TEMPLATES} "
            f"one-slot templates, got {len(templates)}"
        )
    return templates
