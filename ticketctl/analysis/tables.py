"""Tables on stdout: a rich table for people, ``tsv``/``json``/``markdown`` for scripts and papers; notes on stderr.

A :class:`Table` is rows (dicts keyed by column) with the columns to show, in order, and a title; ``emit`` writes it
in one of :data:`FORMATS`. ``ticketctl.analysis.render`` builds the tables from the analysis records."""

from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import dataclass, field

from ticketctl.errors import UsageError

FORMATS = ("table", "tsv", "json", "markdown")


def format_cell(v, blank_nan: bool = False) -> str:
    """A value as a table prints it: floats to 4 decimals (3 significant digits below 1e-3, 0 as 0.0000), NaN as
    ``nan`` (blank with ``blank_nan``), infinities as ``inf``/``-inf``, anything else by ``str``."""
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


@dataclass
class Table:
    """Rows keyed by column name (a missing key is an empty cell), the columns shown in order, and a title (shown by
    the table and markdown formats)."""

    columns: list[str]
    rows: list[dict] = field(default_factory=list)
    title: str | None = None


def check_format(fmt: str) -> None:
    """Raises UsageError unless ``fmt`` is one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}")


def text(table: Table, fmt: str = "tsv") -> str:
    """The table as ``emit`` writes it, as a string (the table format without a terminal's styles)."""
    buf = io.StringIO()
    emit(table, fmt, buf)
    return buf.getvalue()


def emit(table: Table, fmt: str = "table", out=None) -> None:
    """Write ``table`` to ``out`` (default stdout) in ``fmt``: json (one object per row, NaN as null, infinities as
    "inf"/"-inf"), tsv (a header line), markdown (the title in bold, NaN blank) or a rich table (NaN blank). Numbers
    show 4 decimals, or 3 significant digits below 0.001. Raises UsageError for an unknown format."""
    check_format(fmt)
    out = sys.stdout if out is None else out
    rows, columns, title = table.rows, table.columns, table.title
    if fmt == "json":
        for r in rows:
            out.write(json.dumps({c: _json_value(r.get(c)) for c in columns}) + "\n")
    elif fmt == "tsv":
        out.write("\t".join(columns) + "\n")
        for r in rows:
            out.write("\t".join(format_cell(r.get(c, "")) for c in columns) + "\n")
    elif fmt == "markdown":
        if title:
            out.write(f"**{title}**\n\n")
        out.write("| " + " | ".join(columns) + " |\n")
        out.write("|" + "|".join(" --- " for _ in columns) + "|\n")
        for r in rows:
            out.write("| " + " | ".join(format_cell(r.get(c, ""), blank_nan=True) for c in columns) + " |\n")
    else:
        _rich(rows, columns, title, out)
    out.flush()


# text columns; numbers go right
LEFT = ("group", "metric", "mask", "direction", "parameter", "test", "a", "b", "verdict")


def _rich(rows: list[dict], columns: list[str], title: str | None, out) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    table = RichTable()
    for c in columns:
        table.add_column(c, justify="left" if c in LEFT else "right")
    for r in rows:
        table.add_row(*[format_cell(r.get(c, ""), blank_nan=True) for c in columns])
    console = Console(file=out, highlight=False, width=max(100, len(columns) * 12, len(title or "") + 2))
    if title:
        console.print(title, markup=False, style="italic")
    console.print(table)


def note(msg: str) -> None:
    """A line for people (files written, what a selection chose) on stderr, away from the results."""
    sys.stderr.write(msg + "\n")
