"""Tables on stdout: a rich table for people, ``tsv``/``json``/``markdown`` for scripts and papers; notes on stderr."""

from __future__ import annotations

import json
import math
import sys

from ticketctl.errors import UsageError

FORMATS = ("table", "tsv", "json", "markdown")


def _cell(v, blank_nan: bool = False) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "" if blank_nan else "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _json_value(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def emit(rows: list[dict], columns: list[str], fmt: str = "table", title: str | None = None) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}")
    out = sys.stdout
    if fmt == "json":
        for r in rows:
            out.write(json.dumps({c: _json_value(r.get(c)) for c in columns}) + "\n")
    elif fmt == "tsv":
        out.write("\t".join(columns) + "\n")
        for r in rows:
            out.write("\t".join(_cell(r.get(c, "")) for c in columns) + "\n")
    elif fmt == "markdown":
        if title:
            out.write(f"**{title}**\n\n")
        out.write("| " + " | ".join(columns) + " |\n")
        out.write("|" + "|".join(" --- " for _ in columns) + "|\n")
        for r in rows:
            out.write("| " + " | ".join(_cell(r.get(c, ""), blank_nan=True) for c in columns) + " |\n")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table()
        for c in columns:
            table.add_column(c, justify="left" if c in ("group", "metric", "mask", "direction", "parameter",
                                                        "test", "a", "b") else "right")
        for r in rows:
            table.add_row(*[_cell(r.get(c, ""), blank_nan=True) for c in columns])
        console = Console(file=out, highlight=False, width=max(100, len(columns) * 12, len(title or "") + 2))
        if title:
            console.print(title, markup=False, style="italic")
        console.print(table)
    out.flush()


def note(msg: str) -> None:
    """A line for people (files written, what a selection chose) on stderr, away from the results."""
    sys.stderr.write(msg + "\n")
