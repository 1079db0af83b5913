"""Docs and generated files stay in sync with the code."""

import subprocess
import sys
from pathlib import Path

import pytest

from ticketctl.completions import SHELLS, script

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_completion_scripts_are_current(shell):
    assert (ROOT / "completions" / SHELLS[shell]).read_text() == script(shell), \
        "regenerate with: python -m ticketctl.completions"


def test_every_command_is_documented_in_readme():
    from ticketctl.cli import app

    readme = (ROOT / "README.md").read_text()
    for cmd in app.registered_commands:
        name = cmd.name or cmd.callback.__name__
        assert f"`{name}`" in readme, f"README does not document `{name}`"


def test_completion_answers_for_commands():
    env = {"_TICKETCTL_COMPLETE": "complete_bash", "COMP_WORDS": "ticketctl sea", "COMP_CWORD": "1"}
    import os

    out = subprocess.run([sys.executable, "-m", "ticketctl"], env={**os.environ, **env}, capture_output=True, text=True)
    assert "search" in out.stdout


def test_cli_reference_is_current():
    from ticketctl.clidoc import render

    assert (ROOT / "docs" / "cli.md").read_text() == render(), "regenerate with: python -m ticketctl.clidoc"
    assert "docs/cli.md" in (ROOT / "README.md").read_text()
