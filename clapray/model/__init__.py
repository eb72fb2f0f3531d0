"""Model side of clapray: the frozen open_clip backbone and its text features.

Importing this package registers the bundled ``clapray-*`` open_clip configs (tiny models for tests
and benchmarks) with open_clip. It imports neither Ray nor Optuna.
"""

from clapray.model.backbone import (
    CONFIG_DIR,
    PRECISIONS,
    Backbone,
    bundled_model_names,
    load_backbone,
    register_model_configs,
)
from clapray.model.text_features import (
    TemplateFeatures,
    class_prompt,
    dedupe_templates,
    format_prompts,
    template_text_features,
)

register_model_configs()

__all__ = [
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
