"""Docs and generated files stay in sync with the code."""

import re
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


# ------------------------------------------------------------------------------------------ the documentation site


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, cwd=config.parent)


def test_front_page_is_generated_from_readme():
    from ticketctl.clidoc import render_index

    assert (ROOT / "docs" / "index.md").read_text() == render_index(), "regenerate with: python -m ticketctl.clidoc"


def test_site_builds_strictly(tmp_path):
    """`mkdocs build --strict` (mkdocs is in the test extra): a broken link or anchor, a page under docs/ that the
    nav leaves out, or a missing image fails the build (mkdocs.yml turns each into a warning)."""
    out = _mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").exists()


def test_site_build_fails_on_a_broken_link_and_an_unlisted_page(tmp_path):
    """The strict build is not a formality: a copy of the site with one broken link, or one page left out of the
    nav, fails."""
    import shutil

    for breakage in ("link", "page"):
        copy = tmp_path / breakage
        shutil.copytree(ROOT / "docs", copy / "docs")
        shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
        if breakage == "link":
            with open(copy / "docs" / "statistics.md", "a") as f:
                f.write("\nSee [nowhere](no-such-page.md).\n")
        else:
            (copy / "docs" / "orphan.md").write_text("# Orphan\n")
        out = _mkdocs_build(copy / "mkdocs.yml", copy / "site")
        assert out.returncode != 0 and ("no-such-page.md" in out.stderr or "orphan.md" in out.stderr), out.stderr


# ----------------------------------------------------------------------------------- the front page's commands
#
# Every ```sh block of README.md runs, in order, in one scratch folder, on the tiny BERT and tiny GLUE data of
# conftest.py. How the page's commands are adapted (nothing else is changed):
# - `pip install ... &&` prefixes are dropped (the environment running the tests is installed already), and a
#   block line that is then `python -m pytest ...` is dropped (the suite would run itself);
# - `ticketctl` is a wrapper first on PATH that runs this checkout's ticketctl and appends, for the training
#   commands (search, finetune, share), the options in $TICKETCTL_DOCS_ARGS: `--model TINY --data-dir GLUE` and
#   fast settings (1 epoch, batch 8, CPU, quiet).
# A ```text block right after an ```sh block is that block's expected stdout: the same number of lines, each
# matching the shown line where `…` stands for any cell text and `<hash>` for a config hash.

FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def readme_blocks(text: str) -> list[tuple[str, str | None]]:
    """(sh block, its expected output or None), in page order."""
    blocks, pending = [], None
    pos = 0
    for m in FENCE.finditer(text):
        between = text[pos:m.start()]
        pos = m.end()
        if m.group(1) == "text" and pending is not None and not between.strip():
            blocks.append((pending, m.group(2)))
            pending = None
            continue
        if pending is not None:
            blocks.append((pending, None))
            pending = None
        if m.group(1) == "sh":
            pending = m.group(2)
    if pending is not None:
        blocks.append((pending, None))
    return blocks


def adapt(block: str) -> str:
    lines = []
    for line in block.splitlines():
        line = re.sub(r"pip install [^&]*&&\s*", "", line)
        if re.match(r"\s*(pip install|python -m pytest)\b", line):
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


def line_pattern(shown: str) -> re.Pattern:
    parts = re.split(r"(…|<hash>)", shown)
    return re.compile("".join({"…": r"[^|]*?", "<hash>": r"[0-9a-f]+"}.get(p, re.escape(p)) for p in parts))


def without_setup(text: str) -> str:
    """README without its "Set up" section: those commands make a virtual environment of their own and run in one
    (tests/test_setup.py), not in the environment running these tests."""
    return re.sub(r"^## Set up\n.*?(?=^## )", "", text, flags=re.S | re.M)


def test_readme_blocks_are_found():
    blocks = readme_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 4 and sum(expected is not None for _, expected in blocks) >= 2
    assert not any("python -m pytest" in adapt(b) for b, _ in blocks)


@pytest.mark.slow
def test_front_page_commands_run_in_order(tmp_path, tiny_model, glue_dir):
    import os
    import time

    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "ticketctl"
    wrapper.write_text(f"""#!/bin/sh
case "$1" in
  search|finetune|share) exec "{sys.executable}" -m ticketctl "$@" $TICKETCTL_DOCS_ARGS ;;
  *) exec "{sys.executable}" -m ticketctl "$@" ;;
esac
""")
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "TICKETCTL_DOCS_ARGS": f"--model {tiny_model} --data-dir {glue_dir} --epochs 1 --batch-size 8 "
                                  "--device cpu --quiet"}
    start = time.perf_counter()
    for block, expected in readme_blocks(without_setup((ROOT / "README.md").read_text())):
        script = adapt(block)
        if not script.strip():
            continue
        out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, f"README block failed (exit {out.returncode}):\n{block}\n{out.stderr[-2000:]}"
        if expected is None:
            continue
        got, shown = out.stdout.splitlines(), expected.splitlines()
        assert len(got) == len(shown), f"{len(got)} lines, the page shows {len(shown)}:\n{out.stdout}"
        for g, s in zip(got, shown):
            assert line_pattern(s).fullmatch(g), f"output line\n  {g}\ndiffers in shape from the page's\n  {s}"
    assert time.perf_counter() - start < 120
