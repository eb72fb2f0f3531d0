"""Which runs use the frozen-feature cache, and getting their features (stored, shared or built)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from clapray.config import RunConfig
from clapray.features.cache import FeatureStore, ImageFeatures, cache_key, encode_benchmark, load_or_build
from clapray.features.fingerprint import feature_fingerprint
from clapray.features.groups import feature_group, uses_feature_cache  # noqa: F401 - their former home
from clapray.progress import ProgressHook


def feature_key(cfg: RunConfig, backbone: Any, benchmark: Any) -> tuple[str, dict[str, Any]]:
    """``(key, fingerprint)`` of the embeddings ``backbone`` gives ``benchmark`` under ``cfg``."""
    from clapray.builders import resolve_precision, resolve_pretrained

    fingerprint = feature_fingerprint(cfg, resolve_pretrained(cfg), resolve_precision(cfg, backbone.device),
                                      benchmark, backbone.preprocess)
    return cache_key(fingerprint), fingerprint


def features_for(cfg: RunConfig, backbone: Any, benchmark: Any, store_root: str | None = None,
                 log: Callable[[str], None] | None = None, progress: ProgressHook | None = None
                 ) -> tuple[ImageFeatures, bool]:
    """``(features, built)`` for ``cfg``'s benchmark: from ``store_root`` if stored and intact, else
    encoded (and stored there, when given). Without a store they live in memory for this run only.
    ``progress`` hears of every encoded batch (:mod:`clapray.progress`)."""
    key, fingerprint = feature_key(cfg, backbone, benchmark)
    batch = max(cfg.eval.batch_size or 0, 256)

    def build() -> ImageFeatures:
        return encode_benchmark(backbone, benchmark, key, batch_size=batch, num_workers=cfg.data.num_workers,
                                progress=progress)

    if store_root is None:
        return build(), True
    return load_or_build(FeatureStore(store_root), key, fingerprint, build, log=log)


def to_shareable(features: ImageFeatures) -> tuple[np.ndarray, int, str]:
    """A plain (array, n_train, key) tuple: numpy arrays travel through Ray's object store zero-copy."""
    return features.to_array(), int(features.train.shape[1]), features.key


def from_shareable(shared: tuple[np.ndarray, int, str]) -> ImageFeatures:
    """The inverse of :func:`to_shareable`; the array may be a read-only view of shared memory."""
    array, n_train, key = shared
    with warnings.catch_warnings():
        # torch warns that the buffer is read-only; nothing ever writes to the features.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return ImageFeatures.from_array(array, n_train, key)


def build_shareable(cfg: RunConfig, store_root: str, progress_file: str | None = None
                    ) -> tuple[tuple[np.ndarray, int, str], bool]:
    """Load or build ``cfg``'s features in ``store_root``; ``(shareable, built)`` (a Ray task's body).
    Encoding writes heartbeats to ``progress_file`` (:mod:`clapray.progress`) when given."""
    from clapray.builders import build_backbone, build_benchmark_from_config, resolve_device
    from clapray.progress import FileSink, Throttled

    backbone = build_backbone(cfg, resolve_device(cfg))
    benchmark = build_benchmark_from_config(cfg)
    progress = Throttled(FileSink(progress_file), num_tasks=0) if progress_file else None
    features, built = features_for(cfg, backbone, benchmark, store_root=store_root, progress=progress)
    return to_shareable(features), built
