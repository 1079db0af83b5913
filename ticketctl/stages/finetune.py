"""``ticketctl finetune``: finetune the pretrained model (dense, bagging, or a ticket's mask; from a saved encoder
with ``--init``; a student distilled from a teacher's outputs with ``--teacher``) and write its outputs on every
evaluation split as logits artifacts.

A finetune is asked for by a :class:`FinetuneSpec` (what the command's options say, at one training fraction);
:func:`resolve` turns it, on a task with model and data (a ``Context``), into a :class:`Finetune`: its training
split, ticket, teacher, ``--init`` folder and identity, hence every path it writes. The protocol's planner
(:func:`targets`) and the run (:func:`run_context`) both take the paths from there. The steps:

    identity (resolve) -> finished already? -> setup -> loop -> write
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from ticketctl.data.sampling import check_subsample, training_subset
from ticketctl.errors import UsageError
from ticketctl.hparams import DistillOptions, TrainConfig
from ticketctl.stages import context, inputs, outputs
from ticketctl.stages.context import Context, StageSpec
from ticketctl.store.artifacts import Artifact
from ticketctl.store.identity import RunIdentity, finetune_scheme, student_scheme


@dataclass(frozen=True)
class FinetuneSpec(StageSpec):
    """One finetune as the ``finetune`` command's options ask for it, at one training fraction: everything its
    identity, paths and run follow from. ``task`` a task name (None: the custom task of ``data``), ``seed`` the
    member's seed (task head, data order, dropout, the bagging sample), ``mask`` a ticket's mask artifact path (IMP
    or structured; None: dense), ``bagging`` the fraction of the training set the seed samples (1: all of it),
    ``init`` a saved model folder whose encoder the run starts from (None: the pretrained model), ``train_fraction``
    the nested fraction of the training set trained on (one value in (0, 1]; not with ``bagging`` below 1),
    ``save_model`` a folder the trained member is saved to (None: not saved), ``distill`` the distillation options
    (with ``distill.teacher``: a student of that teacher; None or no teacher: a plain finetune). ``train``,
    ``data``, ``run``: the option dataclasses (``context.StageSpec``). Numbers are stored as floats, the input paths
    (``mask``, ``init``) as strings, so ``0.5`` and ``"0.5"`` name one run."""

    task: str | None
    seed: int = 0
    mask: str | None = None
    bagging: float = 1.0
    init: str | None = None
    train_fraction: float = 1.0
    save_model: Path | None = None
    distill: DistillOptions | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set(mask=str(self.mask) if self.mask else None, bagging=float(self.bagging),
                  init=str(self.init) if self.init else None, train_fraction=float(self.train_fraction),
                  save_model=None if self.save_model is None else Path(self.save_model))

    def check(self) -> None:
        """Refuse option combinations (UsageError, one line), before anything is loaded: ``bagging`` or
        ``train_fraction`` out of (0, 1] or both below 1 (``sampling.check_subsample``), distillation options that
        do not fit (``DistillOptions.validate``)."""
        check_subsample(self.bagging, self.train_fraction)
        if self.distill is not None:
            self.distill.validate()


def finetune(task: str | None, seed: int = 0, *, train_fraction: float | Sequence[float] = 1.0,
             **options) -> list[Path]:
    """Finetune on ``task`` (dense; a random ``bagging`` fraction; the ticket in the ``mask`` artifact; from the
    encoder saved in ``init``) once per training fraction (``train_fraction``: one value or several, one
    :class:`FinetuneSpec` each); returns the logits artifact paths, one per evaluation split and fraction. Finished
    runs with the same config are reused. ``options`` are :class:`FinetuneSpec`'s other fields (``mask``,
    ``bagging``, ``init``, ``save_model``, ``distill``, ``train``, ``data``, ``run``); ``distill.teacher`` (a logits
    artifact) makes the run a student distilled from it (``ticketctl.train.distill``; docs/distillation.md).

    Raises UsageError for bad options, InputError for a mask, ``--init`` folder or teacher that does not fit
    (``inputs.load_teacher``)."""
    fractions = [train_fraction] if isinstance(train_fraction, (int, float)) else list(train_fraction)
    return run_finetunes([FinetuneSpec(task, seed, train_fraction=f, **options) for f in fractions])


def run_finetune(spec: FinetuneSpec) -> list[Path]:
    """Check the options, resolve the device and the task (``context.start``), then :func:`run_context`. Returns
    the logits artifact paths, one per evaluation split."""
    return run_finetunes([spec])


def run_finetunes(specs: Sequence[FinetuneSpec]) -> list[Path]:
    """Finetunes that differ only in their training fraction (``--train-fraction 0.1,1``: one spec each), one after
    another on one context: the options checked (:meth:`FinetuneSpec.check`; ``--save-model`` takes one spec), the
    device and the task resolved once (``context.start``), then :func:`run_context` for each. Returns the logits
    artifact paths, spec by spec. Raises UsageError for bad options, ValueError for specs that differ in more than
    their training fraction (a caller's mistake)."""
    if not specs:
        raise UsageError("give at least one --train-fraction")
    first = specs[0]
    if any(replace(s, train_fraction=first.train_fraction) != first for s in specs[1:]):
        raise ValueError("run_finetunes: the specs differ in more than their training fraction")
    if first.save_model is not None and len(specs) > 1:
        raise UsageError("--save-model takes a single --train-fraction")
    for spec in specs:
        spec.check()
    ctx, cfg, device = context.start(first.task, first.train, first.data, first.run)
    return [p for spec in specs for p in run_context(spec, ctx, cfg, device)]


@dataclass(frozen=True)
class Teacher:
    """A student's teacher: its logits artifact, its outputs for each training example (in the training split's
    order) and the distillation's alpha and temperature."""

    art: Artifact
    outputs: object  # (n, C) numpy
    alpha: float
    temperature: float


@dataclass
class Finetune:
    """A finetune resolved from its :class:`FinetuneSpec` on a context: the context with the run's training split
    (all of it, the bagging sample or the fraction), the ticket's mask artifact (None: dense), the teacher (None: not
    a student), the ``--init`` folder (None: the pretrained model), the identity, and one (evaluation split, logits
    path, config hash) row per evaluation split."""

    spec: FinetuneSpec
    ctx: Context
    cfg: TrainConfig
    mask_art: Artifact | None
    teacher: Teacher | None
    init_dir: Path | None
    identity: RunIdentity
    rows: list

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def out(self) -> Path:
        return self.spec.run.out

    @property
    def paths(self) -> list[Path]:
        """The logits artifacts (one per evaluation split: dev, then each --eval-file, then --calibration-file's and
        --ood-file's; ``store/paths.py``)."""
        return [path for _, path, _ in self.rows]

    @property
    def required(self) -> list[Path]:
        """The artifacts that make the member finished: all but the ``--ood-file`` and ``--calibration-file`` splits'
        (``Context.required``)."""
        return self.ctx.required(self.rows)

    @property
    def written(self) -> list[Path]:
        """The artifacts there are: the required ones, and the ``--ood-file`` and ``--calibration-file`` splits' where
        they exist (``Context.written``)."""
        return self.ctx.written(self.rows)

    @property
    def parents(self) -> list[Artifact]:
        """The artifacts the member is made from: the mask (first, if any), then the teacher's logits."""
        return [a for a in (self.mask_art, self.teacher and self.teacher.art) if a]


def resolve(spec: FinetuneSpec, ctx: Context, cfg: TrainConfig) -> Finetune:
    """The identity step, before any training: the training split cut (``sampling.training_subset``), the
    ``--init`` folder fingerprinted, the mask and the teacher loaded and checked, the identity and the paths built.
    ``ctx`` and ``cfg`` as :func:`ticketctl.stages.context.start` resolves them. Raises UsageError / InputError as
    the run would (bad fractions, an unreadable mask or ``--init`` folder, a teacher that does not fit)."""
    from ticketctl.model import loading

    train_split = training_subset(ctx.train, spec.seed, spec.bagging, spec.train_fraction, spec.data.subset_seed)
    init_dir, init_fp = loading.resolve_init(spec.init) if spec.init else (None, None)
    mask_art = inputs.load_mask(ctx, spec.mask) if spec.mask else None
    teacher = _teacher(ctx, spec.distill, train_split)
    identity = run_identity(ctx, cfg, spec.seed, train_split, mask_art, spec.bagging, spec.init, init_fp,
                            spec.train_fraction, teacher)
    return Finetune(spec, ctx.with_train(train_split), cfg, mask_art, teacher, init_dir, identity,
                    ctx.logits_rows(identity, spec.run.out))


def targets(spec: FinetuneSpec, ctx: Context, cfg: TrainConfig) -> list[Path]:
    """The logits artifact paths (one per evaluation split) :func:`run_context` writes for ``spec``, whether or not
    they exist, computed without training: ``ctx`` and ``cfg`` as :func:`ticketctl.stages.context.start` resolves
    them. Raises InputError for an unreadable mask or a teacher that does not fit."""
    return resolve(spec, ctx, cfg).required


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


def run_context(spec: FinetuneSpec, ctx: Context, cfg: TrainConfig, device) -> list[Path]:
    """One finetune on a resolved context: resolve -> finished already? -> setup -> train -> write. Returns the
    written (or reused) logits artifact paths. The ``--save-model`` folder, the mask, the ``--init`` folder and a
    teacher are checked before anything is trained or written (UsageError, InputError)."""
    if spec.save_model is not None:
        outputs.check_model_folder(spec.save_model, "*")  # fails fast, before loading; which member is checked below
    f = resolve(spec, ctx, cfg)
    if _finished(f):
        return f.written
    model, tokenizer, keep, ticket_meta = _setup(f, device)
    losses, curve, seconds = _train(f, model, tokenizer, device, keep)
    _write(f, model, tokenizer, device, losses, curve, seconds, _provenance(f, ticket_meta))
    return f.written


def _finished(f: Finetune) -> bool:
    """finished already? Every logits artifact exists (and, with --save-model, the folder holds this member)."""
    save_model, force = f.spec.save_model, f.spec.run.force
    saved = save_model is not None and outputs.check_model_folder(save_model, None if force else f.rows[0][2])
    if (save_model is None or saved) and context.finished(f.ctx.log, f.required, "logits", force):
        if saved:
            f.ctx.log.info(f"reusing the member saved in {save_model}")
        return True
    if saved:
        raise UsageError(f"--save-model {save_model}: holds this member, but its logits are not in {f.out}; "
                         "give an empty folder")
    return False


def _provenance(f: Finetune, ticket_meta: dict) -> dict:
    """What the logits record of how the member was made besides its identity: its start (``--init`` or the
    pretrained model), training fraction and examples, the fraction's subset seed, the ticket's metadata
    (``ticket_meta``) and, for a student, what its teacher was (a member or an ensemble's combination)."""
    spec = f.spec
    extra = {"init_model": spec.init or "pretrained", "train_fraction": str(spec.train_fraction),
             "train_examples": str(len(f.ctx.train)), "subset_seed": spec.data.subset_seed, **ticket_meta}
    if f.teacher is not None:
        extra["teacher_combine"] = f.teacher.art.meta.get("combine") or "member"
    return extra


def _setup(f: Finetune, device):
    """The seeded model (from ``--init``'s encoder), its tokenizer, and the ticket: a weight mask as ``keep``
    tensors, or a structured ticket pruned physically. Returns (model, tokenizer, keep, the ticket's metadata)."""
    import torch

    from ticketctl.masks.structured import weights_remaining
    from ticketctl.model import loading, units

    mask_art, mask_path = f.mask_art, f.spec.mask
    mask = _ticket(mask_art)
    model = inputs.load_model(f.ctx, f.cfg, f.seed, device, move=False)
    if f.init_dir is not None:
        loading.load_encoder(model, f.init_dir)
        if mask is not None and units.structure_of(model.config) is not None:
            raise UsageError(f"--init {f.spec.init}: a physically pruned model takes no --mask (it is the ticket "
                             f"already)")
    model.to(device)
    tokenizer = inputs.load_tokenizer(f.ctx, f.cfg, model)
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


def _train(f: Finetune, model, tokenizer, device, keep):
    """Train ``model`` on the run's training split (``keep``: the weight mask's tensors, or None); a student on its
    teacher's targets and the distillation loss. Returns (epoch losses, loss curve, seconds)."""
    ctx, cfg, seed, teacher = f.ctx, f.cfg, f.seed, f.teacher
    ctx.log.info(f"finetune {ctx.task.name} seed={seed} scheme={f.identity.scheme} on {len(ctx.train)} examples, "
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


def _write(f: Finetune, model, tokenizer, device, losses, curve, seconds: float, extra: dict) -> None:
    """The logits of every evaluation split (a dense finetune also keeps its weights for a later search), and the
    member's folder with --save-model. ``extra``: the logits' other metadata (:func:`_provenance`)."""
    ctx, cfg, identity, rows, save_model, mask_art = f.ctx, f.cfg, f.identity, f.rows, f.spec.save_model, f.mask_art
    mask, seed, bagging = _ticket(mask_art), identity.seed, identity.fields["bagging"]
    meta = {"seed": str(seed), "policy": identity.scheme, "sparsity": f"{mask.sparsity:.6f}" if mask else "0",
            "bagging": str(bagging), "config": identity.as_dict(), "train_loss": " ".join(f"{x:.5f}" for x in losses),
            "train_seconds": f"{seconds:.1f}", "parents": [a.parent_ref() for a in f.parents],
            "loss_curve": curve, **extra}
    if mask_art:
        meta["mask_seed"] = mask_art.meta.get("seed")
        if "target_sparsity" in mask_art.meta:
            meta["target_sparsity"] = mask_art.meta["target_sparsity"]
    if mask is None and bagging == 1.0 and identity.fields["init"] is None and "teacher" not in identity.fields:
        outputs.write_dense_finetune(ctx, model, tokenizer, cfg, f.out, identity, device, meta)
    else:
        outputs.write_outputs(ctx, model, tokenizer, cfg, device, rows, meta)
    ctx.log.info(f"trained in {seconds:.1f}s")
    if save_model is not None:
        outputs.save_trained(ctx, model, tokenizer, save_model, cfg, {
            "seed": seed, "policy": identity.scheme, "sparsity": meta["sparsity"],
            "method": extra.get("method", "imp" if mask else None), "config_hash": rows[0][2]})
