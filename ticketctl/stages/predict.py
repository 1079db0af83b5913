"""``predict``: run saved members on new text. Each member (a folder written by ``finetune --save-model``: dense,
masked or a physically pruned structured ticket) writes one logits artifact, so ``ensemble``, ``--submission`` and
``stats`` work on its outputs unchanged; the averaged predictions come with the labels as the data names them.

Members must agree on the task (its name and, for your own data, its labels, columns and metrics) and on the
tokenizer; their batches are length-sorted and padded dynamically, as in training.

A run is asked for by a :class:`PredictSpec` (what the command's options say; the ``predict`` function builds it
from keywords) and :func:`run_predict` runs it: read and check the members, read the data, then for each member

    identity (:func:`run_identity`) -> finished already? -> run the member -> write its logits
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ticketctl.data.tasks import Task, task_of
from ticketctl.errors import InputError, UsageError
from ticketctl.hparams import RunOptions
from ticketctl.log import Log, format_metrics
from ticketctl.stages import context, outputs
from ticketctl.store import atomic, paths
from ticketctl.store.identity import RunIdentity
from ticketctl.store.provenance import file_sha256

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "merges.txt", "vocab.json", "spiece.model",
                   "special_tokens_map.json")


@dataclass
class Member:
    folder: Path
    info: dict  # the config's MEMBER_KEY entry
    task: Task
    fingerprint: str  # the saved model's content hash
    tokenizer: str  # content hash of its tokenizer files

    @property
    def max_length(self) -> int:
        return int(self.info.get("max_length") or 128)


def read_member(folder: str | Path) -> Member:
    from ticketctl.model.loading import model_fingerprint

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(f"--model-dir {folder}: not a model folder (no config.json)")
    try:
        info = json.loads(config_path.read_text()).get(outputs.MEMBER_KEY)
    except json.JSONDecodeError as e:
        raise InputError(f"{config_path}: not JSON ({e.msg})") from None
    if not isinstance(info, dict) or "task" not in info:
        raise InputError(f"--model-dir {folder}: not saved by `ticketctl finetune --save-model` (its config has no "
                         f"{outputs.MEMBER_KEY!r} entry naming the task)")
    tok = tokenizer_digest(folder)
    task = task_of({"task": info["task"], "task_spec": info.get("task_spec")})
    return Member(folder, info, task, model_fingerprint(folder), tok)


def tokenizer_digest(folder: Path) -> str:
    """What tokenises in a saved model's tokenizer files: their contents, except the transient ``truncation`` and
    ``padding`` state that ``tokenizers`` saves into tokenizer.json after a call (two members of one model differ
    there when one tokenised its data and the other read tokens from the cache). Vocabulary, normaliser,
    pre-tokeniser, post-processor and special tokens all count."""
    import hashlib

    parts = []
    for name in TOKENIZER_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name == "tokenizer.json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InputError(f"{path}: not a tokenizer file ({type(e).__name__})") from None
            if isinstance(data, dict):
                data = {k: v for k, v in data.items() if k not in ("truncation", "padding")}
            digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        else:
            digest = file_sha256(path)
        parts.append(f"{name}:{digest}\n")
    return "".join(parts)


def check_members(members: list[Member]) -> None:
    first = members[0]
    seen: dict[str, Path] = {}
    for m in members:
        if m.fingerprint in seen:
            raise UsageError(f"--model-dir {m.folder} and {seen[m.fingerprint]} are the same model: a member counts "
                             f"once")
        seen[m.fingerprint] = m.folder
        if (m.task.name, m.task.spec()) != (first.task.name, first.task.spec()):
            raise InputError(f"cannot mix tasks: {first.folder} is for {first.task.name}, {m.folder} for {m.task.name}"
                             + (" (another label set, columns or metrics)" if m.task.name == first.task.name else ""))
        if m.tokenizer != first.tokenizer:
            raise InputError(f"cannot mix tokenizers: {m.folder} and {first.folder} tokenise differently")


def read_data(task: Task, path: str | Path, name: str | None = None):
    """New text for ``task``: a GLUE task's TSV layout (.tsv), or any format of ``ticketctl.data.custom`` with the
    task's text columns; labels are used where the file has them."""
    from ticketctl.data import custom, files

    if not task.is_custom and custom.file_format(path) == "tsv":
        return files.read_tsv(task, path, name)
    if not task.is_custom:
        task = Task(task.name, task.folder, task.hub_text_columns, "label", task.labels, task.metrics)
    return custom.read_split(task, path, name)


@dataclass(frozen=True)
class PredictSpec:
    """One ``predict`` run as the command's options ask for it: ``data_file`` the new text (a GLUE task's TSV
    layout, or any format of ``ticketctl.data.custom``: :func:`read_data`), ``model_dirs`` the members' folders
    (written by ``finetune --save-model``; at least one, stored as a tuple of paths), ``batch_size`` the examples
    per forward pass (> 0), ``split`` the name the data's logits artifacts carry (None: named after the file),
    ``run`` where it computes and writes (``RunOptions``; its ``model`` is not used: each member is its own; None:
    the defaults). Frozen: what a run is asked to do does not change while it runs."""

    data_file: str | Path
    model_dirs: tuple[Path, ...]
    batch_size: int = 128
    split: str | None = None
    run: RunOptions = field(default_factory=RunOptions)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dirs", tuple(Path(d) for d in self.model_dirs or ()))
        object.__setattr__(self, "run", self.run or RunOptions())

    def check(self) -> None:
        """Refuse options that cannot run (UsageError, one line), before any member is read: no member folder, a
        batch size below 1."""
        if not self.model_dirs:
            raise UsageError("give at least one --model-dir")
        if self.batch_size <= 0:
            raise UsageError("--batch-size must be > 0")


def predict(data_file: str | Path, model_dirs: list[str | Path], *, batch_size: int = 128, split: str | None = None,
            run: RunOptions | None = None) -> list[Path]:
    """Run every member on ``data_file``; returns the logits artifact paths, one per member, in order. The
    arguments are :class:`PredictSpec`'s fields; raises what :func:`run_predict` raises."""
    return run_predict(PredictSpec(data_file, model_dirs, batch_size=batch_size, split=split, run=run))


def run_predict(spec: PredictSpec) -> list[Path]:
    """Check the options, read the members (they must agree on the task and the tokenizer) and the data, resolve the
    device once, then run every member not finished already (its logits artifact, named by :func:`run_identity`,
    exists). Returns the logits artifact paths, one per member, in order. Raises UsageError for bad options or a
    member given twice, InputError for folders that are not saved members, members that do not agree, unreadable
    data."""
    from ticketctl.train.device import describe, runtime

    spec.check()
    run = spec.run
    log = Log(run.quiet, run.verbose, run.log_every)
    members = [read_member(d) for d in spec.model_dirs]
    check_members(members)
    task = members[0].task
    data = read_data(task, spec.data_file, spec.split)
    device, precision = runtime(run.device, "fp32", run.threads, data_parallel=False,
                                deterministic=run.deterministic)
    where = describe(device, 1, run.deterministic)
    atomic.ensure_writable(run.out)
    written = []
    for m in members:
        ctx = context.Context(task, m.info.get("base_model", str(m.folder)), m.folder,
                              m.info.get("base_model_fingerprint", m.fingerprint), data, [data], log,
                              run.out / paths.CACHE_DIR, runtime=where)
        identity = run_identity(m, data, precision)
        path = identity.paths(run.out, [(data.name, data.fingerprint)])[0]
        if not context.finished(log, [path], "logits", run.force):
            _predict_member(ctx, m, identity, path, device, spec.batch_size)
        written.append(path)
    return written


def run_identity(member: Member, data, precision: str) -> RunIdentity:
    """A prediction's identity: the member's content, the data's, the truncation length and the precision; named
    by the member's policy and seed."""
    return RunIdentity.prediction(member.task.name, int(member.info.get("seed", 0)),
                                  str(member.info.get("policy", "member")), member.fingerprint, data.fingerprint,
                                  member.max_length, precision)


def _predict_member(ctx, m: Member, identity: RunIdentity, path: Path, device, batch_size: int) -> None:
    from ticketctl.model import loading
    from ticketctl.train.loop import predict as run_model

    precision, data = identity.fields["precision"], ctx.train
    model = loading.load_model(m.folder, ctx.task.num_labels, None, loading.attention_for(device.type)).to(device)
    tokenizer = loading.load_tokenizer(m.folder)
    loading.fit_tokenizer(tokenizer, model)
    enc = ctx.encoded(tokenizer, data, m.max_length)
    logits = run_model(model, enc, device, loading.pad_id(tokenizer), precision, batch_size)
    metrics = outputs.write_logits(ctx, data, path, logits, {
        "seed": str(identity.seed), "policy": identity.scheme, "sparsity": m.info.get("sparsity", "0"),
        "method": m.info.get("method"), "config_hash": identity.hash(), "member_model": str(m.folder),
        "member_fingerprint": m.fingerprint, "member_config_hash": m.info.get("config_hash"),
        "produced_by": "predict", "cost": outputs.inference_cost(model, enc),
        "config": {"member": m.fingerprint, "max_length": m.max_length, "precision": precision}})
    ctx.log.info(f"{m.folder}: {format_metrics(metrics) or f'{len(data)} examples'} -> {path}")


def write_predictions(task: Task, ids, outputs: np.ndarray, path: Path | None,
                      shares: np.ndarray | None = None, uncertainty: np.ndarray | None = None) -> None:
    """The ensemble's predictions as ``id<TAB>prediction`` rows (ids and label names as the data wrote them, or
    scores), with one ``p_<label>`` column per class for classification: ``shares`` (N, C) where given (the vote
    shares of ``--combine vote``), else the softmax of ``outputs`` (N, C): the mean probability for ``probs``, the
    softmax of the mean logits for ``logits``; then, with ``uncertainty`` (N, 2), the columns ``total_entropy`` and
    ``mutual_information`` (nats, :func:`row_uncertainty`); to ``path`` or stdout."""
    from ticketctl.analysis.combine import softmax
    from ticketctl.data.tasks import predictions

    ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
    pred = predictions(task, outputs)
    if task.is_regression:
        lines = ["id\tprediction"] + [f"{i}\t{p:.6g}" for i, p in zip(ids, pred.tolist())]
    else:
        probs = shares if shares is not None else softmax(outputs)
        extra = ["total_entropy", "mutual_information"] if uncertainty is not None else []
        lines = ["\t".join(["id", "prediction", *(f"p_{name}" for name in task.labels), *extra])]
        rows = probs if uncertainty is None else np.concatenate([probs, uncertainty], axis=1)
        lines += [f"{i}\t{task.labels[int(p)]}\t" + "\t".join(f"{x:.4f}" for x in row)
                  for i, p, row in zip(ids, pred.tolist(), rows.tolist())]
    text = "\n".join(lines) + "\n"
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic.atomic_write_bytes(Path(path), text.encode())


def row_uncertainty(outputs: np.ndarray) -> np.ndarray:
    """Each example's uncertainty from the members' logits (M, N, C): (N, 2) columns total entropy H[mean_m p_m]
    and mutual information H[mean_m p_m] - mean_m H[p_m] (nats; the members' disagreement, 0 for one member;
    Depeweg et al., 2018; Malinin & Gales, 2018), from the members' own probabilities whatever ``--combine``."""
    from ticketctl.analysis.combine import softmax
    from ticketctl.analysis.metrics import entropy

    member = softmax(np.asarray(outputs, dtype=np.float64))
    total = entropy(member.mean(axis=0))
    return np.stack([total, total - entropy(member).mean(axis=0)], axis=1)


def predict_ensemble(written: list[Path], combine: str, output: Path | None) -> None:
    """``predict --ensemble``: the members' logits artifacts ``written`` averaged by ``combine`` (probs | logits |
    vote), their predictions and (classification) each row's uncertainty written to ``output`` or stdout
    (:func:`write_predictions`, :func:`row_uncertainty`)."""
    from ticketctl.analysis.combine import combined_outputs, vote_shares
    from ticketctl.analysis.members import load_ensemble_members

    members = load_ensemble_members([str(p) for p in written])
    regression = members.task.is_regression
    shares = vote_shares(members.outputs) if combine == "vote" and not regression else None
    write_predictions(members.task, members.shown_ids, combined_outputs(members.task, members.outputs, combine),
                      output, shares, None if regression else row_uncertainty(members.outputs))
