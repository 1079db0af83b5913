"""A member's inference cost: the parameters it uses and its FLOPs per example, computed from the structure that
ran (kept heads and FFN sublayers) and the token counts of the evaluated data.

FLOPs count the matrix products (a multiply-add is 2 FLOPs) of the encoder, pooler and classifier for each example
at its own length (no padding): per layer with ``a`` = kept heads x head size, for L tokens, hidden size H and FFN
size I: query/key/value 3 x 2LHa, attention scores and weighted sum 2 x 2L^2a, output projection 2LaH, and a kept
FFN 2 x 2LHI; then 2H^2 (pooler) and 2HC (classifier). Embedding lookups, biases, LayerNorm, softmax and GELU are
left out (under 1% of the total for the default model at MRPC lengths). A factorised embedding (ALBERT, small
ELECTRA: ``embedding_size`` E != H) adds its projection, 2EH per token. DeBERTa-v2's disentangled relative-position
attention terms are not counted (its FLOPs are those of a BERT layer of the same sizes). Unstructured sparsity is
counted as dense compute: no sparse kernel runs it (``sparse_kernel: false``); its zeros show in
``nonzero_params`` only.

Parameters follow the same per-layer formula, calibrated by the model's own count where it is given: families whose
other parts differ from BERT's (ALBERT's shared layers, DeBERTa's relative embeddings, DistilBERT's missing token
types) get their real totals, and the formula says what each pruned head or FFN removes. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dims:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    positions: int
    types: int
    labels: int
    embedding: int = 0  # a factorised embedding's width (ALBERT, ELECTRA); 0: the hidden size

    # Config names of each size by family: BERT, RoBERTa, ELECTRA, ALBERT and DeBERTa-v2 use BERT's names,
    # DistilBERT its own (dim, n_layers, n_heads, hidden_dim).
    ALIASES = {"hidden_size": ("hidden_size", "dim"), "num_hidden_layers": ("num_hidden_layers", "n_layers"),
               "num_attention_heads": ("num_attention_heads", "n_heads"),
               "intermediate_size": ("intermediate_size", "hidden_dim")}

    @property
    def head_size(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def of(cls, config) -> "Dims":
        """The sizes of a model config (a transformers config or its config.json as a dict).

        Raises InputError when a size is missing (an architecture that is not a BERT-family encoder)."""
        from ticketctl.errors import InputError

        raw = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)

        def size(name: str) -> int:
            for key in cls.ALIASES[name]:
                if raw(key) is not None:
                    return int(raw(key))
            raise InputError(f"the model config has no {' or '.join(cls.ALIASES[name])}: not a BERT-family encoder")

        hidden = size("hidden_size")
        types = raw("type_vocab_size", 0) or 0
        return cls(hidden, size("num_hidden_layers"), size("num_attention_heads"), size("intermediate_size"),
                   int(raw("vocab_size", 0) or 0), int(raw("max_position_embeddings", 0) or 0), int(types),
                   int(raw("num_labels", 2) or 2), int(raw("embedding_size", hidden) or hidden))


def flops_per_example(d: Dims, heads: np.ndarray, ffn: np.ndarray, lengths: np.ndarray) -> float:
    """Mean FLOPs of one forward pass over examples of these token counts, keeping ``heads[i]`` heads and FFN
    ``ffn[i]`` in layer i."""
    L = np.asarray(lengths, dtype=np.float64)
    a = np.asarray(heads, dtype=np.float64) * d.head_size  # (layers,)
    f = np.asarray(ffn, dtype=np.float64)
    H, I = float(d.hidden), float(d.intermediate)
    linear = (3 * 2 * H * a + 2 * a * H + f * 4 * H * I).sum()  # per token
    quadratic = (2 * 2 * a).sum()  # per token pair
    if d.embedding and d.embedding != d.hidden:
        linear += 2 * d.embedding * H  # the embedding projection E -> H
    per = linear * L + quadratic * L**2 + 2 * H * H + 2 * H * d.labels
    return float(per.mean()) if len(per) else 0.0


def parameters(d: Dims, heads: np.ndarray, ffn: np.ndarray) -> int:
    """Parameters of the classifier keeping these heads and FFNs (embeddings, LayerNorms and biases included)."""
    H, I, hs = d.hidden, d.intermediate, d.head_size
    embeddings = (d.vocab + d.positions + d.types) * H + 2 * H
    total = embeddings
    for h, keep in zip(np.asarray(heads).tolist(), np.asarray(ffn).tolist()):
        a = int(h) * hs
        total += 3 * (H * a + a) + a * H + H  # query/key/value, output projection (its bias always stays)
        total += 2 * 2 * H  # the two LayerNorms
        if keep:
            total += H * I + I + I * H + H
    return int(total + H * H + H + H * d.labels + d.labels)


def member_cost(config, structure, lengths: np.ndarray, nonzero: int, total: int | None = None,
                physical=None) -> dict:
    """The ``cost`` record of a logits artifact: this member and one dense member of the same model on the same
    examples, and their ratios. ``total``: the parameters of the model as it ran, which is pruned physically to
    ``physical`` (None: at full size); it calibrates the formula to the family (see the module docstring).

    Raises InputError for a config without BERT-family sizes."""
    d = Dims.of(config)
    full_heads, full_ffn = np.full(d.layers, d.heads), np.ones(d.layers, dtype=bool)
    if structure is None:
        heads, ffn = full_heads, full_ffn
    else:
        heads, ffn = np.asarray(structure.heads).sum(axis=1), np.asarray(structure.ffn, dtype=bool)
    flops = flops_per_example(d, heads, ffn, lengths)
    dense_flops = flops_per_example(d, full_heads, full_ffn, lengths)
    offset = 0
    if total is not None:
        ran = (full_heads, full_ffn) if physical is None else (np.asarray(physical.heads).sum(axis=1),
                                                               np.asarray(physical.ffn, dtype=bool))
        offset = int(total) - parameters(d, *ran)
    params, dense_params = parameters(d, heads, ffn) + offset, parameters(d, full_heads, full_ffn) + offset
    return {"params": params, "nonzero_params": int(nonzero), "flops_per_example": round(flops),
            "mean_tokens": round(float(np.mean(lengths)), 3) if len(lengths) else 0.0,
            "dense_params": dense_params, "dense_flops_per_example": round(dense_flops),
            "relative_flops": round(flops / dense_flops, 6) if dense_flops else 1.0,
            "relative_params": round(params / dense_params, 6), "sparse_kernel": False}
