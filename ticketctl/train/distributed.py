"""Data parallelism under ``torchrun``: torch's ``DistributedDataParallel`` (nccl on CUDA, gloo on CPU).

Every process builds the same model from the same seed and draws the same batch order; each takes its share of
every batch (``idx[rank::world]``), its loss is the sum over its examples divided by the *global* batch size, and
DDP sums the gradients across processes during the backward pass (bucketed, overlapped with it; :func:`sum_hook`
replaces DDP's default mean) — the same gradient as one process on the whole batch, up to floating-point reduction
order. The L1 term, the masks and clipping are then applied to the summed gradient, identically on every process,
so parameters stay identical everywhere: masks, pruning and evaluation need no communication, and only process 0
writes artifacts and prints. Each process draws its own dropout masks (:func:`dropout_seed`).

Which GPU a process uses (:func:`choose_device`): ``--device cuda`` (or ``auto`` with CUDA) takes the only visible
GPU when one is visible (Slurm ``--gpus-per-task=1``, ``CUDA_VISIBLE_DEVICES`` set per task), else GPU
``LOCAL_RANK``; ``--device cuda:N`` is refused with several processes and several visible GPUs (every process would
share GPU N).
"""

from __future__ import annotations

import os

from ticketctl.errors import UsageError


def _launcher_int(name: str, default: int) -> int:
    """An integer that torchrun (or Slurm's srun via torchrun) sets in the environment; ``default`` when unset or
    not an integer."""
    try:
        return int(os.environ.get(name, str(default)))
    except ValueError:
        return default


def world_size() -> int:
    return _launcher_int("WORLD_SIZE", 1)


def rank() -> int:
    return _launcher_int("RANK", 0)


def local_rank() -> int:
    return _launcher_int("LOCAL_RANK", 0)


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def dropout_seed(seed: int, process: int | None = None) -> int:
    """The dropout stream's seed of process ``process`` (default: this one): process 0 draws the one-process stream
    (``derive_seed(seed, "dropout")``, so a one-process run is unchanged), every other process its own, derived
    from (seed, rank): no two processes draw the same dropout masks."""
    from ticketctl.train.seeds import derive_seed

    process = rank() if process is None else process
    return derive_seed(seed, "dropout" if process == 0 else f"dropout-rank{process}")


def choose_device(device_name: str) -> str:
    """The device this process of a ``torchrun`` job uses, as a ``--device`` string (``cpu``, ``cuda:I``, ``mps``).

    ``auto``/``cuda``: with one visible GPU, ``cuda:0`` whatever LOCAL_RANK says; with several, ``cuda:LOCAL_RANK``.
    Raises UsageError when LOCAL_RANK has no GPU of its own, for ``cuda:N`` with several visible GPUs (all processes
    would share one), and for ``cuda`` without CUDA."""
    import torch

    if device_name in ("cpu", "mps") or (device_name == "auto" and not torch.cuda.is_available()):
        return "cpu" if device_name == "auto" else device_name
    if not torch.cuda.is_available():
        raise UsageError(f"--device {device_name}: no CUDA device is available")
    visible = torch.cuda.device_count()
    if device_name.startswith("cuda:"):
        if visible > 1:
            raise UsageError(f"--device {device_name} under torchrun would put all {world_size()} processes on one "
                             f"GPU; use --device cuda (process LOCAL_RANK takes GPU LOCAL_RANK)")
        return device_name  # one visible GPU: cuda:0 is it; any other N fails in pick_device with one line
    if device_name not in ("auto", "cuda"):
        raise UsageError("--device must be auto, cpu, cuda, cuda:N or mps")
    if visible == 1:
        return "cuda:0"
    local = local_rank()
    if local >= visible:
        raise UsageError(f"LOCAL_RANK {local} has no GPU: {visible} are visible on this node; run at most {visible} "
                         f"processes per node (torchrun --nproc_per_node {visible})")
    return f"cuda:{local}"


def setup(device_name: str) -> str:
    """Join the process group when started by torchrun (nccl for CUDA, gloo otherwise); returns the ``--device``
    this process uses (:func:`choose_device`). One process: ``device_name`` unchanged."""
    if world_size() <= 1:
        return device_name
    import torch
    import torch.distributed as dist

    chosen = choose_device(device_name)
    use_cuda = chosen.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(int(chosen[5:]))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return chosen


def shard(idx):
    """This process's part of a global batch."""
    return idx[rank() :: world_size()] if world_size() > 1 else idx


def sum_hook(state, bucket):
    """DDP communication hook: sum a gradient bucket over processes (DDP's default divides by the world size; the
    loss is already divided by the global batch size)."""
    import torch.distributed as dist

    fut = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def wrap(model, device):
    """``model`` in ``DistributedDataParallel`` with summed gradients. Parameters are broadcast from process 0 once
    (they are equal already: same seed); buffers are not re-broadcast every forward (position ids only); the
    gradients are views into DDP's buckets (no copy of every gradient after the reduction)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    # torch >= 2.13 names the per-forward buffer sync forward_sync_buffers (broadcast_buffers warns there)
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
               inspect.signature(DistributedDataParallel.__init__).parameters else {"broadcast_buffers": False})
    ddp = DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True, **no_sync)
    ddp.register_comm_hook(None, sum_hook)
    return ddp


def all_reduce_sum(tensor):
    """``tensor`` summed over processes (in place); returns it."""
    import torch.distributed as dist

    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
