"""The tree stays as ``ruff check`` and ``ruff format`` want it (rules and exclusions in pyproject.toml's [tool.ruff])."""

import importlib.util
import subprocess
import sys

import pytest
from helpers import REPO

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ruff") is None, reason="ruff is not installed: pip install 'gem-lightning[test]' installs it"
)


def ruff(*args: str) -> subprocess.CompletedProcess:
    """``python -m ruff <args> <repo root>`` without a cache, so the test writes nothing into the tree."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--no-cache", str(REPO)], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_ruff_check_finds_nothing():
    result = ruff("check", "--output-format", "concise")
    assert result.returncode == 0, f"`ruff check` (fix with `ruff check --fix .` or by hand):\n{result.stdout}{result.stderr}"


def test_ruff_format_changes_nothing():
    result = ruff("format", "--check")
    assert result.returncode == 0, f"`ruff format --check` (fix with `ruff format .`):\n{result.stdout}{result.stderr}"
