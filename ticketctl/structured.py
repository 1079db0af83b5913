"""Structured tickets (Super Tickets, Liang et al., 2021): attention heads and FFN sublayers of a BERT-family
encoder as the units of pruning.

transformers 5 dropped ``head_mask`` and ``prune_heads``, so everything here is ticketctl's own and works on the
module layout every BERT-family model shares (``encoder.layer[i]`` with ``attention.self.{query,key,value}``,
``attention.output.dense``, ``intermediate.dense``, ``output.dense``):

- a head is silenced by zeroing its block of columns of ``attention.output.dense`` (the head's context vector is
  the input of that projection), an FFN sublayer by zeroing ``output.dense`` (weight and bias), so the sublayer adds
  nothing to the residual stream. ``expand`` turns head/FFN keep-vectors into such element masks, and training with
  them is the same masked training as for IMP tickets.
- ``Gates`` multiplies each head's context vector and each FFN's output by a gate in the forward pass (hooks):
  importance scores are |dL/d gate| (Michel et al., 2019), and ``share`` gates each task's forward pass.
- ``prune_physically`` removes pruned heads and FFNs from the modules, so a saved ticket is smaller and faster.

The mask logic is numpy only (the analysis commands read masks without torch); torch is imported where used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ticketctl.errors import InputError, UsageError

TICKETS = ("winning", "random", "losing")
STRUCTURE_KEY = "ticketctl_structure"  # config.json entry of a physically pruned model


@dataclass
class Layout:
    layers: list  # the encoder's layer modules
    num_heads: int
    head_size: int
    prefix: str  # parameter-name prefix of the layers, e.g. "bert.encoder.layer"

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def layout(model) -> Layout:
    """Where the heads and FFNs of a BERT-family classifier live; an InputError for any other architecture."""
    base = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    need = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense")
    if layers is None or not all(_has(layer, n) for layer in layers for n in need):
        raise InputError("structured pruning needs a BERT-family encoder (encoder.layer[i] with attention.self."
                         "query/key/value, attention.output.dense, intermediate.dense, output.dense)")
    heads = model.config.num_attention_heads
    size = model.config.hidden_size // heads
    return Layout(list(layers), heads, size, f"{model.base_model_prefix}.encoder.layer")


def _has(module, dotted: str) -> bool:
    import torch

    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return False
    return isinstance(module, torch.nn.Linear)


# ---------------------------------------------------------------------------------------------- masks


@dataclass
class StructuredMask:
    heads: np.ndarray  # (layers, heads) bool, True = kept
    ffn: np.ndarray  # (layers,) bool

    def __post_init__(self) -> None:
        self.heads = np.asarray(self.heads, dtype=bool)
        self.ffn = np.asarray(self.ffn, dtype=bool)
        if self.heads.ndim != 2 or self.ffn.shape != (self.heads.shape[0],):
            raise InputError("structured mask: heads must be (layers, heads) and ffn (layers,)")

    @property
    def sparsity(self) -> float:
        """Fraction of heads pruned (the fraction of FFNs pruned is ``ffn_sparsity``)."""
        return 1.0 - self.heads.mean()

    @property
    def ffn_sparsity(self) -> float:
        return 1.0 - self.ffn.mean()

    def digest(self) -> str:
        import hashlib

        h = hashlib.sha256(b"structured\n")
        h.update(f"{list(self.heads.shape)}\n".encode())
        h.update(np.packbits(self.heads.ravel()).tobytes() + b"|" + np.packbits(self.ffn).tobytes())
        return h.hexdigest()

    def check_fits(self, lay: Layout, source: str) -> None:
        if self.heads.shape != (lay.num_layers, lay.num_heads):
            raise InputError(f"{source}: mask is for {self.heads.shape[0]} layers x {self.heads.shape[1]} heads, "
                             f"the model has {lay.num_layers} x {lay.num_heads}")
        if not self.heads.any(axis=1).all():
            raise InputError(f"{source}: a layer has no attention head left")


def select(scores: np.ndarray, n_pruned: int, min_keep: int = 0) -> np.ndarray:
    """Prune the ``n_pruned`` lowest-scoring units of ``scores`` (rows = layers), keeping at least ``min_keep`` per
    row; ties by position. Returns the keep mask."""
    keep = np.ones(scores.shape, dtype=bool)
    left = np.full(scores.shape[0], scores.shape[1] if scores.ndim == 2 else 1)
    flat = scores.reshape(len(left), -1)
    done = 0
    for i in np.argsort(flat.ravel(), kind="stable"):
        if done == n_pruned:
            break
        row = i // flat.shape[1]
        if left[row] > min_keep:
            keep.reshape(len(left), -1)[row, i % flat.shape[1]] = False
            left[row] -= 1
            done += 1
    if done < n_pruned:
        raise UsageError(f"cannot prune {n_pruned} units while keeping {min_keep} per layer")
    return keep


def ticket(head_scores: np.ndarray, ffn_scores: np.ndarray, sparsity: float, kind: str,
           rng: np.random.Generator | None = None) -> StructuredMask:
    """One-shot structured ticket: prune ``sparsity`` of the heads (at least one kept per layer) and of the FFN
    sublayers. ``winning`` prunes the least important, ``losing`` the most important, ``random`` a uniformly random
    set of the same size."""
    if kind not in TICKETS:
        raise UsageError(f"--ticket must be one of {', '.join(TICKETS)}")
    layers, heads = head_scores.shape
    n_heads = int(round(sparsity * layers * heads))
    n_ffn = int(round(sparsity * layers))
    if n_heads > layers * (heads - 1):
        raise UsageError(f"--sparsity {sparsity}: at most {layers * (heads - 1)} of {layers * heads} heads can go "
                         f"(one is kept per layer)")
    if kind == "random":
        assert rng is not None
        hs, fs = rng.random(head_scores.shape), rng.random(ffn_scores.shape)
    else:
        sign = 1.0 if kind == "winning" else -1.0
        hs, fs = sign * head_scores, sign * ffn_scores
    return StructuredMask(select(hs, n_heads, 1), select(fs[:, None], n_ffn, 0).ravel())


def parse_levels(text: str) -> list[float]:
    try:
        levels = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--sparsity {text!r}: expected a number or a comma-separated list") from None
    if not levels:
        raise UsageError("--sparsity: no level given")
    for s in levels:
        if not 0 < s < 1:
            raise UsageError(f"--sparsity must be in (0, 1), got {s:g}")
    if len(set(levels)) != len(levels):
        raise UsageError(f"--sparsity {text!r}: a level is given twice")
    return levels


# ---------------------------------------------------------------------------------------------- element masks


def unit_params(lay: Layout, layer: int) -> dict[str, str]:
    p = f"{lay.prefix}.{layer}"
    return {"q": f"{p}.attention.self.query", "k": f"{p}.attention.self.key", "v": f"{p}.attention.self.value",
            "o": f"{p}.attention.output.dense", "i": f"{p}.intermediate.dense", "f": f"{p}.output.dense"}


def expand(model, mask: StructuredMask) -> dict[str, torch.Tensor]:
    """Element keep-masks (bool, parameter's shape) of every parameter a pruned head or FFN owns: the head's rows of
    query/key/value (weights and biases) and its columns of the attention output projection; the FFN's
    intermediate and output projections. Training with these masks is training the pruned model."""
    import torch

    lay = layout(model)
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    d = lay.head_size
    for layer in range(lay.num_layers):
        names = unit_params(lay, layer)
        rows = torch.from_numpy(np.repeat(mask.heads[layer], d))
        for key in ("q", "k", "v"):
            w = params[f"{names[key]}.weight"]
            out[f"{names[key]}.weight"] = rows[:, None].expand(w.shape).clone()
            out[f"{names[key]}.bias"] = rows.clone()
        w = params[f"{names['o']}.weight"]
        out[f"{names['o']}.weight"] = rows[None, :].expand(w.shape).clone()
        keep_ffn = bool(mask.ffn[layer])
        for key in ("i", "f"):
            for kind in ("weight", "bias"):
                name = f"{names[key]}.{kind}"
                if name in params:
                    out[name] = torch.full(params[name].shape, keep_ffn, dtype=torch.bool)
    return out


def unit_sizes(model) -> dict[str, int]:
    """Parameters owned by one head, by one FFN, and by the rest of a layer (LayerNorms, output-projection bias):
    recorded with the importance scores, so masks can report their size without a model."""
    lay = layout(model)
    params = dict(model.named_parameters())
    names = unit_params(lay, 0)

    def size(n):
        return params[f"{n}.weight"].numel() + (params[f"{n}.bias"].numel() if f"{n}.bias" in params else 0)

    d = lay.head_size
    hidden = params[f"{names['o']}.weight"].shape[0]
    per_head = 3 * (hidden * d + d) + hidden * d
    per_ffn = size(names["i"]) + size(names["f"])
    layer_total = sum(p.numel() for n, p in params.items() if n.startswith(f"{lay.prefix}.0."))
    return {"per_head": per_head, "per_ffn": per_ffn, "per_layer_rest": layer_total - per_head * lay.num_heads - per_ffn}


def weights_remaining(mask: StructuredMask, sizes: dict[str, int]) -> float:
    """Fraction of the encoder layers' parameters a structured ticket keeps, from ``unit_sizes``."""
    per_head, per_ffn, per_layer_rest = sizes["per_head"], sizes["per_ffn"], sizes["per_layer_rest"]
    layers = mask.heads.shape[0]
    total = layers * (mask.heads.shape[1] * per_head + per_ffn + per_layer_rest)
    kept = mask.heads.sum() * per_head + mask.ffn.sum() * per_ffn + layers * per_layer_rest
    return float(kept / total)


# ---------------------------------------------------------------------------------------------- gates


class Gates:
    """Forward hooks multiplying each head's context vector (input of ``attention.output.dense``) and each FFN's
    output by a gate. ``heads``: (layers, heads) or per example (batch, layers, heads); ``ffn``: (layers,) or
    (batch, layers). ``None`` disables a kind of gate."""

    def __init__(self, model):
        self.lay = layout(model)
        self.heads: torch.Tensor | None = None
        self.ffn: torch.Tensor | None = None
        self.handles = []
        for i, layer in enumerate(self.lay.layers):
            self.handles.append(layer.attention.output.dense.register_forward_pre_hook(self._head_hook(i)))
            self.handles.append(layer.output.dense.register_forward_hook(self._ffn_hook(i)))

    def _head_hook(self, layer: int):
        def hook(module, args):
            if self.heads is None:
                return None
            x = args[0]
            g = self.heads[..., layer, :].to(x.dtype)  # (H,) or (B, H)
            shape = x.shape
            x = x.view(*shape[:-1], self.lay.num_heads, -1)
            g = g.view(-1, *([1] * (x.dim() - 3)), self.lay.num_heads, 1) if g.dim() == 2 else g.view(-1, 1)
            return ((x * g).view(shape),) + tuple(args[1:])

        return hook

    def _ffn_hook(self, layer: int):
        def hook(module, args, output):
            if self.ffn is None:
                return None
            g = self.ffn[..., layer].to(output.dtype)
            return output * (g.view(-1, *([1] * (output.dim() - 1))) if g.dim() == 1 else g)

        return hook

    def set(self, heads: torch.Tensor | None, ffn: torch.Tensor | None) -> None:
        self.heads, self.ffn = heads, ffn

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def example_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    import torch

    if logits.shape[-1] == 1 and target.dtype.is_floating_point:
        return (logits.view(-1) - target.view(-1)) ** 2
    return torch.nn.functional.cross_entropy(logits, target, reduction="none")


def importance(model, enc, labels: np.ndarray, device: torch.device, pad_id: int, precision: str,
               batch_size: int = 32, on_step=None) -> tuple[np.ndarray, np.ndarray]:
    """Expected |dL/d gate| over the examples (Michel et al., 2019): the derivative of each example's own loss with
    respect to each head's and each FFN's gate at 1, in absolute value, averaged over examples. Per-example gates
    make this exact in one backward pass per batch (an example's gate touches only its own loss). Evaluation mode
    (no dropout); the model's parameters get no gradients. Returns raw (layers, heads) and (layers,) scores."""
    import torch

    from ticketctl.train import autocast, collate

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


def normalize_heads(scores: np.ndarray) -> np.ndarray:
    """Head scores divided by their layer's L2 norm (Michel et al.; Liang et al.), so layers compare."""
    norm = np.linalg.norm(scores, axis=1, keepdims=True)
    return scores / np.where(norm > 0, norm, 1.0)


# ---------------------------------------------------------------------------------------------- physical pruning


def _take(linear: torch.nn.Linear, index: torch.Tensor, dim: int) -> torch.nn.Linear:
    import torch

    w = linear.weight.detach().index_select(dim, index).clone()
    bias = linear.bias is not None and dim == 0
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach().index_select(0, index) if bias else linear.bias.detach())
    return new


def prune_physically(model, mask: StructuredMask) -> None:
    """Remove pruned heads (rows of query/key/value, columns of the output projection) and pruned FFNs (an empty
    intermediate layer and a bias-free output projection from 0 features, which outputs zeros) from the modules.
    Gives the same outputs as training-time masking; records the structure in the config for reloading."""
    import torch

    import warnings

    lay = layout(model)
    mask.check_fits(lay, "mask")
    d = lay.head_size
    warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
    for i, layer in enumerate(lay.layers):
        att = layer.attention
        kept = np.flatnonzero(mask.heads[i])
        if len(kept) < lay.num_heads:
            index = torch.from_numpy(np.concatenate([np.arange(h * d, (h + 1) * d) for h in kept])).to(
                att.output.dense.weight.device)
            for key in ("query", "key", "value"):
                setattr(att.self, key, _take(getattr(att.self, key), index, 0))
            att.output.dense = _take(att.output.dense, index, 1)
            if hasattr(att.self, "num_attention_heads"):
                att.self.num_attention_heads = len(kept)
            if hasattr(att.self, "all_head_size"):
                att.self.all_head_size = len(kept) * d
        if not mask.ffn[i]:
            dense = layer.intermediate.dense
            out = layer.output.dense
            layer.intermediate.dense = torch.nn.Linear(dense.in_features, 0, device=dense.weight.device,
                                                       dtype=dense.weight.dtype)
            layer.output.dense = torch.nn.Linear(0, out.out_features, bias=False, device=out.weight.device,
                                                 dtype=out.weight.dtype)
    setattr(model.config, STRUCTURE_KEY, {"heads": mask.heads.astype(int).tolist(), "ffn": mask.ffn.astype(int).tolist()})


def structure_of(config) -> StructuredMask | None:
    spec = getattr(config, STRUCTURE_KEY, None)
    if not spec:
        return None
    return StructuredMask(np.asarray(spec["heads"], dtype=bool), np.asarray(spec["ffn"], dtype=bool))
