"""Straightforward transliterations of the official code's selection loops, for tests to compare against."""

from __future__ import annotations

import numpy as np


def official_herding(features: np.ndarray, labels: np.ndarray, k: int) -> dict[int, list[int]]:
    """The official ``HerdingExemplarsSelector`` loop over one pass of candidates (positions into it)."""
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    result = {}
    for c in np.unique(labels):
        cls_ind = np.flatnonzero(labels == c)
        mu = x[cls_ind].mean(axis=0)
        selected, selected_feat = [], []
        for step in range(k):
            sum_others = sum((f / (step + 1) for f in selected_feat), np.zeros(x.shape[1]))
            dist_min, new = np.inf, None
            for item in cls_ind:
                if item not in selected:
                    dist = np.linalg.norm(mu - x[item] / (step + 1) - sum_others)
                    if dist < dist_min:
                        dist_min, new = dist, item
            selected.append(new)
            selected_feat.append(x[new])
        result[int(c)] = selected
    return result
