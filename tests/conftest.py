"""Fixtures shared by the template's tests."""

from pathlib import Path

import pytest

from tests.project import snapshot

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template as in the working tree, without its git history (so no tag is picked)."""
    return snapshot(REPO, tmp_path_factory.mktemp("template"))
