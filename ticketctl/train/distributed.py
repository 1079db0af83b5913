"""Data parallelism under ``torchrun`` (torch.distributed; gloo on CPU, nccl on CUDA).

Every process builds the same model from the same seed and draws the same batch order; each takes its share of
every batch (``idx[rank::world]``), its loss is the sum over its examples divided by the *global* batch size, and
gradients are summed across processes before the optimizer step — the same gradient as one process on the whole
batch, up to floating-point reduction order. Parameters therefore stay identical on every process, so masks, pruning
and evaluation need no communication; only process 0 writes artifacts and prints.
"""

from __future__ import annotations

import os


def world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device_name: str) -> str:
    """Join the process group when started by torchrun; returns the device this process should use."""
    if world_size() <= 1:
        return device_name
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        return "cuda"  # the current device, set above
    return "cpu" if device_name == "auto" else device_name


def shard(idx):
    """This process's part of a global batch."""
    return idx[rank() :: world_size()] if world_size() > 1 else idx


def all_reduce_grads(params, extra=()) -> None:
    """Sum the gradients of ``params`` (and the tensors in ``extra``, e.g. the loss) over processes, in one flat
    buffer."""
    import torch
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None] + list(extra)
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)
