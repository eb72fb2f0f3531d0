"""Prompt variants (§3): the catalogue, the registry of implementations, and every variant.

:mod:`clapray.model.prompts.catalog` declares every variant without importing torch; each implementation
module registers its class (:func:`register_variant`) and :func:`variant_class` imports it on first use.
:data:`PROMPT_REGISTRY` lists every implementation in catalogue order once :func:`load_all_variants` ran;
:func:`build_prompt_variant` makes one for a backbone and a scenario's classes. Names are imported on
first use (PEP 562), so the catalogue is importable without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from clapray.model.prompts.catalog import VARIANT_NAMES, VARIANTS, VariantSpec, variant_spec

_EXPORTS = {
    "PROMPT_REGISTRY": "clapray.model.prompts.base",
    "PromptText": "clapray.model.prompts.base",
    "PromptVariant": "clapray.model.prompts.base",
    "build_prompt_variant": "clapray.model.prompts.base",
    "register_variant": "clapray.model.prompts.base",
    "variant_class": "clapray.model.prompts.base",
    "TowerDims": "clapray.model.prompts.towers",
}

__all__ = [  # noqa: F822 (the names of _EXPORTS resolve through __getattr__)
    "PROMPT_REGISTRY",
    "VARIANTS",
    "VARIANT_NAMES",
    "PromptText",
    "PromptVariant",
    "TowerDims",
    "VariantSpec",
    "build_prompt_variant",
    "load_all_variants",
    "register_variant",
    "variant_class",
    "variant_spec",
]


def load_all_variants() -> dict[str, Any]:
    """Import every implementation; returns the registry ``{name: class}`` in catalogue order."""
    base = importlib.import_module("clapray.model.prompts.base")
    return {name: base.variant_class(name) for name in VARIANTS}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
