"""Model side of clapray: the frozen open_clip backbone, its text features, VGA, adapters and the CLAP head.

Names are imported on first use (PEP 562), so ``clapray.model.prompts.catalog`` stays importable without
torch; :func:`load_backbone` registers the bundled ``clapray-*`` open_clip configs (tiny models for tests
and benchmarks). Nothing here imports Ray or Optuna.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CONFIG_DIR": "clapray.model.backbone",
    "PRECISIONS": "clapray.model.backbone",
    "Backbone": "clapray.model.backbone",
    "bundled_model_names": "clapray.model.backbone",
    "load_backbone": "clapray.model.backbone",
    "register_model_configs": "clapray.model.backbone",
    "TemplateFeatures": "clapray.model.text_features",
    "class_prompt": "clapray.model.text_features",
    "dedupe_templates": "clapray.model.text_features",
    "format_prompts": "clapray.model.text_features",
    "template_text_features": "clapray.model.text_features",
}

__all__ = [  # noqa: F822 (resolved through __getattr__)
    "CONFIG_DIR",
    "PRECISIONS",
    "Backbone",
    "TemplateFeatures",
    "bundled_model_names",
    "class_prompt",
    "dedupe_templates",
    "format_prompts",
    "load_backbone",
    "register_model_configs",
    "template_text_features",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
