"""Which runs share one frozen-feature cache entry, decided from the run config alone (no torch, no data):
the sweep driver groups cells with it and every trial driver finds its shared entry with it."""

from __future__ import annotations

from clapray.config import RunConfig

__all__ = ["feature_group", "uses_feature_cache"]


def uses_feature_cache(cfg: RunConfig) -> bool:
    """``data.feature_cache`` on and a variant that declares its image tower frozen (all but MaPLe)."""
    from clapray.model.prompts.catalog import variant_spec

    return cfg.data.feature_cache and variant_spec(cfg.method.variant).image_tower_frozen


def feature_group(cfg: RunConfig) -> str:
    """What decides a run's embeddings, as text: runs with equal groups share one cache entry.

    Coarser than the cache key (which also needs the loaded backbone and benchmark), so a sweep driver
    can group cells without loading anything; a group maps to exactly one key.
    """
    import dataclasses
    import json

    data = cfg.data
    return json.dumps({
        "backbone": dataclasses.asdict(cfg.backbone), "device": cfg.device,
        "data": {"dataset": data.dataset, "root": data.root, "sequence": list(data.sequence),
                 "shapes": dataclasses.asdict(data.shapes)},
    }, sort_keys=True)
