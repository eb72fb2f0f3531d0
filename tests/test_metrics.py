"""Tests for clapray.metrics: hand-computed cases plus agreement with torchmetrics and scikit-learn."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from clapray import metrics as M

sklearn_metrics = pytest.importorskip("sklearn.metrics")
tm_cls = pytest.importorskip("torchmetrics.functional.classification")

NAN = float("nan")

# A 3-task accuracy matrix (percent). The upper triangle holds accuracies on not-yet-trained tasks:
# only forward transfer may read it, so any off-by-one that touches it changes the results below.
ACC = np.array(
    [
        [90.0, 20.0, 10.0],
        [60.0, 80.0, 30.0],
        [50.0, 40.0, 70.0],
    ]
)
# By hand (0-indexed steps):
#   A_0 = 90, A_1 = (60 + 80) / 2 = 70, A_2 = (50 + 40 + 70) / 3 = 160 / 3
#   Avg = (90 + 70 + 160/3) / 3 = 640 / 9
#   BwT_1 = 60 - 90 = -30, BwT_2 = ((50 - 90) + (40 - 80)) / 2 = -40
A_HAND = [90.0, 70.0, 160.0 / 3.0]
AVG_HAND = 640.0 / 9.0
BWT_HAND = [NAN, -30.0, -40.0]


# --------------------------------------------------------------------------------------------------
# Accuracy matrix summaries
# --------------------------------------------------------------------------------------------------


def test_step_and_last_accuracy_hand_case():
    np.testing.assert_allclose(M.step_accuracies(ACC), A_HAND)
    for t, expected in enumerate(A_HAND):
        assert M.last_accuracy(ACC, step=t) == pytest.approx(expected)
    assert M.last_accuracy(ACC) == pytest.approx(160.0 / 3.0)
    assert M.average_incremental_accuracy(ACC) == pytest.approx(AVG_HAND)


def test_backward_transfer_hand_case():
    assert math.isnan(M.backward_transfer(ACC, step=0))
    assert M.backward_transfer(ACC, step=1) == pytest.approx(-30.0)
    assert M.backward_transfer(ACC) == pytest.approx(-40.0)
    np.testing.assert_allclose(M.step_backward_transfers(ACC), BWT_HAND)


def test_upper_triangle_is_ignored_by_accuracy_and_bwt():
    masked = np.where(np.tril(np.ones_like(ACC)) > 0, ACC, np.nan)
    np.testing.assert_allclose(M.step_accuracies(masked), A_HAND)
    assert M.average_incremental_accuracy(masked) == pytest.approx(AVG_HAND)
    assert M.backward_transfer(masked) == pytest.approx(-40.0)


def test_hand_values_reject_shifted_indexing():
    """The hand matrix is built so that the usual indexing mistakes give other numbers."""
    T = ACC.shape[0]

    shifted_last = {
        "divide by t instead of t+1": ACC[2, :3].sum() / 2,
        "exclude the current task": ACC[2, :2].mean(),
        "row t-1": ACC[1, :3].mean(),
        "column t instead of row t": ACC[:3, 2].mean(),
    }
    # Reading task t+1 (upper triangle) at step 1 instead of stopping at task t.
    assert ACC[1, :3].mean() != pytest.approx(A_HAND[1])
    for name, value in shifted_last.items():
        assert value != pytest.approx(A_HAND[2]), name
    shifted_bwt = {
        "include the diagonal": np.mean([ACC[2, j] - ACC[j, j] for j in range(3)]),
        "divide by t+1": sum(ACC[2, j] - ACC[j, j] for j in range(2)) / 3,
        "row t-1 against the diagonal": np.mean([ACC[1, j] - ACC[j, j] for j in range(1)]),
        "reference = first row": np.mean([ACC[2, j] - ACC[0, j] for j in range(2)]),
        "reference = acc[j+1, j]": np.mean([ACC[2, j] - ACC[j + 1, j] for j in range(2)]),
    }
    for name, value in shifted_bwt.items():
        assert value != pytest.approx(BWT_HAND[2]), name
    shifted_avg = {
        "Avg over t=1..T-1 only": np.mean(A_HAND[1:]),
        "mean of the lower triangle": ACC[np.tril_indices(T)].mean(),
        "mean of the whole matrix": ACC.mean(),
    }
    for name, value in shifted_avg.items():
        assert value != pytest.approx(AVG_HAND), name
    # ...and the implementation agrees with the hand values, not with any shifted variant.
    assert M.last_accuracy(ACC) == pytest.approx(A_HAND[2])
    assert M.backward_transfer(ACC) == pytest.approx(BWT_HAND[2])
    assert M.average_incremental_accuracy(ACC) == pytest.approx(AVG_HAND)


def test_reference_log_average_incremental_accuracy():
    """§16.3: the 10 per-step "Acc last" values of a CIFAR100 10x10 run give Avg 87.82, Last 84.64."""
    a_t = np.array([94.50, 89.60, 89.43, 87.85, 88.02, 86.93, 86.70, 85.38, 85.16, 84.64])
    T = a_t.size
    acc = np.full((T, T), np.nan)
    for t in range(T):
        # Unequal per-task accuracies whose mean over the seen tasks is A_t.
        wobble = np.linspace(-3.0, 3.0, t + 1) if t else np.zeros(1)
        acc[t, : t + 1] = a_t[t] + wobble - wobble.mean()
    assert M.average_incremental_accuracy(acc) == pytest.approx(87.82, abs=0.01)
    assert M.last_accuracy(acc) == pytest.approx(84.64, abs=1e-9)
    summary = M.summarize(acc)
    assert summary.avg == pytest.approx(87.82, abs=0.01)
    np.testing.assert_allclose(summary.step_accuracies, a_t)


def test_weighted_accuracy_differs_with_unequal_task_sizes():
    sizes = np.array([100, 300, 600])
    # A^w_0 = 90, A^w_1 = (60*100 + 80*300)/400 = 75, A^w_2 = (50*100 + 40*300 + 70*600)/1000 = 59
    np.testing.assert_allclose(M.step_accuracies_weighted(ACC, sizes), [90.0, 75.0, 59.0])
    assert M.last_accuracy_weighted(ACC, sizes) == pytest.approx(59.0)
    assert M.last_accuracy_weighted(ACC, sizes, step=1) == pytest.approx(75.0)
    assert M.average_incremental_accuracy_weighted(ACC, sizes) == pytest.approx((90 + 75 + 59) / 3)
    assert M.last_accuracy_weighted(ACC, sizes) != pytest.approx(M.last_accuracy(ACC))


def test_weighted_equals_macro_with_equal_task_sizes():
    sizes = np.full(3, 250)
    np.testing.assert_allclose(M.step_accuracies_weighted(ACC, sizes), M.step_accuracies(ACC))
    assert M.average_incremental_accuracy_weighted(ACC, sizes) == pytest.approx(AVG_HAND)


def test_forward_transfer_hand_case():
    reference = np.array([NAN, 15.0, 40.0])  # b_0 unused
    # FWT = ((acc[0,1] - b_1) + (acc[1,2] - b_2)) / 2 = ((20 - 15) + (30 - 40)) / 2 = -2.5
    assert M.forward_transfer(ACC, reference) == pytest.approx(-2.5)
    # Plausible mistakes give other numbers on this matrix.
    assert np.mean([ACC[j, j] - reference[j] for j in (1, 2)]) == pytest.approx(47.5)  # after training
    assert np.mean([ACC[j, j - 1] - reference[j] for j in (1, 2)]) == pytest.approx(22.5)  # transposed
    assert np.mean([ACC[j - 1, j] - reference[j] for j in (1, 2)]) * 2 / 3 != pytest.approx(-2.5)  # / T
    assert math.isnan(M.forward_transfer(np.array([[0.7]]), np.array([NAN])))


def test_summarize_matches_the_individual_functions():
    summary = M.summarize(ACC)
    assert summary.n_tasks == 3
    assert summary.avg == pytest.approx(AVG_HAND)
    assert summary.last == pytest.approx(160.0 / 3.0)
    assert summary.bwt == pytest.approx(-40.0)
    assert summary.avg_weighted is None and summary.last_weighted is None
    assert set(summary.as_dict()) == {"avg", "last", "bwt"}
    weighted = M.summarize(ACC, n_test_per_task=[100, 300, 600])
    assert weighted.last_weighted == pytest.approx(59.0)
    assert weighted.avg_weighted == pytest.approx((90 + 75 + 59) / 3)
    assert weighted.as_dict()["last_weighted"] == pytest.approx(59.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.avg = 0.0  # type: ignore[misc]


def test_accuracy_matrix_functions_accept_tensors():
    acc_t = torch.tensor(ACC)
    assert M.average_incremental_accuracy(acc_t) == pytest.approx(AVG_HAND)
    assert M.backward_transfer(acc_t) == pytest.approx(-40.0)
    assert M.last_accuracy_weighted(acc_t, torch.tensor([100, 300, 600])) == pytest.approx(59.0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: M.last_accuracy(np.ones((2, 3))), "square"),
        (lambda: M.last_accuracy(np.ones(3)), "square"),
        (lambda: M.last_accuracy(ACC, step=3), "step"),
        (lambda: M.last_accuracy(ACC, step=-1), "step"),
        (lambda: M.backward_transfer(ACC, step=5), "step"),
        (lambda: M.last_accuracy(np.array([[1.0, NAN], [NAN, 1.0]])), r"acc\[1, 0\]"),
        (lambda: M.last_accuracy_weighted(ACC, [1, 2]), "n_test_per_task"),
        (lambda: M.forward_transfer(ACC, [1.0, 2.0]), "reference"),
        (lambda: M.forward_transfer(np.where(np.tril(ACC) > 0, ACC, NAN), [0, 1, 2]), r"acc\[0, 1\]"),
    ],
)
def test_accuracy_matrix_validation(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------------------------------
# Accuracies from predictions
# --------------------------------------------------------------------------------------------------


def test_top1_accuracy_from_logits_and_labels():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    targets = np.array([1, 0, 0, 1])
    assert M.top1_accuracy(logits, targets) == pytest.approx(0.5)
    assert M.top1_accuracy(np.array([1, 0, 1, 0]), targets) == pytest.approx(0.5)
    assert M.top1_accuracy(torch.tensor(logits), torch.tensor(targets)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="samples"):
        M.top1_accuracy(logits, targets[:3])


def test_per_task_accuracy_and_matrix():
    task_of_class = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 2, 3, 3])
    targets = np.array([0, 0, 1, 2, 3, 2])
    # task 0: samples 0-2 (targets 0,0,1), correct 0 and 2 -> 2/3; task 1: samples 3-5, correct 3,4 -> 2/3;
    # task 2: no samples -> NaN
    row = M.per_task_accuracy(preds, targets, task_of_class)
    np.testing.assert_allclose(row, [2 / 3, 2 / 3, NAN])
    acc = M.stack_accuracy_rows([[0.9], [0.5, 0.7]])
    np.testing.assert_array_equal(np.isnan(acc), [[False, True], [False, False]])
    assert M.last_accuracy(acc) == pytest.approx(0.6)

    targets_per_task = [np.array([0, 0, 1, 1]), np.array([2, 3])]
    predictions = [
        [np.array([0, 0, 1, 0])],  # after step 0: task 0 only -> 3/4
        [np.array([0, 1, 1, 1]), np.array([[0, 0, 5.0, 1.0], [0, 0, 5.0, 1.0]])],  # 3/4, 1/2
    ]
    acc = M.accuracy_matrix(predictions, targets_per_task)
    np.testing.assert_allclose(acc, [[0.75, NAN], [0.75, 0.5]])
    assert M.backward_transfer(acc) == pytest.approx(0.0)


def test_task_aware_accuracy_hand_case():
    task_of_class = np.array([0, 0, 1, 1])
    logits = np.array(
        [
            [1.0, 5.0, 3.0, 0.0],  # target 2: CIL predicts 1 (wrong), within task 1 predicts 2 (right)
            [2.0, 1.0, 9.0, 0.0],  # target 0: CIL predicts 2 (wrong), within task 0 predicts 0 (right)
            [0.0, 0.0, 5.0, 1.0],  # target 3: both predict 2 (wrong)
        ]
    )
    targets = np.array([2, 0, 3])
    assert M.top1_accuracy(logits, targets) == pytest.approx(0.0)
    np.testing.assert_array_equal(M.task_aware_predictions(logits, targets, task_of_class), [2, 0, 2])
    assert M.task_aware_accuracy(logits, targets, task_of_class) == pytest.approx(2 / 3)
    from_tensors = M.task_aware_accuracy(torch.tensor(logits), torch.tensor(targets), task_of_class)
    assert from_tensors == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


def _torchmetrics_ece(probs: np.ndarray, targets: np.ndarray, n_bins: int) -> float:
    probs_t = torch.from_numpy(probs)
    return float(
        tm_cls.multiclass_calibration_error(
            probs_t, torch.from_numpy(targets), num_classes=probs.shape[1], n_bins=n_bins, norm="l1"
        )
    )


def _random_probs(seed: int, n: int, n_classes: int, n_bins: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Dirichlet probabilities plus rows whose top confidence is exactly a bin edge or exactly 1."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(n_classes, 0.3), size=n).astype(dtype)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32).numpy()
    usable = [e for e in edges if e > 1.0 / n_classes]  # an edge can only be a max prob above 1/C
    rows = []
    for e in usable:
        row = np.full(n_classes, (1 - e) / (n_classes - 1), dtype=np.float32)
        row[rng.integers(n_classes)] = e
        rows.append(row.astype(dtype))
    if dtype == np.float64:
        # k / n_bins computed in float64 may round onto either side of the float32 edge.
        for k in range(1, n_bins + 1):
            e = k / n_bins
            if e > 1.0 / n_classes:
                row = np.full(n_classes, (1 - e) / (n_classes - 1))
                row[rng.integers(n_classes)] = e
                rows.append(row)
    probs = np.concatenate([probs, np.stack(rows)]) if rows else probs
    targets = np.where(
        rng.random(probs.shape[0]) < 0.6, probs.argmax(axis=1), rng.integers(n_classes, size=probs.shape[0])
    )
    perm = rng.permutation(probs.shape[0])
    return probs[perm], targets[perm].astype(np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [1, 7, 10, 15, 20])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ece_matches_torchmetrics(seed, n_bins, dtype):
    probs, targets = _random_probs(seed, n=300, n_classes=20, n_bins=n_bins, dtype=dtype)
    ours = M.expected_calibration_error(probs, targets, n_bins=n_bins)
    assert ours == pytest.approx(_torchmetrics_ece(probs, targets, n_bins), abs=1e-6)
    from_tensors = M.expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(targets), n_bins)
    assert from_tensors == pytest.approx(ours, abs=1e-12)


def test_ece_from_logits_matches_torchmetrics():
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(200, 10)) * 3).astype(np.float32)
    targets = rng.integers(10, size=200)
    ours = M.expected_calibration_error(logits, targets, from_logits=True)
    # torchmetrics applies softmax itself when values fall outside [0, 1]
    assert ours == pytest.approx(_torchmetrics_ece(logits, targets, 15), abs=1e-6)
    with pytest.raises(ValueError, match="from_logits"):
        M.expected_calibration_error(logits, targets)


def test_ece_hand_cases():
    # All predictions certain and right: 0.
    targets = np.array([0, 1, 2, 1])
    assert M.expected_calibration_error(np.eye(3)[targets], targets) == pytest.approx(0.0)
    # Constant confidence 0.8, half right: |0.5 - 0.8| = 0.3.
    probs = np.tile([0.8, 0.2], (10, 1))
    half = np.array([0, 1] * 5)
    assert M.expected_calibration_error(probs, half) == pytest.approx(0.3)
    assert M.per_batch_ece(probs, half, batch_size=2) == pytest.approx(0.3)
    # Confidence exactly 1.0 has a bin of its own: a wrong 1.0 and a right 0.95 give
    # 0.5 * |0 - 1| + 0.5 * |1 - 0.95| = 0.525 (one merged top bin would give |0.5 - 0.975| = 0.475).
    probs = np.array([[1.0, 0.0, 0.0], [0.95, 0.05, 0.0]])
    assert M.expected_calibration_error(probs, np.array([1, 0])) == pytest.approx(0.525)


def test_calibration_bins_layout():
    probs = np.array([[1.0, 0.0], [0.95, 0.05], [0.55, 0.45], [0.6, 0.4]])
    targets = np.array([1, 0, 0, 1])
    bins = M.calibration_bins(probs, targets, n_bins=4)
    np.testing.assert_allclose(bins.edges, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(bins.lower, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(bins.upper, [0.25, 0.5, 0.75, 1.0, 1.0])
    np.testing.assert_array_equal(bins.count, [0, 0, 2, 1, 1])
    np.testing.assert_allclose(bins.confidence, [NAN, NAN, 0.575, 0.95, 1.0])
    np.testing.assert_allclose(bins.accuracy, [NAN, NAN, 0.5, 1.0, 0.0])
    # ECE = 2/4 * 0.075 + 1/4 * 0.05 + 1/4 * 1.0
    assert bins.ece == pytest.approx(0.5 * 0.075 + 0.25 * 0.05 + 0.25 * 1.0)
    assert bins.ece == pytest.approx(_torchmetrics_ece(probs, targets, 4), abs=1e-6)


@pytest.mark.parametrize("n, batch_size", [(100, 32), (64, 32), (7, 32), (50, 1)])
def test_per_batch_ece_is_mean_of_torchmetrics_per_batch(n, batch_size):
    probs, targets = _random_probs(11 + n, n=n, n_classes=10, n_bins=15, dtype=np.float32)
    probs, targets = probs[:n], targets[:n]
    expected = np.mean(
        [
            _torchmetrics_ece(probs[s : s + batch_size], targets[s : s + batch_size], 15)
            for s in range(0, n, batch_size)
        ]
    )
    assert M.per_batch_ece(probs, targets, batch_size=batch_size) == pytest.approx(expected, abs=1e-6)
    if n % batch_size and n > batch_size:
        # The partial last batch counts as one batch; dropping it would change the mean here.
        full = n - n % batch_size
        dropped = M.per_batch_ece(probs[:full], targets[:full], batch_size=batch_size)
        assert dropped != pytest.approx(expected, abs=1e-9)


def test_calibration_validation():
    probs = np.array([[0.7, 0.3]])
    with pytest.raises(ValueError, match="n_bins"):
        M.expected_calibration_error(probs, [0], n_bins=0)
    with pytest.raises(ValueError, match="batch_size"):
        M.per_batch_ece(probs, [0], batch_size=0)
    with pytest.raises(ValueError, match="samples"):
        M.expected_calibration_error(probs, [0, 1])


# --------------------------------------------------------------------------------------------------
# Novelty detection
# --------------------------------------------------------------------------------------------------


def _sklearn_reference(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    y = np.r_[np.ones(id_scores.size), np.zeros(ood_scores.size)]
    s = np.r_[id_scores, ood_scores]
    # Every threshold kept: dropping collinear points could remove the first one reaching 95% TPR.
    fpr, tpr, _ = sklearn_metrics.roc_curve(y, s, drop_intermediate=False)
    full = int(np.argmax(tpr >= 1.0))
    distance = np.abs(tpr[: full + 1] - 0.95)
    best = np.flatnonzero(distance == distance.min()).max()  # ties -> highest TPR
    return {
        "auroc": sklearn_metrics.roc_auc_score(y, s),
        "aupr": sklearn_metrics.average_precision_score(y, s),
        "fpr95_at_least": float(fpr[tpr >= 0.95].min()),
        "fpr95": float(fpr[best]),
    }


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_id, n_ood, decimals", [(37, 53, 1), (200, 150, 0), (20, 500, 1), (400, 60, 2)])
def test_novelty_detection_matches_sklearn(seed, n_id, n_ood, decimals):
    rng = np.random.default_rng(seed)
    # Rounding creates many ties, across and within the two groups.
    id_scores = np.round(rng.normal(1.0, 1.0, n_id), decimals)
    ood_scores = np.round(rng.normal(0.0, 1.0, n_ood), decimals)
    got = M.novelty_detection_metrics(id_scores, ood_scores)
    ref = _sklearn_reference(id_scores, ood_scores)
    assert got.auroc == pytest.approx(ref["auroc"], abs=1e-12)
    assert got.aupr == pytest.approx(ref["aupr"], abs=1e-12)
    assert got.fpr95_at_least == pytest.approx(ref["fpr95_at_least"], abs=1e-12)
    assert got.fpr95 == pytest.approx(ref["fpr95"], abs=1e-12)
    from_tensors = M.fpr_at_tpr(torch.tensor(id_scores), torch.tensor(ood_scores))
    assert from_tensors == pytest.approx(ref["fpr95"], abs=1e-12)


def test_novelty_detection_hand_cases():
    separated = M.novelty_detection_metrics([3.0, 4.0, 5.0], [0.0, 1.0, 2.0])
    assert (separated.auroc, separated.aupr, separated.fpr95, separated.fpr95_at_least) == (1.0, 1.0, 0.0, 0.0)
    # Ties: ID [1, 1], OOD [1, 0]. ROC pairs: two ties (1/2 each) and two wins -> AUROC 3/4; at the
    # threshold 1 both ID and one OOD are accepted: precision 2/3 at recall 1 -> AP 2/3, FPR 1/2.
    tied = M.novelty_detection_metrics([1.0, 1.0], [1.0, 0.0])
    assert tied.auroc == pytest.approx(0.75)
    assert tied.aupr == pytest.approx(2 / 3)
    assert tied.fpr95 == pytest.approx(0.5)
    # Reversed scores: ID always below OOD.
    reversed_ = M.novelty_detection_metrics([0.0, 1.0], [2.0, 3.0])
    assert reversed_.auroc == pytest.approx(0.0)
    assert reversed_.fpr95 == pytest.approx(1.0)


def test_fpr95_conventions_differ_on_small_sets():
    # 10 ID samples: TPR moves in steps of 0.1. TPR 0.9 is reached with no OOD accepted; TPR 1.0 only
    # together with the OOD sample tied at 0. ">= 95%" needs TPR 1.0 -> FPR 1/4; "nearest to 95%"
    # finds |0.9 - 0.95| < |1.0 - 0.95| in floating point and picks TPR 0.9 -> FPR 0.
    id_scores = np.r_[np.arange(10.0, 1.0, -1.0), 0.0]
    ood_scores = np.array([0.0, -1.0, -2.0, -3.0])
    got = M.novelty_detection_metrics(id_scores, ood_scores)
    assert got.fpr95_at_least == pytest.approx(0.25)
    assert got.fpr95 == pytest.approx(0.0)
    assert M.fpr_at_tpr(id_scores, ood_scores, tpr=0.9) == pytest.approx(0.0)
    assert M.fpr_at_tpr(id_scores, ood_scores, tpr=0.95, rule="at_least") == pytest.approx(0.25)
    # 20 ID samples: TPR 0.95 holds at two thresholds, before (FPR 0) and after (FPR 1/4) the OOD
    # sample scored 11. ">= 95%" takes the smallest FPR; "nearest" takes the lowest threshold.
    id_scores = np.r_[np.arange(30.0, 11.0, -1.0), 0.0]
    ood_scores = np.array([11.0, -5.0, -6.0, -7.0])
    got = M.novelty_detection_metrics(id_scores, ood_scores)
    assert got.fpr95_at_least == pytest.approx(0.0)
    assert got.fpr95 == pytest.approx(0.25)


def test_energy_score_and_phndd_at_step():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(30, 8)) * 10
    expected = torch.logsumexp(torch.from_numpy(logits), dim=1).numpy()
    np.testing.assert_allclose(M.energy_score(logits), expected, rtol=1e-12)
    np.testing.assert_allclose(
        M.energy_score(logits, temperature=2.0),
        2.0 * torch.logsumexp(torch.from_numpy(logits / 2.0), dim=1).numpy(),
    )
    assert np.all(np.isfinite(M.energy_score(np.array([[1000.0, 999.0], [-1000.0, -1001.0]]))))

    logits_id = rng.normal(size=(40, 12)) + np.r_[np.full(6, 2.0), np.zeros(6)]
    logits_ood = rng.normal(size=(25, 12))
    got = M.phndd_at_step(logits_id, logits_ood, n_seen_classes=6)
    ref = _sklearn_reference(
        torch.logsumexp(torch.from_numpy(logits_id[:, :6]), 1).numpy(),
        torch.logsumexp(torch.from_numpy(logits_ood[:, :6]), 1).numpy(),
    )
    assert got.auroc == pytest.approx(ref["auroc"], abs=1e-12)
    assert got.aupr == pytest.approx(ref["aupr"], abs=1e-12)
    assert got.fpr95 == pytest.approx(ref["fpr95"], abs=1e-12)
    # Using the unseen columns too changes the scores.
    assert M.phndd_at_step(logits_id, logits_ood).auroc != pytest.approx(got.auroc, abs=1e-12)


def test_novelty_detection_validation():
    with pytest.raises(ValueError, match="OOD"):
        M.novelty_detection_metrics([1.0, 2.0], [])
    with pytest.raises(ValueError, match="finite"):
        M.novelty_detection_metrics([1.0, NAN], [0.0])
    with pytest.raises(ValueError, match="rule"):
        M.fpr_at_tpr([1.0], [0.0], rule="closest")
    with pytest.raises(ValueError, match="n_seen_classes"):
        M.phndd_at_step(np.zeros((2, 3)), np.zeros((2, 3)), n_seen_classes=4)


# --------------------------------------------------------------------------------------------------
# Module hygiene
# --------------------------------------------------------------------------------------------------


def test_metrics_import_only_numpy_torch_the_stdlib_and_themselves():
    imported: set[str] = set()
    for path in Path(M.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
    outside = {m for m in imported if not m.startswith("clapray.metrics")} - {"clapray.task_result"}
    assert {m.split(".")[0] for m in outside} <= {"__future__", "collections", "dataclasses", "importlib", "typing",
                                                  "math", "numpy",
                                                  "torch"}, imported


def test_all_names_exist():
    for name in M.__all__:
        assert hasattr(M, name), name


def test_average_forgetting_against_the_best_earlier_accuracy():
    # Task 0 peaks after step 1 (95), so at step 2 its forgetting is 95 - 85 = 10, where BwT says 85 - 90.
    acc = np.array([[90.0, NAN, NAN], [95.0, 70.0, NAN], [85.0, 60.0, 50.0]])
    np.testing.assert_allclose(M.step_forgetting(acc), [NAN, 90.0 - 95.0, ((95.0 - 85.0) + (70.0 - 60.0)) / 2])
    assert M.average_forgetting(acc) == pytest.approx(10.0)
    assert M.backward_transfer(acc) == pytest.approx(((85.0 - 90.0) + (60.0 - 70.0)) / 2)
    assert math.isnan(M.average_forgetting(acc, step=0))
