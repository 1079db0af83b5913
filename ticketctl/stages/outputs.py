"""What a training stage writes: each evaluation split's logits with the member's inference cost, the dense
weights a later search reuses, and a finetuned member saved as a transformers folder for ``predict``; every
artifact with its provenance (``Context.meta``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ticketctl.data import files as data_files
from ticketctl.data.tasks import predictions, score, undefined_note
from ticketctl.errors import UsageError
from ticketctl.hparams import TrainConfig
from ticketctl.log import format_metrics
from ticketctl.model.loading import pad_id
from ticketctl.model.units import structure_of
from ticketctl.store import atomic, tracker
from ticketctl.store.artifacts import write_artifact
from ticketctl.store.identity import RunIdentity


def write_logits(ctx, split: data_files.Split, path: Path, outputs: np.ndarray, meta: dict) -> dict[str, float]:
    tensors = {"outputs": outputs.astype(np.float32), "ids": split.ids}
    metrics = {}
    if split.labels is not None:
        tensors["labels"] = split.labels
        metrics = score(ctx.task, predictions(ctx.task, outputs), split.labels)
    names = {"id_names": split.id_names} if split.id_names is not None else {}
    full = ctx.meta(split=split.name, split_source=split.source, data_fingerprint=split.fingerprint,
                    examples=str(len(split)), metrics=metrics or None, **names, **meta)
    write_artifact(path, "logits", tensors, full)
    from ticketctl.train import distributed

    if ctx.report_to and distributed.is_main():
        tracker.report(ctx.report_to, path.parent, path, full, metrics)
    return metrics


def write_outputs(ctx, model, tokenizer, cfg: TrainConfig, device, rows, meta: dict,
                  structure=None) -> list[dict]:
    """Evaluate the trained model on every split of ``rows`` (from ``Context.logits_rows``) and write its logits
    artifacts; returns each split's metrics."""
    from ticketctl.train import distributed
    from ticketctl.train.loop import predict

    results = []
    for split, path, h in rows:
        if not distributed.is_main():  # process 0 evaluates and writes; the others hold the same weights
            results.append({})
            continue
        enc = ctx.encoded(tokenizer, split, cfg.max_length)
        outputs = predict(model, enc, device, pad_id(tokenizer), cfg.precision)
        metrics = write_logits(ctx, split, path, outputs, {**meta, "config_hash": h,
                                                           "cost": inference_cost(model, enc, structure)})
        ctx.log.info(f"{split.name}: {format_metrics(metrics) or 'unlabelled'} -> {path}")
        note = undefined_note(ctx.task, metrics, split.labels)
        if note:
            ctx.log.info(f"note: {split.name}: {note} (NaN in the artifact and the tables)")
        results.append(metrics)
    return results


def inference_cost(model, enc, structure=None) -> dict:
    """The member's inference cost on these examples (``ticketctl.model.cost``): the structure that ran (or
    ``structure``: a ``share`` member's ticket, whose gates give the function of the pruned model), and its nonzero
    parameters (an unstructured ticket's zeros still cost dense compute)."""
    from ticketctl.model.cost import member_cost

    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    physical = structure_of(model.config)
    return member_cost(model.config, structure or physical, enc.lengths, nonzero, total, physical)


def save_dense_weights(ctx, model, identity: RunIdentity, out: Path) -> None:
    """Keep the trained weights of a dense finetune (the whole state), so that the first IMP round of a ``base``
    search and the importance scores of a structured search with the same seed and config need not train again."""
    weights = {n: p.detach().float().cpu().numpy() for n, p in model.state_dict().items() if p.is_floating_point()}
    write_artifact(identity.dense_weights_path(out), "weights", weights,
                   ctx.meta(seed=str(identity.seed), config=identity.as_dict()))


def write_dense_finetune(ctx, model, tokenizer, cfg: TrainConfig, out: Path, identity: RunIdentity,
                         device, meta: dict) -> list[dict]:
    """The outputs of a dense finetune, under the names ``finetune`` gives them, and its weights for reuse: written
    by ``finetune`` and by the dense rounds of ``search`` (IMP round 1 of ``base``, a structured search's
    finetune), so that whichever runs second costs nothing."""
    metrics = write_outputs(ctx, model, tokenizer, cfg, device, ctx.logits_rows(identity, out), meta)
    save_dense_weights(ctx, model, identity, out)
    return metrics


def dense_round_meta(ctx, dense_identity: RunIdentity, curve: list | None) -> dict:
    """Provenance of a dense finetune that a search ran as its first step (written under ``finetune``'s names)."""
    return {"seed": str(dense_identity.seed), "policy": "dense", "sparsity": "0", "bagging": "1.0",
            "config": dense_identity.as_dict(), "init_model": "pretrained",
            "train_fraction": str(dense_identity.fields.get("train_fraction", 1.0)),
            "train_examples": str(len(ctx.train)),
            "parents": [], "produced_by": "search round 1", "loss_curve": curve or None}


def saved_member_hash(folder: Path) -> str | None:
    """The config hash of the member ``finetune --save-model`` saved in ``folder`` (None if it holds none)."""
    try:
        entry = json.loads((folder / "config.json").read_text()).get(MEMBER_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return entry.get("config_hash") if isinstance(entry, dict) else None


def check_model_folder(folder: Path, config_hash: str | None = None) -> bool:
    """Check that ``--save-model`` can write ``folder``. Returns True where the folder already holds the finished
    member with ``config_hash`` (a rerun reuses it; ``"*"``: any saved member, for an early check before the config
    hash is known); a non-empty folder holding anything else is refused."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        held = saved_member_hash(folder) if folder.is_dir() else None
        if config_hash is not None and held is not None and config_hash in (held, "*"):
            return True
        what = f"holds another member (config {held})" if held else "exists and is not an empty folder"
        raise UsageError(f"--save-model {folder}: {what}")
    atomic.ensure_writable(folder.parent if folder.parent != Path("") else Path("."))
    return False


MEMBER_KEY = "ticketctl"  # config.json entry of a saved model: what `predict` needs to run it as a member


def save_trained(ctx, model, tokenizer, folder: Path, cfg: TrainConfig | None = None,
                 member: dict | None = None) -> None:
    """Save the finetuned model as a transformers folder that stock ``AutoModelForSequenceClassification
    .from_pretrained`` loads: the task's label names in ``id2label``, and a structured ticket (trained physically
    pruned) at the full shapes with zeros for what it removed, so the outputs are the same everywhere (ticketctl's
    own loader prunes it again, for speed). The config also records the task and how the member was made, for
    ``predict``."""
    from ticketctl.model.units import full_state

    config = model.config
    if ctx.task.labels is not None:
        config.id2label = dict(enumerate(ctx.task.labels))
        config.label2id = {name: i for i, name in enumerate(ctx.task.labels)}
    if member is not None:
        setattr(config, MEMBER_KEY, {"task": ctx.task.name, "task_spec": ctx.task.spec(), "base_model": ctx.model_name,
                                     "base_model_fingerprint": ctx.model_fp,
                                     "max_length": cfg.max_length if cfg else None, **member})
    if structure_of(config) is not None:
        ctx.log.info(f"saving the ticket with zeros for its pruned heads and FFNs (stock transformers loads it); "
                     f"{sum(p.numel() for p in model.parameters()):,} parameters in use")
    with atomic.atomic_folder(folder) as tmp:
        model.save_pretrained(str(tmp), state_dict=full_state(model))
        tokenizer.save_pretrained(str(tmp))
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    ctx.log.info(f"saved model ({size / 1e6:.1f} MB of weights) -> {folder}")
