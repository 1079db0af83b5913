"""Importance of attention heads and FFN sublayers (Michel et al., 2019), the scores structured tickets are chosen
by."""

from __future__ import annotations

import numpy as np
import torch

from ticketctl.data.batching import collate
from ticketctl.model.gates import Gates
from ticketctl.model.units import layout
from ticketctl.train.loop import autocast


def example_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[-1] == 1 and target.dtype.is_floating_point:
        return (logits.view(-1) - target.view(-1)) ** 2
    return torch.nn.functional.cross_entropy(logits, target, reduction="none")


def importance(model, enc, labels: np.ndarray, device: torch.device, pad_id: int, precision: str,
               batch_size: int = 32, on_step=None) -> tuple[np.ndarray, np.ndarray]:
    """Expected |dL/d gate| over the examples (Michel et al., 2019): the derivative of each example's own loss with
    respect to each head's and each FFN's gate at 1, in absolute value, averaged over examples. Per-example gates
    make this exact in one backward pass per batch (an example's gate touches only its own loss). Evaluation mode
    (no dropout); the model's parameters get no gradients. Returns raw (layers, heads) and (layers,) scores."""
    lay = layout(model)
    gates = Gates(model)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    head_sum = torch.zeros(lay.num_layers, lay.num_heads, dtype=torch.float64)
    ffn_sum = torch.zeros(lay.num_layers, dtype=torch.float64)
    y = torch.from_numpy(labels)
    order = np.argsort(-enc.lengths, kind="stable")
    model.eval()
    try:
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        for step, idx in enumerate(batches, 1):
            gh = torch.ones(len(idx), lay.num_layers, lay.num_heads, device=device, requires_grad=True)
            gf = torch.ones(len(idx), lay.num_layers, device=device, requires_grad=True)
            gates.set(gh, gf)
            with autocast(device, precision):
                logits = model(**collate(enc, idx, pad_id, device)).logits
            loss = example_losses(logits.float(), y[idx].to(device)).sum()
            dh, df = torch.autograd.grad(loss, [gh, gf])
            head_sum += dh.abs().sum(0).double().cpu()
            ffn_sum += df.abs().sum(0).double().cpu()
            if on_step is not None:
                on_step(step, len(batches), None)
    finally:
        gates.remove()
        for p in frozen:
            p.requires_grad_(True)
    n = max(1, len(order))
    return (head_sum / n).numpy(), (ffn_sum / n).numpy()
