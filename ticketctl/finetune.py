"""``ticketctl finetune``: finetune the pretrained model (dense, bagging, or a ticket's mask) and write its outputs
on every evaluation split as logits artifacts."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ticketctl import artifacts, data
from ticketctl.artifacts import Mask
from ticketctl.context import Context
from ticketctl.errors import InputError, UsageError
from ticketctl.tasks import predictions, score
from ticketctl.train import TRAIN_DEFAULTS, TrainConfig

# Bump when the training computation changes its numbers for the same configuration (optimizer kernel, attention
# implementation, padding, ...): artifacts of the old computation are then not reused as if they were current.
# 1: first release; 2: fused AdamW, eager attention on CPU, padding to multiples of 8 (masks moved: IoU 0.978);
# 3: on CPU, dropout masks from ticketctl.fastcpu; structured tickets trained physically pruned.
COMPUTATION = 3
IDENTITY_DEFAULTS = {**TRAIN_DEFAULTS, "mask": None, "bagging": 1.0, "computation": 1, "train_fraction": 1.0,
                     "init": None}


def training_identity(ctx: Context, cfg: TrainConfig, seed: int, train_split: data.Split,
                      mask_digest: str | None = None, bagging: float = 1.0) -> dict:
    """Everything a finetune's result depends on. The dense finetune of ``finetune`` and the first round of a
    ``base`` search share it, so either can reuse the other's work."""
    return {"task": ctx.task.name, "model": ctx.model_fp, "seed": seed, "train_data": train_split.fingerprint,
            **cfg.as_dict(), "mask": mask_digest, "bagging": bagging, "computation": COMPUTATION}


def with_fraction(ctx: Context, fraction: float, seed: int) -> Context:
    """The context with its training split cut to ``fraction`` (``--train-fraction`` of search)."""
    if not 0 < fraction <= 1:
        raise UsageError("--train-fraction must be in (0, 1]")
    if fraction == 1.0:
        return ctx
    import dataclasses

    return dataclasses.replace(ctx, train=ctx.train.subset(data.fraction_indices(len(ctx.train), fraction, seed)))


def logits_paths(ctx: Context, identity: dict, scheme: str, seed: int, out: Path) -> list[tuple[data.Split, Path, str]]:
    rows = []
    for split in ctx.evals:
        h = artifacts.config_hash({**identity, "eval_data": split.fingerprint}, IDENTITY_DEFAULTS)
        rows.append((split, out / artifacts.logits_name(ctx.task.name, split.name, scheme, seed, h), h))
    return rows


def dense_weights_path(ctx: Context, identity: dict, seed: int, out: Path) -> Path:
    h = artifacts.config_hash(identity, IDENTITY_DEFAULTS)
    return out / artifacts.CACHE_DIR / artifacts.dense_weights_name(ctx.task.name, seed, h)


def load_mask(ctx: Context, path: str) -> artifacts.Artifact:
    art = artifacts.read_artifact(path, "mask")
    if art.meta.get("model_fingerprint") != ctx.model_fp:
        raise InputError(f"{path}: mask was made for model {art.meta.get('model')!r} "
                         f"(fingerprint {art.meta.get('model_fingerprint', '?')[:10]}), not for {ctx.model_name!r} "
                         f"({ctx.model_fp[:10]}); pass the same --model")
    if art.method not in ("imp", "structured"):
        raise InputError(f"{path}: {art.method} masks are not supported by this command")
    if art.meta.get("task") != ctx.task.name:
        ctx.log.info(f"note: mask was found on {art.meta.get('task')}, finetuning on {ctx.task.name}")
    return art


def write_logits(ctx: Context, split: data.Split, path: Path, outputs: np.ndarray, meta: dict) -> dict[str, float]:
    tensors = {"outputs": outputs.astype(np.float32), "ids": split.ids}
    metrics = {}
    if split.labels is not None:
        tensors["labels"] = split.labels
        metrics = score(ctx.task, predictions(ctx.task, outputs), split.labels)
    artifacts.write_artifact(path, "logits", tensors, {
        **ctx.base_meta(), "split": split.name, "split_source": split.source, "data_fingerprint": split.fingerprint,
        "examples": str(len(split)), "metrics": metrics or None, **meta})
    return metrics


def write_outputs(ctx: Context, model, tokenizer, cfg: TrainConfig, device, rows, meta: dict) -> list[dict]:
    """Evaluate the trained model on every split of ``rows`` (from ``logits_paths``) and write its logits artifacts;
    returns each split's metrics."""
    from ticketctl.train import encode, predict

    from ticketctl import distributed

    results = []
    for split, path, h in rows:
        if not distributed.is_main():  # process 0 evaluates and writes; the others hold the same weights
            results.append({})
            continue
        outputs = predict(model, encode(tokenizer, split, cfg.max_length), device, tokenizer.pad_token_id or 0,
                          cfg.precision)
        metrics = write_logits(ctx, split, path, outputs, {**meta, "config_hash": h})
        ctx.log.info(f"{split.name}: {format_metrics(metrics) or 'unlabelled'} -> {path}")
        results.append(metrics)
    return results


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def parse_fractions(text: str | None) -> list[float]:
    if text is None:
        return [1.0]
    try:
        fractions = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--train-fraction {text!r}: expected a number or a comma-separated list") from None
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise UsageError("--train-fraction values must be in (0, 1]")
    if len(set(fractions)) != len(fractions):
        raise UsageError(f"--train-fraction {text!r}: a value is given twice")
    return fractions


def finetune(ctx: Context, cfg: TrainConfig, seed: int, out: Path, mask_path: str | None = None,
             bagging: float = 1.0, device_name: str = "auto", force: bool = False,
             save_model: Path | None = None, init: str | None = None, train_fraction: float = 1.0) -> list[Path]:
    """Returns the written (or reused) logits artifact paths, one per evaluation split."""
    if not 0 < bagging <= 1:
        raise UsageError("--bagging must be in (0, 1]")
    if not 0 < train_fraction <= 1:
        raise UsageError("--train-fraction values must be in (0, 1]")
    if bagging < 1 and train_fraction < 1:
        raise UsageError("--bagging and --train-fraction both subsample the training set: use one")
    cfg.validate()
    artifacts.ensure_writable(out)
    if save_model is not None:
        check_model_folder(save_model)
    init_dir, init_fp = resolve_init(init) if init else (None, None)
    mask_art = load_mask(ctx, mask_path) if mask_path else None
    structured = mask_art is not None and mask_art.method == "structured"
    mask = (mask_art.structured() if structured else mask_art.mask()) if mask_art else None
    train_split = ctx.train
    if bagging < 1:
        train_split = ctx.train.subset(data.bagging_indices(len(ctx.train), bagging, seed))
    elif train_fraction < 1:
        train_split = ctx.train.subset(data.fraction_indices(len(ctx.train), train_fraction, seed))
    identity = {**training_identity(ctx, cfg, seed, train_split, mask.digest() if mask else None, bagging),
                "train_fraction": train_fraction, "init": init_fp}
    scheme = mask_art.meta.get("policy", "ticket") if mask_art else (
        "bagging" if bagging < 1 else "init" if init else "dense")
    rows = logits_paths(ctx, identity, scheme, seed, out)
    if not force and save_model is None and all(artifacts.existing(p, "logits") for _, p, _ in rows):
        ctx.log.info("finished already (same config): reusing " + ", ".join(str(p) for _, p, _ in rows))
        return [p for _, p, _ in rows]

    import torch

    from ticketctl import distributed, modeling, train
    from ticketctl.structured import structure_of
    from ticketctl.train import encode, pick_device

    device = pick_device(distributed.setup(device_name))
    torch.manual_seed(seed)  # the task head is drawn from the seed
    model = modeling.load_model(ctx.model_dir, ctx.task.num_labels, cfg.dropout,
                                modeling.attention_for(device.type))
    if init_dir is not None:
        modeling.load_encoder(model, init_dir)
        if mask is not None and structure_of(model.config) is not None:
            raise UsageError(f"--init {init}: a physically pruned model takes no --mask (it is the ticket already)")
    model.to(device)
    tokenizer = modeling.load_tokenizer(ctx.model_dir)
    modeling.check_max_length(cfg.max_length, model, tokenizer)
    keep = None
    extra: dict = {"init_model": str(init) if init else "pretrained", "train_fraction": str(train_fraction),
                   "train_examples": str(len(train_split))}
    if structured:
        from ticketctl import structured as st

        mask.check_fits(st.layout(model), mask_path)
        extra.update({"method": "structured", "ffn_sparsity": f"{mask.ffn_sparsity:.6f}",
                      "weights_remaining": f"{st.weights_remaining(mask, st.unit_sizes(model)):.6f}"})
        # Train the ticket physically pruned: the same function as the masked model (its pruned heads and FFNs
        # contribute exactly zero and get zero updates), at the compute of the structures it keeps.
        st.prune_physically(model, mask)
    elif mask is not None:
        prunable = modeling.prunable_parameters(model)
        check_mask_fits(mask, prunable, mask_path)
        keep = {n: torch.from_numpy(m) for n, m in mask.keep.items()}
    enc = encode(tokenizer, train_split, cfg.max_length)
    ctx.log.info(f"finetune {ctx.task.name} seed={seed} scheme={scheme} on {len(train_split)} examples, "
                 f"{ctx.model_name}, {device.type}/{cfg.precision}")
    start = time.perf_counter()
    curve: list[list[float]] = []
    with ctx.log.progress(f"finetune s{seed}", 1) as advance:
        losses = train.train(model, enc, train_split.labels, cfg, seed, device, tokenizer.pad_token_id or 0,
                             keep=keep, on_step=recording(advance, curve))
    train_time = time.perf_counter() - start
    ctx.log.debug("train loss per epoch: " + " ".join(f"{x:.4f}" for x in losses)
                  + f"; {len(enc) * cfg.epochs / train_time:.1f} examples/s")
    meta = {"seed": str(seed), "policy": scheme, "sparsity": f"{mask.sparsity:.6f}" if mask else "0",
            "bagging": str(bagging), "config": {**identity}, "train_loss": " ".join(f"{x:.5f}" for x in losses),
            "train_seconds": f"{train_time:.1f}", "parents": [mask_art.parent_ref()] if mask_art else [],
            "loss_curve": curve, **extra}
    if mask_art:
        meta["mask_seed"] = mask_art.meta.get("seed")
        if "target_sparsity" in mask_art.meta:
            meta["target_sparsity"] = mask_art.meta["target_sparsity"]
    write_outputs(ctx, model, tokenizer, cfg, device, rows, meta)
    paths = [path for _, path, _ in rows]
    if mask is None and bagging == 1.0 and init is None:
        save_dense_weights(ctx, model, identity, seed, out)
    ctx.log.info(f"trained in {train_time:.1f}s")
    if save_model is not None:
        save_trained(ctx, model, tokenizer, save_model)
    return paths


def resolve_init(init: str) -> tuple[Path, str]:
    """A saved model folder (``finetune --save-model`` or ``share --save-model``) and its content fingerprint."""
    from ticketctl import modeling

    path = Path(init).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InputError(f"--init {init}: not a model folder (config.json missing); save one with --save-model")
    if not list(path.glob("*.safetensors")):
        raise InputError(f"--init {init}: folder has no .safetensors weights")
    return path, modeling.model_fingerprint(path)


def recording(advance, curve: list):
    """A training callback that also keeps the logged losses ([step, loss] every 10 steps) for ``loss_curve``."""
    def on_step(step, total, loss):
        advance(step, total, loss)
        if loss is not None:
            curve.append([step, round(loss, 5)])

    return on_step


def check_model_folder(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"--save-model {folder}: exists and is not an empty folder")
    artifacts.ensure_writable(folder.parent if folder.parent != Path("") else Path("."))


def save_trained(ctx: Context, model, tokenizer, folder: Path) -> None:
    """Save the finetuned model as a transformers folder. A structured ticket was trained physically pruned, so it
    is saved that way: its config records the structure for reloading (``--model`` / ``--init``)."""
    from ticketctl.structured import structure_of

    if structure_of(model.config) is not None:
        ctx.log.info(f"saving the ticket physically pruned: {sum(p.numel() for p in model.parameters()):,} "
                     f"parameters")
    with artifacts.atomic_folder(folder) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    ctx.log.info(f"saved model ({size / 1e6:.1f} MB of weights) -> {folder}")


def check_mask_fits(mask: Mask, prunable: dict, source: str | None) -> None:
    if set(mask.keep) != set(prunable):
        raise InputError(f"{source}: mask parameters do not match the model's prunable weights")
    for n, p in prunable.items():
        if tuple(mask.keep[n].shape) != tuple(p.shape):
            raise InputError(f"{source}: mask for {n} has shape {mask.keep[n].shape}, the model's is {tuple(p.shape)}")


def save_dense_weights(ctx: Context, model, identity: dict, seed: int, out: Path) -> None:
    """Keep the trained weights of a dense finetune (the whole state), so that the first IMP round of a ``base``
    search and the importance scores of a structured search with the same seed and config need not train again."""
    weights = {n: p.detach().float().cpu().numpy() for n, p in model.state_dict().items() if p.is_floating_point()}
    artifacts.write_artifact(dense_weights_path(ctx, identity, seed, out), "weights", weights,
                             {**ctx.base_meta(), "seed": str(seed), "config": identity})
