"""Observing the real phases of ``ContinualLearner.learn_task`` from the outside, for tests.

:class:`PhaseRecorder` wraps (with pytest's ``monkeypatch``) the learner's ``run_phase``, the CLAP head's
forward, the loss functions the head calls and ``torch.optim.SGD.step``, and records, per phase
``(name, task)``:

* every head forward: the ``regularize`` tasks it was asked for, whether VGA was in train mode, the tasks
  whose language-aware KD was computed (identified by the template rows it received) and how many KL
  terms were computed;
* the learning rate of every optimiser step;
* every trainable tensor (head and prompt variant) just before the phase's first step and after its last.

Forward calls outside any phase (exemplar selection, evaluation) are recorded under ``None``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

import clapray.model.clap as clap_module
from clapray.learner import ContinualLearner
from clapray.model.clap import ClapHead

PhaseKey = tuple[str, int] | None


@dataclass
class ForwardCall:
    regularize: tuple[int, ...]
    vga_training: bool | None
    kd_tasks: list[int] = field(default_factory=list)
    kl_terms: int = 0


def snapshot(learner: ContinualLearner) -> dict[str, torch.Tensor]:
    params = {f"head.{k}": v for k, v in learner.head.named_parameters()}
    params.update({f"prompt.{k}": v for k, v in learner.prompt.learned.named_parameters()})
    return {k: v.detach().clone() for k, v in params.items()}


class PhaseRecorder:
    def __init__(self, monkeypatch):
        self.phase: PhaseKey = None
        self.calls: dict[PhaseKey, list[ForwardCall]] = defaultdict(list)
        self.lrs: dict[PhaseKey, list[float]] = defaultdict(list)
        self.before: dict[PhaseKey, dict[str, torch.Tensor]] = {}
        self.after: dict[PhaseKey, dict[str, torch.Tensor]] = {}
        self._learner: ContinualLearner | None = None
        self._forward: tuple[ForwardCall, torch.Tensor | None, tuple] | None = None
        recorder = self

        real_run_phase, real_forward = ContinualLearner.run_phase, ClapHead.forward
        real_kd, real_kl = clap_module.language_aware_kd, clap_module.kl_to_standard_normal
        real_step = torch.optim.SGD.step

        def run_phase(learner, phase, setup):
            recorder._learner, recorder.phase = learner, (phase.name, phase.task)
            try:
                return real_run_phase(learner, phase, setup)
            finally:
                recorder.after[recorder.phase] = snapshot(learner)
                recorder.phase = None

        def forward(head, images, text, task_slices, task_mask, n_samples, **kwargs):
            call = ForwardCall(tuple(kwargs.get("regularize", ())), None if head.vga is None else head.vga.training)
            recorder.calls[recorder.phase].append(call)
            recorder._forward = (call, kwargs.get("template_mean"), tuple(task_slices))
            try:
                return real_forward(head, images, text, task_slices, task_mask, n_samples, **kwargs)
            finally:
                recorder._forward = None

        def kd(template_mean, residual):
            call, full, slices = recorder._forward
            call.kd_tasks += [t for t, (s, e) in enumerate(slices) if e - s == len(template_mean)
                              and torch.equal(full[s:e].to(template_mean), template_mean)]
            return real_kd(template_mean, residual)

        def kl(mu, sigma):
            recorder._forward[0].kl_terms += 1
            return real_kl(mu, sigma)

        def step(optimizer, *args, **kwargs):
            if recorder.phase is not None:
                if not recorder.lrs[recorder.phase]:
                    recorder.before[recorder.phase] = snapshot(recorder._learner)
                recorder.lrs[recorder.phase].append(optimizer.param_groups[0]["lr"])
            return real_step(optimizer, *args, **kwargs)

        monkeypatch.setattr(ContinualLearner, "run_phase", run_phase)
        monkeypatch.setattr(ClapHead, "forward", forward)
        monkeypatch.setattr(clap_module, "language_aware_kd", kd)
        monkeypatch.setattr(clap_module, "kl_to_standard_normal", kl)
        monkeypatch.setattr(torch.optim.SGD, "step", step)

    def moved(self, phase: PhaseKey, prefix: str) -> bool:
        """Whether any recorded tensor whose name starts with ``prefix`` changed during ``phase``."""
        before, after = self.before[phase], self.after[phase]
        names = [k for k in before if k.startswith(prefix)]
        assert names, f"no parameter named {prefix}* in phase {phase}"
        return any(not torch.equal(before[k], after[k]) for k in names)
