"""The frozen-feature cache: image embeddings computed once and shared by every trial of a sweep.

The names below are loaded on first use, so that importing a torch-free submodule (``groups``, used by
the sweep's trial drivers) does not import torch through this package."""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"FeatureStore": "cache", "ImageFeatures": "cache", "cache_key": "cache", "encode_benchmark": "cache",
          "load_or_build": "cache", "feature_fingerprint": "fingerprint"}

__all__ = ["FeatureStore", "ImageFeatures", "cache_key", "encode_benchmark", "feature_fingerprint", "load_or_build"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"clapray.features.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'clapray.features' has no attribute {name!r}")
