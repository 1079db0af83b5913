"""Headless matplotlib helpers: PNG or SVG by the file's extension, written atomically."""

from __future__ import annotations

import io
from pathlib import Path

from ticketctl.errors import UsageError


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> None:
    from ticketctl.store.atomic import atomic_write_bytes

    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise UsageError(f"--plot {path}: use a .png, .svg or .pdf file name")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format=fmt, dpi=150)
    pyplot().close(fig)
    atomic_write_bytes(p, buf.getvalue())
