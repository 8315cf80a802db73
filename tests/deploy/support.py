"""Finding the validators the deploy checks run (dev dependencies in pyproject.toml)."""

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "scripts/test.sh installs them (the dev extra of pyproject.toml)"


def missing(what: str) -> None:
    """A validator is a dev dependency: its absence fails the check, it never skips it."""
    pytest.fail(f"{what} is not installed: {INSTALL_HINT}")


def tool(name: str) -> Path:
    """A binary from the venv (the wheels install there), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found is None:
        missing(name)
    return Path(str(found))
