"""The training step shared by ``finetune`` and every IMP round of ``search``: dynamic padding, length-grouped
batches, AdamW with linear decay to zero, masks applied to gradients, optional L1 regularizer, bf16 autocast."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from ticketctl import distributed
from ticketctl.data import Split
from ticketctl.errors import UsageError
from ticketctl.fastcpu import training_fastpath


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation hyperparameters (the paper's setting; lr measured for the default model, see README)."""

    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 1e-4
    max_length: int = 128
    weight_decay: float = 0.0
    warmup: float = 0.0  # fraction of the steps
    dropout: float = 0.1
    precision: str = "fp32"  # fp32 | bf16 (autocast, fp32 master weights)

    def validate(self) -> None:
        if self.epochs <= 0:
            raise UsageError("--epochs must be > 0")
        if self.batch_size <= 0:
            raise UsageError("--batch-size must be > 0")
        if self.lr <= 0:
            raise UsageError("--lr must be > 0")
        if not 8 <= self.max_length <= 4096:
            raise UsageError("--max-length must be between 8 and 4096")
        if self.weight_decay < 0:
            raise UsageError("--weight-decay must be >= 0")
        if not 0 <= self.warmup < 1:
            raise UsageError("--warmup must be in [0, 1)")
        if not 0 <= self.dropout < 1:
            raise UsageError("--dropout must be in [0, 1)")
        if self.precision not in ("fp32", "bf16"):
            raise UsageError("--precision must be fp32, bf16 or auto")

    def as_dict(self) -> dict:
        return asdict(self)


TRAIN_DEFAULTS = TrainConfig().as_dict()


def derive_seed(seed: int, purpose: str) -> int:
    """Independent, reproducible streams per purpose (data order, dropout, random masks, ...)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:8], "little") & (2**63 - 1)


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Encoded:
    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    lengths: np.ndarray
    max_length: int  # the truncation length: padding never goes beyond it

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(tokenizer, split: Split, max_length: int) -> Encoded:
    columns = list(zip(*split.texts))
    enc = tokenizer(*columns, truncation=True, max_length=max_length, padding=False)
    ids = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
    types = [np.asarray(x, dtype=np.int64) for x in enc["token_type_ids"]] if "token_type_ids" in enc else None
    return Encoded(ids, types, np.asarray([len(x) for x in ids]), max_length)


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                           group: int = 50) -> list[np.ndarray]:
    """Shuffle, sort each run of ``group`` batches by length, cut into batches, shuffle the batches: little padding,
    random batch composition."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * group
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


PAD_MULTIPLE = 8  # few distinct shapes: oneDNN/cuBLAS kernels and their workspaces are made once per shape


def collate(enc: Encoded, idx: np.ndarray, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example, rounded up to a multiple of ``PAD_MULTIPLE`` (dynamic padding). Rounding
    keeps the number of distinct shapes small: with every width allowed, memory grew by 0.6 GB over 40 steps."""
    longest = int(enc.lengths[idx].max())
    width = max(longest, min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, enc.max_length))
    ids = np.full((len(idx), width), pad_id, dtype=np.int64)
    att = np.zeros((len(idx), width), dtype=np.int64)
    types = np.zeros((len(idx), width), dtype=np.int64) if enc.token_type_ids is not None else None
    for row, i in enumerate(idx):
        n = enc.lengths[i]
        ids[row, :n] = enc.input_ids[i]
        att[row, :n] = 1
        if types is not None:
            types[row, :n] = enc.token_type_ids[i]
    nb = device.type == "cuda"
    batch = {"input_ids": torch.from_numpy(ids).to(device, non_blocking=nb),
             "attention_mask": torch.from_numpy(att).to(device, non_blocking=nb)}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types).to(device, non_blocking=nb)
    return batch


# ---------------------------------------------------------------------------------------------- schedule


def lr_factor(step: int, total: int, warmup_steps: int) -> float:
    """Multiplier of the peak learning rate used for optimizer step ``step`` (0-based): linear warm-up, then linear
    decay that reaches exactly zero after the last step (``lr_factor(total, ...) == 0``)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total - step) / max(1, total - warmup_steps))


# ---------------------------------------------------------------------------------------------- training


@dataclass
class L1Regularizer:
    """tau * ||theta ⊙ l_s||_1 over the prunable weights; tau decays with the learning rate. Its gradient is added
    directly (tau_t * l_s * sign(theta)), which is the gradient of the term added to the loss."""

    tau: float
    coef: dict[str, torch.Tensor]  # parameter name -> l_s (float, parameter's shape)


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def make_adamw(groups, lr: float):
    """AdamW, fused where torch has the kernel (CPU and CUDA): one pass over each tensor instead of several; on this
    CPU the optimizer step is 4x faster than the per-tensor loop (benchmarks/README.md)."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def train(model, enc: Encoded, labels: np.ndarray, cfg: TrainConfig, seed: int, device: torch.device,
          pad_id: int, keep: dict[str, torch.Tensor] | None = None, l1: L1Regularizer | None = None,
          on_step: Callable[[int, int, float | None], None] | None = None,
          schedule_log: list[tuple[float, float]] | None = None) -> list[float]:
    """Finetune ``model`` in place; returns the mean training loss of each epoch.

    ``keep``: parameter name -> 0/1 float tensor; those weights are zeroed first and their gradients masked, so
    with AdamW they stay exactly zero (zero gradient -> zero moments -> zero update; decay of 0 is 0).
    """
    torch.manual_seed(derive_seed(seed, "dropout"))  # same stream whatever ran before (resume, reuse)
    rng = np.random.default_rng(derive_seed(seed, "data-order"))
    params = dict(model.named_parameters())
    masked = [(params[n], m.to(device=device, dtype=params[n].dtype)) for n, m in (keep or {}).items()]
    with torch.no_grad():
        for p, m in masked:
            p.mul_(m)
    reg = [(params[n], c.to(device=device, dtype=params[n].dtype)) for n, c in l1.coef.items()] if l1 else []

    decay = [p for n, p in params.items() if p.ndim >= 2]
    no_decay = [p for n, p in params.items() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = make_adamw(groups, cfg.lr)

    n = len(enc)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    warmup_steps = int(cfg.warmup * total)
    y = torch.from_numpy(labels)
    regression = labels.dtype.kind == "f"
    model.train()
    epoch_losses: list[float] = []
    step = 0
    mask_grads = [m for _, m in masked]
    parallel = distributed.active()
    trainable = [p for p in params.values() if p.requires_grad]
    def one_step(idx: np.ndarray, factor: float) -> torch.Tensor:
        """One optimizer step on the global batch ``idx`` (this process's shard of it); the detached loss."""
        for g in opt.param_groups:
            g["lr"] = cfg.lr * factor
        tau_t = l1.tau * factor if l1 else 0.0  # tau decays with the learning rate
        if schedule_log is not None:
            schedule_log.append((cfg.lr * factor, tau_t))
        local = distributed.shard(idx) if parallel else idx
        weight = 1.0
        if len(local) == 0:  # a last batch smaller than the number of processes: join the reduction with 0
            local, weight = idx[:1], 0.0
        batch = collate(enc, local, pad_id, device)
        target = y[local].to(device)
        with autocast(device, cfg.precision):
            logits = model(**batch).logits
        logits = logits.float()
        if regression:
            loss = torch.nn.functional.mse_loss(logits.view(-1), target.view(-1), reduction="sum")
        else:
            loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
        loss = loss / len(idx)  # the global batch's mean, whichever share of it this process holds
        if weight == 0.0:
            loss = loss * 0.0
        loss.backward()
        if parallel:
            loss = loss.detach().clone()
            distributed.all_reduce_grads(trainable, [loss.view(1)])
        if reg and tau_t > 0:
            with torch.no_grad():
                for p, c in reg:
                    p.grad.addcmul_(torch.sign(p), c, value=tau_t)
        if masked:
            with torch.no_grad():
                torch._foreach_mul_([p.grad for p, _ in masked], mask_grads)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    # On CPU, dropout masks come from ticketctl.fastcpu (3x faster than torch's bernoulli_).
    with training_fastpath(model, derive_seed(seed, "dropout"), device):
        while step < total:
            running = torch.zeros((), device=device)
            count = 0
            for idx in length_grouped_batches(enc.lengths, cfg.batch_size, rng):
                if step >= total:
                    break
                loss = one_step(idx, lr_factor(step, total, warmup_steps))
                running += loss
                count += 1
                step += 1
                if on_step is not None:
                    on_step(step, total, float(loss) if step % 10 == 0 or step == total else None)
            epoch_losses.append(float(running) / max(1, count))
    model.eval()
    return epoch_losses


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


def pick_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: no MPS device is available")
    if device not in ("cpu", "cuda", "mps"):
        raise UsageError("--device must be auto, cpu, cuda or mps")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the hardware runs it natively (CUDA with bf16, CPUs with AVX-512 BF16 / AMX), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            return "fp32"
        return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"
    return "fp32"
