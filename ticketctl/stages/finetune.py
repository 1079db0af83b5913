"""``ticketctl finetune``: finetune the pretrained model (dense, bagging, or a ticket's mask) and write its outputs
on every evaluation split as logits artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ticketctl.data.sampling import training_subset
from ticketctl.errors import UsageError
from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
from ticketctl.stages import setup
from ticketctl.stages.setup import Context


def finetune(task: str, seed: int = 0, *, mask: str | None = None, bagging: float = 1.0, init: str | None = None,
             train_fraction: float | Sequence[float] = 1.0, save_model: Path | None = None,
             train: TrainConfig | None = None, data: DataOptions | None = None,
             run: RunOptions | None = None) -> list[Path]:
    """Finetune on ``task`` (dense; a random ``bagging`` fraction; the ticket in the ``mask`` artifact; from the
    encoder saved in ``init``) once per training fraction; returns the logits artifact paths, one per evaluation
    split and fraction. Finished runs with the same config are reused."""
    fractions = [float(f) for f in ([train_fraction] if isinstance(train_fraction, (int, float)) else train_fraction)]
    if save_model is not None and len(fractions) > 1:
        raise UsageError("--save-model takes a single --train-fraction")
    data, run = data or DataOptions(), run or RunOptions()
    ctx, cfg, device = setup.start(task, train, data, run)
    return [p for f in fractions for p in finetune_context(
        ctx, cfg, device, seed, run.out, mask_path=mask, bagging=float(bagging), force=run.force, save_model=save_model,
        init=init, train_fraction=f, subset_seed=data.subset_seed)]


def targets(ctx: Context, cfg: TrainConfig, seed: int, out: Path, mask_path: str | None = None, bagging: float = 1.0,
            train_fraction: float = 1.0, subset_seed: int | None = None) -> list[Path]:
    """The logits artifact paths (one per evaluation split) :func:`finetune_context` writes for these options,
    whether or not they exist, computed without training (``ctx``, ``cfg`` as ``setup.start`` resolves them).
    Raises InputError for an unreadable mask."""
    train_split = training_subset(ctx.train, seed, float(bagging), float(train_fraction), subset_seed)
    mask_art = setup.load_mask(ctx, mask_path) if mask_path else None
    return [path for _, path, _ in _rows(ctx, cfg, seed, out, train_split, mask_art, float(bagging), None, None,
                                         float(train_fraction))[0]]


def _rows(ctx: Context, cfg: TrainConfig, seed: int, out: Path, train_split, mask_art, bagging: float, init,
          init_fp, train_fraction: float):
    """identity -> (logits rows from ``setup.logits_paths``, identity, scheme, mask)."""
    structured = mask_art is not None and mask_art.method == "structured"
    mask = (mask_art.structured() if structured else mask_art.mask()) if mask_art else None
    identity = setup.training_identity(ctx, cfg, seed, train_split, mask.digest() if mask else None, bagging,
                                       train_fraction=train_fraction, init=init_fp)
    scheme = mask_art.meta.get("policy", "ticket") if mask_art else (
        "bagging" if bagging < 1 else "init" if init else "dense")
    return setup.logits_paths(ctx, identity, scheme, seed, out), identity, scheme, mask


def finetune_context(ctx: Context, cfg: TrainConfig, device, seed: int, out: Path, mask_path: str | None = None,
                     bagging: float = 1.0, force: bool = False, save_model: Path | None = None,
                     init: str | None = None, train_fraction: float = 1.0,
                     subset_seed: int | None = None) -> list[Path]:
    """One finetune of a resolved context; returns the written (or reused) logits artifact paths."""
    from ticketctl.model import loading

    train_split = training_subset(ctx.train, seed, bagging, train_fraction, subset_seed)
    if save_model is not None:
        setup.check_model_folder(save_model, "*")  # fails fast, before loading; which member is checked below
    init_dir, init_fp = loading.resolve_init(init) if init else (None, None)
    mask_art = setup.load_mask(ctx, mask_path) if mask_path else None
    structured = mask_art is not None and mask_art.method == "structured"

    # identity -> finished already?
    rows, identity, scheme, mask = _rows(ctx, cfg, seed, out, train_split, mask_art, bagging, init, init_fp,
                                         train_fraction)
    saved = save_model is not None and setup.check_model_folder(save_model, None if force else rows[0][2])
    if (save_model is None or saved) and setup.finished(ctx.log, [p for _, p, _ in rows], "logits", force):
        if saved:
            ctx.log.info(f"reusing the member saved in {save_model}")
        return [p for _, p, _ in rows]
    if saved:
        raise UsageError(f"--save-model {save_model}: holds this member, but its logits are not in {out}; "
                         "give an empty folder")

    # setup
    import torch

    from ticketctl.masks.structured import weights_remaining
    from ticketctl.model import units

    model = setup.load_model(ctx, cfg, seed, device, move=False)
    if init_dir is not None:
        loading.load_encoder(model, init_dir)
        if mask is not None and units.structure_of(model.config) is not None:
            raise UsageError(f"--init {init}: a physically pruned model takes no --mask (it is the ticket already)")
    model.to(device)
    tokenizer = setup.load_tokenizer(ctx, cfg, model)
    keep = None
    extra: dict = {"init_model": str(init) if init else "pretrained", "train_fraction": str(train_fraction),
                   "train_examples": str(len(train_split)), "subset_seed": subset_seed}
    if structured:
        units.check_fits(units.layout(model), mask, mask_path)
        extra.update({"method": "structured", "ffn_sparsity": f"{mask.ffn_sparsity:.6f}",
                      "weights_remaining": f"{weights_remaining(mask, units.unit_sizes(model)):.6f}"})
        # Train the ticket physically pruned: the same function as the masked model (its pruned heads and FFNs
        # contribute exactly zero and get zero updates), at the compute of the structures it keeps.
        units.prune_physically(model, mask)
    elif mask is not None:
        setup.check_mask_fits(mask, units.prunable_parameters(model), mask_path)
        keep = {n: torch.from_numpy(m) for n, m in mask.keep.items()}

    # loop
    ctx = ctx.with_train(train_split)
    ctx.log.info(f"finetune {ctx.task.name} seed={seed} scheme={scheme} on {len(train_split)} examples, "
                 f"{ctx.model_name}, {device.type}/{cfg.precision}")
    losses, curve, train_time = setup.dense_train(ctx, model, tokenizer, cfg, seed, device, f"finetune s{seed}",
                                                  keep=keep)
    ctx.log.debug("train loss per epoch: " + " ".join(f"{x:.4f}" for x in losses)
                  + f"; {len(train_split) * cfg.epochs / train_time:.1f} examples/s")

    # write
    meta = {"seed": str(seed), "policy": scheme, "sparsity": f"{mask.sparsity:.6f}" if mask else "0",
            "bagging": str(bagging), "config": {**identity}, "train_loss": " ".join(f"{x:.5f}" for x in losses),
            "train_seconds": f"{train_time:.1f}", "parents": [mask_art.parent_ref()] if mask_art else [],
            "loss_curve": curve, **extra}
    if mask_art:
        meta["mask_seed"] = mask_art.meta.get("seed")
        if "target_sparsity" in mask_art.meta:
            meta["target_sparsity"] = mask_art.meta["target_sparsity"]
    if mask is None and bagging == 1.0 and init is None:
        setup.write_dense_finetune(ctx, model, tokenizer, cfg, seed, out, identity, device, meta)
    else:
        setup.write_outputs(ctx, model, tokenizer, cfg, device, rows, meta)
    ctx.log.info(f"trained in {train_time:.1f}s")
    if save_model is not None:
        setup.save_trained(ctx, model, tokenizer, save_model, cfg, {
            "seed": seed, "policy": scheme, "sparsity": meta["sparsity"], "method": extra.get("method", "imp" if mask
                                                                                              else None),
            "config_hash": rows[0][2]})
    return [path for _, path, _ in rows]
