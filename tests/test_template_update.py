"""scripts/template_update.py, the template-update workflow's work, run for real.

On the two tagged releases of tests/test_update.py: a project generated from 0.1.0 and edited
by its team gets 0.2.0 on the branch `template-update`, its checks pass, and the pull request's
body says so; with an edit that conflicts with the release, the script lists the conflict and
exits non-zero. Only the workflow's last step (push, open the pull request) is not run here.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.project import GIT_IDENTITY, git, tool_env
from tests.test_update import (
    DOCKERFILE_FIX,
    NEW,
    NEW_SETTING,
    OLD,
    USER_DOCKERFILE_LINE,
    USER_PARAGRAPH,
    answers,
    commit_all,
    copy_project,
    edit,
    make_user_edits,
    releases,  # noqa: F401 (the fixture)
)

SCRIPT = ["python3", "scripts/template_update.py"]
BODY = ".git/template-update.md"
TITLE = f"Update the project template to {NEW}"


def run_script(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The script as the workflow runs it: copier on PATH, step outputs to $GITHUB_OUTPUT."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = tool_env(PATH=path, GITHUB_OUTPUT=str(project.parent / "outputs"), **GIT_IDENTITY)
    return subprocess.run(
        [*SCRIPT, *args], cwd=project, env=env, capture_output=True, text=True, timeout=900
    )


def outputs(project: Path) -> dict[str, str]:
    lines = (project.parent / "outputs").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


@pytest.mark.xdist_group("template-update-script")
def test_script_brings_the_release_onto_a_branch_and_its_checks_pass(
    releases: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    project = copy_project(releases, tmp_path / "service")
    make_user_edits(project)
    commit_all(project, "Greet people")
    main = git(project, "rev-parse", "HEAD")

    result = run_script(project)

    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    assert git(project, "branch", "--show-current").strip() == "template-update"
    assert git(project, "rev-parse", "HEAD~1") == main
    assert (
        git(project, "log", "-1", "--format=%s").strip() == f"Update the project template to {NEW}"
    )
    assert git(project, "status", "--porcelain") == ""
    assert answers(project)["_commit"] == NEW
    assert DOCKERFILE_FIX in (project / "Dockerfile").read_text()
    assert NEW_SETTING in (project / "app/config.py").read_text()
    assert USER_PARAGRAPH in (project / "README.md").read_text()
    assert (project / "app/routes/hello.py").is_file()
    body = (project / BODY).read_text()
    assert f"from {OLD} to {NEW}" in body
    for command in ("uv sync --locked", "uv run ruff check .", "uv run mypy", "uv run pytest"):
        assert f"| `{command}` | passed |" in body
    assert "FAILED" not in body and "Conflicts" not in body
    assert outputs(project) == {
        "branch": "template-update",
        "title": TITLE,
        "body_file": str(project / BODY),
    }

    (project.parent / "outputs").unlink()
    again = run_script(project)
    assert again.returncode == 0, again.stderr
    assert f"The template is current ({NEW})" in again.stdout
    assert not (project.parent / "outputs").exists()


@pytest.mark.xdist_group("template-update-script")
def test_script_lists_a_conflict_and_fails(releases: Path, tmp_path: Path) -> None:  # noqa: F811
    project = copy_project(releases, tmp_path / "service", "--skip-tasks")
    edit(project / "Dockerfile", "\nUSER ", f"\n{USER_DOCKERFILE_LINE}USER ")
    branch = git(project, "branch", "--show-current")
    assert run_script(project).returncode == 2  # copier updates a clean tree only
    assert git(project, "branch", "--show-current") == branch
    commit_all(project, "Set the time zone")

    result = run_script(project)

    assert result.returncode == 1, result.stdout[-6000:] + result.stderr[-6000:]
    body = (project / BODY).read_text()
    assert "## Conflicts" in body and "- `Dockerfile`" in body
    assert "| Command |" not in body  # no checks on a tree with conflict markers
    assert outputs(project)["branch"] == "template-update"
    committed = git(project, "show", "HEAD:Dockerfile")
    assert "<<<<<<< before updating" in committed and USER_DOCKERFILE_LINE in committed

    check = run_script(project, "conflicts")
    assert check.returncode == 1
    assert "Dockerfile: conflict" in check.stdout
