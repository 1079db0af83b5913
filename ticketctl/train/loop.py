"""The one training loop: ``finetune``, every IMP round of ``search``, the dense finetune of a structured search and
the multi-task ``share`` all run :class:`Loop`. AdamW with linear decay to zero, masks applied to gradients,
optional L1 regularizer, global gradient-norm clipping, bf16 or fp16 autocast (fp16 with loss scaling), data
parallelism under torchrun (torch's DistributedDataParallel, ``train.distributed``), and on CPU ticketctl's fast
dropout.

A run trains one model on one training set (``train``), or several task models that share an encoder on several
training sets (``share``): then every batch names its task, and :class:`StepHooks` route the forward pass through
that task's gates and put back what the task's ticket does not own after each optimizer step.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ticketctl.data.batching import Encoded, collate, length_grouped_batches
from ticketctl.errors import UsageError
from ticketctl.hparams import TrainConfig
from ticketctl.train import distributed
from ticketctl.train.fastcpu import training_fastpath
from ticketctl.train.seeds import derive_seed

# ---------------------------------------------------------------------------------------------- schedule


def lr_factor(step: int, total: int, warmup_steps: int) -> float:
    """Multiplier of the peak learning rate used for optimizer step ``step`` (0-based): linear warm-up, then linear
    decay that reaches exactly zero after the last step (``lr_factor(total, ...) == 0``)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total - step) / max(1, total - warmup_steps))


def total_steps(n_examples: int, cfg: TrainConfig) -> int:
    return max(1, int(round(cfg.epochs * math.ceil(n_examples / cfg.batch_size))))


def epoch_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                  total: int) -> Iterator[tuple[None, np.ndarray, bool]]:
    """``total`` steps of length-grouped batches, reshuffled every epoch: (task None, batch, last of its epoch)."""
    step = 0
    while step < total:
        batches = length_grouped_batches(lengths, batch_size, rng)
        for j, idx in enumerate(batches):
            if step >= total:
                break
            step += 1
            yield None, idx, j == len(batches) - 1 or step == total


# ---------------------------------------------------------------------------------------------- pieces


@dataclass
class L1Regularizer:
    """tau * ||theta ⊙ l_s||_1 over the prunable weights; tau decays with the learning rate. Its gradient is added
    directly (tau_t * l_s * sign(theta)), which is the gradient of the term added to the loss."""

    tau: float
    coef: dict[str, torch.Tensor]  # parameter name -> l_s (float, parameter's shape)


def add_l1(grads: list[torch.Tensor], params: list[torch.Tensor], coefs: list[torch.Tensor], tau: float) -> None:
    """``grads[i] += tau * coefs[i] * sign(params[i])`` for every i, in place, as a few multi-tensor kernels
    (``torch._foreach_*``) instead of two kernels per tensor: the gradient of ``tau * ||theta ⊙ l_s||_1``. Shapes
    pair up (each coefficient has its parameter's shape); the same numbers as the per-tensor ``addcmul_`` loop."""
    if not grads or tau <= 0:
        return
    signs = torch._foreach_sign(params) if hasattr(torch, "_foreach_sign") else [torch.sign(p) for p in params]
    torch._foreach_addcmul_(grads, signs, coefs, value=tau)


def mask_grads(grads: list[torch.Tensor], keep: list[torch.Tensor]) -> None:
    """Zero the gradients of pruned weights: ``grads[i] *= keep[i]`` (0/1, the parameter's shape), in place, as one
    multi-tensor kernel."""
    if grads:
        torch._foreach_mul_(grads, keep)


def autocast(device: torch.device, precision: str):
    """bf16 or fp16 autocast (fp32 master weights); fp32: off."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision in ("bf16", "fp16"))


def make_adamw(groups, lr: float):
    """AdamW, fused where torch has the kernel (CPU and CUDA): one pass over each tensor instead of several; on this
    CPU the optimizer step is 4x faster than the per-tensor loop (benchmarks/README.md)."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def param_groups(models: Iterable, weight_decay: float) -> list[dict]:
    """Every parameter of the models once (a shared encoder counts once), in order: weight decay on matrices only."""
    params: dict[int, torch.nn.Parameter] = {}
    for model in models:
        for p in model.parameters():
            params.setdefault(id(p), p)
    plist = list(params.values())
    return [{"params": [p for p in plist if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in plist if p.ndim < 2], "weight_decay": 0.0}]


def batch_mean_loss(logits: torch.Tensor, target: torch.Tensor, global_batch: int) -> torch.Tensor:
    """Cross-entropy (classification) or squared error (regression), summed over this process's examples and divided
    by the global batch size: the global batch's mean, whichever share of it this process holds."""
    if target.dtype.is_floating_point:
        loss = torch.nn.functional.mse_loss(logits.view(-1), target.view(-1), reduction="sum")
    else:
        loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    return loss / global_batch


@contextmanager
def deterministic_refusal():
    """Under ``--deterministic``, an operation torch has no deterministic kernel for raises RuntimeError; that
    becomes one line (UsageError: the option cannot be had on this device), not a traceback."""
    try:
        yield
    except RuntimeError as e:
        if torch.are_deterministic_algorithms_enabled() and "deterministic" in str(e):
            raise UsageError(f"--deterministic: {str(e).strip().splitlines()[0]} (run without --deterministic)") \
                from None
        raise


class StepHooks:
    """What a multi-task run adds to a step; the defaults do nothing (single-task training)."""

    def before_forward(self, task) -> None:
        """Route the forward pass (e.g. through the task's gates)."""

    def before_update(self, task, opt) -> object:
        """Called after the gradients are final, before ``opt.step()``; returns what ``after_update`` needs."""
        return None

    def after_update(self, task, opt, saved) -> None:
        """Called after ``opt.step()`` (e.g. put back the parameters outside the task's ticket)."""


# ---------------------------------------------------------------------------------------------- the loop


class Loop:
    """Training state of one run: the models (one per task, or ``{None: model}``), each task's encoded training set
    and labels, the optimizer, masks and regularizer. ``step`` is one optimizer step; ``run`` the whole schedule.

    ``keep``: parameter name -> 0/1 float tensor; those weights are zeroed first and their gradients masked, so
    with AdamW they stay exactly zero (zero gradient -> zero moments -> zero update; decay of 0 is 0).
    ``loss``: (logits, target, global batch size) -> the loss to minimise (default :func:`batch_mean_loss`).
    """

    def __init__(self, models: dict, data: dict[object, tuple[Encoded, np.ndarray]], cfg: TrainConfig, seed: int,
                 device: torch.device, pad_id: int, keep: dict[str, torch.Tensor] | None = None,
                 l1: L1Regularizer | None = None, hooks: StepHooks | None = None,
                 loss: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] = batch_mean_loss):
        # Same stream whatever ran before (resume, reuse); each process of a data-parallel run draws its own.
        self.dropout_seed = distributed.dropout_seed(seed)
        torch.manual_seed(self.dropout_seed)
        self.models, self.cfg, self.seed, self.device, self.pad_id = models, cfg, seed, device, pad_id
        self.encoded = {task: enc for task, (enc, _) in data.items()}
        self.labels = {task: torch.from_numpy(y) for task, (_, y) in data.items()}
        self.hooks = hooks or StepHooks()
        self.loss = loss
        first = next(iter(models.values()))
        params = dict(first.named_parameters())
        self.masked = [(params[n], m.to(device=device, dtype=params[n].dtype)) for n, m in (keep or {}).items()]
        with torch.no_grad():
            for p, m in self.masked:
                p.mul_(m)
        self.mask_grads = [m for _, m in self.masked]
        self.l1 = l1
        self.reg = [(params[n], c.to(device=device, dtype=params[n].dtype)) for n, c in l1.coef.items()] if l1 else []
        self.reg_params, self.reg_coefs = [p for p, _ in self.reg], [c for _, c in self.reg]
        groups = param_groups(models.values(), cfg.weight_decay)
        self.params = [p for g in groups for p in g["params"]]
        self.opt = make_adamw(groups, cfg.lr)
        self.parallel = distributed.active()
        # Data-parallel: DDP sums the gradients during the backward pass (one model; share runs as one process).
        self.forward = dict(models)
        if self.parallel:
            if len(models) != 1:
                raise ValueError("data-parallel training takes one model")
            self.forward = {task: distributed.wrap(model, device) for task, model in models.items()}
        self.schedule_log: list[tuple[float, float]] | None = None
        # fp16 needs loss scaling (its range underflows small gradients); a step whose gradients overflow is skipped
        # and the scale lowered, as torch.amp recommends. bf16 and fp32 need none.
        self.scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None

    def step(self, task, idx: np.ndarray, factor: float) -> torch.Tensor:
        """One optimizer step on the global batch ``idx`` of ``task`` (this process's shard of it) at learning rate
        ``cfg.lr * factor``; returns the detached loss."""
        cfg, device = self.cfg, self.device
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * factor
        tau_t = self.l1.tau * factor if self.l1 else 0.0  # tau decays with the learning rate
        if self.schedule_log is not None:
            self.schedule_log.append((cfg.lr * factor, tau_t))
        local = distributed.shard(idx) if self.parallel else idx
        weight = 1.0
        if len(local) == 0:  # a last batch smaller than the number of processes: join the reduction with 0
            local, weight = idx[:1], 0.0
        batch = collate(self.encoded[task], local, self.pad_id, device)
        target = self.labels[task][local].to(device)
        self.hooks.before_forward(task)
        with autocast(device, cfg.precision):
            logits = self.forward[task](**batch).logits
        loss = self.loss(logits.float(), target, len(idx))
        if weight == 0.0:
            loss = loss * 0.0
        # Under DDP the gradients arrive summed over processes when backward() returns.
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.parallel:
            loss = distributed.all_reduce_sum(loss.detach().clone())  # the global batch's loss, for the log
        if self.scaler is not None:  # true gradients before L1, masks and clipping
            self.scaler.unscale_(self.opt)
        with torch.no_grad():
            if self.reg and tau_t > 0:
                add_l1([p.grad for p in self.reg_params], self.reg_params, self.reg_coefs, tau_t)
            if self.masked:
                mask_grads([p.grad for p, _ in self.masked], self.mask_grads)
        if cfg.max_grad_norm > 0:  # the gradient the optimizer sees: summed over processes, with L1, masked
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm, foreach=True)
        saved = self.hooks.before_update(task, self.opt)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.hooks.after_update(task, self.opt, saved)
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    def run(self, batches: Iterable[tuple[object, np.ndarray, bool]], total: int,
            on_step: Callable[[int, int, float | None], None] | None = None) -> list[float]:
        """Train on ``batches`` ((task, batch, last of its epoch) for each of ``total`` steps); returns the mean
        training loss of each epoch."""
        warmup_steps = int(self.cfg.warmup * total)
        for model in self.models.values():
            model.train()
        epoch_losses: list[float] = []
        running = torch.zeros((), device=self.device)
        count = 0
        # On CPU, dropout masks come from ticketctl.train.fastcpu (3x faster than torch's bernoulli_).
        with training_fastpath(list(self.models.values()), self.dropout_seed, self.device), deterministic_refusal():
            for step, (task, idx, epoch_end) in enumerate(batches):
                loss = self.step(task, idx, lr_factor(step, total, warmup_steps))
                running += loss
                count += 1
                if on_step is not None:
                    on_step(step + 1, total, float(loss) if (step + 1) % 10 == 0 or step + 1 == total else None)
                if epoch_end:
                    epoch_losses.append(float(running) / max(1, count))
                    running = torch.zeros((), device=self.device)
                    count = 0
        for model in self.models.values():
            model.eval()
        return epoch_losses

    def release(self) -> None:
        """Drop the DDP wrappers (their gradient buckets hold a copy of every gradient); the loop cannot step
        afterwards. IMP builds a fresh loop every round."""
        self.forward = {}


def train(model, enc: Encoded, labels: np.ndarray, cfg: TrainConfig, seed: int, device: torch.device,
          pad_id: int, keep: dict[str, torch.Tensor] | None = None, l1: L1Regularizer | None = None,
          on_step: Callable[[int, int, float | None], None] | None = None,
          schedule_log: list[tuple[float, float]] | None = None, loss=None) -> list[float]:
    """Finetune ``model`` in place on one training set; returns the mean training loss of each epoch. ``loss``
    (default :func:`batch_mean_loss`) gets each batch's rows of ``labels`` (a distillation's packed targets:
    ``ticketctl.train.distill``)."""
    loop = Loop({None: model}, {None: (enc, labels)}, cfg, seed, device, pad_id, keep=keep, l1=l1,
                loss=loss or batch_mean_loss)
    loop.schedule_log = schedule_log
    total = total_steps(len(enc), cfg)
    rng = np.random.default_rng(derive_seed(seed, "data-order"))
    try:
        return loop.run(epoch_batches(enc.lengths, cfg.batch_size, rng, total), total, on_step)
    finally:
        loop.release()


@torch.inference_mode()
def predict(model, enc: Encoded, device: torch.device, pad_id: int, precision: str,
            batch_size: int = 128) -> np.ndarray:
    """Model outputs (n, num_labels) as float32 in the split's order; batches sorted by length."""
    model.eval()
    order = np.argsort(-enc.lengths, kind="stable")
    out = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        with autocast(device, precision):
            logits = model(**collate(enc, idx, pad_id, device)).logits
        logits = logits.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(order), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out
