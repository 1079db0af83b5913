"""``ticketctl search --method structured``: Super Tickets (Liang et al., 2021).

Finetune the dense model (or reuse the dense finetune of the same seed and config), score every attention head and
FFN sublayer by its expected |dL/d gate| over the training set, normalise head scores within each layer, and write
one structured mask per requested sparsity level and ticket kind (winning / random / losing). Scores are computed
once per seed and kept in ``OUT/cache``, so more levels or kinds later cost nothing but the selection.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ticketctl import artifacts
from ticketctl.context import Context
from ticketctl.errors import UsageError
from ticketctl.finetune import IDENTITY_DEFAULTS, dense_weights_path, recording, training_identity, with_fraction
from ticketctl.structured import TICKETS, normalize_heads, ticket, weights_remaining
from ticketctl.train import TrainConfig, derive_seed

# Bump when the importance computation changes its numbers.
IMPORTANCE_VERSION = 1
STRUCTURED_DEFAULTS = {**IDENTITY_DEFAULTS}


def parse_tickets(text: str) -> list[str]:
    kinds = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in kinds if t not in TICKETS]
    if not kinds or bad:
        raise UsageError(f"--ticket must be one or more of {', '.join(TICKETS)} (comma-separated)")
    if len(set(kinds)) != len(kinds):
        raise UsageError(f"--ticket {text!r}: a kind is given twice")
    return kinds


def structured_search(ctx: Context, cfg: TrainConfig, seed: int, out: Path, levels: list[float], kinds: list[str],
                      device_name: str = "auto", force: bool = False, train_fraction: float = 1.0) -> list[Path]:
    cfg.validate()
    ctx = with_fraction(ctx, train_fraction, seed)
    artifacts.ensure_writable(out)
    dense_identity = {**training_identity(ctx, cfg, seed, ctx.train), "train_fraction": train_fraction}
    score_identity = {**dense_identity, "method": "structured", "importance": IMPORTANCE_VERSION}
    targets = []
    for kind in kinds:
        for level in levels:
            identity = {**score_identity, "ticket": kind, "sparsity": level}
            h = artifacts.config_hash(identity, STRUCTURED_DEFAULTS)
            targets.append((kind, level, identity, h, out / artifacts.mask_name(ctx.task.name, kind, seed, level, h)))
    if not force and all(artifacts.existing(t[-1], "mask") for t in targets):
        ctx.log.info("finished already (same config): reusing " + ", ".join(str(t[-1]) for t in targets))
        return [t[-1] for t in targets]

    sh = artifacts.config_hash(score_identity, STRUCTURED_DEFAULTS)
    cache = out / artifacts.CACHE_DIR / artifacts.importance_name(ctx.task.name, seed, sh)
    scores = None if force else artifacts.existing(cache, "weights")
    if scores is None:
        head_raw, ffn, layers_info = compute_scores(ctx, cfg, seed, out, dense_identity, device_name, force)
        artifacts.write_artifact(cache, "weights", {"head_scores_raw": head_raw.astype(np.float32),
                                                    "ffn_scores": ffn.astype(np.float32)},
                                 {**ctx.base_meta(), "seed": str(seed), "config": score_identity, **layers_info})
        scores = artifacts.read_artifact(cache, "weights")
    else:
        ctx.log.info(f"importance scores of seed {seed}: reusing {cache}")
    head_raw = scores.tensors["head_scores_raw"].astype(np.float64)
    ffn = scores.tensors["ffn_scores"].astype(np.float64)
    head = normalize_heads(head_raw)
    weights_info = scores.meta.get("weights") or {}

    paths = []
    for kind, level, identity, h, path in targets:
        rng = np.random.default_rng(derive_seed(seed, f"random-ticket:{level!r}")) if kind == "random" else None
        mask = ticket(head, ffn, level, kind, rng)
        remaining = weights_remaining(mask, weights_info)
        tensors = {"heads_keep": mask.heads.astype(np.uint8), "ffn_keep": mask.ffn.astype(np.uint8),
                   "head_scores": head.astype(np.float32), "head_scores_raw": head_raw.astype(np.float32),
                   "ffn_scores": ffn.astype(np.float32)}
        meta = {**ctx.base_meta(), "method": "structured", "seed": str(seed), "policy": kind,
                "sparsity": f"{mask.sparsity:.6f}", "target_sparsity": f"{level:.6f}",
                "ffn_sparsity": f"{mask.ffn_sparsity:.6f}", "weights_remaining": f"{remaining:.6f}",
                "heads_kept": str(int(mask.heads.sum())), "heads_total": str(mask.heads.size),
                "ffn_kept": str(int(mask.ffn.sum())), "config": identity, "config_hash": h,
                "parents": [scores.parent_ref()], "importance_examples": scores.meta.get("importance_examples")}
        artifacts.write_artifact(path, "mask", tensors, meta)
        ctx.log.info(f"{kind} ticket at {level:.0%}: {int(mask.heads.sum())}/{mask.heads.size} heads, "
                     f"{int(mask.ffn.sum())}/{mask.ffn.size} FFNs, {remaining:.1%} of encoder weights -> {path}")
        paths.append(path)
    return paths


def compute_scores(ctx: Context, cfg: TrainConfig, seed: int, out: Path, dense_identity: dict, device_name: str,
                   force: bool):
    import torch

    from ticketctl import distributed, modeling, structured, train
    from ticketctl.search import share_dense_round

    device = train.pick_device(distributed.setup(device_name))
    torch.manual_seed(seed)
    model = modeling.load_model(ctx.model_dir, ctx.task.num_labels, cfg.dropout,
                                modeling.attention_for(device.type)).to(device)
    tokenizer = modeling.load_tokenizer(ctx.model_dir)
    modeling.check_max_length(cfg.max_length, model, tokenizer)
    lay = structured.layout(model)
    pad = tokenizer.pad_token_id or 0
    enc = train.encode(tokenizer, ctx.train, cfg.max_length)
    cached = None if force else artifacts.existing(dense_weights_path(ctx, dense_identity, seed, out), "weights")
    state = model.state_dict()
    if cached is not None and all(k in cached.tensors for k, v in state.items() if v.is_floating_point()):
        model.load_state_dict({k: torch.from_numpy(cached.tensors[k]) for k, v in state.items()
                               if v.is_floating_point()}, strict=False)
        ctx.log.info(f"reusing the dense finetune of seed {seed} ({cached.path})")
    else:
        ctx.log.info(f"structured search {ctx.task.name} seed={seed}: dense finetune on {len(ctx.train)} examples, "
                     f"{ctx.model_name}, {device.type}/{cfg.precision}")
        t0 = time.perf_counter()
        curve: list = []
        with ctx.log.progress(f"dense s{seed}", 1) as advance:
            train.train(model, enc, ctx.train.labels, cfg, seed, device, pad, on_step=recording(advance, curve))
        ctx.log.info(f"dense finetune in {time.perf_counter() - t0:.1f}s")
        share_dense_round(ctx, model, tokenizer, cfg, seed, out, dense_identity, device, curve)
    t0 = time.perf_counter()
    with ctx.log.progress("importance", 1) as advance:
        head_raw, ffn = structured.importance(model, enc, ctx.train.labels, device, pad, cfg.precision,
                                              on_step=advance)
    ctx.log.info(f"importance of {lay.num_layers * lay.num_heads} heads and {lay.num_layers} FFNs over "
                 f"{len(ctx.train)} training examples in {time.perf_counter() - t0:.1f}s")
    info = {"weights": structured.unit_sizes(model), "importance_examples": str(len(ctx.train))}
    return head_raw, ffn, info
