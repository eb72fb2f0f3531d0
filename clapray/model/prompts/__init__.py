"""Prompt variants (§3): the registry and every registered variant.

Importing this package registers handcrafted, zeroshot, coop, cocoop, maple and attriclip in
:data:`PROMPT_REGISTRY`; :func:`build_prompt_variant` makes one for a backbone and a scenario's classes.
"""

from clapray.model.prompts.base import (
    PHASES,
    PROMPT_REGISTRY,
    PromptText,
    PromptVariant,
    build_prompt_variant,
    register_variant,
    variant_class,
)
from clapray.model.prompts.towers import TowerDims
# Registration order is the order of config.PROMPT_VARIANTS (tables and benchmarks list variants in it).
from clapray.model.prompts import handcrafted, coop, maple, attriclip, cocoop, zeroshot  # noqa: F401, I001

__all__ = [
    "PHASES",
    "PROMPT_REGISTRY",
    "PromptText",
    "PromptVariant",
    "TowerDims",
    "build_prompt_variant",
    "register_variant",
    "variant_class",
]
