"""What every training stage shares. Each stage (finetune, imp search, structured search, share) is

    identity -> finished already? -> setup -> loop -> write

and every step but the loop is here: the resolved task, model and data (:class:`Context`), the run's device and
precision (:func:`start`), the identity that names its artifacts (:func:`training_identity`), the reuse check
(:func:`finished`), loading the seeded model (:func:`load_model`), and writing logits, dense weights and saved
models with their provenance.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ticketctl.data import files as data_files
from ticketctl.data.batching import encode
from ticketctl.data.tasks import TASKS, Task, get_task, predictions, score, undefined_note
from ticketctl.errors import InputError, UsageError
from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
from ticketctl.model import loading
from ticketctl.model.units import structure_of
from ticketctl.store import atomic, paths, report
from ticketctl.store.artifacts import Artifact, existing, read_artifact, write_artifact
from ticketctl.store.provenance import COMPUTATION, IDENTITY_DEFAULTS, config_hash, provenance
from ticketctl.train.seeds import CPU_STREAM

# ---------------------------------------------------------------------------------------------- logging


class Log:
    """Progress and messages on stderr only; stdout is for results."""

    def __init__(self, quiet: bool = False, verbose: bool = False, log_every: int | None = None):
        from rich.console import Console

        self.quiet = quiet or os.environ.get("RANK", "0") != "0"
        self.verbose = verbose and not self.quiet
        self.log_every = log_every
        self.console = Console(stderr=True, highlight=False)

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg, markup=False, soft_wrap=True)

    def debug(self, msg: str) -> None:
        """Details for --verbose: resolved configuration, data sources, per-epoch losses, timings."""
        if self.verbose:
            self.console.print(msg, markup=False, soft_wrap=True, style="dim")

    def progress(self, description: str, total: int, batch_size: int | None = None):
        """A context manager yielding ``advance(step, total, loss)``: a live bar on a terminal; without one (Slurm,
        nohup, CI) a plain line every ``log_every`` steps, or every 30 s; nothing when quiet."""
        return _Progress(self, description, total, batch_size)


PLAIN_SECONDS = 30.0  # without a terminal and without --log-every: a progress line this often


class _Progress:
    def __init__(self, log: Log, description: str, total: int, batch_size: int | None = None):
        self.log, self.description, self.total, self.batch_size = log, description, total, batch_size
        self.bar = None
        self.plain = False

    def __enter__(self):
        self.start = self.last = time.perf_counter()
        self.loss = None
        self.plain = not self.log.quiet and not self.log.console.is_terminal
        if not self.log.quiet and self.log.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                console=self.log.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total, loss="-")
        return self.advance

    def advance(self, step: int, total: int, loss: float | None) -> None:
        if self.bar is not None:
            fields = {"loss": f"{loss:.4f}"} if loss is not None else {}
            self.bar.update(self.task, completed=step, total=total, **fields)
        elif self.plain:
            self.loss = loss if loss is not None else self.loss
            now = time.perf_counter()
            every = self.log.log_every
            if (step % every == 0 if every else now - self.last >= PLAIN_SECONDS) or step == total:
                self.last = now
                self.log.info(plain_line(self.description, step, total, self.loss, now - self.start, self.batch_size))

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def plain_line(description: str, step: int, total: int, loss: float | None, elapsed: float,
               batch_size: int | None) -> str:
    """One progress line for logs: step, loss, throughput and time left."""
    rate = step / elapsed if elapsed > 0 else 0.0
    eta = (total - step) / rate if rate > 0 else 0.0
    speed = f"{rate * batch_size:.1f} examples/s" if batch_size else f"{rate:.2f} steps/s"
    loss_text = f"loss {loss:.4f}" if loss is not None else "loss -"
    return (f"{description}: step {step}/{total} ({step / max(total, 1):.0%}) {loss_text} {speed} "
            f"elapsed {_clock(elapsed)} eta {_clock(eta)}")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def recording(advance, curve: list):
    """A training callback that also keeps the logged losses ([step, loss] every 10 steps) for ``loss_curve``."""
    def on_step(step, total, loss):
        advance(step, total, loss)
        if loss is not None:
            curve.append([step, round(loss, 5)])

    return on_step


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


# ---------------------------------------------------------------------------------------------- task, model, data


@dataclass
class Context:
    """A task with its model and data resolved: what a training stage's results depend on besides its config."""

    task: Task
    model_name: str
    model_dir: Path
    model_fp: str
    train: data_files.Split
    evals: list[data_files.Split]
    log: Log
    cache_dir: Path | None = None  # where tokenised splits are kept (--out/cache); None: not kept
    report_to: str | None = None  # --report-to: a tracker that also gets each run's loss curve and metrics
    model_head: bool = False  # the --model folder holds a task head of its own (dropped: each seed draws one)
    runtime: dict | None = None  # where the run computes (ticketctl.train.device.describe), in every artifact
    dropout_stream: str = CPU_STREAM  # where its dropout masks come from (train.device.dropout_stream): identity

    @classmethod
    def create(cls, task_name: str | None, model: str | None, opts: DataOptions, log: Log) -> "Context":
        opts.validate()
        model_name, model_dir = loading.resolve_model(model)
        model_fp = loading.model_fingerprint(model_dir)
        task, train, evals = (_custom_data(task_name, opts, log.info) if opts.custom
                              else _glue_data(task_name, opts, log.info))
        if train.labels is None:
            raise InputError(f"{train.source}: the training split has no labels")
        if opts.max_train_samples is not None:
            train = train.subset(np.arange(min(opts.max_train_samples, len(train))))
        names = [s.name for s in evals]
        if len(set(names)) != len(names):
            raise UsageError(f"two evaluation splits are both named {sorted(n for n in names if names.count(n) > 1)[0]!r}"
                             f" (rename an --eval-file)")
        if opts.max_eval_samples is not None:
            evals = [s.subset(np.arange(min(opts.max_eval_samples, len(s)))) for s in evals]
        log.debug(f"{task.name}: model {model_name} ({model_dir}, fingerprint {model_fp[:10]}); train {train.source} "
                  f"({len(train)} examples); " + "; ".join(f"{s.name} {s.source} ({len(s)})" for s in evals))
        if task.is_custom:
            log.debug(f"{task.name}: text {', '.join(task.text_columns)}; "
                      + (f"labels {', '.join(task.labels)}" if task.labels else "regression")
                      + f"; metrics {', '.join(task.metrics)}")
        model_head = loading.has_head(model_dir)
        if model_head:
            log.info(f"note: {model_name} holds a task head of its own; it is dropped and each seed draws its own")
        return cls(task, model_name, model_dir, model_fp, train, evals, log, model_head=model_head)

    def with_train(self, split: data_files.Split) -> "Context":
        return replace(self, train=split)

    def meta(self, **fields) -> dict:
        """This context's provenance (task, model, fingerprint, versions; a custom task's spec) plus an artifact's
        own fields."""
        spec = self.task.spec()
        return provenance(self.task.name, self.model_name, self.model_fp, self.runtime,
                          **({"task_spec": spec} if spec else {}), **fields)


def _glue_data(task_name: str | None, opts: DataOptions, warn):
    if not task_name:
        raise UsageError("--task is required: a GLUE task, or your own data with --train-file / --dataset")
    task = get_task(task_name)
    evals = [data_files.load_split(task, "dev", opts.data_dir)]
    evals += [data_files.read_tsv(task, f, warn=warn) for f in opts.eval_files]
    return task, data_files.load_split(task, "train", opts.data_dir), evals


def _custom_data(task_name: str | None, opts: DataOptions, warn):
    """The task, training split and evaluation splits of the user's own data (files or a hub dataset)."""
    from ticketctl.data import custom

    if task_name and task_name.lower().replace("-", "") in TASKS:
        raise UsageError(f"--task {task_name} is a GLUE task; name your own data differently (or leave --task out)")
    text_columns = custom.parse_columns(opts.text_columns)
    label_column = opts.label_column or "label"
    class_names: dict = {}
    if opts.train_file:
        name = task_name or "custom"
        columns, rows = custom.read_table(opts.train_file)
        source = opts.train_file
    else:
        name = task_name or custom.dataset_name(opts.dataset, opts.dataset_config)
        columns, rows, source, class_names = custom.hub_table(opts.dataset, opts.dataset_config, "train")
    task = custom.infer_task(name, columns, rows, text_columns, label_column, opts.metric, source,
                             class_names.get(label_column), warn=warn)
    train = custom.split_of(task, columns, rows, source, "train", need_labels=True, warn=warn)
    if opts.validation_file:
        dev = custom.read_split(task, opts.validation_file, "dev", warn=warn)
    else:
        columns, rows, source, _ = custom.hub_table(opts.dataset, opts.dataset_config,
                                                    opts.validation_split or "validation")
        dev = custom.split_of(task, columns, rows, source, "dev", warn=warn)
    extra = []
    for split in opts.eval_splits:
        columns, rows, source, _ = custom.hub_table(opts.dataset, opts.dataset_config, split)
        extra.append(custom.split_of(task, columns, rows, source, split, warn=warn))
    return task, train, [dev] + extra + [custom.read_split(task, f, warn=warn) for f in opts.eval_files]


def start(task: str | list[str], train: TrainConfig | None, data: DataOptions, run: RunOptions,
          data_parallel: bool = True):
    """Setup of a training command, before any training: the device and precision (once), the task(s) with model
    and data, and the resolved, validated training config (``TrainConfig()`` when None). Returns (context or
    contexts, config, device)."""
    from ticketctl.train import distributed
    from ticketctl.train.device import describe, dropout_stream, runtime

    train = train or TrainConfig()

    device, precision = runtime(run.device, train.precision, run.threads, data_parallel, run.deterministic)
    cfg = replace(train, precision=precision)
    world = distributed.world_size() if data_parallel else 1
    where = {"runtime": describe(device, world, run.deterministic),
             "dropout_stream": dropout_stream(device, world, cfg.dropout)}
    log = Log(run.quiet, run.verbose, run.log_every)
    single = task is None or isinstance(task, str)
    tasks = [task] if single else list(task)
    report.check(run.report_to)
    contexts = [replace(Context.create(t, run.model, data, log), cache_dir=run.out / paths.CACHE_DIR,
                        report_to=run.report_to, **where) for t in tasks]
    log.debug(f"config: {cfg.as_dict()}")
    cfg.validate()
    atomic.ensure_writable(run.out)
    return (contexts[0] if single else contexts), cfg, device


# ---------------------------------------------------------------------------------------------- identity and reuse


def training_identity(ctx: Context, cfg: TrainConfig, seed: int, train_split: data_files.Split,
                      mask_digest: str | None = None, bagging: float = 1.0, **extra) -> dict:
    """Everything a finetune's result depends on. The dense finetune of ``finetune`` and the first round of a
    ``base`` search share it, so either can reuse the other's work. ``dropout_stream`` separates runs whose dropout
    masks come from different random streams (a CPU run and a GPU run, one process and several); it is left out of
    the hash at its CPU default, and out of the identity too (the metadata of CPU artifacts is unchanged)."""
    stream = {"dropout_stream": ctx.dropout_stream} if ctx.dropout_stream != CPU_STREAM else {}
    return {"task": ctx.task.name, "model": ctx.model_fp, "seed": seed, "train_data": train_split.fingerprint,
            **cfg.as_dict(), "mask": mask_digest, "bagging": bagging, "computation": COMPUTATION,
            "task_spec": ctx.task.spec(), **({"model_head": "redrawn"} if ctx.model_head else {}), **stream,
            **extra}


def identity_hash(identity: dict) -> str:
    return config_hash(identity, IDENTITY_DEFAULTS)


def logits_paths(ctx: Context, identity: dict, scheme: str, seed: int, out: Path) -> list[tuple[data_files.Split, Path, str]]:
    rows = []
    for split in ctx.evals:
        h = identity_hash({**identity, "eval_data": split.fingerprint})
        rows.append((split, out / paths.logits_name(ctx.task.name, split.name, scheme, seed, h), h))
    return rows


def dense_weights_path(ctx: Context, identity: dict, seed: int, out: Path) -> Path:
    return out / paths.CACHE_DIR / paths.dense_weights_name(ctx.task.name, seed, identity_hash(identity))


def finished(log: Log, targets: list[Path], kind: str, force: bool) -> bool:
    """The stage's "finished already?" step: every target exists as a readable artifact of ``kind``."""
    if force or not all(existing(p, kind) for p in targets):
        return False
    log.info("finished already (same config): reusing " + ", ".join(str(p) for p in targets))
    return True


# ---------------------------------------------------------------------------------------------- masks


def load_mask(ctx: Context, path: str) -> Artifact:
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


# ---------------------------------------------------------------------------------------------- model


def load_model(ctx: Context, cfg: TrainConfig, seed: int, device, head_seed: int | None = None, move: bool = True):
    """The pretrained classifier for ``ctx``'s task; its task head drawn from ``head_seed`` (default: the seed)."""
    import torch

    torch.manual_seed(seed if head_seed is None else head_seed)
    model = loading.load_model(ctx.model_dir, ctx.task.num_labels, cfg.dropout, loading.attention_for(device.type),
                               fresh_head=True)
    return model.to(device) if move else model


def load_tokenizer(ctx: Context, cfg: TrainConfig, model):
    """The model's tokenizer, giving token types only where the model has them; ``--max-length`` must fit the
    model."""
    tokenizer = loading.load_tokenizer(ctx.model_dir)
    loading.fit_tokenizer(tokenizer, model)
    loading.check_max_length(cfg.max_length, model, tokenizer)
    return tokenizer


def encoded(ctx: Context, tokenizer, split: data_files.Split, max_length: int):
    """``split`` tokenised, from the cache when this tokenizer, truncation length and data were tokenised before
    by an earlier run into the same --out: a search and the later finetunes of the same data tokenise once. Keyed
    by the model folder's fingerprint (which covers its tokenizer files), the tokenizer class,
    max_length and the split's content fingerprint."""
    from ticketctl.data.batching import Encoded

    key = config_hash({"model": ctx.model_fp, "tokenizer": type(tokenizer).__name__, "max_length": max_length,
                       "data": split.fingerprint, "version": 2,
                       "inputs": list(getattr(tokenizer, "model_input_names", []))})
    path = None if ctx.cache_dir is None else ctx.cache_dir / paths.tokens_name(ctx.task.name, split.name, key)
    cached = existing(path, "tokens") if path is not None else None
    if cached is not None and cached.meta.get("key") == key:
        t = cached.tensors
        ends = np.cumsum(t["lengths"])
        starts = ends - t["lengths"]
        cut = lambda flat: [flat[a:b] for a, b in zip(starts, ends)]  # noqa: E731
        enc = Encoded(cut(t["input_ids"]), cut(t["token_type_ids"]) if "token_type_ids" in t else None,
                      t["lengths"].astype(np.int64), max_length, int(cached.meta.get("truncated", 0)),
                      int(cached.meta.get("longest", 0)))
        ctx.log.debug(f"{split.name}: tokens from {path}")
    else:
        enc = encode(tokenizer, split, max_length)
        if path is not None and distributed_main():
            tensors = {"input_ids": np.concatenate(enc.input_ids) if len(enc) else np.zeros(0, np.int64),
                       "lengths": enc.lengths.astype(np.int64)}
            if enc.token_type_ids is not None:
                tensors["token_type_ids"] = np.concatenate(enc.token_type_ids)
            atomic.ensure_writable(path.parent)
            write_artifact(path, "tokens", tensors, ctx.meta(key=key, split=split.name, max_length=str(max_length),
                                                              data_fingerprint=split.fingerprint,
                                                              truncated=str(enc.truncated), longest=str(enc.longest)))
    _note_truncation(ctx.log, split, enc)
    return enc


_TRUNCATION_NOTED: set = set()


def _note_truncation(log: Log, split: data_files.Split, enc) -> None:
    """Say once per split and length, also without --verbose, how many examples were cut to --max-length."""
    key = (split.fingerprint, enc.max_length)
    note = enc.truncation_note(split.name)
    if note and key not in _TRUNCATION_NOTED:
        _TRUNCATION_NOTED.add(key)
        log.info(f"note: {note}")


def distributed_main() -> bool:
    from ticketctl.train import distributed

    return distributed.is_main()


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id or 0


def dense_train(ctx: Context, model, tokenizer, cfg: TrainConfig, seed: int, device, description: str,
                keep=None, l1=None, enc=None) -> tuple[list[float], list, float]:
    """Run the training loop on ``ctx``'s training set with progress on stderr; returns (epoch losses, loss curve,
    seconds)."""
    from ticketctl.train.loop import train

    enc = encoded(ctx, tokenizer, ctx.train, cfg.max_length) if enc is None else enc
    curve: list = []
    start_time = time.perf_counter()
    with ctx.log.progress(description, 1, cfg.batch_size) as advance:
        losses = train(model, enc, ctx.train.labels, cfg, seed, device, pad_id(tokenizer), keep=keep, l1=l1,
                       on_step=recording(advance, curve))
    return losses, curve, time.perf_counter() - start_time


# ---------------------------------------------------------------------------------------------- outputs


def write_logits(ctx: Context, split: data_files.Split, path: Path, outputs: np.ndarray, meta: dict) -> dict[str, float]:
    tensors = {"outputs": outputs.astype(np.float32), "ids": split.ids}
    metrics = {}
    if split.labels is not None:
        tensors["labels"] = split.labels
        metrics = score(ctx.task, predictions(ctx.task, outputs), split.labels)
    names = {"id_names": split.id_names} if split.id_names is not None else {}
    full = ctx.meta(split=split.name, split_source=split.source, data_fingerprint=split.fingerprint,
                    examples=str(len(split)), metrics=metrics or None, **names, **meta)
    write_artifact(path, "logits", tensors, full)
    if ctx.report_to and distributed_main():
        report.report(ctx.report_to, path.parent, path, full, metrics)
    return metrics


def write_outputs(ctx: Context, model, tokenizer, cfg: TrainConfig, device, rows, meta: dict,
                  structure=None) -> list[dict]:
    """Evaluate the trained model on every split of ``rows`` (from ``logits_paths``) and write its logits artifacts;
    returns each split's metrics."""
    from ticketctl.train import distributed
    from ticketctl.train.loop import predict

    results = []
    for split, path, h in rows:
        if not distributed.is_main():  # process 0 evaluates and writes; the others hold the same weights
            results.append({})
            continue
        enc = encoded(ctx, tokenizer, split, cfg.max_length)
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


def save_dense_weights(ctx: Context, model, identity: dict, seed: int, out: Path) -> None:
    """Keep the trained weights of a dense finetune (the whole state), so that the first IMP round of a ``base``
    search and the importance scores of a structured search with the same seed and config need not train again."""
    weights = {n: p.detach().float().cpu().numpy() for n, p in model.state_dict().items() if p.is_floating_point()}
    write_artifact(dense_weights_path(ctx, identity, seed, out), "weights", weights,
                   ctx.meta(seed=str(seed), config=identity))


def write_dense_finetune(ctx: Context, model, tokenizer, cfg: TrainConfig, seed: int, out: Path, identity: dict,
                         device, meta: dict) -> list[dict]:
    """The outputs of a dense finetune, under the names ``finetune`` gives them, and its weights for reuse: written
    by ``finetune`` and by the dense rounds of ``search`` (IMP round 1 of ``base``, a structured search's
    finetune), so that whichever runs second costs nothing."""
    metrics = write_outputs(ctx, model, tokenizer, cfg, device, logits_paths(ctx, identity, "dense", seed, out), meta)
    save_dense_weights(ctx, model, identity, seed, out)
    return metrics


def dense_round_meta(ctx: Context, seed: int, dense_identity: dict, curve: list | None) -> dict:
    """Provenance of a dense finetune that a search ran as its first step (written under ``finetune``'s names)."""
    return {"seed": str(seed), "policy": "dense", "sparsity": "0", "bagging": "1.0", "config": dense_identity,
            "init_model": "pretrained", "train_fraction": str(dense_identity.get("train_fraction", 1.0)),
            "train_examples": str(len(ctx.train)),
            "parents": [], "produced_by": "search round 1", "loss_curve": curve or None}


def reuse_dense_weights(ctx: Context, identity: dict, seed: int, out: Path, force: bool, names) -> Artifact | None:
    """The finished dense finetune with this identity (its weights artifact), if it holds all of ``names``."""
    if force:
        return None
    cached = existing(dense_weights_path(ctx, identity, seed, out), "weights")
    if cached is None or not all(n in cached.tensors for n in names):
        return None
    return cached


def saved_member_hash(folder: Path) -> str | None:
    """The config hash of the member ``finetune --save-model`` saved in ``folder`` (None if it holds none)."""
    import json

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


def save_trained(ctx: Context, model, tokenizer, folder: Path, cfg: TrainConfig | None = None,
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
