"""The frozen-feature cache: image embeddings computed once and shared by every trial of a sweep."""

from clapray.features.cache import (
    FeatureStore,
    ImageFeatures,
    cache_key,
    encode_benchmark,
    load_or_build,
)
from clapray.features.fingerprint import feature_fingerprint

__all__ = ["FeatureStore", "ImageFeatures", "cache_key", "encode_benchmark", "feature_fingerprint", "load_or_build"]
