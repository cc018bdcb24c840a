"""The platform targets (issue 25) run as each platform runs them, on a covering set of the
array's projects (issue 22): `platform_projects()` (tests/covering.py) picks as few of the
array's projects with a platform as hold, on each platform, every process model, dependency
tool, layout (the start command's module) and database with and without migrations that the
array's projects with that platform hold. Each is installed once with its own tool, passes its
own lint and type checks, and is run by the tests of every platform it carries, each expecting
what its answers say: a release step only with migrations, a database only where it has one,
Uvicorn's workers (as many as the entrypoint sized) on the platform's PORT with the workers
process model.

Procfile hosts (Heroku, Dokku): honcho runs the rendered Procfile's `release` (with migrations)
on a real PostgreSQL given only DATABASE_URL as Heroku sets it, then `web` on a random PORT;
`heroku local` runs them too where the Heroku CLI is installed; `web` without PORT stops naming
it. Render: with DATABASE_URL as its connectionString, the Blueprint's preDeployCommand (with
migrations) migrates, its startCommand serves on PORT, its healthCheckPath answers 200. Fly.io
and Cloud Run: their files match SchemaStore's schemas (a typo'd key does not); fly.toml routes
to the image's port, checks /health and releases with the migration. Cloud Run: the image runs
as Cloud Run runs it: the migration job's command once (with migrations), then the service's
command on a PORT other than 8000, stopped with SIGTERM within Cloud Run's 10 s; the entrypoint
refuses a PORT that is no port. SQLite with a platform is refused at copy time.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import docker
from tests.covering import (
    PLATFORM_GROUPS,
    answers_of,
    covering_array,
    platform_projects,
)
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
    tool_env,
    wait_for_http,
)
from tests.test_validation import copier_copy

BIN = Path(sys.executable).parent  # this environment's honcho


def platform_id(answers: dict[str, Any]) -> str:
    """A project's test id: the answers that change what a platform runs, and its platforms."""
    database = answers["database"] + ("-migrations" if answers.get("migrations") else "")
    platforms = "+".join(t for t in answers["deploy_targets"] if t in PLATFORMS)
    tool, layout, model = answers["dependency_tool"], answers["layout"], answers["process_model"]
    return f"{tool}-{layout}-{model}-{database}-{platforms}"


def carrying(target: str | None = None) -> list[Any]:
    """The platform projects with this platform (None: all), as test parameters: a project's
    tests in one xdist group, so that one worker installs it, once."""
    return [
        pytest.param(
            answers,
            id=platform_id(answers),
            marks=pytest.mark.xdist_group(f"paas-{platform_id(answers)}"),
        )
        for answers in platform_projects()
        if target is None or target in answers["deploy_targets"]
    ]


@dataclass
class Project:
    """A platform project, as a platform gets it from git (the copy tasks' git-ignored .env and
    secret files left out: the platform sets the settings), installed with its own tool as a
    platform's build does."""

    answers: dict[str, Any]
    path: Path
    bin: Path

    @property
    def database(self) -> bool:
        return bool(self.answers["database"] == "postgresql")

    @property
    def migrations(self) -> bool:
        return self.database and bool(self.answers["migrations"])

    @property
    def workers(self) -> bool:
        return bool(self.answers["process_model"] == "workers")


@pytest.fixture(scope="module")
def installed(
    template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[dict[str, Any]], Project]:
    """The platform project of these answers, rendered and installed on first use, then kept
    for every platform test of it."""
    projects: dict[str, Project] = {}

    def project(answers: dict[str, Any]) -> Project:
        key = platform_id(answers)
        if key not in projects:
            path = render(
                template, tmp_path_factory.mktemp("paas") / "project", answers, tasks=True
            )
            (path / ".env").unlink()
            (path / "secrets" / "postgres_password").unlink(missing_ok=True)
            projects[key] = Project(answers, path, install(path, answers))
        return projects[key]

    return project


def platform_env(project: Project, **settings: str) -> dict[str, str]:
    """What a platform's process sees: the project's environment first on PATH, the settings
    the platform gives (no .env, no secrets/ directory: the password is a variable)."""
    env = {key: value for key, value in tool_env().items() if key != "PORT"}
    return {**env, "PATH": f"{project.bin}{os.pathsep}{env['PATH']}", **settings}


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


def head(project: Project) -> str:
    """The newest revision of the project's migrations."""
    versions = sorted((project.path / "migrations" / "versions").glob("*.py"))
    return versions[-1].name.split("_")[0]


def run_shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A platform's shell command, as Heroku and Render run it."""
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def database_url(postgres: dict[str, str], scheme: str = "postgres") -> str:
    """The test database as the one URL a platform gives: `postgres://` as Heroku's add-on,
    Dokku and `fly postgres attach` write it, `postgresql://` as Render's connectionString."""
    user, password = postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]
    host, port, name = postgres["POSTGRES_HOST"], postgres["POSTGRES_PORT"], postgres["POSTGRES_DB"]
    return f"{scheme}://{user}:{password}@{host}:{port}/{name}"


def database_settings(project: Project, postgres: dict[str, str]) -> dict[str, str]:
    """DATABASE_URL as Heroku, Dokku and Fly.io give it, where the project has a database."""
    return {"DATABASE_URL": database_url(postgres)} if project.database else {}


def checks(venv_bin: Path) -> list[list[str]]:
    """The project's own static checks, as its CI runs them: ruff, mypy strict. (Its tests
    never depend on the platforms: tests/test_projects.py runs them on its covering set.)"""
    commands = [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]]
    return [[str(venv_bin / command[0]), *command[1:]] for command in commands]


@contextmanager
def process_group(
    command: list[str], cwd: Path, env: dict[str, str]
) -> Iterator[Callable[[], str]]:
    """A runner in a session of its own, its whole group stopped at the end (`heroku local`
    leaves its processes running when it is itself stopped); yields what it printed so far."""
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

        def printed() -> str:
            # pread, not seek and read: the runner writes through the same file offset, so
            # moving it back would have its next lines written over the first ones.
            size = os.fstat(output.fileno()).st_size
            return os.pread(output.fileno(), size, 0).decode(errors="replace")

        try:
            yield printed
        except Exception as error:
            error.add_note(f"--- output (last 6000 characters)\n{printed()[-6000:]}")
            raise
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)


def assert_serves(project: Project, port: int, printed: Callable[[], str]) -> None:
    """The app answers on the port (its database's /items and /ready too), in as many server
    processes as the process model says: one, or the workers the entrypoint sized."""
    assert wait_for_http(f"http://127.0.0.1:{port}/health", 90) == 200
    if project.database:
        assert wait_for_http(f"http://127.0.0.1:{port}/items", 10) == 200
        assert wait_for_http(f"http://127.0.0.1:{port}/ready", 10) == 200
    sized = re.search(r"Starting (\d+) workers", printed())
    assert bool(sized) == project.workers, printed()[-3000:]
    expected = int(sized.group(1)) if sized else 1
    deadline = time.monotonic() + 60
    while printed().count("Started server process") < expected:
        assert time.monotonic() < deadline, printed()[-3000:]
        time.sleep(0.5)
    assert printed().count("Started server process") == expected


# --- The covering set ----------------------------------------------------------------------------


@pytest.mark.parametrize("target", PLATFORMS)
def test_each_platform_runs_every_answer_that_changes_what_it_runs(target: str) -> None:
    """Each value of each of PLATFORM_GROUPS that the array's projects with the platform hold
    is in a platform project with it."""
    array = [
        answers_of(row) for row in covering_array().rows if target in (row["deploy_targets"] or [])
    ]
    chosen = [answers for answers in platform_projects() if target in answers["deploy_targets"]]
    for group in PLATFORM_GROUPS:
        held = [{tuple(a.get(name) for name in group) for a in each} for each in (chosen, array)]
        assert held[0] == held[1], (target, group)


@pytest.mark.parametrize("answers", carrying())
def test_project_with_its_platforms_passes_its_own_lint_and_type_checks(
    answers: dict[str, Any], installed: Callable[[dict[str, Any]], Project]
) -> None:
    project = installed(answers)
    for command in checks(project.bin):
        run(command, project.path)


# --- Procfile (Heroku, Dokku) ------------------------------------------------------------------


@pytest.mark.parametrize("answers", carrying("procfile"))
def test_procfile_lists_web_and_a_release_only_with_migrations(
    answers: dict[str, Any], installed: Callable[[dict[str, Any]], Project]
) -> None:
    project = installed(answers)
    processes = procfile(project.path)
    assert set(processes) == ({"web", "release"} if project.migrations else {"web"})
    if project.migrations:
        assert "alembic upgrade head" in processes["release"]
    version = (project.path / ".python-version").read_text().strip()
    assert version == answers["python_version"]
    assert (project.path / "deploy" / "procfile" / "README.md").is_file()


def assert_migrated(
    release: subprocess.CompletedProcess[str], project: Project, postgres: dict[str, str]
) -> None:
    """A platform's release step ran and left the database at the project's newest revision."""
    assert release.returncode == 0, release.stderr
    assert revision(postgres) == head(project)


@pytest.mark.parametrize("answers", carrying("procfile"))
def test_honcho_runs_the_release_then_web_serves_on_port_with_only_database_url(
    answers: dict[str, Any],
    installed: Callable[[dict[str, Any]], Project],
    postgres: dict[str, str],
) -> None:
    project = installed(answers)
    honcho = [str(BIN / "honcho"), "--app-root", str(project.path), "--no-prefix"]
    env = platform_env(project, **database_settings(project, postgres))
    if project.migrations:
        release = shlex.split(procfile(project.path)["release"])
        migrated = subprocess.run(
            [*honcho, "run", *release], cwd=project.path, env=env, capture_output=True, text=True
        )
        assert_migrated(migrated, project, postgres)

    port = free_port()
    with process_group(
        [*honcho, "start", "web"], project.path, {**env, "PORT": str(port)}
    ) as printed:
        assert_serves(project, port, printed)


HEROKU = Path(__file__).parent / "heroku" / "node_modules" / ".bin" / "heroku"


@pytest.mark.parametrize("answers", carrying("procfile")[:1])
def test_heroku_local_runs_the_release_then_web_on_the_port_it_is_given(
    answers: dict[str, Any],
    installed: Callable[[dict[str, Any]], Project],
    postgres: dict[str, str],
) -> None:
    """The Heroku CLI (npm `heroku`, installed in tests/heroku by .ci/run) runs the Procfile
    as the platform does: a second runner beside honcho, of the first Procfile project (the
    one holding most of the answers the set covers)."""
    heroku = str(HEROKU) if HEROKU.exists() else shutil.which("heroku")
    if heroku is None:
        pytest.skip("no Heroku CLI (npm ci --prefix tests/heroku)")
    project = installed(answers)
    env = platform_env(project, **database_settings(project, postgres))
    if project.migrations:
        migrated = run_shell(procfile(project.path)["release"], project.path, env)
        assert migrated.returncode == 0, migrated.stderr

    port = free_port()
    with process_group([heroku, "local", "web", "--port", str(port)], project.path, env):
        assert wait_for_http(f"http://127.0.0.1:{port}/health", 90) == 200


@pytest.mark.parametrize("answers", carrying("procfile"))
def test_web_without_port_stops_naming_it(
    answers: dict[str, Any], installed: Callable[[dict[str, Any]], Project]
) -> None:
    project = installed(answers)
    result = run_shell(procfile(project.path)["web"], project.path, platform_env(project))
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


@pytest.mark.parametrize("answers", carrying("render"))
def test_render_blueprint_gives_its_postgresql_as_database_url_where_there_is_one(
    answers: dict[str, Any], installed: Callable[[dict[str, Any]], Project]
) -> None:
    project = installed(answers)
    loaded = blueprint(project.path)
    [service] = loaded["services"]
    assert service["type"] == "web"
    assert service["healthCheckPath"] == "/health"
    assert ("preDeployCommand" in service) == project.migrations
    assert service["envVars"][0] == {"key": "PYTHON_VERSION", "value": answers["python_version"]}
    sources = {v["key"]: v["fromDatabase"] for v in service["envVars"] if "fromDatabase" in v}
    if project.database:
        [database] = loaded["databases"]
        assert sources == {
            "DATABASE_URL": {"name": database["name"], "property": "connectionString"}
        }
    else:
        assert "databases" not in loaded
        assert sources == {}


@pytest.mark.parametrize("answers", carrying("render"))
def test_render_pre_deploy_migrates_then_start_serves_its_health_path_on_port(
    answers: dict[str, Any],
    installed: Callable[[dict[str, Any]], Project],
    postgres: dict[str, str],
) -> None:
    project = installed(answers)
    [service] = blueprint(project.path)["services"]
    env = platform_env(project, **render_env(service, postgres))
    if project.migrations:
        migrated = run_shell(service["preDeployCommand"], project.path, env)
        assert_migrated(migrated, project, postgres)

    port = free_port()
    start = ["bash", "-c", service["startCommand"]]
    with process_group(start, project.path, {**env, "PORT": str(port)}) as printed:
        url = f"http://127.0.0.1:{port}{service['healthCheckPath']}"
        assert wait_for_http(url, 90) == 200
        assert_serves(project, port, printed)


# --- Fly.io and Cloud Run: schemas ---------------------------------------------------------------

# Each file of a platform: its schema, and a key it may hold, with a typo.
SCHEMA_FILES = {
    # The schema's one closed table of fly.toml is [deploy], there with migrations.
    "fly": [("fly.json", "deploy/fly/fly.toml", ("release_command =", "release_comand ="))],
    "cloudrun": [
        ("cloud-run-v1.json", "deploy/cloudrun/service.yaml", ("startupProbe:", "startup_probe:")),
        (
            "cloud-run-v1.json",
            "deploy/cloudrun/service.yaml",
            ("containerConcurrency:", "containerConcurency:"),
        ),
        ("cloud-run-v1.json", "deploy/cloudrun/migrate-job.yaml", ("maxRetries:", "maxRetry:")),
    ],
}


@pytest.mark.parametrize(
    ("answers", "target"),
    [
        pytest.param(*param.values, target, id=f"{target}-{param.id}", marks=param.marks)
        for target in SCHEMA_FILES
        for param in carrying(target)
    ],
)
def test_platform_files_match_their_schema_and_a_typo_does_not(
    answers: dict[str, Any],
    target: str,
    installed: Callable[[dict[str, Any]], Project],
    tmp_path: Path,
) -> None:
    """One check-jsonschema run per schema (each takes seconds to start): the project's files
    pass, a copy with a typo'd key fails, for each key the files hold."""
    project = installed(answers)
    files = [f for f in SCHEMA_FILES[target] if (project.path / f[1]).exists()]
    if target == "cloudrun":  # the migration job only with migrations
        assert (project.path / SCHEMA_FILES["cloudrun"][-1][1]).exists() == project.migrations
    for schema in {f[0] for f in files}:
        originals = sorted({project.path / path for name, path, _ in files if name == schema})
        mistyped = []
        for index, (_, path, (key, typo)) in enumerate(f for f in files if f[0] == schema):
            text = (project.path / path).read_text()
            if key in text:
                copy = tmp_path / f"typo{index}-{Path(path).name}"
                copy.write_text(text.replace(key, typo, 1))
                mistyped.append(copy)
        checked = schema_check(schema, *originals, *mistyped)
        assert checked.returncode == (1 if mistyped else 0), checked.stdout
        for copy in mistyped:
            assert str(copy) in checked.stdout, checked.stdout
        for original in originals:
            assert str(original) not in checked.stdout, checked.stdout


# --- Fly.io --------------------------------------------------------------------------------------


@pytest.mark.parametrize("answers", carrying("fly"))
def test_fly_routes_to_the_app_port_checks_health_and_releases_only_with_migrations(
    answers: dict[str, Any], installed: Callable[[dict[str, Any]], Project]
) -> None:
    project = installed(answers)
    config = fly_config(project.path)
    service = config["http_service"]
    assert service["internal_port"] == 8000
    assert [check["path"] for check in service["checks"]] == ["/health"]
    if project.migrations:
        assert config["deploy"]["release_command"] == "alembic upgrade head"
    else:
        assert "deploy" not in config
    if "cloudrun" in answers["deploy_targets"]:
        cloud_run = cloud_run_service(project.path)
        assert service["concurrency"]["hard_limit"] == cloud_run["containerConcurrency"]
        assert config["processes"]["app"].split() == cloud_run_container(project.path)["args"]


# --- Cloud Run: the image run as Cloud Run runs it ----------------------------------------------


@contextmanager
def database_network(settings: dict[str, str]) -> Iterator[tuple[str, str]]:
    """A PostgreSQL server in a network of its own, with the user and database the YAML names;
    (network, server's name)."""
    network = docker.unique_name("paas-net")
    docker.docker("network", "create", network)
    try:
        env = ["-e", f"POSTGRES_PASSWORD={PASSWORD}"]
        env += ["-e", f"POSTGRES_USER={settings['POSTGRES_USER']}"]
        env += ["-e", f"POSTGRES_DB={settings['POSTGRES_DB']}"]
        with docker.container("postgres:17", "--network", network, *env) as server:
            deadline = time.monotonic() + 60
            ready = ["exec", server, "pg_isready", "-U", settings["POSTGRES_USER"]]
            while docker.docker(*ready, check=False).returncode:
                assert time.monotonic() < deadline, docker.logs(server)
                time.sleep(0.5)
            yield network, server
    finally:
        docker.docker("network", "rm", network, check=False)


@contextmanager
def cloud_run_network(project: Project) -> Iterator[list[str]]:
    """`docker run` arguments reaching the database the YAML's settings name (a server of the
    test's), the password by env; none without a database."""
    if not project.database:
        yield []
        return
    service = cloud_run_container(project.path)
    settings = {v["name"]: str(v["value"]) for v in service["env"] if "value" in v}
    with database_network(settings) as (network, server):
        values = {**settings, "POSTGRES_HOST": server, "POSTGRES_PASSWORD": PASSWORD}
        yield ["--network", network, *(f"--env={key}={value}" for key, value in values.items())]


@pytest.mark.docker
@pytest.mark.parametrize("answers", carrying("cloudrun"))
def test_image_runs_the_migration_job_then_serves_on_cloud_runs_port_and_stops_on_sigterm(
    answers: dict[str, Any], installed: Callable[[dict[str, Any]], Project]
) -> None:
    docker.require_engine()
    project = installed(answers)
    service = cloud_run_container(project.path)
    assert service["ports"] == [{"name": "http1", "containerPort": 8000}]
    with (
        docker.image(project.path, "paas-cloudrun") as image,
        cloud_run_network(project) as reach,
    ):
        if project.migrations:
            job = migration_job_container(project.path)
            assert {v["name"] for v in job["env"]} == {v["name"] for v in service["env"]}
            migrate = docker.docker(
                "run",
                "--rm",
                *reach,
                "--entrypoint",
                job["command"][0],
                image,
                *job["command"][1:],
                *job["args"],
            )
            assert "Running upgrade" in migrate.stdout + migrate.stderr

        port = free_port()
        with docker.container(
            image,
            *reach,
            "-e",
            "PORT=9090",
            "-p",
            f"127.0.0.1:{port}:9090",
            "--entrypoint",
            service["command"][0],
            command=(*service["command"][1:], *service["args"]),
        ) as name:
            assert wait_for_http(f"http://127.0.0.1:{port}/health", 60) == 200
            if project.database:
                assert wait_for_http(f"http://127.0.0.1:{port}/ready", 10) == 200
            started = time.monotonic()
            docker.docker("kill", "--signal", "SIGTERM", name)
            exited = docker.docker("wait", name, timeout=15)
            assert time.monotonic() - started < 10
            assert exited.stdout.strip() == "0", docker.logs(name)
            assert "Serving on port 9090, from PORT" in docker.logs(name)


@pytest.mark.parametrize(
    "answers", [p for p in carrying("cloudrun") if p.values[0]["database"] == "none"]
)
def test_entrypoint_refuses_a_port_that_is_no_port(
    answers: dict[str, Any], installed: Callable[[dict[str, Any]], Project]
) -> None:
    """Where the entrypoint reads PORT first: without a database (with one, it waits for the
    database and its schema before it starts the server)."""
    project = installed(answers)
    container = cloud_run_container(project.path)
    command = [*container["command"], *container["args"]]
    env = platform_env(project, PORT="http")
    result = subprocess.run(command, cwd=project.path, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "PORT must be a TCP port number" in result.stderr


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
