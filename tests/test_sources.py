"""The README's generate command works from a local checkout and from a git URL."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.project import git, snapshot

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template committed in a git repository of its own, as a user clones it."""
    repo = snapshot(REPO, tmp_path_factory.mktemp("template-repo"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "template")
    return repo


@pytest.mark.parametrize("source", ["checkout", "git-url"])
def test_copy_command_from_readme_generates_a_project(
    template_repo: Path, tmp_path: Path, source: str
) -> None:
    where = str(template_repo) if source == "checkout" else f"git+file://{template_repo}"
    dest = tmp_path / "my-api"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "copier",
            "copy",
            "--trust",
            "--defaults",
            "--skip-tasks",
            where,
            str(dest),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    answers = (dest / ".copier-answers.yml").read_text()
    assert "_commit:" in answers
    assert (dest / "app" / "main.py").is_file()
