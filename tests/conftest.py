"""Fixtures shared by unit and integration tests."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_cases_dir() -> Path:
    """The shared cases folder: `MODELSEEK_CASES_DIR`, else `shared/cases` beside the clone."""
    override = os.environ.get("MODELSEEK_CASES_DIR")
    candidates = [Path(override)] if override else []
    candidates += [REPO_ROOT.parent / "shared" / "cases", REPO_ROOT / "shared" / "cases"]
    for path in candidates:
        if (path / "README.md").exists():
            return path
    raise FileNotFoundError(
        f"shared cases not found in {[str(p) for p in candidates]}; set MODELSEEK_CASES_DIR"
    )


@pytest.fixture(scope="session")
def cases_dir() -> Path:
    return find_cases_dir()
