"""A covering set of generated projects, each installed, checked and served for real.

Every value of every question appears at least once, and every dependency tool x layout pair.
Each project is rendered with the template's tasks (so `.env` and the lock file are made by the
project's own tool), installed from its lock, and then must pass its own CI job (its tests,
ruff, mypy strict) and answer `/health` over HTTP as a real Uvicorn server.
"""

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.combinations import COVERING_SET, Answers, combination_id
from tests.postgres import PostgresServer
from tests.project import free_port, install, render, run, serve, wait_for_http

PROJECTS = [
    pytest.param(
        answers, id=combination_id(answers), marks=pytest.mark.xdist_group(combination_id(answers))
    )
    for answers in COVERING_SET
]


class Installed:
    """A rendered, locked and installed project, and the environment it runs with."""

    def __init__(self, path: Path, answers: Answers, env: dict[str, str]) -> None:
        self.path = path
        self.answers = answers
        self.env = env
        self.bin = install(path, answers)


@pytest.fixture(scope="module", params=PROJECTS)
def project(
    request: pytest.FixtureRequest,
    template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Installed:
    answers: Answers = request.param
    path = render(template, tmp_path_factory.mktemp("project"), answers, tasks=True)
    env: dict[str, str] = {}
    if answers["database"] == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        env = server.create_database()
    return Installed(path, answers, env)


def test_lock_file_made_by_its_own_tool(project: Installed) -> None:
    lock = {"uv": "uv.lock", "poetry": "poetry.lock", "pip": "requirements.txt"}
    assert (project.path / lock[project.answers["dependency_tool"]]).is_file()
    assert (project.path / ".env").is_file()


def ci_check_steps(project: Path) -> list[dict[str, Any]]:
    """The shell steps of the generated CI workflow's check job, in order."""
    workflow = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    return [step for step in workflow["jobs"]["check"]["steps"] if "run" in step]


def test_ci_workflow_lints_type_checks_and_tests(project: Installed) -> None:
    steps = " | ".join(step["run"] for step in ci_check_steps(project.path))
    for command in ("ruff check .", "ruff format --check .", "mypy", "pytest"):
        assert command in steps


def test_ci_check_job_passes_step_by_step(project: Installed, tmp_path: Path) -> None:
    """The workflow's own commands (its project tests, ruff, mypy strict) pass here too.

    Run as the runner does: `${{ secrets.* }}` unset (as on a fork), and NAME=value lines a
    step appends to $GITHUB_ENV exported to the steps after it. Installing the tool itself
    (`pipx install poetry`) is the runner's business and skipped.
    """
    github_env = tmp_path / "github_env"
    github_env.touch()
    exported: dict[str, str] = {}
    for step in ci_check_steps(project.path):
        if step["run"].startswith("pipx "):
            continue
        step_env = {
            name: "" if "${{" in value else value for name, value in step.get("env", {}).items()
        }
        run(
            ["bash", "-ec", step["run"]],
            project.path,
            PATH=f"{project.bin}{os.pathsep}{os.environ['PATH']}",
            GITHUB_ENV=str(github_env),
            **{**project.env, **exported, **step_env},
        )
        for line in github_env.read_text().splitlines():
            name, equals, value = line.partition("=")
            if equals:
                exported[name] = value


def test_server_answers_health_over_http(project: Installed) -> None:
    """Started as the container starts it (prestart first, for a database or workers)."""
    answers = project.answers
    port = free_port()
    module = "app.main:app" if answers["layout"] == "package" else "main:app"
    command = [str(project.bin / "uvicorn"), module, "--host", "127.0.0.1", "--port", str(port)]
    if answers["database"] != "none" or answers["process_model"] == "workers":
        command = [str(project.bin / "python"), "prestart.py", *command]
    env = dict(project.env)
    if answers["process_model"] == "workers":
        env["WEB_CONCURRENCY"] = "2"
    with serve(command, project.path, **env) as server:
        assert wait_for_http(f"http://127.0.0.1:{port}/health", timeout=60, process=server) == 200
        if answers["database"] != "none":
            assert wait_for_http(f"http://127.0.0.1:{port}/ready", process=server) == 200
