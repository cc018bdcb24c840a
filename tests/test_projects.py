"""A covering set of generated projects, each installed, checked and served for real.

Every value of every question appears at least once, and every dependency tool x layout pair.
Each project is rendered with the template's tasks (so `.env` and the lock file are made by the
project's own tool), installed from its lock, and then must pass its own tests, ruff, mypy
strict, and answer `/health` over HTTP as a real Uvicorn server.
"""

from pathlib import Path

import pytest

from tests.combinations import COVERING_SET, Answers, combination_id
from tests.postgres import PostgresServer
from tests.project import free_port, install, render, run, serve, wait_for_http


def _params() -> list[pytest.ParameterSet]:
    return [
        pytest.param(
            answers,
            id=combination_id(answers),
            marks=pytest.mark.xdist_group(combination_id(answers)),
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

    def run(self, *command: str, **env: str) -> str:
        result = run([str(self.bin / command[0]), *command[1:]], self.path, **self.env, **env)
        return result.stdout


@pytest.fixture(scope="module", params=_params())
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


def test_generated_tests_pass(project: Installed) -> None:
    output = project.run("pytest", "-q", "-p", "no:cacheprovider")
    assert " passed" in output and "failed" not in output


def test_ruff_lint_and_format_clean(project: Installed) -> None:
    project.run("ruff", "check", "--no-cache", ".")
    project.run("ruff", "format", "--no-cache", "--check", ".")


def test_mypy_strict_clean(project: Installed) -> None:
    project.run("mypy", "--no-incremental")


def test_server_answers_health_over_http(project: Installed) -> None:
    """Started as the container starts it (prestart first when there is a database)."""
    answers = project.answers
    port = free_port()
    module = "app.main:app" if answers["layout"] == "package" else "main:app"
    command = [str(project.bin / "uvicorn"), module, "--host", "127.0.0.1", "--port", str(port)]
    if answers["database"] != "none":
        command = [str(project.bin / "python"), "prestart.py", *command]
    env = dict(project.env)
    if answers["process_model"] == "workers":
        env["WEB_CONCURRENCY"] = "2"
    with serve(command, project.path, **env) as server:
        assert wait_for_http(f"http://127.0.0.1:{port}/health", timeout=60, process=server) == 200
        if answers["database"] != "none":
            assert wait_for_http(f"http://127.0.0.1:{port}/ready", process=server) == 200
