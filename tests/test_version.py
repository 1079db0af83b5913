"""``ticketctl --version`` and the Python versions the package claims."""

import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_version_prints_the_installed_version():
    out = subprocess.run([sys.executable, "-m", "ticketctl", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout == f"ticketctl {version('ticketctl')}\n"


def test_python_claims_are_what_is_tested():
    """requires-python and README claim the Python this project's machines test (3.11; `--plan` needs tomllib),
    and this test runs on a version the claim admits."""
    claim = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert claim == ">=3.11" and sys.version_info >= (3, 11)
    readme = (ROOT / "README.md").read_text()
    assert "Python 3.11 or newer (3.11 is what is tested" in readme and "3.10" not in readme
