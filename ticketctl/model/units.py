"""The units of structured pruning in a BERT-family encoder, and what a structured mask does to a model.

transformers 5 dropped ``head_mask`` and ``prune_heads``, so everything here is ticketctl's own and works on the
module layout every BERT-family model shares (``encoder.layer[i]`` with ``attention.self.{query,key,value}``,
``attention.output.dense``, ``intermediate.dense``, ``output.dense``):

- a head is silenced by zeroing its block of columns of ``attention.output.dense`` (the head's context vector is
  the input of that projection), an FFN sublayer by zeroing ``output.dense`` (weight and bias), so the sublayer adds
  nothing to the residual stream. ``expand`` turns head/FFN keep-vectors into such element masks.
- ``prune_physically`` removes pruned heads and FFNs from the modules, so a ticket trains and runs at the compute
  of what it keeps, and a saved ticket is smaller and faster.
- ``prunable_parameters``: the weight matrices IMP prunes (unstructured tickets).

Masks arrive as keep-arrays (``heads``: layers x heads, ``ffn``: layers, True = kept), the fields of
:class:`ticketctl.masks.structured.StructuredMask`. torch is imported where used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ticketctl.errors import InputError

if TYPE_CHECKING:
    import torch

STRUCTURE_KEY = "ticketctl_structure"  # config.json entry of a physically pruned model


@dataclass(frozen=True)
class Family:
    """Where one encoder family keeps a layer's heads and FFN: module paths relative to a layer."""

    name: str
    layers: str  # path of the layer list inside the base model
    q: str
    k: str
    v: str
    o: str  # the attention output projection (its input is the heads' context vectors)
    i: str  # the FFN's first projection
    f: str  # the FFN's output projection
    head_rows: tuple[str, ...] = ()  # further projections with one block of rows per head (pruned with q/k/v)

    @property
    def keys(self) -> dict[str, str]:
        return {"q": self.q, "k": self.k, "v": self.v, "o": self.o, "i": self.i, "f": self.f}


# BERT's layout is shared by RoBERTa, ELECTRA, MiniLM, ...; DeBERTa-v2 renames the projections; DistilBERT has its
# own names. ALBERT is refused: its layers share one set of weights.
FAMILIES = (
    Family("bert", "encoder.layer", "attention.self.query", "attention.self.key", "attention.self.value",
           "attention.output.dense", "intermediate.dense", "output.dense"),
    Family("deberta-v2", "encoder.layer", "attention.self.query_proj", "attention.self.key_proj",
           "attention.self.value_proj", "attention.output.dense", "intermediate.dense", "output.dense",
           head_rows=("attention.self.pos_key_proj", "attention.self.pos_query_proj")),
    Family("distilbert", "transformer.layer", "attention.q_lin", "attention.k_lin", "attention.v_lin",
           "attention.out_lin", "ffn.lin1", "ffn.lin2"),
)
SHARED_LAYERS = "it shares one set of layer weights across all its layers (ALBERT), so a head or FFN cannot be " \
                "removed from one layer alone"


@dataclass
class Layout:
    layers: list  # the encoder's layer modules
    num_heads: int
    head_size: int
    prefix: str  # parameter-name prefix of the layers, e.g. "bert.encoder.layer"
    family: Family = FAMILIES[0]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def module(self, layer: int, key: str):
        """The Linear module ``key`` (q, k, v, o, i, f or a head_rows path) of a layer."""
        return _get(self.layers[layer], self.family.keys.get(key, key))

    def replace(self, layer: int, key: str, new) -> None:
        path = self.family.keys.get(key, key)
        parent, _, leaf = path.rpartition(".")
        setattr(_get(self.layers[layer], parent) if parent else self.layers[layer], leaf, new)


def layout(model) -> Layout:
    """Where the heads and FFNs of a BERT-family classifier live (BERT, RoBERTa, ELECTRA, MiniLM, DeBERTa-v2,
    DistilBERT); an InputError naming why for any other architecture (ALBERT's shared layers, no encoder layers)."""
    base = model.base_model
    if getattr(base, "encoder", None) is not None and hasattr(base.encoder, "albert_layer_groups"):
        raise InputError(f"structured pruning cannot prune {type(model).__name__}: {SHARED_LAYERS}; use IMP "
                         f"(search --method imp) instead")
    for family in FAMILIES:
        layers = _get(base, family.layers)
        if layers is not None and len(layers) and all(_has(layer, n) for layer in layers for n in family.keys.values()):
            config = model.config
            heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads")
            hidden = getattr(config, "hidden_size", None) or getattr(config, "dim")
            return Layout(list(layers), int(heads), int(hidden) // int(heads),
                          f"{model.base_model_prefix}.{family.layers}", family)
    raise InputError(f"structured pruning needs a BERT-family encoder ({', '.join(f.name for f in FAMILIES)} "
                     f"layouts: encoder.layer[i] with attention.self.query/key/value, attention.output.dense, "
                     f"intermediate.dense, output.dense); {type(model).__name__} has none of them")


def _get(module, dotted: str):
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _has(module, dotted: str) -> bool:
    import torch

    return isinstance(_get(module, dotted), torch.nn.Linear)


def unit_params(lay: Layout, layer: int) -> dict[str, str]:
    p = f"{lay.prefix}.{layer}"
    return {key: f"{p}.{path}" for key, path in lay.family.keys.items()}


def head_row_params(lay: Layout, layer: int) -> list[str]:
    """Full names of the further per-head projections a layer has (DeBERTa-v2's pos_key_proj, pos_query_proj)."""
    return [f"{lay.prefix}.{layer}.{path}" for path in lay.family.head_rows if _has(lay.layers[layer], path)]


def expand(model, mask) -> dict[str, torch.Tensor]:
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
        for name in [names[key] for key in ("q", "k", "v")] + head_row_params(lay, layer):
            w = params[f"{name}.weight"]
            out[f"{name}.weight"] = rows[:, None].expand(w.shape).clone()
            if f"{name}.bias" in params:
                out[f"{name}.bias"] = rows.clone()
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
    return {"per_head": per_head, "per_ffn": per_ffn,
            "per_layer_rest": layer_total - per_head * lay.num_heads - per_ffn}


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


def prune_physically(model, mask) -> None:
    """Remove pruned heads (rows of query/key/value, columns of the output projection) and pruned FFNs (an empty
    intermediate layer and a bias-free output projection from 0 features, which outputs zeros) from the modules.
    Gives the same outputs as training-time masking; records the structure in the config for reloading."""
    import warnings

    import torch

    lay = layout(model)
    check_fits(lay, mask, "mask")
    d = lay.head_size
    warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
    for i in range(lay.num_layers):
        kept = np.flatnonzero(mask.heads[i])
        if len(kept) < lay.num_heads:
            o = lay.module(i, "o")
            index = torch.from_numpy(np.concatenate([np.arange(h * d, (h + 1) * d) for h in kept])).to(
                o.weight.device)
            for key in ("q", "k", "v") + tuple(p for p in lay.family.head_rows if _has(lay.layers[i], p)):
                lay.replace(i, key, _take(lay.module(i, key), index, 0))
            lay.replace(i, "o", _take(o, index, 1))
            attention = _get(lay.layers[i], lay.family.q.rpartition(".")[0])
            for attr in ("num_attention_heads", "n_heads", "num_heads"):
                if isinstance(getattr(attention, attr, None), int):
                    setattr(attention, attr, len(kept))
            if hasattr(attention, "all_head_size"):
                attention.all_head_size = len(kept) * d
        if not mask.ffn[i]:
            dense, out = lay.module(i, "i"), lay.module(i, "f")
            lay.replace(i, "i", torch.nn.Linear(dense.in_features, 0, device=dense.weight.device,
                                                dtype=dense.weight.dtype))
            lay.replace(i, "f", torch.nn.Linear(0, out.out_features, bias=False, device=out.weight.device,
                                                dtype=out.weight.dtype))
    setattr(model.config, STRUCTURE_KEY,
            {"heads": mask.heads.astype(int).tolist(), "ffn": mask.ffn.astype(int).tolist()})


def full_state(model) -> dict[str, torch.Tensor]:
    """The state dict of a physically pruned model at the full model's shapes, with zeros where heads and FFNs were
    removed: what stock transformers loads (``from_pretrained`` of a plain config) and runs to the same outputs. A
    zero head contributes nothing (its query/key/value rows and output-projection columns are zero), a zero FFN adds
    nothing to the residual stream (GELU(0) = 0, zero output projection and bias)."""
    import torch

    structure = structure_of(model.config)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if structure is None:
        return state
    lay = layout(model)
    d = lay.head_size
    hidden = lay.num_heads * d
    inner = getattr(model.config, "intermediate_size", None) or getattr(model.config, "hidden_dim")
    for i in range(lay.num_layers):
        names = unit_params(lay, i)
        kept = np.flatnonzero(structure.heads[i])
        rows = torch.from_numpy(np.concatenate([np.arange(h * d, (h + 1) * d) for h in kept]))

        def widen(name: str, shape: tuple, dim: int, index) -> None:
            old = state[name]
            new = torch.zeros(shape, dtype=old.dtype, device=old.device)
            new.index_copy_(dim, index.to(old.device), old)
            state[name] = new

        for name in [names[key] for key in ("q", "k", "v")] + head_row_params(lay, i):
            widen(f"{name}.weight", (hidden, state[f"{name}.weight"].shape[1]), 0, rows)
            if f"{name}.bias" in state:
                widen(f"{name}.bias", (hidden,), 0, rows)
        widen(f"{names['o']}.weight", (hidden, hidden), 1, rows)
        if not structure.ffn[i]:
            ref = state[f"{names['o']}.weight"]
            for name, shape in ((f"{names['i']}.weight", (inner, hidden)), (f"{names['i']}.bias", (inner,)),
                                (f"{names['f']}.weight", (hidden, inner)), (f"{names['f']}.bias", (hidden,))):
                state[name] = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
    return state


@dataclass
class Structure:
    """The heads and FFN sublayers a physically pruned model kept (the fields of a structured mask)."""

    heads: np.ndarray  # (layers, heads) bool
    ffn: np.ndarray  # (layers,) bool


def structure_from(spec) -> Structure | None:
    """The structure recorded under ``STRUCTURE_KEY`` (a config attribute or config.json entry), or None."""
    if not spec:
        return None
    return Structure(np.asarray(spec["heads"], dtype=bool), np.asarray(spec["ffn"], dtype=bool))


def structure_of(config) -> Structure | None:
    """The structure of a physically pruned model, from its config; None for a full model."""
    return structure_from(getattr(config, STRUCTURE_KEY, None))


def check_fits(lay: Layout, mask, source: str) -> None:
    """A structured mask must have the model's layers x heads and keep a head in every layer."""
    if mask.heads.shape != (lay.num_layers, lay.num_heads):
        raise InputError(f"{source}: mask is for {mask.heads.shape[0]} layers x {mask.heads.shape[1]} heads, "
                         f"the model has {lay.num_layers} x {lay.num_heads}")
    if not mask.heads.any(axis=1).all():
        raise InputError(f"{source}: a layer has no attention head left")


def prunable_parameters(model) -> dict[str, "object"]:
    """Weight matrices of every Linear layer inside the pretrained encoder (attention, FFN and pooler), named as in
    ``model.named_parameters()``; embeddings, LayerNorms, biases and the task head are not prunable (Chen et al.,
    2020). Found by module type, not by BERT's names, so RoBERTa, MiniLM, ... work alike."""
    import torch

    base = model.base_model
    prefix = model.base_model_prefix
    out = {}
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.Linear):
            full = f"{prefix}.{name}.weight" if name else f"{prefix}.weight"
            out[full] = module.weight
    if not out:
        raise InputError("the model has no Linear layers in its encoder to prune")
    return out
