"""Visual-guided attention (VGA, method reference §4).

A transformer decoder whose queries are the text features of every seen class and whose memory is the
image embeddings; its output is added back to the text features (an outer residual on top of the
decoder's own), giving visual-guided text features h_c = t_c + VGA(T, X)_c.

Two contexts:

* ``batch`` (official): every class query attends over all B images of the batch, so one set of
  h_c serves the whole batch. Predictions then depend on the batch's composition (pitfall P1).
* ``image`` (task-agnostic): each image is its own context, h_{b,c} = t_c + VGA(T, x_b)_c, so a
  prediction depends on its image alone. Costs B decoder passes instead of one.

The self-attention among class queries is masked block-diagonally by task (a class of task i attends to
classes of task i only); the mask depends only on the task layout and is built once per task.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from clapray.errors import UserError


def task_attention_mask(task_of_class: np.ndarray | Tensor, device: torch.device | None = None, *,
                        task_tokens: bool = False) -> Tensor:
    """Boolean [C, C] mask, True = blocked: query c may attend to key c' only within its own task.

    With ``task_tokens`` (AttriCLIP, §4) the queries are the C classes followed by one token per seen task,
    [C + T, C + T]: a token belongs to its task, so it attends to itself and its task's classes, and a
    class of task i attends to its task's classes and token i.
    """
    tasks = torch.as_tensor(np.array(task_of_class), device=device)
    if task_tokens:
        tasks = torch.cat([tasks, torch.arange(int(tasks.max()) + 1, device=tasks.device, dtype=tasks.dtype)])
    return tasks[:, None] != tasks[None, :]


class VisualGuidedAttention(nn.Module):
    """``nn.TransformerDecoder`` of ``depth`` post-LN layers (GELU, PyTorch's dropout and FFN defaults)."""

    def __init__(self, dim: int, *, depth: int = 1, heads: int = 1, ff_dim: int = 2048, dropout: float = 0.1,
                 context: str = "batch"):
        super().__init__()
        if dim % heads:
            raise UserError(f"method.vga.heads: expected a divisor of the embedding dim {dim}, got {heads}")
        if context not in ("batch", "image"):
            raise ValueError(f"context must be 'batch' or 'image', got {context!r}")
        layer = nn.TransformerDecoderLayer(d_model=dim, nhead=heads, dim_feedforward=ff_dim, dropout=dropout,
                                           activation="gelu", batch_first=True)
        # enable_nested_tensor-style fast paths are irrelevant here; the decoder deep-copies the layer, so
        # each of the ``depth`` layers gets its own parameters.
        self.decoder = nn.TransformerDecoder(layer, num_layers=depth)
        self.context = context

    def forward(self, text: Tensor, images: Tensor, task_mask: Tensor) -> Tensor:
        """Visual-guided text features.

        Args:
            text: [C, d] base text features of the seen classes (queries), or [B, C, d] per image
                (CoCoOp): image b's own queries.
            images: [B, d] L2-normalised image embeddings of the batch (memory).
            task_mask: [C, C] bool, True where a query may not attend (see :func:`task_attention_mask`).
        Returns:
            [C, d] for ``batch`` context with shared queries, else [B, C, d].
        """
        if text.dim() == 3:
            # Per-image queries: with batch context each image's queries attend over the whole batch
            # (memory [B, B, d]), with image context over the image itself (memory [B, 1, d]).
            memory = images[None].expand(images.shape[0], -1, -1) if self.context == "batch" else images[:, None, :]
            return text + self.decoder(text, memory, tgt_mask=task_mask)
        if self.context == "batch":
            out = self.decoder(text[None], images[None], tgt_mask=task_mask)  # [1, C, d]
            return text + out[0]
        queries = text[None].expand(images.shape[0], -1, -1)  # [B, C, d]
        out = self.decoder(queries, images[:, None, :], tgt_mask=task_mask)  # memory [B, 1, d]
        return text[None] + out
