"""Divergence wherever it appears (clapray.divergence): loss, gradients, parameters after a step, logits."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from clapray import divergence
from clapray.config import load_run_config, shipped_config_path
from clapray.learner import ContinualLearner, TrainingDiverged
from clapray.run import main

TINY = ["method.variant=handcrafted", "data.shapes.num_classes=4", "data.shapes.train_per_class=4",
        "data.shapes.test_per_class=2", "data.num_tasks=2", "optim.epochs=1", "optim.batch_size=8",
        "method.mc_samples_train=2", "method.mc_samples_eval=2", "method.vga.ff_dim=32",
        "budget.max_steps_per_task=1"]  # one step per phase: the first step is also the last


def learner(*overrides: str) -> ContinualLearner:
    return ContinualLearner(load_run_config(shipped_config_path("tiny"), [*TINY, *overrides]))


def poison_after_step(monkeypatch) -> None:
    """The optimiser step leaves the trained parameters infinite (as a huge step would), on the last step."""
    original = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(math.inf)
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step)


def test_the_checks():
    ok, bad = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.tensor([1.0, math.nan]))
    divergence.check_parameters([ok], "here")
    for value in (math.nan, math.inf):
        with pytest.raises(TrainingDiverged, match="non-finite loss"):
            divergence.check_loss(value, "here")
    with pytest.raises(TrainingDiverged, match="non-finite parameters after the optimiser step at here"):
        divergence.check_parameters([ok, bad], "here")
    ok.grad, bad.grad = torch.zeros(3), torch.tensor([math.inf, 0.0])
    with pytest.raises(TrainingDiverged, match="non-finite gradients at here"):
        divergence.check_gradients([ok, bad], "here")
    with pytest.raises(TrainingDiverged, match="non-finite logits at here"):
        divergence.check_logits(torch.tensor([[0.0, -math.inf]]), "here")
    divergence.check_logits(torch.tensor([[3e38, -3e38]]), "here")  # huge but finite is not divergence
    # Data-parallel ranks decide together: a finite loss on this rank still stops if another rank's is not.
    with pytest.raises(TrainingDiverged):
        divergence.check_loss(1.0, "here", agree=lambda finite: False)


def test_parameters_made_infinite_by_the_last_step_are_caught_before_evaluation(monkeypatch):
    """The issue's case: the loss of the last step was finite, the step was not. Without the parameter check
    the run died later in the metrics ("probs: expected probabilities in [0, 1]")."""
    poison_after_step(monkeypatch)
    with pytest.raises(TrainingDiverged, match=r"non-finite parameters after the optimiser step at task 0, train "
                                               r"step 0"):
        learner().learn_task(0)


def test_non_finite_gradients_are_caught(monkeypatch):
    run = learner()

    def poison(params):
        for p in params:
            if p.grad is not None:
                p.grad.fill_(math.nan)

    monkeypatch.setattr(run, "_all_reduce_gradients", poison)  # right after backward, where they are checked
    with pytest.raises(TrainingDiverged, match="non-finite gradients at task 0"):
        run.learn_task(0)


def test_non_finite_logits_at_evaluation_are_caught():
    run = learner()
    run.learn_task(0)
    with torch.no_grad():
        next(run.head.adapters[0].parameters()).fill_(math.inf)
    with pytest.raises(TrainingDiverged, match="non-finite logits at evaluation after task 0"):
        run.evaluate_task(0, run.setup_task(0))


def test_a_diverged_run_is_recorded_as_an_error_with_its_reason(monkeypatch, tmp_path, capsys):
    poison_after_step(monkeypatch)
    code = main(["tiny", "--out", str(tmp_path), *sum((["--set", s] for s in TINY), [])])
    assert code == 1
    assert "non-finite parameters" in capsys.readouterr().err
    runs = pd.read_parquet(tmp_path / "runs")
    assert runs["status"].tolist() == ["error"]
    assert "non-finite parameters after the optimiser step" in runs["error"].iloc[0]
