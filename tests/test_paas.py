"""The platform targets (issue 25) are run as each platform runs them.

Procfile hosts (Heroku, Dokku): honcho runs the rendered Procfile's `web` on a random PORT and its
`release` migrates a real PostgreSQL, given only DATABASE_URL as Heroku sets it; `heroku local`
runs `web` too where the Heroku CLI is installed. Render: with DATABASE_URL as its
connectionString, the Blueprint's startCommand serves on PORT, its preDeployCommand migrates, its
healthCheckPath answers 200. Fly.io and Cloud Run: their files
match SchemaStore's schemas (a typo'd key does not), and the image runs as Cloud Run runs it:
the migration job's command once, then the service's command on a PORT other than 8000, stopped
with SIGTERM within Cloud Run's 10 s. SQLite with a platform is refused at copy time.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import docker
from tests.covering import answers_of, covering_array
from tests.platforms import (
    PLATFORMS,
    blueprint,
    cloud_run_container,
    cloud_run_service,
    fly_config,
    migration_job_container,
    procfile,
    schema_check,
)
from tests.postgres import PASSWORD
from tests.project import (
    free_port,
    install,
    render,
    run,
    serve,
    tool_env,
    wait_for_http,
)
from tests.test_validation import copier_copy

BIN = Path(sys.executable).parent  # this environment's honcho

ANSWERS: dict[str, Any] = {
    "project_name": "Platform API",
    "dependency_tool": "uv",
    "python_version": "3.12",
    "process_model": "single",
    "database": "postgresql",
    "migrations": True,
    "deploy_targets": PLATFORMS,
}


@pytest.fixture(scope="module")
def project(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PostgreSQL project with every platform target, as a platform gets it from git: the
    copy tasks' git-ignored .env and secret files left out (the platform sets the settings)."""
    project = render(
        template, tmp_path_factory.mktemp("paas") / "platform-api", ANSWERS, tasks=True
    )
    (project / ".env").unlink()
    (project / "secrets" / "postgres_password").unlink()
    return project


@pytest.fixture(scope="module")
def venv_bin(project: Path) -> Path:
    """The project installed with its own tool, as a platform's build does."""
    return install(project, ANSWERS)


def platform_env(venv_bin: Path, **settings: str) -> dict[str, str]:
    """What a platform's process sees: the project's environment first on PATH, the settings
    the platform gives (no .env, no secrets/ directory: the password is a variable)."""
    env = {key: value for key, value in tool_env().items() if key != "PORT"}
    return {**env, "PATH": f"{venv_bin}{os.pathsep}{env['PATH']}", **settings}


def revision(postgres: dict[str, str]) -> str:
    """The schema's revision in the test database, or '' before any migration."""
    sql = "SELECT version_num FROM alembic_version"
    command = ["psql", "-h", postgres["POSTGRES_HOST"], "-p", postgres["POSTGRES_PORT"]]
    result = subprocess.run(
        [*command, "-U", "postgres", "-d", postgres["POSTGRES_DB"], "-tAc", sql],
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": PASSWORD},
    )
    return result.stdout.strip()


def head(project: Path) -> str:
    """The newest revision of the project's migrations."""
    versions = sorted((project / "migrations" / "versions").glob("*.py"))
    return versions[-1].name.split("_")[0]


def run_shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A platform's shell command, as Heroku and Render run it."""
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def checks(venv_bin: Path) -> list[list[str]]:
    """The project's own checks, as its CI runs them: ruff, mypy strict, its tests."""
    commands = [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"], ["pytest"]]
    return [[str(venv_bin / command[0]), *command[1:]] for command in commands]


def test_project_with_every_platform_passes_its_own_checks(
    project: Path, venv_bin: Path, postgres: dict[str, str]
) -> None:
    for command in checks(venv_bin):
        run(command, project, **postgres)


# --- Procfile (Heroku, Dokku) ------------------------------------------------------------------


def test_procfile_lists_web_and_release_at_the_root(project: Path) -> None:
    processes = procfile(project)
    assert set(processes) == {"web", "release"}
    assert "alembic upgrade head" in processes["release"]
    assert (project / ".python-version").read_text().strip() == ANSWERS["python_version"]
    assert (project / "deploy" / "procfile" / "README.md").is_file()


def database_url(postgres: dict[str, str], scheme: str = "postgres") -> str:
    """The test database as the one URL a platform gives: `postgres://` as Heroku's add-on,
    Dokku and `fly postgres attach` write it, `postgresql://` as Render's connectionString."""
    user, password = postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]
    host, port, name = postgres["POSTGRES_HOST"], postgres["POSTGRES_PORT"], postgres["POSTGRES_DB"]
    return f"{scheme}://{user}:{password}@{host}:{port}/{name}"


def test_honcho_runs_the_release_then_web_serves_items_on_port_with_only_database_url(
    project: Path, venv_bin: Path, postgres: dict[str, str]
) -> None:
    honcho = [str(BIN / "honcho"), "--app-root", str(project), "--no-prefix"]
    env = platform_env(venv_bin, DATABASE_URL=database_url(postgres))
    release = shlex.split(procfile(project)["release"])
    migrated = subprocess.run(
        [*honcho, "run", *release], cwd=project, env=env, capture_output=True, text=True
    )
    assert migrated.returncode == 0, migrated.stderr
    assert revision(postgres) == head(project)

    port = free_port()
    with serve([*honcho, "start", "web"], project, **{**env, "PORT": str(port)}) as server:
        assert wait_for_http(f"http://127.0.0.1:{port}/health", 60, server) == 200
        assert wait_for_http(f"http://127.0.0.1:{port}/items", 10, server) == 200
        assert wait_for_http(f"http://127.0.0.1:{port}/ready", 10, server) == 200


@contextmanager
def process_group(command: list[str], cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """A runner in a session of its own, its whole group stopped at the end: `heroku local`
    leaves its processes running when it is itself stopped."""
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield
        except Exception as error:
            output.seek(0)
            error.add_note(f"--- output (last 6000 characters)\n{output.read()[-6000:]}")
            raise
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)


HEROKU = Path(__file__).parent / "heroku" / "node_modules" / ".bin" / "heroku"


def test_heroku_local_runs_web_on_the_port_it_is_given(
    project: Path, venv_bin: Path, postgres: dict[str, str]
) -> None:
    """The Heroku CLI (npm `heroku`, installed in tests/heroku by .ci/run) runs the Procfile
    as the platform does: a second runner beside honcho."""
    heroku = str(HEROKU) if HEROKU.exists() else shutil.which("heroku")
    if heroku is None:
        pytest.skip("no Heroku CLI (npm ci --prefix tests/heroku)")
    env = platform_env(venv_bin, DATABASE_URL=database_url(postgres))
    migrated = run_shell(procfile(project)["release"], project, env)
    assert migrated.returncode == 0, migrated.stderr

    port = free_port()
    with process_group([heroku, "local", "web", "--port", str(port)], project, env):
        assert wait_for_http(f"http://127.0.0.1:{port}/health", 90) == 200


def test_web_without_port_stops_naming_it(project: Path, venv_bin: Path) -> None:
    result = run_shell(procfile(project)["web"], project, platform_env(venv_bin))
    assert result.returncode != 0
    assert "PORT" in result.stderr
    assert "the platform sets PORT" in result.stderr


# --- Render -------------------------------------------------------------------------------------


def render_env(service: dict[str, Any], postgres: dict[str, str]) -> dict[str, str]:
    """The web service's environment as Render fills it in: `fromDatabase` properties from
    the database (here the test's), plain values as written."""
    database = {"connectionString": database_url(postgres, "postgresql")}
    env = {}
    for variable in service["envVars"]:
        if "fromDatabase" in variable:
            env[variable["key"]] = database[variable["fromDatabase"]["property"]]
        else:
            env[variable["key"]] = str(variable["value"])
    return env


def test_render_blueprint_gives_its_postgresql_as_database_url(project: Path) -> None:
    loaded = blueprint(project)
    [service] = loaded["services"]
    [database] = loaded["databases"]
    assert service["type"] == "web"
    assert service["healthCheckPath"] == "/health"
    sources = {v["key"]: v["fromDatabase"] for v in service["envVars"] if "fromDatabase" in v}
    assert sources == {"DATABASE_URL": {"name": database["name"], "property": "connectionString"}}
    assert service["envVars"][0] == {"key": "PYTHON_VERSION", "value": ANSWERS["python_version"]}


def test_render_pre_deploy_migrates_then_start_serves_its_health_path_on_port(
    project: Path, venv_bin: Path, postgres: dict[str, str]
) -> None:
    [service] = blueprint(project)["services"]
    env = platform_env(venv_bin, **render_env(service, postgres))
    migrated = run_shell(service["preDeployCommand"], project, env)
    assert migrated.returncode == 0, migrated.stderr
    assert revision(postgres) == head(project)

    port = free_port()
    start = ["bash", "-c", service["startCommand"]]
    with serve(start, project, **{**env, "PORT": str(port)}) as server:
        url = f"http://127.0.0.1:{port}{service['healthCheckPath']}"
        assert wait_for_http(url, 60, server) == 200


# --- Fly.io and Cloud Run: schemas ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "path", "typo"),
    [
        ("fly.json", "deploy/fly/fly.toml", ("release_command =", "release_comand =")),
        (
            "cloud-run-v1.json",
            "deploy/cloudrun/service.yaml",
            ("containerConcurrency:", "containerConcurency:"),
        ),
        ("cloud-run-v1.json", "deploy/cloudrun/service.yaml", ("startupProbe:", "startup_probe:")),
        ("cloud-run-v1.json", "deploy/cloudrun/migrate-job.yaml", ("maxRetries:", "maxRetry:")),
    ],
    ids=["fly", "cloudrun-service", "cloudrun-probe", "cloudrun-job"],
)
def test_platform_file_matches_its_schema_and_a_typo_does_not(
    project: Path, tmp_path: Path, schema: str, path: str, typo: tuple[str, str]
) -> None:
    original = project / path
    checked = schema_check(schema, original)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = original.read_text()
    assert typo[0] in text
    mistyped = tmp_path / original.name
    mistyped.write_text(text.replace(typo[0], typo[1], 1))
    assert schema_check(schema, mistyped).returncode == 1


def test_fly_routes_to_the_app_port_checks_health_and_releases_with_the_migration(
    project: Path,
) -> None:
    config = fly_config(project)
    service = config["http_service"]
    assert service["internal_port"] == 8000
    assert [check["path"] for check in service["checks"]] == ["/health"]
    assert (
        service["concurrency"]["hard_limit"] == cloud_run_service(project)["containerConcurrency"]
    )
    assert config["deploy"]["release_command"] == "alembic upgrade head"
    assert config["processes"]["app"].split() == cloud_run_container(project)["args"]


# --- Cloud Run: the image run as Cloud Run runs it ----------------------------------------------


@pytest.fixture(scope="module")
def image(project: Path) -> Iterator[str]:
    docker.require_engine()
    with docker.image(project, "paas-cloudrun") as tag:
        yield tag


@pytest.fixture(scope="module")
def database_network(image: str) -> Iterator[tuple[str, str]]:
    """A PostgreSQL server in a network of its own; (network, server's name)."""
    network = docker.unique_name("paas-net")
    docker.docker("network", "create", network)
    try:
        settings = ["-e", f"POSTGRES_PASSWORD={PASSWORD}", "-e", "POSTGRES_USER=platform_api"]
        with docker.container("postgres:17", "--network", network, *settings) as server:
            deadline = time.monotonic() + 60
            while docker.docker(
                "exec", server, "pg_isready", "-U", "platform_api", check=False
            ).returncode:
                assert time.monotonic() < deadline, docker.logs(server)
                time.sleep(0.5)
            yield network, server
    finally:
        docker.docker("network", "rm", network, check=False)


def test_image_runs_the_migration_job_then_serves_on_cloud_runs_port_and_stops_on_sigterm(
    project: Path, image: str, database_network: tuple[str, str]
) -> None:
    network, server = database_network
    # The settings the YAML gives by env, here reaching the test's server; the password by env.
    settings = {
        "POSTGRES_HOST": server,
        "POSTGRES_USER": "platform_api",
        "POSTGRES_DB": "platform_api",
    }
    env = [
        arg
        for key, value in {**settings, "POSTGRES_PASSWORD": PASSWORD}.items()
        for arg in ("-e", f"{key}={value}")
    ]

    job = migration_job_container(project)
    assert {v["name"] for v in job["env"]} == set(settings)
    migrate = docker.docker(
        "run",
        "--rm",
        "--network",
        network,
        *env,
        "--entrypoint",
        job["command"][0],
        image,
        *job["command"][1:],
        *job["args"],
    )
    assert "Running upgrade" in migrate.stdout + migrate.stderr

    service = cloud_run_container(project)
    assert service["ports"] == [{"name": "http1", "containerPort": 8000}]
    port = free_port()
    with docker.container(
        image,
        "--network",
        network,
        *env,
        "-e",
        "PORT=9090",
        "-p",
        f"127.0.0.1:{port}:9090",
        "--entrypoint",
        service["command"][0],
        command=(*service["command"][1:], *service["args"]),
    ) as name:
        assert wait_for_http(f"http://127.0.0.1:{port}/health", 60) == 200
        assert wait_for_http(f"http://127.0.0.1:{port}/ready", 10) == 200
        started = time.monotonic()
        docker.docker("kill", "--signal", "SIGTERM", name)
        exited = docker.docker("wait", name, timeout=15)
        assert time.monotonic() - started < 10
        assert exited.stdout.strip() == "0", docker.logs(name)
        assert "Serving on port 9090, from PORT" in docker.logs(name)


# --- Every project of the covering array with a platform ---------------------------------------

ARRAY = [
    answers_of(row)
    for row in covering_array().rows
    if set(row["deploy_targets"] or []) & set(PLATFORMS)
]


def test_covering_array_holds_each_platform_with_each_process_model_and_database() -> None:
    """tests/test_render.py checks each of these projects' platform files (schemas, one start
    and one release command)."""
    held = {
        (target, answers["process_model"], answers["database"])
        for answers in ARRAY
        for target in answers["deploy_targets"]
    }
    for target in PLATFORMS:
        for model in ("single", "workers"):
            for database in ("postgresql", "none"):
                assert (target, model, database) in held


# --- Refused --------------------------------------------------------------------------------------


@pytest.mark.parametrize("platform", PLATFORMS)
def test_sqlite_with_a_platform_is_refused_at_copy_time(
    template: Path, tmp_path: Path, platform: str
) -> None:
    dest = tmp_path / "refused"
    answers = {"database": "sqlite", "deploy_targets": json.dumps([platform])}
    result = copier_copy(template, dest, answers)
    assert result.returncode != 0
    assert "deploy_targets: a platform (Procfile, Fly.io, Render, Cloud Run)" in " ".join(
        result.stderr.split()
    )
    assert not dest.exists()


# --- Without a database: the entrypoint exists for PORT alone (one process), or sizes workers ----


@pytest.fixture(scope="module", params=["single", "workers"])
def without_database(
    request: pytest.FixtureRequest, template: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """A project without a database for Cloud Run (and a Procfile), installed; (path, bin)."""
    answers = {**ANSWERS, "database": "none", "process_model": request.param}
    answers["deploy_targets"] = ["cloudrun", "procfile"]
    path = tmp_path_factory.mktemp("paas-nodb") / "platform-api"
    render(template, path, answers, tasks=True)
    (path / ".env").unlink()
    return path, install(path, answers)


def test_project_without_database_passes_its_own_checks(
    without_database: tuple[Path, Path],
) -> None:
    path, venv_bin = without_database
    assert (path / "prestart.py").is_file()
    assert not (path / "deploy" / "cloudrun" / "migrate-job.yaml").exists()
    assert set(procfile(path)) == {"web"}
    for command in checks(venv_bin):
        run(command, path)


def test_cloud_run_command_serves_on_port_and_stops_on_sigterm_in_time(
    without_database: tuple[Path, Path],
) -> None:
    path, venv_bin = without_database
    container = cloud_run_container(path)
    port = free_port()
    command = [*container["command"], *container["args"]]
    env = platform_env(venv_bin, PORT=str(port))
    with serve(command, path, **env) as server:
        assert wait_for_http(f"http://127.0.0.1:{port}/health", 60, server) == 200
        started = time.monotonic()
        server.terminate()
        # Once shut down gracefully, Uvicorn exits by the signal it got (as PID 1 of a
        # container, which ignores it: with 0).
        assert server.wait(timeout=10) in {0, -signal.SIGTERM}
        assert time.monotonic() - started < 10


def test_entrypoint_refuses_a_port_that_is_no_port(without_database: tuple[Path, Path]) -> None:
    path, venv_bin = without_database
    container = cloud_run_container(path)
    command = [*container["command"], *container["args"]]
    result = subprocess.run(
        command, cwd=path, env=platform_env(venv_bin, PORT="http"), capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "PORT must be a TCP port number" in result.stderr
