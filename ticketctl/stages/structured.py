"""``ticketctl search --method structured``: Super Tickets (Liang et al., 2021).

Finetune the dense model (or reuse the dense finetune of the same seed and config), score every attention head and
FFN sublayer by its expected |dL/d gate| over the training set, normalise head scores within each layer, and write
one structured mask per requested sparsity level and ticket kind (winning / random / losing), the scores reshaped by
the diversity policy of ``ticketctl.masks.policies`` (base, perturbed, active). Scores are computed once per seed and
kept in ``OUT/cache``, so more levels or kinds later cost nothing but the selection.

    identity -> finished already? -> setup and loop (importance scores, cached) -> write (one mask per kind, level)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ticketctl.data.sampling import training_subset
from ticketctl.errors import UsageError
from ticketctl.hparams import TrainConfig
from ticketctl.masks import policies
from ticketctl.masks.structured import TICKETS, check_distinct_levels, normalize_heads, ticket, weights_remaining
from ticketctl.stages import context, inputs, outputs
from ticketctl.stages.context import Context, StageSpec
from ticketctl.store.artifacts import existing, read_artifact, write_artifact
from ticketctl.store.identity import RunIdentity
from ticketctl.train.seeds import derive_seed

# Bump when the importance computation changes its numbers.
IMPORTANCE_VERSION = 1


def parse_tickets(text: str) -> list[str]:
    kinds = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in kinds if t not in TICKETS]
    if not kinds or bad:
        raise UsageError(f"--ticket must be one or more of {', '.join(TICKETS)} (comma-separated)")
    if len(set(kinds)) != len(kinds):
        raise UsageError(f"--ticket {text!r}: a kind is given twice")
    return kinds


@dataclass(frozen=True)
class StructuredSpec(StageSpec):
    """One structured search as the ``search --method structured`` options ask for it: everything its identities,
    paths and run follow from. ``task`` a task name (None: the custom task of ``data``), ``seed`` the member's seed
    (the dense finetune, the random ticket's draw, the policy's perturbation), ``levels`` the fractions of heads and
    FFN sublayers pruned (each in (0, 1); one mask per kind and level), ``kinds`` the ticket kinds (winning / random
    / losing), ``train_fraction`` the fraction of the training set the scores are computed on, ``policy`` a
    structured policy of ``ticketctl.masks.policies`` (base, perturbed, active), ``diversity`` its strength (None:
    the policy's default), ``priors`` the earlier members' structured mask paths (``--policy active``). ``train``,
    ``data``, ``run``: the option dataclasses (``context.StageSpec``). Numbers are stored as floats, sequences as
    tuples."""

    task: str | None
    seed: int = 0
    levels: tuple[float, ...] = (0.3,)
    kinds: tuple[str, ...] = ("winning",)
    train_fraction: float = 1.0
    policy: str = "base"
    diversity: float | None = None
    priors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set(levels=tuple(float(x) for x in self.levels), kinds=tuple(self.kinds),
                  train_fraction=float(self.train_fraction), priors=tuple(str(p) for p in self.priors or ()))

    def check(self) -> None:
        """Refuse options the policy does not take (UsageError, one line), before anything is loaded."""
        policies.get(policies.STRUCTURED, self.policy).check(self.kinds, self.priors, self.diversity)


def structured_search(task: str | None, seed: int = 0, *, levels: list[float], **options) -> list[Path]:
    """Structured tickets of ``task``'s model for ``seed``, one mask per kind and level; returns their paths.
    ``options`` are :class:`StructuredSpec`'s other fields (``kinds``, ``train_fraction``, ``policy``,
    ``diversity``, ``priors``, ``train``, ``data``, ``run``); ``policy`` perturbed / active makes winning tickets
    deliberately diverse (``ticketctl.masks.policies``). Raises UsageError for options the policy refuses or two
    levels that make the same ticket, InputError for unreadable priors."""
    return run_structured(StructuredSpec(task, seed, levels=levels, **options))


def run_structured(spec: StructuredSpec) -> list[Path]:
    """Check the options, resolve the device and the task (``context.start``), then :func:`structured_context`."""
    spec.check()
    ctx, cfg, device = context.start(spec.task, spec.train, spec.data, spec.run)
    return structured_context(spec, ctx, cfg, device)


@dataclass
class StructuredSearch:
    """A structured search resolved from its :class:`StructuredSpec` on a context (its training subset cut): the
    policy and its strength, the priors (artifacts and their ``StructuredMask``s), and the identities: the dense
    finetune's, the importance scores', and one per mask (kind, then level) with its path."""

    spec: StructuredSpec
    ctx: Context
    policy: policies.StructuredPolicy
    strength: float
    prior_arts: list
    prior_masks: list
    dense: RunIdentity
    scores_identity: RunIdentity
    masks: list[RunIdentity]
    paths: list[Path]


def resolve(spec: StructuredSpec, ctx: Context, cfg: TrainConfig, check_levels: bool = True) -> StructuredSearch:
    """The identity step, before any training: the training subset, the levels checked (``check_levels``: two
    levels that prune the same numbers of heads and FFNs refused, UsageError), the priors loaded and checked
    (InputError, UsageError), the identities built. ``ctx`` and ``cfg`` as :func:`ticketctl.stages.context.start`
    resolves them."""
    from ticketctl.model.loading import encoder_shape

    chosen = policies.get(policies.STRUCTURED, spec.policy)
    ctx = ctx.with_train(training_subset(ctx.train, spec.seed, fraction=spec.train_fraction,
                                         subset_seed=spec.data.subset_seed))
    layers, heads_per_layer = encoder_shape(ctx.model_dir)
    if check_levels:
        check_distinct_levels(list(spec.levels), layers, heads_per_layer)  # before any training
    prior_arts = [inputs.load_mask(ctx, p) for p in spec.priors]
    for a in prior_arts:
        if a.method != "structured" or a.structured().heads.shape != (layers, heads_per_layer):
            raise UsageError(f"--prior {a.path}: --policy active takes structured masks of this model")
    prior_masks = [a.structured() for a in prior_arts]
    strength = chosen.strength(spec.diversity)
    diverse = chosen.identity(strength, [m.digest() for m in prior_masks])
    dense = ctx.identity(cfg, spec.seed, train_fraction=spec.train_fraction)
    scores_identity = dense.importance(IMPORTANCE_VERSION)
    masks = [scores_identity.structured_ticket(kind, level, spec.policy, diverse)
             for kind in spec.kinds for level in spec.levels]
    return StructuredSearch(spec, ctx, chosen, strength, prior_arts, prior_masks, dense, scores_identity, masks,
                            [m.paths(spec.run.out)[0] for m in masks])


def targets(spec: StructuredSpec, ctx: Context, cfg: TrainConfig) -> list[Path]:
    """The paths of the masks :func:`structured_context` writes for ``spec`` (one per kind, then level), whether or
    not they exist, computed without training (the levels are not checked against each other): ``ctx`` and ``cfg``
    as :func:`ticketctl.stages.context.start` resolves them."""
    return resolve(spec, ctx, cfg, check_levels=False).paths


def structured_context(spec: StructuredSpec, ctx: Context, cfg: TrainConfig, device) -> list[Path]:
    """The search on a resolved context: resolve -> finished already? -> importance scores (cached per seed, after
    the dense finetune) -> one mask per kind and level. Returns the mask paths (kind, then level)."""
    s = resolve(spec, ctx, cfg)
    if context.finished(s.ctx.log, s.paths, "mask", spec.run.force):
        return s.paths
    scores = _scores(s.ctx, cfg, device, spec.run.out, s.dense, s.scores_identity, spec.run.force)
    head_raw = scores.tensors["head_scores_raw"].astype(np.float64)
    ffn = scores.tensors["ffn_scores"].astype(np.float64)
    head = normalize_heads(head_raw)
    chosen_head, chosen_ffn = s.policy.apply(head, ffn, s.strength, spec.seed, s.prior_masks)
    for identity, path in zip(s.masks, s.paths):
        kind, level = identity.fields["ticket"], identity.sparsity
        rng = np.random.default_rng(derive_seed(spec.seed, f"random-ticket:{level!r}")) if kind == "random" else None
        mask = ticket(chosen_head, chosen_ffn, level, kind, rng)
        _write_ticket(s.ctx, path, identity, mask, head, head_raw, ffn, scores, s.prior_arts)
    return s.paths


def _scores(ctx: Context, cfg: TrainConfig, device, out: Path, dense: RunIdentity, scores_identity: RunIdentity,
            force: bool):
    """The importance scores artifact of this seed: from the cache, or computed now (and cached)."""
    cache = scores_identity.importance_path(out)
    scores = None if force else existing(cache, "weights")
    if scores is not None:
        ctx.log.info(f"importance scores of seed {dense.seed}: reusing {cache}")
        return scores
    head_raw, ffn, layers_info = compute_scores(ctx, cfg, dense, out, device, force)
    write_artifact(cache, "weights", {"head_scores_raw": head_raw.astype(np.float32),
                                      "ffn_scores": ffn.astype(np.float32)},
                   ctx.meta(seed=str(dense.seed), config=scores_identity.as_dict(), **layers_info))
    return read_artifact(cache, "weights")


def _write_ticket(ctx: Context, path: Path, identity: RunIdentity, mask, head, head_raw, ffn, scores,
                  prior_arts) -> None:
    level, kind = identity.sparsity, identity.fields["ticket"]
    remaining = weights_remaining(mask, scores.meta.get("weights") or {})
    tensors = {"heads_keep": mask.heads.astype(np.uint8), "ffn_keep": mask.ffn.astype(np.uint8),
               "head_scores": head.astype(np.float32), "head_scores_raw": head_raw.astype(np.float32),
               "ffn_scores": ffn.astype(np.float32)}
    meta = ctx.meta(method="structured", seed=str(identity.seed), policy=identity.scheme,
                    sparsity=f"{mask.sparsity:.6f}",
                    target_sparsity=f"{level:.6f}", ffn_sparsity=f"{mask.ffn_sparsity:.6f}",
                    weights_remaining=f"{remaining:.6f}", heads_kept=str(int(mask.heads.sum())),
                    heads_total=str(mask.heads.size), ffn_kept=str(int(mask.ffn.sum())), config=identity.as_dict(),
                    config_hash=identity.hash(), parents=[scores.parent_ref()] + [a.parent_ref() for a in prior_arts],
                    importance_examples=scores.meta.get("importance_examples"))
    write_artifact(path, "mask", tensors, meta)
    ctx.log.info(f"{kind} ticket at {level:.0%}: {int(mask.heads.sum())}/{mask.heads.size} heads, "
                 f"{int(mask.ffn.sum())}/{mask.ffn.size} FFNs, {remaining:.1%} of encoder weights -> {path}")


def compute_scores(ctx: Context, cfg: TrainConfig, dense: RunIdentity, out: Path, device, force: bool):
    import torch

    from ticketctl.model import units
    from ticketctl.model.loading import pad_id
    from ticketctl.train.importance import importance

    seed = dense.seed
    model = inputs.load_model(ctx, cfg, seed, device)
    tokenizer = inputs.load_tokenizer(ctx, cfg, model)
    lay = units.layout(model)
    enc = ctx.encoded(tokenizer, ctx.train, cfg.max_length)
    floats = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    cached = inputs.reuse_dense_weights(dense, out, force, floats)
    if cached is not None:
        model.load_state_dict({k: torch.from_numpy(cached.tensors[k]) for k in floats}, strict=False)
        ctx.log.info(f"reusing the dense finetune of seed {seed} ({cached.path})")
    else:
        ctx.log.info(f"structured search {ctx.task.name} seed={seed}: dense finetune on {len(ctx.train)} examples, "
                     f"{ctx.model_name}, {device.type}/{cfg.precision}")
        _, curve, seconds = context.train_model(ctx, model, tokenizer, cfg, seed, device, f"dense s{seed}", enc=enc)
        ctx.log.info(f"dense finetune in {seconds:.1f}s")
        outputs.write_dense_finetune(ctx, model, tokenizer, cfg, out, dense, device,
                                     outputs.dense_round_meta(ctx, dense, curve))
    t0 = time.perf_counter()
    with ctx.log.progress("importance", 1) as advance:
        head_raw, ffn = importance(model, enc, ctx.train.labels, device, pad_id(tokenizer), cfg.precision,
                                   on_step=advance)
    ctx.log.info(f"importance of {lay.num_layers * lay.num_heads} heads and {lay.num_layers} FFNs over "
                 f"{len(ctx.train)} training examples in {time.perf_counter() - t0:.1f}s")
    info = {"weights": units.unit_sizes(model), "importance_examples": str(len(ctx.train))}
    return head_raw, ffn, info
