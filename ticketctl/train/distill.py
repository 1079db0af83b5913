"""Knowledge distillation's training targets and loss (``finetune --teacher``, docs/distillation.md).

The loss of Hinton, Vinyals & Dean (2015, "Distilling the Knowledge in a Neural Network", Sec. 2), per batch::

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

summed over the batch's examples and divided by the global batch size, as the plain loss is
(``ticketctl.train.loop.batch_mean_loss``); T^2 keeps the soft term's gradients at the scale of the hard term's when
T changes (Hinton et al.: they scale as 1/T^2). Regression (STS-B) has no temperature::

    alpha * (student - teacher)^2 + (1 - alpha) * (student - label)^2

The KL term is the soft cross-entropy of Hinton et al. minus the teacher's entropy, a constant: the same gradient,
and 0 for a student that matches its teacher.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


def teacher_targets(outputs: np.ndarray, temperature: float, regression: bool) -> np.ndarray:
    """What the student is fit to, from the teacher's outputs (N, C) as its logits artifact holds them: the log of
    ``softmax(outputs / T)`` (N, C) for classification, the prediction (N, 1) for regression. float64.

    ``outputs`` are a member's logits, an ensemble's mean logits (``--combine logits``), or an ensemble's log mean
    probabilities (``--combine probs``); for the last, ``softmax(log p / T)`` is ``p^(1/T)`` renormalised (T=1: the
    mean probabilities themselves)."""
    z = np.asarray(outputs, dtype=np.float64)
    if regression:
        return z[:, :1].copy()
    z = z / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def pack_targets(labels: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """One row per training example, (N, 1 + C) float64: its label (a class index or a score), then the teacher's
    targets (:func:`teacher_targets`). The training loop hands a batch's rows to :func:`distill_loss`, which computes
    in the logits' dtype."""
    return np.concatenate([np.asarray(labels, np.float64)[:, None], targets], axis=1)


def distill_loss(alpha: float, temperature: float,
                 regression: bool) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
    """The loss the training loop minimises (``Loop(loss=...)``): (logits (B, C), packed targets (B, 1 + C) of
    :func:`pack_targets`, global batch size) -> the batch's loss, a scalar in the dtype of ``logits``. With
    ``alpha`` 0 it is the plain loss bit for bit (the teacher term is multiplied by 0.0 and adds exact zeros)."""

    def loss(logits: torch.Tensor, target: torch.Tensor, global_batch: int) -> torch.Tensor:
        label, teacher = target[:, 0], target[:, 1:].to(logits.dtype)
        if regression:
            hard = F.mse_loss(logits.view(-1), label.to(logits.dtype), reduction="sum")
            soft = F.mse_loss(logits.view(-1), teacher.view(-1), reduction="sum")
        else:
            hard = F.cross_entropy(logits, label.long(), reduction="sum")
            soft = F.kl_div(F.log_softmax(logits / temperature, dim=-1), teacher, reduction="sum",
                            log_target=True) * (temperature * temperature)
        return (alpha * soft + (1.0 - alpha) * hard) / global_batch

    return loss
