"""``ticketctl finetune``: finetune the pretrained model (dense, bagging, or a ticket's mask) and write its outputs
on every evaluation split as logits artifacts.

    identity -> finished already? -> setup -> loop -> write
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ticketctl.data.sampling import training_subset
from ticketctl.errors import UsageError
from ticketctl.hparams import DataOptions, DistillOptions, RunOptions, TrainConfig
from ticketctl.stages import context, inputs, outputs
from ticketctl.stages.context import Context
from ticketctl.store.identity import RunIdentity, finetune_scheme, student_scheme


def finetune(task: str, seed: int = 0, *, mask: str | None = None, bagging: float = 1.0, init: str | None = None,
             train_fraction: float | Sequence[float] = 1.0, save_model: Path | None = None,
             train: TrainConfig | None = None, data: DataOptions | None = None,
             run: RunOptions | None = None, distill: DistillOptions | None = None) -> list[Path]:
    """Finetune on ``task`` (dense; a random ``bagging`` fraction; the ticket in the ``mask`` artifact; from the
    encoder saved in ``init``) once per training fraction; returns the logits artifact paths, one per evaluation
    split and fraction. Finished runs with the same config are reused. ``distill.teacher`` (a logits artifact)
    makes the run a student distilled from it (``ticketctl.train.distill``; docs/distillation.md).

    Raises UsageError for bad options, InputError for a teacher that does not fit (``inputs.load_teacher``)."""
    fractions = [float(f) for f in ([train_fraction] if isinstance(train_fraction, (int, float)) else train_fraction)]
    if save_model is not None and len(fractions) > 1:
        raise UsageError("--save-model takes a single --train-fraction")
    data, run = data or DataOptions(), run or RunOptions()
    if distill is not None:
        distill.validate()
    ctx, cfg, device = context.start(task, train, data, run)
    return [p for f in fractions for p in finetune_context(
        ctx, cfg, device, seed, run.out, mask_path=mask, bagging=float(bagging), force=run.force, save_model=save_model,
        init=init, train_fraction=f, subset_seed=data.subset_seed, distill=distill)]


def targets(ctx: Context, cfg: TrainConfig, seed: int, out: Path, mask_path: str | None = None, bagging: float = 1.0,
            train_fraction: float = 1.0, subset_seed: int | None = None,
            distill: DistillOptions | None = None) -> list[Path]:
    """The logits artifact paths (one per evaluation split) :func:`finetune_context` writes for these options,
    whether or not they exist, computed without training (``ctx``, ``cfg`` as ``context.start`` resolves them).
    Raises InputError for an unreadable mask or a teacher that does not fit."""
    train_split = training_subset(ctx.train, seed, float(bagging), float(train_fraction), subset_seed)
    mask_art = inputs.load_mask(ctx, mask_path) if mask_path else None
    teacher = _teacher(ctx, distill, train_split)
    identity = run_identity(ctx, cfg, seed, train_split, mask_art, float(bagging), None, None, float(train_fraction),
                            teacher)
    return ctx.required(ctx.logits_rows(identity, out))


def run_identity(ctx: Context, cfg: TrainConfig, seed: int, train_split, mask_art, bagging: float, init,
                 init_fp: str | None, train_fraction: float, teacher=None) -> RunIdentity:
    """The finetune's identity: its data, config, ticket (the mask's digest), bagging fraction, training fraction and
    ``--init`` folder (its fingerprint); named by the ticket's policy, bagging, init or dense. A student
    (``teacher``: :func:`_teacher`) adds the teacher's content hash, alpha and temperature (none for regression) and
    is named ``student`` or ``student-NAME``; without a teacher the identity is the one it always was."""
    mask = _ticket(mask_art)
    scheme = finetune_scheme(mask_art.meta.get("policy", "ticket") if mask_art else None, bagging, init)
    extra = {}
    if teacher is not None:
        scheme = student_scheme(scheme)
        extra = {"teacher": teacher.art.sha256, "distill_alpha": teacher.alpha,
                 "distill_temperature": None if ctx.task.is_regression else teacher.temperature}
    return ctx.identity(cfg, seed, train_split, mask.digest() if mask else None, bagging, scheme=scheme,
                        train_fraction=train_fraction, init=init_fp, **extra)


@dataclass(frozen=True)
class Teacher:
    """A student's teacher: its logits artifact, its outputs for each training example (in the training split's
    order) and the distillation's alpha and temperature."""

    art: object
    outputs: object  # (n, C) numpy
    alpha: float
    temperature: float


def _teacher(ctx: Context, distill: DistillOptions | None, train_split) -> Teacher | None:
    """The teacher of ``--teacher`` matched to ``train_split`` (``inputs.load_teacher``'s checks), or None."""
    if distill is None or distill.teacher is None:
        return None
    art, outputs = inputs.load_teacher(ctx, distill.teacher, train_split)
    return Teacher(art, outputs, distill.distill_alpha, distill.distill_temperature)


def _ticket(mask_art):
    if mask_art is None:
        return None
    return mask_art.structured() if mask_art.method == "structured" else mask_art.mask()


def finetune_context(ctx: Context, cfg: TrainConfig, device, seed: int, out: Path, mask_path: str | None = None,
                     bagging: float = 1.0, force: bool = False, save_model: Path | None = None,
                     init: str | None = None, train_fraction: float = 1.0,
                     subset_seed: int | None = None, distill: DistillOptions | None = None) -> list[Path]:
    """One finetune of a resolved context; returns the written (or reused) logits artifact paths. A teacher
    (``distill.teacher``) is checked before anything is trained or written."""
    from ticketctl.model import loading

    train_split = training_subset(ctx.train, seed, bagging, train_fraction, subset_seed)
    if save_model is not None:
        outputs.check_model_folder(save_model, "*")  # fails fast, before loading; which member is checked below
    init_dir, init_fp = loading.resolve_init(init) if init else (None, None)
    mask_art = inputs.load_mask(ctx, mask_path) if mask_path else None
    teacher = _teacher(ctx, distill, train_split)
    identity = run_identity(ctx, cfg, seed, train_split, mask_art, bagging, init, init_fp, train_fraction, teacher)
    rows = ctx.logits_rows(identity, out)
    if _finished(ctx, rows, save_model, force, out):
        return ctx.written(rows)
    model, tokenizer, keep, extra = _setup(ctx, cfg, seed, device, mask_art, mask_path, init, init_dir)
    extra = {"init_model": str(init) if init else "pretrained", "train_fraction": str(train_fraction),
             "train_examples": str(len(train_split)), "subset_seed": subset_seed, **extra}
    if teacher is not None:
        extra["teacher_combine"] = teacher.art.meta.get("combine") or "member"
    ctx = ctx.with_train(train_split)
    losses, curve, seconds = _train(ctx, model, tokenizer, cfg, seed, device, identity.scheme, keep, teacher)
    _write(ctx, model, tokenizer, cfg, device, out, identity, rows, [a for a in (mask_art, teacher and teacher.art) if a],
           losses, curve, seconds, extra, save_model)
    return ctx.written(rows)


def _finished(ctx: Context, rows, save_model: Path | None, force: bool, out: Path) -> bool:
    """finished already? Every logits artifact exists (and, with --save-model, the folder holds this member)."""
    saved = save_model is not None and outputs.check_model_folder(save_model, None if force else rows[0][2])
    if (save_model is None or saved) and context.finished(ctx.log, ctx.required(rows), "logits", force):
        if saved:
            ctx.log.info(f"reusing the member saved in {save_model}")
        return True
    if saved:
        raise UsageError(f"--save-model {save_model}: holds this member, but its logits are not in {out}; "
                         "give an empty folder")
    return False


def _setup(ctx: Context, cfg: TrainConfig, seed: int, device, mask_art, mask_path, init, init_dir):
    """The seeded model (from ``--init``'s encoder), its tokenizer, and the ticket: a weight mask as ``keep``
    tensors, or a structured ticket pruned physically. Returns (model, tokenizer, keep, the ticket's metadata)."""
    import torch

    from ticketctl.masks.structured import weights_remaining
    from ticketctl.model import loading, units

    mask = _ticket(mask_art)
    model = inputs.load_model(ctx, cfg, seed, device, move=False)
    if init_dir is not None:
        loading.load_encoder(model, init_dir)
        if mask is not None and units.structure_of(model.config) is not None:
            raise UsageError(f"--init {init}: a physically pruned model takes no --mask (it is the ticket already)")
    model.to(device)
    tokenizer = inputs.load_tokenizer(ctx, cfg, model)
    if mask is not None and mask_art.method == "structured":
        units.check_fits(units.layout(model), mask, mask_path)
        extra = {"method": "structured", "ffn_sparsity": f"{mask.ffn_sparsity:.6f}",
                 "weights_remaining": f"{weights_remaining(mask, units.unit_sizes(model)):.6f}"}
        # Train the ticket physically pruned: the same function as the masked model (its pruned heads and FFNs
        # contribute exactly zero and get zero updates), at the compute of the structures it keeps.
        units.prune_physically(model, mask)
        return model, tokenizer, None, extra
    if mask is not None:
        inputs.check_mask_fits(mask, units.prunable_parameters(model), mask_path)
        return model, tokenizer, {n: torch.from_numpy(m) for n, m in mask.keep.items()}, {}
    return model, tokenizer, None, {}


def _train(ctx: Context, model, tokenizer, cfg: TrainConfig, seed: int, device, scheme: str, keep,
           teacher: Teacher | None = None):
    ctx.log.info(f"finetune {ctx.task.name} seed={seed} scheme={scheme} on {len(ctx.train)} examples, "
                 f"{ctx.model_name}, {device.type}/{cfg.precision}")
    targets = loss = None
    if teacher is not None:
        from ticketctl.train import distill

        regression = ctx.task.is_regression
        targets = distill.pack_targets(ctx.train.labels, distill.teacher_targets(teacher.outputs, teacher.temperature,
                                                                                   regression))
        loss = distill.distill_loss(teacher.alpha, teacher.temperature, regression)
        ctx.log.info(f"distilling from {teacher.art.path} (alpha={teacher.alpha}, T={teacher.temperature})")
    losses, curve, seconds = context.train_model(ctx, model, tokenizer, cfg, seed, device, f"finetune s{seed}",
                                                 keep=keep, targets=targets, loss=loss)
    ctx.log.debug("train loss per epoch: " + " ".join(f"{x:.4f}" for x in losses)
                  + f"; {len(ctx.train) * cfg.epochs / seconds:.1f} examples/s")
    return losses, curve, seconds


def _write(ctx: Context, model, tokenizer, cfg: TrainConfig, device, out: Path, identity: RunIdentity, rows,
           parents, losses, curve, seconds: float, extra: dict, save_model: Path | None) -> None:
    """The logits of every evaluation split (a dense finetune also keeps its weights for a later search), and the
    member's folder with --save-model. ``parents``: the mask artifact (first, if any), then the teacher's."""
    mask_art = parents[0] if parents and parents[0].kind == "mask" else None
    mask, seed, bagging = _ticket(mask_art), identity.seed, identity.fields["bagging"]
    meta = {"seed": str(seed), "policy": identity.scheme, "sparsity": f"{mask.sparsity:.6f}" if mask else "0",
            "bagging": str(bagging), "config": identity.as_dict(), "train_loss": " ".join(f"{x:.5f}" for x in losses),
            "train_seconds": f"{seconds:.1f}", "parents": [a.parent_ref() for a in parents],
            "loss_curve": curve, **extra}
    if mask_art:
        meta["mask_seed"] = mask_art.meta.get("seed")
        if "target_sparsity" in mask_art.meta:
            meta["target_sparsity"] = mask_art.meta["target_sparsity"]
    if mask is None and bagging == 1.0 and identity.fields["init"] is None and "teacher" not in identity.fields:
        outputs.write_dense_finetune(ctx, model, tokenizer, cfg, out, identity, device, meta)
    else:
        outputs.write_outputs(ctx, model, tokenizer, cfg, device, rows, meta)
    ctx.log.info(f"trained in {seconds:.1f}s")
    if save_model is not None:
        outputs.save_trained(ctx, model, tokenizer, save_model, cfg, {
            "seed": seed, "policy": identity.scheme, "sparsity": meta["sparsity"],
            "method": extra.get("method", "imp" if mask else None), "config_hash": rows[0][2]})
