"""The whole tree passes `ruff check .` with the settings of pyproject.toml (line length 120;
pyflakes, pycodestyle errors and warnings, mutable or call defaults, loop variables bound late).

By hand: python -m ruff check .        (ruff is pinned in requirements-test.txt)"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    pytest.importorskip("ruff", reason="ruff is not installed (pip install -r requirements-test.txt)")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"ruff check . failed:\n{out.stdout}{out.stderr}"
