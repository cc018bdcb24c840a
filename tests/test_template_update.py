"""scripts/template_update.py, the template-update workflow's work, run for real.

On the two tagged releases of tests/test_update.py: a project generated from 0.1.0 and edited
by its team gets 0.2.0 on the branch `template-update`, its checks pass, and the pull request's
body says so; with an edit that conflicts with the release, the script lists the conflict and
exits non-zero. With a bare repository as GitHub and a stand-in for `gh`, the workflow's own
steps hand the branch over and push it, week after week, and what others pushed to it stays.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

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


# The repository as the workflow names it (github.repository), and a release after NEW.
REPOSITORY = "acme/service"
NEWER = "0.3.0"
HAND_MADE = "Deployed behind the company gateway (fixed by hand on the update branch).\n"
FAKE_GH = """#!/bin/sh
# gh as the workflow calls it: every call logged; no pull request open yet.
echo "$*" >> "$GH_LOG"
"""


def workflow_step(project: Path, prefix: str) -> dict[str, Any]:
    """The step of the project's template-update workflow whose name starts with `prefix`."""
    workflow = yaml.safe_load((project / ".github/workflows/template-update.yml").read_text())
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    return next(step for step in steps if step.get("name", "").startswith(prefix))


class GitHub:
    """A bare repository standing in for GitHub, and the workflow's steps that reach it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.origin = root / "origin.git"
        git(root, "init", "--quiet", "--bare", "--initial-branch=main", str(self.origin))
        bin_dir = root / "bin"
        bin_dir.mkdir()
        (bin_dir / "gh").write_text(FAKE_GH)
        (bin_dir / "gh").chmod(0o755)
        self.gh_log = root / "gh.log"
        self.env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "GH_LOG": str(self.gh_log),
            # https://github.com/acme/service.git is this bare repository.
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"url.{self.origin}.insteadOf",
            "GIT_CONFIG_VALUE_0": f"https://github.com/{REPOSITORY}.git",
        }
        self.runs = 0

    def branch_tip(self) -> str:
        return git(self.origin, "rev-parse", "refs/heads/template-update").strip()

    def checkout(self) -> Path:
        """A clone with every branch, as the update job's checkout (fetch-depth: 0)."""
        self.runs += 1
        checkout = self.root / f"run-{self.runs}"
        git(self.root, "clone", "--quiet", str(self.origin), str(checkout))
        return checkout

    def run_step(self, step: dict[str, Any], cwd: Path, **values: str) -> Any:
        """A step as the runner runs it; `values` stand for its `${{ }}` expressions."""
        env = {
            name: values[name] if "${{" in str(value) else str(value)
            for name, value in step.get("env", {}).items()
        }
        return subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=cwd,
            env=tool_env(**GIT_IDENTITY, **self.env, **env),
            capture_output=True,
            text=True,
            timeout=300,
        )

    def hand_over_and_push(self, checkout: Path) -> subprocess.CompletedProcess[str]:
        """The update job's bundle step, then the pull-request job's push step."""
        handover = self.root / f"handover-{self.runs}-{len(list(self.root.iterdir()))}"
        given = outputs(checkout)
        bundled = self.run_step(
            workflow_step(checkout, "Bundle"),
            checkout,
            BRANCH=given["branch"],
            BODY_FILE=given["body_file"],
            HANDOVER=str(handover),
        )
        assert bundled.returncode == 0, bundled.stderr
        pushed: subprocess.CompletedProcess[str] = self.run_step(
            workflow_step(checkout, "Push"),
            self.root,
            GH_TOKEN="unused",
            GH_REPO=REPOSITORY,
            TITLE=given["title"],
            HANDOVER=str(handover),
        )
        return pushed


def add_release(template: Path, version: str) -> None:
    (template / "template/RELEASE.md").write_text(f"Release {version}\n")
    commit_all(template, f"Release {version}")
    git(template, "tag", version)


@pytest.mark.xdist_group("template-update-script")
def test_weekly_runs_never_overwrite_what_others_pushed_to_the_branch(
    releases: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    template = tmp_path / "template"
    shutil.copytree(releases, template)  # its own copy: a newer release comes in week 3
    github = GitHub(tmp_path)
    project = copy_project(template, tmp_path / "service")
    git(project, "push", "--quiet", str(github.origin), "HEAD:refs/heads/main")

    # Week 1: the release comes onto a new branch, pushed, and its pull request is opened.
    week1 = github.checkout()
    result = run_script(week1)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    pushed = github.hand_over_and_push(week1)
    assert pushed.returncode == 0, pushed.stderr
    assert github.branch_tip() == git(week1, "rev-parse", "HEAD").strip()
    assert f"pr create --head template-update --title {TITLE}" in github.gh_log.read_text()

    # Someone fixes something on the branch, as the pull request asks.
    fix = tmp_path / "fix"
    git(tmp_path, "clone", "--quiet", "--branch", "template-update", str(github.origin), str(fix))
    with (fix / "README.md").open("a") as readme:
        readme.write(f"\n{HAND_MADE}")
    commit_all(fix, "Say where it is deployed")
    git(fix, "push", "--quiet")
    fixed = github.branch_tip()

    # A run made before the fix landed cannot push over it: the push is never forced.
    stale = github.hand_over_and_push(week1)
    assert stale.returncode != 0
    assert "rejected" in stale.stderr
    assert github.branch_tip() == fixed

    # Week 2: no newer release; the branch already has this one and is left as it is.
    (tmp_path / "outputs").unlink()
    week2 = github.checkout()
    result = run_script(week2)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    assert f"The branch template-update already has {NEW}" in result.stdout
    assert not (tmp_path / "outputs").exists()  # nothing for the workflow to push
    assert github.branch_tip() == fixed

    # Week 3: a newer release goes on top of the fix.
    add_release(template, NEWER)
    week3 = github.checkout()
    result = run_script(week3)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    pushed = github.hand_over_and_push(week3)
    assert pushed.returncode == 0, pushed.stderr
    tip = github.branch_tip()
    assert git(github.origin, "merge-base", "--is-ancestor", fixed, tip) == ""
    assert HAND_MADE in git(github.origin, "show", f"{tip}:README.md")
    assert f"_commit: {NEWER}" in git(github.origin, "show", f"{tip}:.copier-answers.yml")
    assert (
        git(github.origin, "rev-parse", "refs/heads/main^{commit}").strip()
        == git(project, "rev-parse", "HEAD").strip()
    )

    # Week 4: the main branch changed the lines the fix changed. The run stops and says so;
    # the branch is left as it is, for a person to merge.
    with (project / "README.md").open("a") as readme:
        readme.write("\nDeployed on the old cluster.\n")
    commit_all(project, "Say where it runs")
    git(project, "push", "--quiet", str(github.origin), "HEAD:refs/heads/main")
    (tmp_path / "outputs").unlink()
    week4 = github.checkout()
    result = run_script(week4)
    assert result.returncode == 1, result.stdout[-6000:] + result.stderr[-6000:]
    assert "does not merge into template-update cleanly" in result.stdout
    assert not (tmp_path / "outputs").exists()
    assert github.branch_tip() == tip
