"""Generated documentation pages (a test keeps both current):

- docs/cli.md: the CLI reference, generated from the commands' ``--help``;
- docs/index.md: the site's front page, README.md with its links rewritten for the site (``docs/x.md`` -> ``x.md``).

Regenerate with ``python -m ticketctl.clidoc``."""

from __future__ import annotations

import re
from pathlib import Path

WIDTH = 100
ROOT = Path(__file__).resolve().parents[1]


def render() -> str:
    import typer

    from ticketctl.cli import app

    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="ticketctl", terminal_width=WIDTH, max_content_width=WIDTH)
    parts = ["# ticketctl command reference", "",
             "Generated from `ticketctl COMMAND --help` by `python -m ticketctl.clidoc`; do not edit by hand.", "",
             "```text", group.get_help(root).rstrip(), "```", ""]
    for name in group.list_commands(root):
        cmd = group.get_command(root, name)
        ctx = cmd.context_class(cmd, parent=root, info_name=name, terminal_width=WIDTH, max_content_width=WIDTH)
        parts += [f"## ticketctl {name}", "", "```text", cmd.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(parts)


def render_index(readme: str | None = None) -> str:
    """The site's front page: README.md, whose links into ``docs/`` are made relative to ``docs/``."""
    text = (ROOT / "README.md").read_text() if readme is None else readme
    text = re.sub(r"\]\(docs/", "](", text)
    note = "<!-- Generated from README.md by `python -m ticketctl.clidoc`; edit README.md instead. -->\n\n"
    return note + text


def write(path: str | Path = ROOT / "docs" / "cli.md", index: str | Path = ROOT / "docs" / "index.md") -> None:
    Path(path).write_text(render())
    Path(index).write_text(render_index())


if __name__ == "__main__":
    write()
