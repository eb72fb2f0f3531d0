"""Forward transfer's two inputs at one step: the model on the next task's images before learning it, and
zero-shot CLIP on the same images over the same classes (:func:`next_task_accuracies`).

:func:`clapray.metrics.accuracy.forward_transfer` needs ``acc[j-1, j]``, the accuracy on task j's test
images of the model after step j-1 with task j's classes *added* to its label space, and a reference
``b_j`` over the same label space. After step t a run already scores the images of the later tasks
(novelty detection), over the classes seen so far only. Adding task t+1's classes the way the method
would meet them before training them (CLIP's template-ensemble text features, no adapter, no prompt)
gives ``acc[t, t+1]``; zero-shot CLIP over classes 0..t+1, from the same image embeddings, gives
``b_{t+1}``. Both share images, classes and embeddings, so their difference is the transfer of steps
0..t to task t+1 relative to zero-shot CLIP. For the zero-shot row itself the two are equal (FWT 0).

Pure numpy: the learner passes tensors converted at the boundary.
"""

from __future__ import annotations

import numpy as np

from clapray.metrics.inputs import ArrayLike, labels, scores_2d


def next_task_accuracies(model_logits: ArrayLike, zero_shot_logits: ArrayLike, targets: ArrayLike
                         ) -> tuple[float, float]:
    """``(acc[t, t+1], b_{t+1})`` in percent, on the next task's images.

    Args:
        model_logits: ``[N, C_seen]`` the model's logits after step t over the classes seen so far
            (tasks 0..t), for the N test images of task t+1.
        zero_shot_logits: ``[N, C_seen + C_next]`` zero-shot CLIP's logits of the same images over the
            classes of tasks 0..t+1 (task t+1's classes last, as the scenario orders them).
        targets: ``[N]`` labels, all in ``[C_seen, C_seen + C_next)``.

    ``acc[t, t+1]``: argmax over the model's logits of the seen classes joined with zero-shot's logits
    of task t+1's classes; ``b_{t+1}``: argmax over zero-shot's logits of every class. NaN when N = 0.
    """
    model = scores_2d(model_logits, "model_logits")
    zero_shot = scores_2d(zero_shot_logits, "zero_shot_logits")
    y = labels(targets, "targets")
    seen = model.shape[1]
    if zero_shot.shape[0] != model.shape[0] or y.shape[0] != model.shape[0]:
        raise ValueError(f"model_logits, zero_shot_logits and targets disagree on N: {model.shape[0]}, "
                         f"{zero_shot.shape[0]}, {y.shape[0]}")
    if zero_shot.shape[1] <= seen:
        raise ValueError(f"zero_shot_logits: expected more than the {seen} seen classes (the next task's too), "
                         f"got {zero_shot.shape[1]}")
    if y.size == 0:
        return float("nan"), float("nan")
    if y.min() < seen or y.max() >= zero_shot.shape[1]:
        raise ValueError(f"targets: expected labels of the next task, in [{seen}, {zero_shot.shape[1]})")
    joined = np.concatenate([model, zero_shot[:, seen:]], axis=1)
    before = 100.0 * float(np.mean(np.argmax(joined, axis=1) == y))
    reference = 100.0 * float(np.mean(np.argmax(zero_shot, axis=1) == y))
    return before, reference
