"""The CPU fast path of the training step, installed only while training (:func:`training_fastpath`).

Dropout masks: torch's CPU dropout draws its mask with ``bernoulli_`` at ~5 ns per element, 27% of a training step
here (benchmarks/README.md). Here the mask comes from numpy's PCG64DXSM bit generator, 16 random bits per element
compared against a threshold: an element is dropped with probability ``q = round(p * 2**16) / 2**16``
(|q - p| <= 2**-17) and kept ones are scaled by ``1 / (1 - q)``. The mask is built in the activation's dtype in one
pass and reused by the backward, as torch's is; like torch's, a bf16 mask rounds the scale (1/0.9 becomes 1.109375,
so the mean of a bf16 activation is kept at 0.9984 of itself; fp32 activations keep it exactly). Hidden dropout goes
through the model's ``nn.Dropout`` modules (swapped for :class:`Dropout`), attention-probability dropout through an
attention function registered with transformers (:func:`attention`, transformers' eager computation otherwise).

Not used on other devices: CUDA's dropout is a fused kernel. Modules and configs are restored on exit, so saved
models are unchanged. (A persistent embedding-gradient buffer and glibc allocator tuning were measured here too and
dropped: no gain inside the training loop, benchmarks/README.md.)
"""

from __future__ import annotations

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


@contextmanager
def training_fastpath(models, seed: int, device: torch.device):
    """While active, the dropout of ``models`` (one model or several sharing modules) draws from ``Stream(seed)``;
    only on CPU."""
    global _active
    if isinstance(models, nn.Module):
        models = [models]
    if device.type != "cpu":
        yield None
        return
    stream = Stream(seed)
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    configs = []
    seen: set[int] = set()
    for model in models:
        for parent in model.modules():
            if id(parent) in seen:
                continue
            seen.add(id(parent))
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
        for config, impl in configs:
            config._attn_implementation = impl
