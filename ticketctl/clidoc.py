"""docs/cli.md: the CLI reference, generated from the commands' ``--help`` (a test keeps it current).

Regenerate with ``python -m ticketctl.clidoc``."""

from __future__ import annotations

from pathlib import Path

WIDTH = 100


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


def write(path: str | Path = "docs/cli.md") -> None:
    Path(path).write_text(render())


if __name__ == "__main__":
    write()
