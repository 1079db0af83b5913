"""The setup step every training stage shares, and its loop step. Each stage (finetune, IMP search, structured
search, share) is

    identity -> finished already? -> setup -> loop -> write

:class:`Context` is a task with its model and data resolved (and the run's identity built from them,
``ticketctl.store.identity.RunIdentity``); :func:`start` resolves the device and precision once and makes the
contexts; :func:`finished` is the reuse check; :func:`train_model` runs the one training loop with progress on
stderr (a dense finetune, a ticket's, an IMP round). What a stage reads (masks, the seeded model, tokens) is
``ticketctl.stages.inputs``, what it writes ``ticketctl.stages.outputs``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ticketctl.data import custom
from ticketctl.data import files as data_files
from ticketctl.data.batching import encode
from ticketctl.data.tasks import Task
from ticketctl.errors import InputError, NoLabels, UsageError
from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
from ticketctl.log import Log, recording
from ticketctl.model import loading
from ticketctl.store import atomic, paths, tracker
from ticketctl.store.artifacts import existing, write_artifact
from ticketctl.store.identity import RunIdentity
from ticketctl.store.provenance import config_hash, provenance
from ticketctl.train.seeds import CPU_STREAM


@dataclass(frozen=True)
class StageSpec:
    """What every stage's spec holds besides its own fields (``finetune.FinetuneSpec``, ``imp.SearchSpec``,
    ``structured.StructuredSpec``, ``share.ShareSpec``): the option dataclasses of ``ticketctl.hparams``,
    keyword-only, None standing for their defaults (the library functions accept None). A spec is frozen: what a run
    is asked to do does not change while it runs; a subclass normalises its own fields in ``__post_init__`` through
    :meth:`_set`, after calling this one.
    """

    train: TrainConfig = field(default_factory=TrainConfig, kw_only=True)
    data: DataOptions = field(default_factory=DataOptions, kw_only=True)
    run: RunOptions = field(default_factory=RunOptions, kw_only=True)

    def __post_init__(self) -> None:
        self._set(train=self.train or TrainConfig(), data=self.data or DataOptions(), run=self.run or RunOptions())

    def _set(self, **values) -> None:
        """Set fields of this frozen spec (its normalised values), once, in ``__post_init__``."""
        for name, value in values.items():
            object.__setattr__(self, name, value)


def calibration_split(task: Task, opts: DataOptions, warn) -> data_files.Split:
    """``--calibration-file``: labelled examples held out for temperature scaling, as the split
    ``custom.CALIBRATION_SPLIT``, in the formats of ``--eval-file`` (a GLUE task's TSV format; for
    --train-file/--dataset data a .csv, .tsv, .json or .jsonl file with the same columns). Raises InputError
    (unreadable file, missing columns, no rows, no labels: all-placeholder labels count as none) or UsageError
    (unknown format)."""
    path, name = opts.calibration_file, custom.CALIBRATION_SPLIT
    split = (custom.read_split(task, path, name, warn=warn) if opts.custom
             else data_files.read_tsv(task, path, name, warn=warn))
    if split.labels is None:
        raise InputError(f"{path}: --calibration-file needs labels (temperature scaling fits the temperature to "
                         f"them); it has none in column {task.label_column!r}")
    return split


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
    source_train: data_files.Split | None = None  # the training split as read, before --max-train-samples
    ood_split: str | None = None  # the split of --ood-file (custom.OOD_SPLIT), the last of ``evals``; None: not given
    calibration_split: str | None = None  # the split of --calibration-file (custom.CALIBRATION_SPLIT); None: not given

    @classmethod
    def create(cls, task_name: str | None, model: str | None, opts: DataOptions, log: Log) -> "Context":
        opts.validate()
        model_name, model_dir = loading.resolve_model(model)
        model_fp = loading.model_fingerprint(model_dir)
        source = custom.own_task_data if opts.custom else data_files.glue_task_data  # the data-source switch
        task, train, evals = source(task_name, opts, log.info)
        if opts.calibration_file:  # one more labelled split; a finished member is not retrained for it
            evals = [*evals, calibration_split(task, opts, log.info)]
        if opts.ood_file:  # one more evaluation split, unlabelled; a finished member is not retrained for it
            evals = [*evals, custom.read_ood(task, opts.ood_file, log.info)]
        if train.labels is None:
            raise NoLabels(f"{train.source}: the training split has no labels")
        source_train = train
        if opts.max_train_samples is not None:
            train = train.subset(np.arange(min(opts.max_train_samples, len(train))))
        names = [s.name for s in evals]
        if len(set(names)) != len(names):
            twice = sorted(n for n in names if names.count(n) > 1)[0]
            raise UsageError(f"two evaluation splits are both named {twice!r} (rename an --eval-file)")
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
        return cls(task, model_name, model_dir, model_fp, train, evals, log, model_head=model_head,
                   source_train=source_train, ood_split=custom.OOD_SPLIT if opts.ood_file else None,
                   calibration_split=custom.CALIBRATION_SPLIT if opts.calibration_file else None)

    def with_train(self, split: data_files.Split) -> "Context":
        return replace(self, train=split)

    def identity(self, cfg: TrainConfig, seed: int, train_split: data_files.Split | None = None,
                 mask_digest: str | None = None, bagging: float = 1.0, scheme: str = "dense",
                 **extra) -> RunIdentity:
        """The identity of a training run on this context (``RunIdentity.training``): ``train_split`` (default: the
        context's training set) names the data, ``extra`` adds the stage's fields."""
        split = self.train if train_split is None else train_split
        return RunIdentity.training(self.task.name, self.model_fp, seed, split.fingerprint, cfg.as_dict(),
                                    mask=mask_digest, bagging=bagging, task_spec=self.task.spec(),
                                    model_head=self.model_head, dropout_stream=self.dropout_stream, scheme=scheme,
                                    **extra)

    def logits_rows(self, identity: RunIdentity, out: Path) -> list[tuple[data_files.Split, Path, str]]:
        """(split, logits path, config hash) of every evaluation split of this context for ``identity``."""
        named = identity.logits(out, [(s.name, s.fingerprint) for s in self.evals])
        return [(split, path, h) for split, (path, h) in zip(self.evals, named)]

    @property
    def optional(self) -> dict[str, str]:
        """The splits that do not make a member finished, split name -> its option: ``--ood-file``'s and
        ``--calibration-file``'s (where given)."""
        named = {self.ood_split: "--ood-file", self.calibration_split: "--calibration-file"}
        return {split: flag for split, flag in named.items() if split is not None}

    def required(self, rows: list[tuple[data_files.Split, Path, str]]) -> list[Path]:
        """The logits paths of ``rows`` (:meth:`logits_rows`) a run counts as finished with: every split's but the
        ``--ood-file`` and ``--calibration-file`` splits' (:attr:`optional`), so that a member finished before they
        were given is reused, not retrained (docs/calibration.md "Outputs on a new split without retraining")."""
        return [path for split, path, _ in rows if split.name not in self.optional]

    def written(self, rows: list[tuple[data_files.Split, Path, str]]) -> list[Path]:
        """The logits paths of ``rows`` a run has: :meth:`required`, and the :attr:`optional` splits' where they exist
        (scored at the end of training, now or by an earlier run). For each that does not (the member was finished
        without it), says on stderr, once, how to score it without retraining."""
        missing = [(split.name, path) for split, path, _ in rows if split.name in self.optional and not path.exists()]
        for name, path in missing:
            self.log.info(f"note: the member was finished before {self.optional[name]} was given and is not retrained "
                          f"for it: no {name} outputs ({path.name}); a member saved with --save-model gets them from "
                          f"`ticketctl predict --model-dir DIR FILE --split {name}` (docs/calibration.md)")
        return [path for _, path, _ in rows if path not in {p for _, p in missing}]

    def encoded(self, tokenizer, split: data_files.Split, max_length: int):
        """``split`` tokenised, from the cache when this tokenizer, truncation length and data were tokenised before
        by an earlier run into the same --out: a search and the later finetunes of the same data tokenise once. Keyed
        by the model folder's fingerprint (which covers its tokenizer files), the tokenizer class,
        max_length and the split's content fingerprint."""
        from ticketctl.data.batching import Encoded
        from ticketctl.train import distributed

        key = config_hash({"model": self.model_fp, "tokenizer": type(tokenizer).__name__, "max_length": max_length,
                           "data": split.fingerprint, "version": 2,
                           "inputs": list(getattr(tokenizer, "model_input_names", []))})
        path = None if self.cache_dir is None else self.cache_dir / paths.tokens_name(self.task.name, split.name, key)
        cached = existing(path, "tokens") if path is not None else None
        if cached is not None and cached.meta.get("key") == key:
            t = cached.tensors
            ends = np.cumsum(t["lengths"])
            starts = ends - t["lengths"]
            cut = lambda flat: [flat[a:b] for a, b in zip(starts, ends)]  # noqa: E731
            enc = Encoded(cut(t["input_ids"]), cut(t["token_type_ids"]) if "token_type_ids" in t else None,
                          t["lengths"].astype(np.int64), max_length, int(cached.meta.get("truncated", 0)),
                          int(cached.meta.get("longest", 0)))
            self.log.debug(f"{split.name}: tokens from {path}")
        else:
            enc = encode(tokenizer, split, max_length)
            if path is not None and distributed.is_main():
                tensors = {"input_ids": np.concatenate(enc.input_ids) if len(enc) else np.zeros(0, np.int64),
                           "lengths": enc.lengths.astype(np.int64)}
                if enc.token_type_ids is not None:
                    tensors["token_type_ids"] = np.concatenate(enc.token_type_ids)
                atomic.ensure_writable(path.parent)
                write_artifact(path, "tokens", tensors,
                               self.meta(key=key, split=split.name, max_length=str(max_length),
                                         data_fingerprint=split.fingerprint, truncated=str(enc.truncated),
                                         longest=str(enc.longest)))
        _note_truncation(self.log, split, enc)
        return enc

    def meta(self, **fields) -> dict:
        """This context's provenance (task, model, fingerprint, versions; a custom task's spec) plus an artifact's
        own fields."""
        spec = self.task.spec()
        return provenance(self.task.name, self.model_name, self.model_fp, self.runtime,
                          **({"task_spec": spec} if spec else {}), **fields)


_TRUNCATION_NOTED: set = set()


def _note_truncation(log: Log, split: data_files.Split, enc) -> None:
    """Say once per split and length, also without --verbose, how many examples were cut to --max-length."""
    key = (split.fingerprint, enc.max_length)
    note = enc.truncation_note(split.name)
    if note and key not in _TRUNCATION_NOTED:
        _TRUNCATION_NOTED.add(key)
        log.info(f"note: {note}")


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
    tracker.check(run.report_to)
    contexts = [replace(Context.create(t, run.model, data, log), cache_dir=run.out / paths.CACHE_DIR,
                        report_to=run.report_to, **where) for t in tasks]
    log.debug(f"config: {cfg.as_dict()}")
    cfg.validate()
    atomic.ensure_writable(run.out)
    return (contexts[0] if single else contexts), cfg, device


def finished(log: Log, targets: list[Path], kind: str, force: bool) -> bool:
    """The stage's "finished already?" step: every target exists as a readable artifact of ``kind``."""
    if force or not all(existing(p, kind) for p in targets):
        return False
    log.info("finished already (same config): reusing " + ", ".join(str(p) for p in targets))
    return True


def train_model(ctx: Context, model, tokenizer, cfg: TrainConfig, seed: int, device, description: str,
                keep=None, l1=None, enc=None, targets=None, loss=None) -> tuple[list[float], list, float]:
    """Train ``model`` on ``ctx``'s training set with ``ticketctl.train.loop.train``, progress on stderr under
    ``description``: dense, or a ticket (``keep``: parameter name -> float 0/1 mask of its shape, pruned weights held
    at zero), with an L1 term (``l1``: IMP's regularizer, Kobayashi et al., 2022). ``enc`` is the tokenised training
    set (default: tokenised now, or from the cache). ``targets`` (one row per training example) and ``loss`` replace
    the labels and the plain loss (a distillation: ``ticketctl.train.distill``). Returns (epoch losses, loss curve:
    [step, loss] every 10 steps, seconds).
    """
    from ticketctl.train.loop import train

    enc = ctx.encoded(tokenizer, ctx.train, cfg.max_length) if enc is None else enc
    curve: list = []
    start_time = time.perf_counter()
    with ctx.log.progress(description, 1, cfg.batch_size) as advance:
        losses = train(model, enc, ctx.train.labels if targets is None else targets, cfg, seed, device,
                       loading.pad_id(tokenizer), keep=keep, l1=l1, on_step=recording(advance, curve), loss=loss)
    return losses, curve, time.perf_counter() - start_time
