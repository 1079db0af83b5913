"""Progress and messages on stderr (stdout is for results): :class:`Log`, the live bar on a terminal and the plain
progress lines without one (Slurm, nohup, CI)."""

from __future__ import annotations

import os
import time


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
