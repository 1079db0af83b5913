"""What ``finetune`` and ``search`` share: the resolved task, model, data, device and logging."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ticketctl import artifacts, data, modeling
from ticketctl.errors import InputError, UsageError
from ticketctl.tasks import Task, get_task


@dataclass
class DataOptions:
    data_dir: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    eval_files: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise UsageError("--max-train-samples must be > 0")
        if self.max_eval_samples is not None and self.max_eval_samples <= 0:
            raise UsageError("--max-eval-samples must be > 0")


class Log:
    """Progress and messages on stderr only; stdout is for results."""

    def __init__(self, quiet: bool = False, verbose: bool = False):
        from rich.console import Console

        import os

        self.quiet = quiet or os.environ.get("RANK", "0") != "0"
        self.verbose = verbose and not self.quiet
        self.console = Console(stderr=True, highlight=False)

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg, markup=False, soft_wrap=True)

    def debug(self, msg: str) -> None:
        """Details for --verbose: resolved configuration, data sources, per-epoch losses, timings."""
        if self.verbose:
            self.console.print(msg, markup=False, soft_wrap=True, style="dim")

    def progress(self, description: str, total: int):
        """A context manager yielding ``advance(step, total, loss)``; a no-op when quiet or not a terminal."""
        return _Progress(self, description, total)


class _Progress:
    def __init__(self, log: Log, description: str, total: int):
        self.log, self.description, self.total = log, description, total
        self.bar = None

    def __enter__(self):
        if not self.log.quiet and self.log.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

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

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


@dataclass
class Context:
    task: Task
    model_name: str
    model_dir: Path
    model_fp: str
    train: data.Split
    evals: list[data.Split]
    log: Log

    @classmethod
    def create(cls, task_name: str, model: str | None, opts: DataOptions, log: Log) -> "Context":
        task = get_task(task_name)
        opts.validate()
        model_name, model_dir = modeling.resolve_model(model)
        model_fp = modeling.model_fingerprint(model_dir)
        train = data.load_split(task, "train", opts.data_dir)
        if train.labels is None:
            raise InputError(f"{train.source}: the training split has no labels")
        if opts.max_train_samples is not None:
            train = train.subset(np.arange(min(opts.max_train_samples, len(train))))
        evals = [data.load_split(task, "dev", opts.data_dir)]
        for f in opts.eval_files:
            evals.append(data.read_tsv(task, f))
        names = [s.name for s in evals]
        if len(set(names)) != len(names):
            raise UsageError(f"two evaluation splits are both named {sorted(n for n in names if names.count(n) > 1)[0]!r}"
                             f" (rename an --eval-file)")
        if opts.max_eval_samples is not None:
            evals = [s.subset(np.arange(min(opts.max_eval_samples, len(s)))) for s in evals]
        return cls(task, model_name, model_dir, model_fp, train, evals, log)

    def base_meta(self) -> dict:
        return {"task": self.task.name, "model": self.model_name, "model_fingerprint": self.model_fp,
                "versions": artifacts.versions()}


def print_paths(paths: list[Path]) -> None:
    import os

    if os.environ.get("RANK", "0") != "0":  # data-parallel run: process 0 speaks for all
        return
    for p in paths:
        sys.stdout.write(f"{p}\n")
    sys.stdout.flush()
