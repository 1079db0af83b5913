"""Experiment trackers, only when asked for (``--report-to``): the loss curve and metrics an artifact already
records, as TensorBoard scalars. Nothing here is imported unless a run reports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ticketctl.errors import UsageError

TRACKERS = ("tensorboard",)


def check(report_to: str | None) -> None:
    """Refuse an unknown tracker, or one whose package is missing, before any training."""
    if report_to in (None, "none"):
        return
    if report_to not in TRACKERS:
        raise UsageError(f"--report-to {report_to}: choose one of {', '.join(TRACKERS)} (or none)")
    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError("--report-to tensorboard needs the tensorboard package: pip install 'ticketctl[tensorboard]'")


def tensorboard_dir(out: Path, artifact: Path) -> Path:
    return Path(out) / "tensorboard" / artifact.name.removesuffix(".safetensors")


def report(report_to: str | None, out: Path, artifact: Path, meta: dict, metrics: dict[str, float]) -> Path | None:
    """Write one run's scalars: ``train/loss`` at every logged step, ``SPLIT/METRIC`` at the last step, and the
    configuration as text. Returns the run's folder."""
    if report_to in (None, "none"):
        return None
    from torch.utils.tensorboard import SummaryWriter

    folder = tensorboard_dir(out, artifact)
    curve = meta.get("loss_curve") or []
    last = curve[-1][0] if curve else 0
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for step, loss in curve:
            writer.add_scalar("train/loss", loss, step)
        for name, value in metrics.items():
            writer.add_scalar(f"{meta.get('split', 'eval')}/{name}", value, last)
        writer.add_text("config", "```\n" + json.dumps(meta.get("config", {}), indent=1, sort_keys=True) + "\n```")
    finally:
        writer.close()
    return folder
