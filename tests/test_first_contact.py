"""What a new user meets first: the message after copy, and the generated README's "Run locally"
steps for PostgreSQL, run as written."""

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests import docker
from tests.project import free_port, http_get, render, run, serve, wait_for_http

REPO = Path(__file__).resolve().parent.parent


def run_locally_steps(readme: str) -> list[str]:
    """The shell lines of the "Run locally" section; starting PostgreSQL is one of them."""
    section = readme.split("## Run locally", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "no sh block under Run locally"
    steps = block.group(1).strip().splitlines()
    assert any(re.match(r"docker compose up .*\bdb\b", step) for step in steps), (
        "Run locally does not start the database in its steps"
    )
    return steps


@pytest.mark.docker
def test_postgresql_run_locally_steps_work_as_written(template: Path, tmp_path: Path) -> None:
    docker.require_engine()
    answers = {"database": "postgresql", "migrations": True}
    project = render(template, tmp_path / "my-api", answers, tasks=True)
    steps = run_locally_steps((project / "README.md").read_text())
    compose_project = docker.unique_name("tt")
    database_port = docker.DOCKER_ENV["POSTGRES_PORT"]
    with (project / ".env").open("a") as env:
        env.write(f"POSTGRES_PORT={database_port}\n")  # 5432 may be taken on this machine
    try:
        *setup, server = steps
        for line in setup:
            # A compose project name of its own, so no other test's stack is met.
            line = line.replace("docker compose", f"docker compose -p {compose_project}")
            run(["sh", "-c", line], project, **docker.DOCKER_ENV)
        port = free_port()
        with serve(["sh", "-c", f"exec {server} --port {port}"], project) as process:
            url = f"http://127.0.0.1:{port}"
            assert wait_for_http(f"{url}/ready", timeout=60, process=process) == 200
            body = json.dumps({"name": "lamp", "description": "desk lamp"}).encode()
            headers = {"content-type": "application/json"}
            create = urllib.request.Request(f"{url}/items", data=body, headers=headers)
            with urllib.request.urlopen(create, timeout=10) as response:
                created = json.loads(response.read())
            assert http_get(f"{url}/items/{created['id']}")[0] == 200
    finally:
        docker.docker("compose", "-p", compose_project, "down", "-v", cwd=project, check=False)


def test_message_after_copy_lists_the_next_commands(template: Path, tmp_path: Path) -> None:
    dest = tmp_path / "my-api"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "copier", "copy", "--defaults", "--skip-tasks"),
            *("--data", "dependency_tool=poetry", "--data", "database=postgresql"),
            *(str(template), str(dest)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout + result.stderr
    for command in [
        f"cd {dest}",
        "git init",
        "poetry install",
        "cp .env.example .env",
        "poetry lock",
        "docker compose up -d --wait db",
        "poetry run alembic upgrade head",
        "poetry run pytest",
        "docker compose up --build --wait",
        "copier update --trust --skip-answered",
    ]:
        assert command in message, command
    assert all(len(line) <= 80 for line in message.splitlines() if str(dest) not in line)
    # With the tasks skipped, the message says which secret file to write, and how.
    assert "change-me" not in message
    written = [
        line.strip()
        for line in message.splitlines()
        if line.strip().startswith(("cp .env.example", "openssl rand"))
    ]
    assert any("> secrets/postgres_password" in line for line in written), message
    for line in written:
        run(["sh", "-c", line], dest)
    secret = (dest / "secrets/postgres_password").read_text()
    assert len(secret.strip()) >= 24 and secret.count("\n") == 1
    assert (dest / ".env").is_file()


MIN_COPIER = re.search(
    r'^_min_copier_version: "([0-9.]+)"', (REPO / "copier.yml").read_text(), re.MULTILINE
)


def test_copy_works_with_the_oldest_copier_the_template_accepts(
    template: Path, tmp_path: Path
) -> None:
    """copier.yml's `_min_copier_version` is honest: that release, in a throwaway virtualenv,
    copies the template with its tasks (`.env` written: its `when` needs `_copier_operation`)."""
    assert MIN_COPIER
    version = MIN_COPIER.group(1)
    venv = tmp_path / "venv"
    run(["uv", "venv", "--quiet", "--python", "3.11", str(venv)], tmp_path)
    run(
        ["uv", "pip", "install", "--quiet", "--python", str(venv), f"copier=={version}.*"], tmp_path
    )
    dest = tmp_path / "my-api"
    copy = [str(venv / "bin/copier"), "copy", "--trust", "--defaults"]
    run(
        [*copy, "--data", "package_index=http://127.0.0.1:9/simple/", str(template), str(dest)],
        tmp_path,
    )
    assert (dest / ".env").is_file(), "the tasks did not run"
    assert (dest / "app/main.py").is_file()
