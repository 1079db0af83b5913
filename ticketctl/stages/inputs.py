"""What a training stage reads besides its data: a ticket's mask (checked against the model), the pretrained
classifier with its seeded task head, its tokenizer, and the weights of a finished dense finetune; and the
``--sparsity`` levels ``search``'s options make (``search_levels``: its option combinations, checked). ``ctx`` is a
``ticketctl.stages.context.Context`` (its tokenised splits, cached in ``OUT/cache``, are ``Context.encoded``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def load_teacher(ctx, path: str, train_split) -> tuple[Artifact, np.ndarray]:
    """``finetune --teacher``: the teacher's logits artifact and its outputs (n, C) for each example of
    ``train_split`` (the student's training examples, in their order), matched by example id. The teacher may cover
    more examples than the student trains on (a --max-train-samples run, a bagging or --train-fraction subset).

    Raises InputError, before anything is trained or written, for a teacher of another task or label count, an
    ensemble of votes, one missing any of the student's examples, or one whose examples are not the training data's
    (its recorded data fingerprint differs from that of the training data's examples with its ids: other or
    changed data)."""
    art = read_artifact(path, "logits")
    task, meta, outputs, ids = ctx.task, art.meta, art.tensors["outputs"], art.tensors["ids"]
    if meta.get("task") != task.name or (meta.get("task_spec") or None) != (task.spec() or None):
        raise InputError(f"--teacher {path}: outputs of task {meta.get('task')!r}, the student trains on "
                         f"{task.name!r}" + (" (another definition)" if meta.get("task") == task.name else ""))
    if meta.get("combine") == "vote":
        raise InputError(f"--teacher {path}: an ensemble of votes (--combine vote) has no distribution to distil; "
                         f"write it with --combine probs or logits")
    width = 1 if task.is_regression else task.num_labels
    if outputs.shape[1] != width:
        raise InputError(f"--teacher {path}: outputs of {outputs.shape[1]} labels, {task.name} has {width}")
    order = np.argsort(ids, kind="stable")
    if len(ids) > 1 and (np.diff(ids[order]) == 0).any():
        raise InputError(f"--teacher {path}: lists an example id twice")
    at = np.clip(np.searchsorted(ids[order], train_split.ids), 0, len(ids) - 1)
    missing = ids[order][at] != train_split.ids
    if missing.any():
        shown = ", ".join(str(i) for i in train_split.ids[missing][:5]) + (", ..." if missing.sum() > 5 else "")
        raise InputError(f"--teacher {path}: misses {int(missing.sum())} of the {len(train_split)} training examples "
                         f"(ids {shown}); give the teacher's outputs on the whole training split")
    _check_teacher_data(ctx, path, meta, ids)
    return art, outputs[order[at]]


def _check_teacher_data(ctx, path: str, meta: dict, ids: np.ndarray) -> None:
    """The teacher's examples are the training data's examples with those ids: its recorded data fingerprint
    (``Split.fingerprint``: ids, texts, labels) equals theirs."""
    source = ctx.source_train if ctx.source_train is not None else ctx.train
    where = {int(i): n for n, i in enumerate(source.ids)}
    if len(where) != len(source.ids) or any(int(i) not in where for i in ids):
        raise InputError(f"--teacher {path}: covers examples the training data does not have (other data: its split "
                         f"{meta.get('split_source', meta.get('split'))})")
    mine = source.subset(np.asarray([where[int(i)] for i in ids], dtype=np.int64)).fingerprint
    if meta.get("data_fingerprint") != mine:
        raise InputError(f"--teacher {path}: its examples differ from the training data's with the same ids (data "
                         f"fingerprint {str(meta.get('data_fingerprint'))[:10]}, the training data's {mine[:10]}): "
                         f"made from other or changed data")
