"""What multi-task ticket sharing (``ticketctl share``; Liang et al., 2021, Section 6) adds to the one training
loop: the task of every step (:func:`task_plan`), each task's batches (:func:`task_batches`), the per-example loss,
and :class:`TicketHooks`, the training-step hooks that run a task's batch through its ticket's gates and put back
what its ticket does not keep."""

from __future__ import annotations

import numpy as np

from ticketctl.data.batching import length_grouped_batches


def task_plan(n_batches: dict[str, int], epochs: float, sampling: str, rng: np.random.Generator) -> list[str]:
    """The task of every optimizer step. One epoch = as many steps as all tasks have batches."""
    per_epoch = sum(n_batches.values())
    total = max(1, int(round(epochs * per_epoch)))
    names = sorted(n_batches)
    plan: list[str] = []
    while len(plan) < total:
        if sampling == "proportional":
            epoch = [t for t in names for _ in range(n_batches[t])]
            plan.extend(epoch[i] for i in rng.permutation(len(epoch)))
        else:
            plan.extend(names[i] for i in rng.integers(0, len(names), per_epoch))
    return plan[:total]


def task_batches(plan: list[str], lengths: dict[str, np.ndarray], batch_size: int, rng: np.random.Generator):
    """The batch of every step of ``plan``: each task cycles through its own length-grouped batches, reshuffled when
    they run out. Yields (task, batch, last step)."""
    streams = {n: iter(()) for n in lengths}
    for step, task in enumerate(plan):
        idx = next(streams[task], None)
        if idx is None:
            streams[task] = iter(length_grouped_batches(lengths[task], batch_size, rng))
            idx = next(streams[task])
        yield task, idx, step == len(plan) - 1


class TicketHooks:
    """What ticket sharing adds to a training step: the forward pass of a task's batch goes through its ticket's
    gates, and after the optimizer step every parameter outside the task's ticket (and its AdamW moments) is put
    back as it was."""

    def __init__(self, model, masks: dict, device):
        import torch

        from ticketctl.model import units
        from ticketctl.model.gates import Gates

        lay = units.layout(model)
        named = dict(model.named_parameters())
        self.gate_values: dict = {}
        self.frozen: dict[str, list] = {}
        for n, mask in masks.items():
            units.check_fits(lay, mask, n)
            self.gate_values[n] = (torch.from_numpy(mask.heads).float().to(device),
                                   torch.from_numpy(mask.ffn).float().to(device))
            keep = units.expand(model, mask)
            # flat positions outside the ticket, found once: gathering and scattering them by index costs
            # 7.6 ms a step for a 10% MiniLM ticket, boolean-mask indexing 62-73 ms (a nonzero() per tensor)
            self.frozen[n] = [(named[p], (~k).reshape(-1).nonzero().squeeze(1).to(device))
                              for p, k in keep.items() if not k.all()]
        self.gates = Gates(model)

    def before_forward(self, task) -> None:
        self.gates.set(*self.gate_values[task])

    def before_update(self, task, opt):
        return [(p, i, p.detach().view(-1).index_select(0, i), [s.view(-1).index_select(0, i)
                                                                 for s in moments(opt, p)])
                for p, i in self.frozen.get(task, [])]

    def after_update(self, task, opt, saved) -> None:
        import torch

        with torch.no_grad():
            for p, i, value, kept in saved:
                p.view(-1).index_copy_(0, i, value)
                for s, v in zip(moments(opt, p), kept):
                    s.view(-1).index_copy_(0, i, v)


def moments(opt, p):
    """AdamW's moments of ``p`` (none before its first step)."""
    state = opt.state.get(p, {})
    return [state[k] for k in ("exp_avg", "exp_avg_sq") if k in state]
