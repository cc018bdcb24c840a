"""Secrets reach the app as files, never as variables.

The copy task writes each secret (the PostgreSQL password) with a fresh value into git-ignored
`secrets/` directories: the project's own (compose, Swarm, a local run) and each Kubernetes
overlay's. The settings read them from SECRETS_DIR (`/run/secrets` in the image); compose mounts
them with `secrets:`, PostgreSQL reads its own through POSTGRES_PASSWORD_FILE. No value is in
`.env`, the answers file or any container's `docker inspect`; a missing or unreadable secret
stops the app at start, naming the setting.
"""

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docker import compose_stack, docker, require_engine, unique_name
from tests.project import free_port, git, http_get, render

pytestmark = pytest.mark.xdist_group("secrets")

ANSWERS = {"database": "postgresql", "migrations": True, "deploy_targets": ["kubernetes"]}
SECRET_FILES = [
    "secrets/postgres_password",
    "deploy/kubernetes/overlays/dev/secrets/postgres_password",
    "deploy/kubernetes/overlays/prod/secrets/postgres_password",
]


@pytest.fixture(scope="module")
def rendered(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PostgreSQL project with the template's tasks run, as `copier copy --trust` leaves it."""
    slug = unique_name("tt-secrets")
    project = tmp_path_factory.mktemp("secrets") / "project"
    return render(template, project, {**ANSWERS, "project_slug": slug}, tasks=True)


def test_the_copy_task_writes_each_secret_file_with_a_fresh_value(
    rendered: Path, template: Path, tmp_path: Path
) -> None:
    values = [(rendered / name).read_text().strip() for name in SECRET_FILES]
    assert all(len(value) >= 32 for value in values)
    assert len(set(values)) == len(values), "each secrets/ directory has its own value"
    other = render(template, tmp_path / "other", ANSWERS, tasks=True)
    assert (other / SECRET_FILES[0]).read_text() != (rendered / SECRET_FILES[0]).read_text()


def test_no_secret_value_in_env_answers_or_git(rendered: Path) -> None:
    values = [(rendered / name).read_text().strip() for name in SECRET_FILES]
    for plain in (".env", ".env.example", ".copier-answers.yml"):
        text = (rendered / plain).read_text()
        assert not any(value in text for value in values), plain
        assert "POSTGRES_PASSWORD=" not in text, plain
    git(rendered, "init", "-q")
    git(rendered, "add", "--all")
    staged = git(rendered, "diff", "--cached", "--name-only").split()
    assert not set(SECRET_FILES) & set(staged), "secret files are git-ignored"
    assert "secrets/.gitignore" in staged, "the directories themselves are kept"


@dataclass(frozen=True)
class Stack:
    project: Path
    name: str
    port: int
    image: str
    password: str


@pytest.fixture(scope="module")
def stack(rendered: Path) -> Iterator[Stack]:
    """The compose stack of the project (app, migrate, db), up and healthy, once."""
    require_engine()
    port = free_port()
    with (rendered / ".env").open("a") as env:
        env.write(f"APP_PORT={port}\n")
    slug = rendered.joinpath(".copier-answers.yml").read_text().split("project_slug: ")[1]
    image = f"{slug.split()[0]}:latest"
    password = (rendered / "secrets/postgres_password").read_text().strip()
    try:
        with compose_stack(rendered) as name:
            yield Stack(rendered, name, port, image, password)
    finally:
        docker("rmi", "-f", image, check=False)


def ready_status(port: int, timeout: float = 60) -> int:
    """/ready's status once it is 200, else its last one after `timeout` seconds: a readiness
    probe is asked until it passes (the first connection may outlast /ready's 2 s when the
    machine is busy, and that 503 is right)."""
    deadline = time.monotonic() + timeout
    while (status := http_get(f"http://127.0.0.1:{port}/ready")[0]) != 200:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return status


@pytest.mark.docker
def test_compose_passes_secrets_as_files_absent_from_docker_inspect(stack: Stack) -> None:
    if ready_status(stack.port) != 200:
        logs = docker("compose", "-p", stack.name, "logs", "app", cwd=stack.project, check=False)
        raise AssertionError(f"the app never reached the db: {logs.stdout + logs.stderr}")
    containers = docker(
        "ps", "-aq", "--filter", f"label=com.docker.compose.project={stack.name}"
    ).stdout.split()
    assert len(containers) == 3, "app, migrate and db"
    inspected = json.loads(docker("inspect", *containers).stdout)
    assert stack.password not in json.dumps(inspected)
    for found in inspected:
        service = found["Config"]["Labels"]["com.docker.compose.service"]
        env = found["Config"]["Env"]
        assert not any(line.startswith("POSTGRES_PASSWORD=") for line in env), service
        mounts = {mount["Destination"] for mount in found["Mounts"]}
        assert "/run/secrets/postgres_password" in mounts, service
    db = next(c for c in inspected if c["Config"]["Labels"]["com.docker.compose.service"] == "db")
    assert "POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password" in db["Config"]["Env"]
    read = ["exec", "-T", "app", "cat", "/run/secrets/postgres_password"]
    seen = docker("compose", "-p", stack.name, *read, cwd=stack.project).stdout
    assert seen.strip() == stack.password, "the unprivileged app user reads its secret"


def run_once(image: str, *args: str) -> tuple[int, str]:
    """Start the image's entrypoint and server with these docker run arguments; wait for the end."""
    name = unique_name("tt-secret-run")
    try:
        settings = ["-e", "POSTGRES_HOST=127.0.0.1", "-e", "DB_WAIT_TIMEOUT=60"]
        result = docker("run", "--name", name, *settings, *args, image, check=False, timeout=120)
        return result.returncode, result.stdout + result.stderr
    finally:
        docker("rm", "-f", name, check=False)


@pytest.mark.docker
def test_missing_secret_stops_the_app_naming_it(stack: Stack) -> None:
    code, output = run_once(stack.image)
    assert code != 0
    assert "Missing required setting: POSTGRES_PASSWORD" in output, output
    assert "/run/secrets/postgres_password" in output, "it says where the file belongs"
    assert "Traceback" not in output and "Waiting for database" not in output


@pytest.mark.docker
def test_unreadable_secret_file_stops_the_app_naming_the_setting(
    stack: Stack, tmp_path: Path
) -> None:
    secret = tmp_path / "postgres_password"
    secret.write_text("not-readable\n")
    secret.chmod(0o600)  # owned by this test's user, not by the app's uid 10001
    mount = f"type=bind,source={secret},target=/run/secrets/postgres_password,readonly"
    code, output = run_once(stack.image, "--mount", mount)
    assert code != 0
    assert "Cannot read the secret POSTGRES_PASSWORD" in output, output
    assert "Permission denied" in output
    assert "Traceback" not in output and "Waiting for database" not in output


@pytest.mark.docker
def test_unreadable_secrets_directory_stops_the_app_naming_the_directory(
    stack: Stack, tmp_path: Path
) -> None:
    """A directory the app's user cannot list (as systemd's credentials are where their mount
    does not reach the unit) is named as the directory, not as a secret of its name."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)  # this test's user's, not the app's uid 10001
    (secrets / "postgres_password").write_text("not-readable\n")
    mount = f"type=bind,source={secrets},target=/run/secrets,readonly"
    code, output = run_once(stack.image, "--mount", mount)
    assert code != 0
    assert "Cannot read the secrets directory /run/secrets: Permission denied" in output, output
    assert "Traceback" not in output and "Waiting for database" not in output


def test_a_secret_kept_in_env_before_moves_to_its_file_unchanged(tmp_path: Path) -> None:
    """An update of a project made before secrets were files: the database volume was set up
    with .env's POSTGRES_PASSWORD, so the new file must hold that same value."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/.gitignore").write_text("*\n!.gitignore\n")
    (tmp_path / ".env").write_text("# Database\nPOSTGRES_PASSWORD=kept-from-before\n")
    hook = Path(__file__).parent.parent / "hooks/write_secrets.py"
    result = subprocess.run(
        [sys.executable, str(hook), "postgres_password"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert (tmp_path / "secrets/postgres_password").read_text() == "kept-from-before\n"
    assert "POSTGRES_PASSWORD come from .env" in result.stdout
