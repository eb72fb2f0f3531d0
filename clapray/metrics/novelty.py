"""Post-hoc novel data detection (PhNDD, §13.6): energy scores, AUROC, AUPR, FPR at 95 % TPR."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from clapray.metrics.inputs import ArrayLike, scores_2d, to_numpy


def energy_score(logits: ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy: ``s_i = T · logsumexp_c(logits[i, c] / T)`` (higher = in-distribution).

    Args:
        logits: ``[N, C]`` logits over the seen classes (mean over model samples for CLAP).
        temperature: ``T > 0``; the method uses 1.

    Returns:
        ``[N]`` float64 scores.
    """
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature!r}")
    z = scores_2d(logits, "logits").astype(np.float64) / temperature
    peak = z.max(axis=1, keepdims=True)
    # Subtracting the row maximum keeps exp() from overflowing.
    lse = peak[:, 0] + np.log(np.exp(z - peak).sum(axis=1))
    return temperature * lse


@dataclass(frozen=True)
class NoveltyDetectionMetrics:
    """Detection of novel (OOD) data from a confidence score, ID = positive class (fractions).

    Attributes:
        auroc: area under the ROC curve (ties count one half), = sklearn ``roc_auc_score``.
        aupr: average precision with ID positive, = sklearn ``average_precision_score``.
        fpr95: FPR at the threshold whose TPR is nearest to 0.95 (ties towards higher TPR), the rule of the
            energy-OOD ``fpr_and_fdr_at_recall`` used by the reference code, and what ``fpr95`` means
            everywhere in clapray (results store, reports). It may settle on a TPR below 0.95 (a lower FPR
            than ``fpr95_at_least``) and, among thresholds with equal TPR, takes the lowest threshold
            (highest FPR); use it to compare with published numbers.
        fpr95_at_least: the textbook rule, the smallest FPR on OOD among thresholds whose TPR on ID is
            >= 0.95 (sklearn ``roc_curve`` with ``drop_intermediate=False``).
    """

    auroc: float
    aupr: float
    fpr95: float
    fpr95_at_least: float


def _binary_curve(id_scores: ArrayLike, ood_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Cumulative true / false positives at every distinct threshold, highest threshold first.

    Thresholds are the distinct score values; at threshold s everything with score >= s is called
    ID, so tied scores enter together (sklearn's convention). Returns ``tps [K]``, ``fps [K]``,
    the number of ID samples P and of OOD samples N.
    """
    pos = to_numpy(id_scores, "id_scores").astype(np.float64).ravel()
    neg = to_numpy(ood_scores, "ood_scores").astype(np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"need ID and OOD scores, got {pos.size} ID and {neg.size} OOD samples")
    scores = np.concatenate([pos, neg])
    if not np.all(np.isfinite(scores)):
        raise ValueError("id_scores / ood_scores must be finite")
    is_pos = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(scores, kind="stable")[::-1]
    scores, is_pos = scores[order], is_pos[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(is_pos)[last_of_group]
    fps = (last_of_group + 1) - tps
    return tps, fps, pos.size, neg.size


def fpr_at_tpr(
    id_scores: ArrayLike,
    ood_scores: ArrayLike,
    tpr: float = 0.95,
    rule: Literal["nearest", "at_least"] = "nearest",
) -> float:
    """False-positive rate on OOD at a target true-positive rate on ID (ID = positive, higher = ID).

    * ``rule="nearest"`` (clapray's ``fpr95``, the reference code's rule): FPR at the threshold (among those
      up to the first reaching TPR = 1) with ``|TPR(s) - tpr|`` smallest; on equal distance the higher-TPR
      (lower-threshold) one wins.
    * ``rule="at_least"`` (the textbook rule): ``min { FPR(s) : TPR(s) >= tpr }`` over thresholds s.

    Args:
        id_scores: ``[N_id]`` scores of in-distribution samples.
        ood_scores: ``[N_ood]`` scores of novel samples.
        tpr: target TPR in ``(0, 1]``.
        rule: see above.
    """
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr: expected a value in (0, 1], got {tpr!r}")
    tps, fps, n_pos, n_neg = _binary_curve(id_scores, ood_scores)
    return _fpr_at_tpr(tps, fps, n_pos, n_neg, tpr, rule)


def _fpr_at_tpr(tps: np.ndarray, fps: np.ndarray, n_pos: int, n_neg: int, tpr: float, rule: str) -> float:
    recall = tps / n_pos
    if rule == "at_least":
        k = int(np.argmax(recall >= tpr))  # recall ends at 1, so some threshold qualifies
    elif rule == "nearest":
        full = int(np.searchsorted(tps, n_pos))  # first threshold reaching full recall
        distance = np.abs(recall[: full + 1] - tpr)
        k = full - int(np.argmin(distance[::-1]))  # argmin keeps the first, i.e. highest-recall, tie
    else:
        raise ValueError(f"rule: expected 'at_least' or 'nearest', got {rule!r}")
    return float(fps[k] / n_neg)


def novelty_detection_metrics(id_scores: ArrayLike, ood_scores: ArrayLike) -> NoveltyDetectionMetrics:
    """AUROC, AUPR and FPR@95%TPR for separating ID (positive) from OOD samples (§13.6).

    With thresholds at the distinct score values (ties enter together), ``TPR_k = tps_k / P``,
    ``FPR_k = fps_k / N``, ``precision_k = tps_k / (tps_k + fps_k)``:

    * ``auroc = Σ_k (FPR_k - FPR_{k-1}) (TPR_k + TPR_{k-1}) / 2`` (trapezoids from (0, 0));
    * ``aupr = Σ_k (TPR_k - TPR_{k-1}) precision_k`` (average precision, no interpolation);
    * ``fpr95`` / ``fpr95_at_least``: :func:`fpr_at_tpr` with rules ``"nearest"`` / ``"at_least"``.

    Args:
        id_scores: ``[N_id]`` scores (higher = more in-distribution), e.g. :func:`energy_score`.
        ood_scores: ``[N_ood]`` scores of novel samples.
    """
    tps, fps, n_pos, n_neg = _binary_curve(id_scores, ood_scores)
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    precision = tps / (tps + fps)
    aupr = float(np.sum(np.diff(tpr) * precision))
    return NoveltyDetectionMetrics(
        auroc=auroc,
        aupr=aupr,
        fpr95=_fpr_at_tpr(tps, fps, n_pos, n_neg, 0.95, "nearest"),
        fpr95_at_least=_fpr_at_tpr(tps, fps, n_pos, n_neg, 0.95, "at_least"),
    )


def phndd_at_step(
    logits_id: ArrayLike,
    logits_ood: ArrayLike,
    n_seen_classes: int | None = None,
    temperature: float = 1.0,
) -> NoveltyDetectionMetrics:
    """PhNDD at one step: energy scores of seen-task (ID) and future-task (OOD) test images.

    ``novelty_detection_metrics(energy_score(logits_id[:, :K]), energy_score(logits_ood[:, :K]))``
    with ``K = n_seen_classes`` (all columns when ``None``): the score only uses the classes seen so
    far.

    Args:
        logits_id: ``[N_id, C]`` logits of test images from tasks 0..t.
        logits_ood: ``[N_ood, C]`` logits of test images from tasks t+1..T-1.
        n_seen_classes: number of leading columns that belong to seen classes.
        temperature: energy temperature (1 in the method).
    """
    lid = scores_2d(logits_id, "logits_id")
    lood = scores_2d(logits_ood, "logits_ood")
    if n_seen_classes is not None:
        k = int(n_seen_classes)
        if not 1 <= k <= min(lid.shape[1], lood.shape[1]):
            raise ValueError(
                f"n_seen_classes: expected 1 <= K <= number of logit columns "
                f"({lid.shape[1]} ID, {lood.shape[1]} OOD), got {n_seen_classes}"
            )
        lid, lood = lid[:, :k], lood[:, :k]
    elif lid.shape[1] != lood.shape[1]:
        raise ValueError(f"logits_id has {lid.shape[1]} classes but logits_ood has {lood.shape[1]}")
    return novelty_detection_metrics(energy_score(lid, temperature), energy_score(lood, temperature))
