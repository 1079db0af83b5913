"""CPU fast paths of the training step, installed only while training (:func:`training_fastpath`).

Two costs that a profile of a CPU training step shows and that have nothing to do with the model's arithmetic
(benchmarks/README.md):

* **Dropout masks.** torch's CPU dropout draws its mask with ``bernoulli_`` at ~5 ns per element (27% of a step).
  Here the mask comes from numpy's PCG64DXSM bit generator, 16 random bits per element compared against a threshold:
  an element is dropped with probability ``q = round(p * 2**16) / 2**16`` (|q - p| <= 2**-17) and kept ones are
  scaled by ``1 / (1 - q)``, so the expectation is exactly preserved. The mask is built in the activation's dtype in
  one pass, as torch's is, and reused by the backward.
* **The word-embedding gradient.** Its backward allocates a fresh dense (vocabulary x width) tensor every step
  (47 MB for MiniLM's 30,522 x 384); glibc serves that size with a new ``mmap`` whose pages fault in one by one
  (~50 ms a step here). Here the gradient is accumulated (``index_add_``) into one buffer allocated once and handed to
  the parameter as its ``.grad``: same values, same dense AdamW update, no allocation.
* **Page faults of other temporaries.** glibc hands memory above its trim threshold back to the OS and maps large
  blocks afresh, so the step's multi-MB activations and casts fault their pages in again every step.
  :func:`tune_allocator` raises the mmap threshold to glibc's maximum (32 MB) and keeps up to 1 GB of freed heap
  (``mallopt``), which PyTorch's CPU tuning guide gets from jemalloc or tcmalloc instead (~8% of a step here).

Neither is used on other devices: CUDA's dropout is a fused kernel and its caching allocator reuses memory. Modules
and configs are restored on exit, so saved models are unchanged.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

ATTENTION = "ticketctl_eager"
_SPAN = 1 << 16
_active: "Stream | None" = None


class Stream:
    """A seeded source of dropout masks (one per training run, like a seeded torch generator)."""

    def __init__(self, seed: int):
        self.bits = np.random.PCG64DXSM(seed)
        self._scalars: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(self, shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
        """A mask of ``shape``: 0 with probability q ~ p, else 1 / (1 - q), in ``dtype``."""
        n = int(np.prod(shape))
        drop = int(round(p * _SPAN))
        raw = self.bits.random_raw((n + 3) // 4).view(np.int16)[:n]  # four 16-bit draws per 64-bit output
        draws = torch.from_numpy(raw).view(shape)  # uniform on [-2**15, 2**15)
        key = (drop, dtype)
        if key not in self._scalars:
            self._scalars[key] = (torch.tensor(_SPAN / (_SPAN - drop), dtype=dtype), torch.tensor(0, dtype=dtype))
        scale, zero = self._scalars[key]
        return torch.where(draws >= drop - _SPAN // 2, scale, zero)

    def apply(self, x: torch.Tensor, p: float) -> torch.Tensor:
        if p <= 0:
            return x
        if p >= 1:
            return x * 0
        return x * self.keep(x.shape, p, x.dtype)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose training mask comes from a :class:`Stream`."""

    def __init__(self, p: float, stream: Stream):
        super().__init__(p)
        self.stream = stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, self.training)
        return self.stream.apply(x, self.p)


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Scaled dot-product attention as transformers' eager path computes it (scores, additive mask, softmax,
    dropout on the probabilities, weighted sum), with the probabilities' dropout drawn from the active stream."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1)
    if module.training and dropout > 0:
        if _active is not None and probs.device.type == "cpu":
            probs = _active.apply(probs, dropout)
        else:
            probs = nn.functional.dropout(probs, p=dropout, training=True)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


_registered = False


def _register() -> bool:
    """Make :func:`attention` selectable by name; False where transformers has no attention interface (< 4.48),
    whose models then keep torch's dropout for the attention probabilities."""
    global _registered
    if not _registered:
        try:
            from transformers import AttentionInterface
        except ImportError:
            return False
        AttentionInterface.register(ATTENTION, attention)
        try:  # the padding mask: transformers gives an unregistered attention function none at all
            from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
        except ImportError:  # older transformers build the additive mask whatever the attention function
            pass
        else:
            ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
        _registered = True
    return True


class _Lookup(torch.autograd.Function):
    """``F.embedding`` whose weight gradient goes straight into the module's persistent buffer."""

    @staticmethod
    def forward(ctx, ids, weight, module):
        ctx.save_for_backward(ids)
        ctx.module = module
        return nn.functional.embedding(ids, weight, module.padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        module = ctx.module
        weight = module.weight
        flat = ids.reshape(-1)
        rows = grad.reshape(-1, grad.shape[-1]).to(weight.dtype)
        if module.padding_idx is not None:  # as nn.Embedding: the padding row gets no gradient
            used = flat != module.padding_idx
            flat, rows = flat[used], rows[used]
        if weight.grad is None:  # first backward since zero_grad(set_to_none=True): reuse the buffer
            buffer = module.ticketctl_grad
            buffer.zero_()
            weight.grad = buffer
        weight.grad.index_add_(0, flat, rows)
        return None, None, None


def _embedding_forward(self, ids):
    if not self.training or not self.weight.requires_grad or not torch.is_grad_enabled():
        return nn.functional.embedding(ids, self.weight, self.padding_idx)
    return _Lookup.apply(ids, self.weight, self)


def _plain_embedding(module: nn.Module) -> bool:
    return (type(module) is nn.Embedding and module.max_norm is None
            and not module.scale_grad_by_freq and not module.sparse and module.weight.device.type == "cpu")


_tuned = False


def tune_allocator() -> bool:
    """Keep freed memory for reuse instead of returning it to the OS (glibc only; a no-op elsewhere). Once per
    process; it only changes when glibc maps and trims memory, never what is computed."""
    global _tuned
    if _tuned:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        _tuned = bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)
                      and libc.mallopt(m_top_pad, 64 << 20))
    except (OSError, AttributeError):
        _tuned = False
    return _tuned


@contextmanager
def training_fastpath(models, seed: int, device: torch.device):
    """While active, the dropout of ``models`` (one model or several sharing modules) draws from ``Stream(seed)``
    and embedding tables accumulate their gradients in persistent buffers; only on CPU."""
    global _active
    if isinstance(models, nn.Module):
        models = [models]
    if device.type != "cpu":
        yield None
        return
    tune_allocator()
    stream = Stream(seed)
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    embeddings: list[nn.Module] = []
    configs = []
    seen: set[int] = set()
    for model in models:
        for parent in model.modules():
            if id(parent) in seen:
                continue
            seen.add(id(parent))
            if _plain_embedding(parent):
                parent.ticketctl_grad = torch.zeros_like(parent.weight)
                parent.forward = types.MethodType(_embedding_forward, parent)
                embeddings.append(parent)
            for name, child in list(parent.named_children()):
                if type(child) is nn.Dropout:
                    fast = Dropout(child.p, stream)
                    fast.train(child.training)
                    setattr(parent, name, fast)
                    swapped.append((parent, name, child))
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == "eager" \
                and all(c is not config for c, _ in configs) and _register():
            configs.append((config, "eager"))
            config._attn_implementation = ATTENTION
    previous, _active = _active, stream
    try:
        yield stream
    finally:
        _active = previous
        for parent, name, child in swapped:
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)
        for module in embeddings:
            del module.forward
            del module.ticketctl_grad
        for config, impl in configs:
            config._attn_implementation = impl
