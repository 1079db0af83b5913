"""What a training stage reads besides its data: a ticket's mask (checked against the model), the pretrained
classifier with its seeded task head, its tokenizer, and the weights of a finished dense finetune; and the
``--sparsity`` levels ``search``'s options make (``search_levels``: its option combinations, checked). ``ctx`` is a
``ticketctl.stages.context.Context`` (its tokenised splits, cached in ``OUT/cache``, are ``Context.encoded``)."""

from __future__ import annotations

from pathlib import Path

from ticketctl.errors import InputError, UsageError
from ticketctl.hparams import TrainConfig
from ticketctl.masks.structured import parse_levels
from ticketctl.model import loading
from ticketctl.store.artifacts import Artifact, existing, read_artifact
from ticketctl.store.identity import RunIdentity


def load_mask(ctx, path: str) -> Artifact:
    art = read_artifact(path, "mask")
    if art.meta.get("model_fingerprint") != ctx.model_fp:
        raise InputError(f"{path}: mask was made for model {art.meta.get('model')!r} "
                         f"(fingerprint {art.meta.get('model_fingerprint', '?')[:10]}), not for {ctx.model_name!r} "
                         f"({ctx.model_fp[:10]}); pass the same --model")
    if art.method not in ("imp", "structured"):
        raise InputError(f"{path}: {art.method} masks are not supported by this command")
    if art.meta.get("task") != ctx.task.name:
        ctx.log.info(f"note: mask was found on {art.meta.get('task')}, finetuning on {ctx.task.name}")
    return art


def check_mask_fits(mask, prunable: dict, source: str | None) -> None:
    if set(mask.keep) != set(prunable):
        raise InputError(f"{source}: mask parameters do not match the model's prunable weights")
    for n, p in prunable.items():
        if tuple(mask.keep[n].shape) != tuple(p.shape):
            raise InputError(f"{source}: mask for {n} has shape {mask.keep[n].shape}, the model's is {tuple(p.shape)}")


def load_model(ctx, cfg: TrainConfig, seed: int, device, head_seed: int | None = None, move: bool = True):
    """The pretrained classifier for ``ctx``'s task; its task head drawn from ``head_seed`` (default: the seed)."""
    import torch

    torch.manual_seed(seed if head_seed is None else head_seed)
    model = loading.load_model(ctx.model_dir, ctx.task.num_labels, cfg.dropout, loading.attention_for(device.type),
                               fresh_head=True)
    return model.to(device) if move else model


def load_tokenizer(ctx, cfg: TrainConfig, model):
    """The model's tokenizer, giving token types only where the model has them; ``--max-length`` must fit the
    model."""
    tokenizer = loading.load_tokenizer(ctx.model_dir)
    loading.fit_tokenizer(tokenizer, model)
    loading.check_max_length(cfg.max_length, model, tokenizer)
    return tokenizer


def reuse_dense_weights(identity: RunIdentity, out: Path, force: bool, names) -> Artifact | None:
    """The finished dense finetune with this identity (its weights artifact), if it holds all of ``names``."""
    if force:
        return None
    cached = existing(identity.dense_weights_path(out), "weights")
    if cached is None or not all(n in cached.tensors for n in names):
        return None
    return cached


def search_levels(method: str, sparsity: str, *, ticket: str = "winning", l1: float | None = None,
                  diversity: float | None = None) -> list[float]:
    """The ``search`` command's option combinations, checked for ``method`` (imp | structured); returns the
    ``--sparsity`` levels (one for imp, any number for structured). Raises ``UsageError`` (exit 2)."""
    if method not in ("imp", "structured"):
        raise UsageError("--method must be imp or structured")
    levels = parse_levels(sparsity)
    if method == "structured":
        if l1 is not None:
            raise UsageError("--l1 belongs to --method imp")
        return levels
    if len(levels) != 1:
        raise UsageError("--method imp takes one --sparsity level")
    if ticket != "winning":
        raise UsageError("--ticket belongs to --method structured")
    if diversity is not None:
        raise UsageError("--diversity belongs to --method structured (imp's policies use --l1)")
    return levels
