"""What frozen image embeddings depend on, as a JSON-able mapping (the cache key is its hash)."""

from __future__ import annotations

import os
from typing import Any

import torch

from clapray.config import RunConfig
from clapray.features.cache import file_digest


def weights_identity(pretrained: str | None) -> str | None:
    """A tag as is; a local file by its content hash (so a replaced checkpoint never hits a stale entry)."""
    if pretrained is None or not os.path.isfile(os.path.expanduser(pretrained)):
        return pretrained
    return "sha256:" + file_digest(os.path.expanduser(pretrained))


def feature_fingerprint(cfg: RunConfig, pretrained: str | None, precision: str, benchmark: Any,
                        preprocess: Any) -> dict[str, Any]:
    """Backbone (name, weights, precision), dataset content and split, preprocessing, views, torch.

    ``pretrained`` is the resolved tag or path actually loaded. Random-init backbones are drawn from
    seed 0 (see :func:`clapray.builders.build_backbone`), so the model name identifies them too.
    """
    return {
        "model": cfg.backbone.model,
        "weights": weights_identity(pretrained),
        "precision": precision,
        "benchmark": benchmark.fingerprint(),
        "n_train": len(benchmark.train),
        "n_test": len(benchmark.test),
        "preprocess": repr(preprocess),
        "views": ["original", "flipped"],
        # Kernels change between releases; embeddings equal "up to float tolerance" only within one.
        "torch": torch.__version__.split("+")[0],
    }
