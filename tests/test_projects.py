"""A covering set of generated projects, each installed, checked and served for real.

The projects are the covering array's (tests/covering.py `compose_projects`): every reverse
proxy, each process model with each metrics answer, each database with and without migrations,
each dependency tool with each layout, and (as it happens) every value of every other question.
Each project is rendered with the template's tasks (so `.env` and the lock file are made by the
project's own tool), installed from its lock, and then must pass its own CI job (its tests,
ruff, mypy strict) and answer `/health` over HTTP as a real Uvicorn server; its compose stack
comes up as compose.yaml declares it (read-only root, tmpfs, volumes, user, capabilities
dropped) and answers `/health`, and `/metrics` where metrics are on.
"""

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from markdown_it import MarkdownIt

from tests import docker
from tests.combinations import Answers, combination_id
from tests.covering import compose_projects
from tests.postgres import PostgresServer
from tests.project import (
    ci_check_steps,
    ci_job,
    free_port,
    git,
    install,
    readme_block,
    render,
    run,
    serve,
    tool_env,
    wait_for_http,
)

PROJECTS = [
    pytest.param(
        answers, id=combination_id(answers), marks=pytest.mark.xdist_group(combination_id(answers))
    )
    for answers in compose_projects()
]


def test_covering_set_has_every_value_of_every_question() -> None:
    config = yaml.safe_load((Path(__file__).parent.parent / "copier.yml").read_text())
    missing = []
    for name, question in config.items():
        # Deployment targets run for real in test_kubernetes and test_swarm; a question that is
        # never asked (`when: false`) is a check, not an answer.
        if name.startswith("_") or question.get("multiselect") or question.get("when") is False:
            continue
        values = set(question.get("choices", {}).values()) or (
            {True, False} if question["type"] == "bool" else set()
        )
        used = {answers.get(name, question.get("default")) for answers in compose_projects()}
        missing += [f"{name}={value}" for value in values - used]
    assert not missing, f"no covering project answers {missing}"


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
    # A slug of its own: the compose job's image and stack must not meet another test's.
    answers: Answers = {**request.param, "project_slug": docker.unique_name("t")}
    path = render(template, tmp_path_factory.mktemp("project"), answers, tasks=True)
    # A project lives in git (its CI checks out a commit; pre-commit looks at tracked files).
    git(path, "init", "--quiet")
    git(path, "add", "--all")
    git(path, "commit", "--quiet", "--message", "Generated from the template")
    env: dict[str, str] = {}
    if answers["database"] == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        env = server.create_database()
    installed = Installed(path, answers, env)
    # The database as compose has it before the app starts: where the server does not migrate
    # (one process behind several replicas), compose's one-off `migrate` service has run.
    migrate = yaml.safe_load((path / "compose.yaml").read_text())["services"].get("migrate")
    if migrate:
        command = migrate["command"]
        run([str(installed.bin / command[0]), *command[1:]], path, **env)
    return installed


def test_lock_file_made_by_its_own_tool(project: Installed) -> None:
    lock = {"uv": "uv.lock", "poetry": "poetry.lock", "pip": "requirements.txt"}
    assert (project.path / lock[project.answers["dependency_tool"]]).is_file()
    assert (project.path / ".env").is_file()


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


@pytest.mark.docker
def test_ci_compose_job_passes_step_by_step(project: Installed, tmp_path: Path) -> None:
    """The compose job's commands, as the workflow lists them, in a fresh checkout of the
    project: the stack comes up healthy and answers through the port it publishes (the
    proxy's, where there is one); `down -v` runs whatever happened, failure() steps only on
    failure. Only the names the engine shares get values of their own here: the compose
    project and the published ports."""
    docker.require_engine()
    job = ci_job(project.path, "compose")
    checkout = tmp_path / "checkout"
    git(tmp_path, "clone", "--quiet", str(project.path), str(checkout))
    env = {
        **docker.DOCKER_ENV,
        **job.get("env", {}),
        "COMPOSE_PROJECT_NAME": docker.unique_name("tt-ci"),
    }
    for published in ("APP_PORT", "HTTP_PORT", "HTTPS_PORT"):
        if published in env:
            env[published] = str(free_port())

    def run_step(step: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        step_env = {
            name: "" if "${{" in value else value for name, value in step.get("env", {}).items()
        }
        return subprocess.run(
            ["bash", "-ec", step["run"]],
            cwd=checkout,
            env=tool_env(**{**env, **step_env}),
            capture_output=True,
            text=True,
            timeout=900,
        )

    shell_steps = [step for step in job["steps"] if "run" in step]
    failed: list[str] = []
    try:
        for step in shell_steps:
            if "if" in step:
                continue
            result = run_step(step)
            if result.returncode != 0:
                failed.append(f"{step['run']}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
                break
        if not failed and project.answers["metrics"] == "prometheus":
            failed += metrics_problems(checkout, env)
    finally:
        for step in shell_steps:
            if step.get("if") == "always()" or (failed and step.get("if") == "failure()"):
                result = run_step(step)
                if failed:
                    failed.append(f"{step['run']}\n{result.stdout[-6000:]}")
        docker.docker("rmi", "-f", f"{project.answers['project_slug']}:latest", check=False)
    assert not failed, "\n".join(failed)
    assert any("/health" in step["run"] for step in shell_steps)


def metrics_problems(checkout: Path, env: dict[str, str]) -> list[str]:
    """Ask the running stack for /metrics as the README's Metrics section says: inside the app
    container where a proxy is in front (its route leaves /metrics out), else on the app's
    published port."""
    section = readme_section((checkout / "README.md").read_text(), "Metrics")
    inside = [block for block in fenced_blocks(section, "sh") if "compose exec app" in block]
    if inside:
        command = inside[0].strip().replace("docker compose exec app", "docker compose exec -T app")
    else:
        command = f"curl --fail --silent --show-error http://127.0.0.1:{env['APP_PORT']}/metrics"
    result = subprocess.run(
        ["bash", "-ec", command],
        cwd=checkout,
        env=tool_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode == 0 and "http_requests_total" in result.stdout:
        return []
    return [f"/metrics: {command}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"]


CONFLICTED = "<<<<<<< before updating\nours\n=======\ntheirs\n>>>>>>> after updating\n"


def test_pre_commit_passes_offline_and_refuses_conflict_markers(
    project: Installed, tmp_path: Path
) -> None:
    """The hooks use the installed tools: nothing to download (uv offline, no hook repository
    fetched), and a tracked file holding conflict markers fails the run."""
    pre_commit = [str(Path(sys.executable).parent / "pre-commit"), "run", "--all-files"]
    home = tmp_path / "pre-commit-home"
    env = {
        **project.env,
        "PATH": f"{project.bin}{os.pathsep}{os.environ['PATH']}",
        "PRE_COMMIT_HOME": str(home),
        "UV_OFFLINE": "1",
    }
    run(pre_commit, project.path, **env)
    assert not [path for path in home.iterdir() if path.is_dir()], "a hook was downloaded"

    marked = project.path / "conflicted.md"
    marked.write_text(CONFLICTED)
    git(project.path, "add", marked.name)
    try:
        result = subprocess.run(
            pre_commit, cwd=project.path, env=tool_env(**env), capture_output=True, text=True
        )
    finally:
        git(project.path, "rm", "--quiet", "--force", marked.name)
    assert result.returncode == 1, result.stdout
    assert "conflicted.md: conflict" in result.stdout


def test_readme_run_locally_and_check_commands_work_as_written(
    project: Installed, tmp_path: Path
) -> None:
    """The README's "Run locally" block, run as one shell script (the dev server last, given a
    free port; its log lines readable), with the "The API" examples against that server, then
    its "Test and check" block in the same environment."""
    readme = (project.path / "README.md").read_text()
    # The test's own PostgreSQL server stands in for compose's, as the README allows.
    local = [line for line in readme_block(readme, "Run locally") if "docker compose" not in line]
    checks = readme_block(readme, "Test and check")
    assert "uvicorn" in local[-1]
    # The project's Python first, as the user who chose it has it.
    python = f"{project.answers['python_version']}."
    versions = [v for v in os.environ.get("PYENV_VERSION", "").split(":") if v]
    env = {
        **project.env,
        "PYENV_VERSION": ":".join(sorted(versions, key=lambda v: not v.startswith(python))),
    }
    port = free_port()
    log = tmp_path / "dev-server.log"
    script = "\n".join([*local[:-1], f"exec {local[-1]} --port {port} > {log} 2>&1"])
    with serve(["bash", "-ec", script], project.path, **env) as server:
        assert wait_for_http(f"http://127.0.0.1:{port}/health", timeout=600, process=server) == 200
        # The README's API examples, against this server.
        examples = [line.replace(":8000/", f":{port}/") for line in readme_block(readme, "The API")]
        answers = run(["bash", "-ec", "\n".join(examples)], project.path, **env).stdout
        assert (
            '"name":"tea"' if project.answers["database"] != "none" else "Hello, Ada!"
        ) in answers
    # Readable lines, as the README's logs section shows them (the dev server has LOG_FORMAT=text).
    access = r"\d\d:\d\d:\d\d\.\d{3} INFO    [a-z0-9_]+\.access: GET /health 200  method=GET "
    lines = log.read_text()
    assert re.search(access, lines), lines[-3000:]
    activate = [line for line in local if "activate" in line]
    run(["bash", "-ec", "\n".join([*activate, *checks])], project.path, **env)


def readme_section(readme: str, title: str) -> str:
    """The text of a `## ` section of a README, up to the next one."""
    text = readme[readme.index(f"\n## {title}\n") :]
    end = text.find("\n## ", 1)
    return text if end < 0 else text[:end]


def fenced_blocks(markdown: str, language: str) -> list[str]:
    """The contents of the fenced code blocks in this language, in order."""
    tokens = MarkdownIt("commonmark").parse(markdown)
    return [token.content for token in tokens if token.type == "fence" and token.info == language]


# The app's routes as its OpenAPI schema lists them, then the status of a GET of each path given
# (those outside the schema: the documentation pages, /metrics).
ROUTES = """
import sys
from fastapi.testclient import TestClient
from {module} import app
for path, operations in app.openapi()["paths"].items():
    for method in operations:
        print("route", method.upper(), path)
client = TestClient(app, raise_server_exceptions=False)
for path in sys.argv[1:]:
    print("status", client.get(path).status_code, path)
"""


KINDS = ("route ", "status ")


def test_readme_api_table_is_what_the_app_answers(project: Installed) -> None:
    """Each route of the app's schema is a row of the README's endpoint table, and each row is
    a route of the schema or a page the app serves (the documentation, /metrics)."""
    readme = (project.path / "README.md").read_text()
    rows = [
        line.split("|")[1:3]
        for line in readme_section(readme, "The API").splitlines()
        if line.startswith("| `")
    ]
    documented = {
        (method.strip(" `"), path.strip(" `"))
        for method, paths in rows
        for path in paths.split(",")
    }
    module = "app.main" if project.answers["layout"] == "package" else "main"
    python = str(project.bin / "python")
    pages = sorted(path for method, path in documented if "{" not in path)
    listed = run([python, "-c", ROUTES.format(module=module), *pages], project.path, **project.env)
    # (Log lines of the app's start go to stdout too.)
    lines = [line.split() for line in listed.stdout.splitlines() if line.startswith(KINDS)]
    api = {(method, path) for kind, method, path in lines if kind == "route"}
    served = {path for kind, status, path in lines if kind == "status" and status == "200"}
    assert api <= documented, f"routes the README's table leaves out: {api - documented}"
    missing = {row for row in documented - api if row[1] not in served}
    assert not missing, f"rows the app does not answer: {missing}"


def test_readme_extend_the_api_steps_work_as_written(project: Installed) -> None:
    """The "Extend the API" steps, followed literally: the router or endpoint and its test, the
    model and (with migrations) the README's commands that generate and apply its migration;
    then the project's own checks pass and the new endpoint answers. The project is put back
    as it was afterwards (the migration rolled back, the files restored)."""
    readme = (project.path / "README.md").read_text()
    section = readme_section(readme, "Extend the API")
    python = fenced_blocks(section, "python")
    commands = fenced_blocks(section, "sh")
    package = project.answers["layout"] == "package"
    main = project.path / ("app/main.py" if package else "main.py")
    has_db = project.answers["database"] != "none"
    migrated = has_db and project.answers.get("migrations", True)
    try:
        if package:
            router, include, test, *model = python
            assert "`app/routes/clock.py`" in section
            (project.path / "app/routes/clock.py").write_text(router)
            code = main.read_text().replace(
                "from app.routes import ", "from app.routes import clock, "
            )
            last = code.rindex("    app.include_router(")
            end = code.index("\n", last) + 1
            main.write_text(code[:end] + include + code[end:])
        else:
            endpoint, test, *model = python
            code = main.read_text()
            at = code.index("def create_app(")
            main.write_text(code[:at] + endpoint + "\n\n" + code[at:])
        assert "`tests/test_clock.py`" in section
        (project.path / "tests/test_clock.py").write_text(test)
        assert bool(model) == has_db
        if model:
            models = project.path / "app/models.py" if package else main
            code = models.read_text()
            # Beside Item, as the README says: before its API schemas.
            at = code.index("class ItemCreate(")
            models.write_text(code[:at] + model[0] + "\n\n" + code[at:])
        assert bool(commands) == migrated
        # In the shell "Run locally" leaves: pip's virtual environment activated.
        activate = (
            [f". {project.bin}/activate"] if project.answers["dependency_tool"] == "pip" else []
        )
        # The database as "Run locally" leaves it: at the head revision (autogenerate wants it).
        local = readme_block(readme, "Run locally")
        upgrade = [line for line in local if "alembic upgrade" in line]
        for command in [*upgrade, *commands[0].splitlines()] if commands else []:
            run(["bash", "-ec", "\n".join([*activate, command])], project.path, **project.env)
        if migrated:
            revision = next((project.path / "migrations/versions").glob("*_add_notes.py"))
            assert re.search(r'create_table\(\s*"notes"', revision.read_text())
        # The README's checks; of the tests, the new one and (with a database) those that hold
        # the models and the migrations together, the rest being untouched.
        tests = ["tests/test_clock.py", *(["tests/test_migrations.py"] if migrated else [])]
        checks = [
            f"{line} {' '.join(tests)}" if line.endswith("pytest") else line
            for line in readme_block(readme, "Test and check")
        ]
        assert any(line.endswith(tuple(tests)) for line in checks), checks
        run(["bash", "-ec", "\n".join([*activate, *checks])], project.path, **project.env)
    finally:
        if migrated:
            alembic = str(project.bin / "alembic")
            subprocess.run(
                [alembic, "downgrade", "-1"], cwd=project.path, env=tool_env(**project.env)
            )
        git(project.path, "checkout", "--", ".")
        git(
            project.path,
            "clean",
            "--force",
            "--quiet",
            "--",
            "app",
            "tests",
            "migrations",
            "main.py",
        )
