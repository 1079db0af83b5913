"""README's set-up commands, as written, on a bare machine: a fresh virtual environment, the code from the local
checkout, the CPU torch line, the install, the main job.

Two substitutions, and only these: ``git clone <ticketctl's repository URL>`` clones this checkout (its committed
HEAD: the install from the local checkout, no network for the code), and the main job's ``ticketctl search`` and
``ticketctl finetune`` get options that shorten it (the tests' tiny BERT and GLUE-shaped data, one epoch, CPU):
the commands and their order are README's. pip installs from the configured package index and its cache, as a
user's pip does (not ``--system-site-packages``, which would test this environment, not README's): about two minutes
with a warm pip cache, most of it unpacking torch. Slow tier (``-m slow``).
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "<ticketctl's repository URL>"


def setup_block(readme: str) -> str:
    """The first ``sh`` block of README "Set up"."""
    section = re.search(r"^## Set up\n(.*?)(?=^## )", readme, re.S | re.M)
    assert section, 'README has no "Set up" section'
    block = re.search(r"^```sh\n(.*?)^```", section.group(1), re.S | re.M)
    assert block, 'README "Set up" has no sh block'
    return block.group(1)


def test_setup_block_is_a_bare_machine_s_commands_in_order():
    """Get the code, enter it, a virtual environment, the CPU torch line, the lock, the install, the main job: in
    order."""
    lines = [line.split("#")[0].strip() for line in setup_block((ROOT / "README.md").read_text()).splitlines()]
    steps = [r"git clone <ticketctl's repository URL> ticketctl", r"cd ticketctl", r"python3 -m venv \.venv",
             r"\. \.venv/bin/activate", r"pip install torch==2\.13\.0", r"pip install -r requirements\.lock",
             r"pip install (--no-deps )?-e \.",
             r"ticketctl search .* \| xargs .*ticketctl finetune .*"]
    at = [next((i for i, line in enumerate(lines) if re.fullmatch(step, line)), None) for step in steps]
    assert None not in at and at == sorted(at), dict(zip(steps, at))


@pytest.mark.slow
def test_readme_setup_runs_as_written_in_a_fresh_venv(tmp_path, tiny_model, glue_dir):
    block = setup_block((ROOT / "README.md").read_text())
    assert PLACEHOLDER in block
    short = f"--model {tiny_model} --data-dir {glue_dir} --epochs 1 --batch-size 8 --device cpu --quiet"
    script = block.replace(PLACEHOLDER, str(ROOT))
    script = re.sub(r"\bticketctl (search|finetune) ", lambda m: f"{m.group(0)}{short} ", script)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    venv_bin = str(Path(sys.prefix) / "bin")  # this test's own environment is not on the new one's PATH
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env.update(HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_PROGRESS_BAR="off")
    start = time.perf_counter()
    out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    assert out.returncode == 0, f"README's set-up failed (exit {out.returncode}):\n{out.stderr[-3000:]}"
    printed = out.stdout.strip().splitlines()[-1]  # pip's lines come first; the main job prints the last one
    assert printed.startswith("quickstart/") and printed.endswith(".safetensors"), out.stdout[-2000:]
    artifact = tmp_path / "ticketctl" / printed
    assert artifact.is_file() and (tmp_path / "ticketctl" / ".venv" / "bin" / "ticketctl").is_file()
    print(f"README set-up in a fresh venv: {seconds:.0f} s")
