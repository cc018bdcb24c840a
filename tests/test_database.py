"""Database, migrations and prestart of generated projects, run for real.

PostgreSQL is Debian's server started by the tests (`postgres_server`), or the postgres image
under compose; SQLite is a file in a temporary data directory. Nothing is mocked: each test
renders and installs a project, starts its processes and talks HTTP to them.

Where migrations run follows the process model: the entrypoint (`prestart.py`) migrates for
one server (workers, or SQLite); a compose `migrate` service runs `alembic upgrade head` once
before the replicas otherwise. Concurrent starts are made to really contend: the test holds the
schema lock while the processes start, so they queue on it, then lets them go together.
"""

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests import docker
from tests.pgwire import RoundTrips
from tests.postgres import PASSWORD, PostgresServer, start_server
from tests.project import (
    ASGI_HTTP_SCOPE,
    ci_check_steps,
    free_port,
    git,
    http_get,
    install,
    readme_block,
    render,
    stop,
    tool_env,
)

pytestmark = pytest.mark.xdist_group("database")

POSTGRES_MIGRATIONS = {
    "database": "postgresql",
    "migrations": True,
    "process_model": "workers",
    "layout": "package",
}
POSTGRES_CREATE_ALL = {
    "database": "postgresql",
    "migrations": False,
    "process_model": "single",
    "layout": "single_file",
    "python_version": "3.11",
}
SQLITE_MIGRATIONS = {
    "database": "sqlite",
    "migrations": True,
    "process_model": "single",
    "layout": "single_file",
}
SQLITE_CREATE_ALL = {
    "database": "sqlite",
    "migrations": False,
    "process_model": "workers",
    "layout": "package",
}
PROJECTS = {
    "postgres_migrations": POSTGRES_MIGRATIONS,
    "postgres_create_all": POSTGRES_CREATE_ALL,
    "sqlite_migrations": SQLITE_MIGRATIONS,
    "sqlite_create_all": SQLITE_CREATE_ALL,
}
UPGRADE_LINE = "Running upgrade  -> 0001"
PACKAGE = "my_api"  # project_identifier derived from the default project_name, "My API"


class Project:
    """A rendered, installed project and how to start its processes."""

    def __init__(self, root: Path, answers: dict[str, Any]) -> None:
        self.root = root
        self.answers = answers
        self.bin = root / ".venv" / "bin"
        package = answers["layout"] == "package"
        self.module = "app.main:app" if package else "main:app"
        self.db_module = root / ("app/db.py" if package else "main.py")

    def server(self, port: int, *extra: str) -> list[str]:
        address = ("--host", "127.0.0.1", "--port", str(port))
        return [str(self.bin / "uvicorn"), self.module, *address, *extra]

    def prestart(self, *command: str) -> list[str]:
        return [str(self.bin / "python"), "prestart.py", *command]

    def schema_lock_key(self) -> int:
        found = re.search(r"SCHEMA_LOCK_KEY = ([0-9_]+)", self.db_module.read_text())
        assert found, "no SCHEMA_LOCK_KEY in the generated code"
        return int(found.group(1).replace("_", ""))


def project_env(**settings: str) -> dict[str, str]:
    """A generated project's environment: these settings, none inherited from the test run."""
    inherited = {
        key: value
        for key, value in tool_env().items()
        if not key.startswith(
            ("POSTGRES_", "DATABASE_URL", "DATA_DIR", "DB_WAIT_TIMEOUT", "WEB_CONCURRENCY")
        )
    }
    return {**inherited, **settings}


def rendered_and_installed(template: Path, dest: Path, answers: dict[str, Any]) -> Project:
    """Render with the tasks (the lock file), drop `.env` so each test's environment rules."""
    render(template, dest, answers, tasks=True)
    (dest / ".env").unlink()
    install(dest, {"dependency_tool": "uv", "python_version": "3.13", **answers})
    return Project(dest, answers)


@pytest.fixture(scope="module")
def projects(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Project]:
    """The four database flavours, rendered and installed once for this module."""
    root = tmp_path_factory.mktemp("database-projects")
    return {
        name: rendered_and_installed(template, root / name, answers)
        for name, answers in PROJECTS.items()
    }


@dataclass
class Server:
    """A started process of a project (prestart, then Uvicorn); its output goes to `log`."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def check_alive(self) -> None:
        code = self.process.poll()
        assert code is None, f"exited {code}\n{self.output()[-4000:]}"


@contextlib.contextmanager
def serving(
    project: Project, log: Path, env: dict[str, str], *uvicorn_options: str
) -> Iterator[Server]:
    """`python prestart.py uvicorn ...` as the image runs it; stopped with SIGTERM afterwards."""
    port = free_port()
    command = project.prestart(*project.server(port, *uvicorn_options))
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=project.root, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield Server(process, f"http://127.0.0.1:{port}", log)
    finally:
        stop(process)


def until(
    condition: Callable[[], bool],
    what: str,
    *,
    watching: Sequence[Server] = (),
    timeout: float = 120,
) -> None:
    """Poll `condition`; fail at once, with its output, when a watched server exits.

    The timeout is generous: on a loaded 2-core machine three Python start-ups take a while.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        for server in watching:
            server.check_alive()
        if time.monotonic() > deadline:
            output = "\n".join(server.output()[-3000:] for server in watching)
            raise AssertionError(f"not within {timeout}s: {what}\n{output}")
        time.sleep(0.1)


def status(url: str) -> int | None:
    try:
        return http_get(url)[0]
    except OSError:
        return None


def wait_for_ready(server: Server, expected: int = 200, timeout: float = 120) -> None:
    until(
        lambda: status(f"{server.url}/ready") == expected,
        f"/ready answers {expected}",
        watching=[server],
        timeout=timeout,
    )


def own_postgres(port: int | None = None, **settings: str) -> PostgresServer:
    """A PostgreSQL of the test's own, for tests that stop or start it or change its settings."""
    server = start_server(port or free_port(), **settings)
    if server is None:
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)")
    return server


def errors_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if '"level": "ERROR"' in line or "Traceback" in line]


def post_item(base: str, name: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base}/items",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201
        return dict(json.load(response))


@contextlib.contextmanager
def holding_advisory_lock(server: PostgresServer, database: str, key: int) -> Iterator[None]:
    """A psql session holds the schema lock; processes started meanwhile queue behind it."""
    session = subprocess.Popen(
        [
            str(server.bindir / "psql"),
            *("-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-d", database),
            *("-v", "ON_ERROR_STOP=1", "-q"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**tool_env(), "PGPASSWORD": PASSWORD},
    )
    assert session.stdin is not None
    session.stdin.write(f"SELECT pg_advisory_lock({key});\n")
    session.stdin.flush()
    until(lambda: advisory_locks(server, database, granted=True) == 1, "the lock is held")
    try:
        yield
    finally:
        session.stdin.close()
        session.wait(timeout=10)


def advisory_locks(server: PostgresServer, database: str, *, granted: bool) -> int:
    return int(
        server.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            f"WHERE l.locktype = 'advisory' AND l.granted = {granted} "
            f"AND d.datname = '{database}'"
        )
    )


# --- The generated project's own tests ------------------------------------------------------


@pytest.mark.parametrize("name", list(PROJECTS))
def test_generated_tests_pass_on_their_database(
    name: str, projects: dict[str, Project], postgres: dict[str, str]
) -> None:
    project = projects[name]
    settings = postgres if project.answers["database"] == "postgresql" else {}
    result = subprocess.run(
        [str(project.bin / "pytest"), "-q", "-p", "no:cacheprovider"],
        cwd=project.root,
        env=project_env(**settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout


@pytest.mark.parametrize("given", ["POSTGRES_*", "DATABASE_URL"])
def test_generated_postgres_tests_leave_the_development_database_alone(
    projects: dict[str, Project],
    postgres: dict[str, str],
    postgres_server: PostgresServer,
    given: str,
) -> None:
    """The project's tests (the migration round trip included) run in a database their
    fixtures create and drop; the one the settings name (`POSTGRES_DB`, or the database of
    `DATABASE_URL`, which wins) keeps its schema and its rows."""
    project = projects["postgres_migrations"]
    env = project_env(**postgres)
    if given == "DATABASE_URL":
        user, password, host = (postgres[f"POSTGRES_{n}"] for n in ("USER", "PASSWORD", "HOST"))
        url = f"postgres://{user}:{password}@{host}:{postgres['POSTGRES_PORT']}"
        env = project_env(DATABASE_URL=f"{url}/{postgres['POSTGRES_DB']}?sslmode=prefer")
    development = postgres["POSTGRES_DB"]
    subprocess.run(
        [str(project.bin / "alembic"), "upgrade", "head"], cwd=project.root, env=env, check=True
    )
    postgres_server.psql("INSERT INTO items (name, description) VALUES ('mine', '')", development)
    databases = "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database"
    before = postgres_server.psql(databases)

    result = subprocess.run(
        [str(project.bin / "pytest"), "-q", "-p", "no:cacheprovider"],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert postgres_server.psql("SELECT name FROM items", development) == "mine"
    assert postgres_server.psql("SELECT version_num FROM alembic_version", development) == "0001"
    assert postgres_server.psql(databases) == before  # the test database is gone again


def test_autogenerated_revision_passes_the_ci_job(template: Path, tmp_path: Path) -> None:
    """The README's steps after a model change: add a column, `alembic revision
    --autogenerate`; the revision Alembic writes passes the project's CI job as it is."""
    project = render(template, tmp_path / "project", SQLITE_MIGRATIONS, tasks=True)
    git(project, "init", "--quiet")  # as CI's checkout is
    env = project_env()
    install = "uv sync --locked"
    steps = [step["run"] for step in ci_check_steps(project)]
    assert install in steps
    subprocess.run(["bash", "-ec", install], cwd=project, env=env, check=True)
    models = project / "main.py"
    column = '    description: Mapped[str] = mapped_column(String(500), default="")\n'
    added = "    note: Mapped[str | None] = mapped_column(String(200), default=None)\n"
    assert column in models.read_text()
    models.write_text(models.read_text().replace(column, column + added))
    for command in [
        "uv run alembic upgrade head",
        'uv run alembic revision --autogenerate -m "add a column"',
    ]:
        assert command in (project / "README.md").read_text()
        subprocess.run(["bash", "-ec", command], cwd=project, env=env, check=True)
    revision = next((project / "migrations" / "versions").glob("*_add_a_column.py"))
    assert "note" in revision.read_text()
    for step in (step for step in steps if step != install):
        result = subprocess.run(
            ["bash", "-ec", step], cwd=project, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{step}\n{result.stdout[-4000:]}{result.stderr[-2000:]}"


# --- Replicas that start together --------------------------------------------------------


@contextlib.contextmanager
def three_started_together(
    project: Project, postgres_server: PostgresServer, postgres: dict[str, str], logs: Path
) -> Iterator[list[Server]]:
    """Three servers queue on the schema lock the test holds, then all go at once; ready."""
    database = postgres["POSTGRES_DB"]
    with contextlib.ExitStack() as stack:
        with holding_advisory_lock(postgres_server, database, project.schema_lock_key()):
            servers = [
                stack.enter_context(
                    serving(project, logs / f"replica-{i}.log", project_env(**postgres))
                )
                for i in range(3)
            ]
            until(
                lambda: advisory_locks(postgres_server, database, granted=False) == 3,
                "all three queue on the schema lock",
                watching=servers,
            )
        for server in servers:
            wait_for_ready(server)
        yield servers


def test_three_prestarts_started_together_migrate_exactly_once(
    projects: dict[str, Project],
    postgres_server: PostgresServer,
    postgres: dict[str, str],
    tmp_path: Path,
) -> None:
    project = projects["postgres_migrations"]
    with three_started_together(project, postgres_server, postgres, tmp_path) as servers:
        output = "\n".join(server.output() for server in servers)

    assert output.count("Applying migrations") == 3
    assert output.count(UPGRADE_LINE) == 1, output
    assert not errors_in(output), errors_in(output)
    database = postgres["POSTGRES_DB"]
    assert postgres_server.psql("SELECT version_num FROM alembic_version", database) == "0001"
    tables = "SELECT count(*) FROM information_schema.tables WHERE table_name = 'items'"
    assert postgres_server.psql(tables, database) == "1"


def test_replicas_creating_tables_together_all_serve_postgresql(
    projects: dict[str, Project],
    postgres_server: PostgresServer,
    postgres: dict[str, str],
    tmp_path: Path,
) -> None:
    project = projects["postgres_create_all"]
    with three_started_together(project, postgres_server, postgres, tmp_path) as servers:
        for server in servers:
            post_item(server.url, "made by every replica")
        output = "\n".join(server.output() for server in servers)

    assert not errors_in(output), errors_in(output)
    assert postgres_server.psql("SELECT count(*) FROM items", postgres["POSTGRES_DB"]) == "3"


def test_workers_creating_tables_together_all_serve_sqlite(
    projects: dict[str, Project], tmp_path: Path
) -> None:
    project = projects["sqlite_create_all"]
    data = tmp_path / "data"
    data.mkdir()
    # Hold SQLite's write lock while the three workers start, so they all reach it together.
    # The file is in WAL mode, as the app's first connection leaves it.
    holder = sqlite3.connect(data / f"{PACKAGE}.db", isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("BEGIN IMMEDIATE")
    env = project_env(DATA_DIR=str(data))
    with serving(project, tmp_path / "server.log", env, "--workers", "3") as server:
        until(
            lambda: server.output().count("Waiting for application startup.") == 3,
            "three workers starting",
            watching=[server],
        )
        time.sleep(0.5)
        holder.execute("COMMIT")
        holder.close()
        until(
            lambda: server.output().count("Application startup complete.") == 3,
            "three workers serving",
            watching=[server],
        )
        wait_for_ready(server)
        post_item(server.url, "lamp")
    assert not errors_in(server.output()), server.output()


def test_workers_writing_sqlite_at_once_are_never_locked_out(
    projects: dict[str, Project], tmp_path: Path
) -> None:
    """Three workers, sixteen clients creating items together: every one is stored (WAL and a
    busy timeout on each connection), none answered 500 for "database is locked"."""
    project = projects["sqlite_create_all"]
    env = project_env(DATA_DIR=str(tmp_path / "data"))
    with serving(project, tmp_path / "server.log", env, "--workers", "3") as server:
        until(
            lambda: server.output().count("Application startup complete.") == 3,
            "three workers serving",
            watching=[server],
        )
        with ThreadPoolExecutor(max_workers=16) as clients:
            created = list(clients.map(lambda n: post_item(server.url, f"item {n}"), range(400)))
    assert len({item["id"] for item in created}) == 400
    assert "database is locked" not in server.output()
    assert not errors_in(server.output()), server.output()


# --- Waiting for the database -------------------------------------------------------------


def test_app_started_before_the_database_waits_then_serves(
    projects: dict[str, Project], tmp_path: Path
) -> None:
    project = projects["postgres_migrations"]
    port = free_port()
    env = project_env(
        POSTGRES_HOST="127.0.0.1",
        POSTGRES_PORT=str(port),
        POSTGRES_USER="postgres",
        POSTGRES_PASSWORD=PASSWORD,
        POSTGRES_DB="postgres",
        DB_WAIT_TIMEOUT="120",
    )
    with serving(project, tmp_path / "app.log", env) as server:
        until(lambda: "(attempt 2)" in server.output(), "two attempts logged", watching=[server])
        late = own_postgres(port)
        try:
            wait_for_ready(server)
        finally:
            late.stop()
    waiting = [line for line in server.output().splitlines() if "Waiting for database" in line]
    assert all(f"127.0.0.1:{port}" in line for line in waiting)
    assert UPGRADE_LINE in server.output()


def start_and_finish(
    project: Project, env: dict[str, str], timeout: float = 120
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run what the image runs, to its end; how long it took."""
    started = time.monotonic()
    result = subprocess.run(
        project.prestart(*project.server(free_port())),
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return time.monotonic() - started, result


def logged_at(line: str) -> datetime:
    return datetime.fromisoformat(json.loads(line)["time"])


def test_prestart_gives_up_when_the_database_never_comes(
    projects: dict[str, Project],
) -> None:
    project = projects["postgres_create_all"]
    port = free_port()
    env = project_env(
        POSTGRES_HOST="127.0.0.1",
        POSTGRES_PORT=str(port),
        POSTGRES_PASSWORD="unused",
        DB_WAIT_TIMEOUT="3",
    )
    elapsed, result = start_and_finish(project, env)
    lines = result.stdout.splitlines()
    waiting = [line for line in lines if "Waiting for database" in line]
    assert result.returncode != 0
    assert len(waiting) >= 2 and all(f"127.0.0.1:{port}" in line for line in waiting)
    assert '"level": "ERROR"' in lines[-1] and f"127.0.0.1:{port}" in lines[-1], lines[-1]
    # Log times have whole seconds: the wait itself lasted the timeout, within that rounding.
    assert (logged_at(lines[-1]) - logged_at(waiting[0])).total_seconds() <= 3 + 1
    assert elapsed < 3 + 30, elapsed  # the timeout, plus start-up on a busy machine
    assert "Uvicorn running" not in result.stdout


@pytest.mark.parametrize(
    ("wrong", "cause"),
    [
        ({"POSTGRES_PASSWORD": "wrong-password"}, "password authentication failed"),
        ({"POSTGRES_HOST": "no-such-host.invalid"}, "cannot resolve the host name"),
        ({"POSTGRES_DB": "no_such_database"}, "does not exist"),
    ],
    ids=["password", "host", "database"],
)
def test_prestart_stops_at_once_on_an_error_waiting_cannot_fix(
    projects: dict[str, Project], postgres: dict[str, str], wrong: dict[str, str], cause: str
) -> None:
    """Only "not reachable yet" is retried: a wrong password, host or database name ends the
    start at the first attempt, naming the cause, long before DB_WAIT_TIMEOUT."""
    project = projects["postgres_create_all"]
    # Retrying would outlast start_and_finish's own timeout; each attempt logs a line.
    env = project_env(**{**postgres, **wrong, "DB_WAIT_TIMEOUT": "600"})
    _, result = start_and_finish(project, env)
    lines = result.stdout.splitlines()
    assert result.returncode != 0
    assert not [line for line in lines if "Waiting for database" in line]
    assert '"level": "ERROR"' in lines[-1] and cause in lines[-1], lines[-1]
    assert "not retried" in lines[-1]
    assert "Uvicorn running" not in result.stdout


def test_missing_password_stops_start_up_naming_the_variable(
    projects: dict[str, Project],
) -> None:
    project = projects["postgres_migrations"]
    # The password is a secret file: none in an empty secrets directory, none in the environment.
    no_secrets = project.root / "no-secrets"
    no_secrets.mkdir(exist_ok=True)
    env = project_env(
        POSTGRES_HOST="127.0.0.1",
        POSTGRES_PORT=str(free_port()),
        DB_WAIT_TIMEOUT="60",
        SECRETS_DIR=str(no_secrets),
    )
    elapsed, result = start_and_finish(project, env)
    assert result.returncode != 0
    assert elapsed < 30, elapsed  # well before DB_WAIT_TIMEOUT: nothing was tried
    assert "POSTGRES_PASSWORD" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Waiting for database" not in result.stdout


def test_placeholder_password_stops_start_up_naming_it(projects: dict[str, Project]) -> None:
    """`.env.example`'s `change-me` is public: refused at start, before any connection."""
    project = projects["postgres_create_all"]
    env = project_env(
        POSTGRES_HOST="127.0.0.1",
        POSTGRES_PORT=str(free_port()),
        POSTGRES_PASSWORD="change-me",
        DB_WAIT_TIMEOUT="600",
    )
    _, result = start_and_finish(project, env)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD is the placeholder 'change-me'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Waiting for database" not in result.stdout


# --- Connection budget ----------------------------------------------------------------------

# PostgreSQL keeps superuser_reserved_connections (3) of max_connections for superusers: 9 left.
SMALL_MAX_CONNECTIONS = "12"
SMALL_LIMIT = "max_connections 12 - 3 reserved = 9"


@contextlib.contextmanager
def idle_sessions(server: PostgresServer, database: str, count: int) -> Iterator[None]:
    """Other clients (other replicas, say) holding `count` connections to the database."""
    sessions = [
        subprocess.Popen(
            [
                str(server.bindir / "psql"),
                *("-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-d", database),
                "-q",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env={**tool_env(), "PGPASSWORD": PASSWORD},
        )
        for _ in range(count)
    ]
    held = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'"
    until(lambda: int(server.psql(held)) == count, f"{count} sessions connected")
    try:
        yield
    finally:
        for session in sessions:
            assert session.stdin is not None
            session.stdin.close()
            session.wait(timeout=10)


def test_prestart_refuses_workers_whose_pools_exceed_max_connections(
    projects: dict[str, Project],
) -> None:
    """2 workers x (15 + 0) = 30 connections cannot fit in 9: stop at start, not under load."""
    project = projects["postgres_migrations"]
    database = own_postgres(max_connections=SMALL_MAX_CONNECTIONS)
    try:
        env = project_env(**database.create_database(), WEB_CONCURRENCY="2")
        _, result = start_and_finish(project, env, timeout=300)
    finally:
        database.stop()
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.splitlines()[-1]
    assert '"level": "ERROR"' in last, last
    assert "2 worker(s) x (DB_POOL_SIZE 15 + DB_MAX_OVERFLOW 0) = 30 connections" in last
    assert SMALL_LIMIT in last
    assert "Uvicorn running" not in result.stdout


def test_pools_within_max_connections_serve_and_log_the_budget(
    projects: dict[str, Project], tmp_path: Path
) -> None:
    project = projects["postgres_migrations"]
    database = own_postgres(max_connections=SMALL_MAX_CONNECTIONS)
    try:
        settings = database.create_database()
        env = project_env(**settings, WEB_CONCURRENCY="2", DB_POOL_SIZE="2", DB_MAX_OVERFLOW="1")
        with serving(project, tmp_path / "app.log", env) as server:
            wait_for_ready(server, timeout=300)
        budget = "2 worker(s) x (DB_POOL_SIZE 2 + DB_MAX_OVERFLOW 1) = 6 connections"
        assert f"Connection budget: {budget} of {SMALL_LIMIT}" in server.output()
        # Other clients holding 4 leave 5: the same start warns, with the numbers, and serves.
        with (
            idle_sessions(database, settings["POSTGRES_DB"], 4),
            serving(project, tmp_path / "tight.log", env) as server,
        ):
            wait_for_ready(server, timeout=300)
        warning = next(line for line in server.output().splitlines() if budget in line)
        assert '"level": "WARNING"' in warning and "other clients hold 4" in warning, warning
        assert SMALL_LIMIT in warning
    finally:
        database.stop()


# --- Readiness follows the database -------------------------------------------------------

# Each worker keeps its own readiness and logs its own changes, and starts once: with one worker
# (not one per CPU) the log tells a single story whichever worker a request lands on.
ONE_WORKER = {"WEB_CONCURRENCY": "1"}


def test_ready_follows_the_database_without_a_restart(
    projects: dict[str, Project], tmp_path: Path
) -> None:
    project = projects["postgres_migrations"]
    database = own_postgres()
    try:
        env = project_env(**database.create_database(), **ONE_WORKER)
        with serving(project, tmp_path / "app.log", env) as server:
            wait_for_ready(server)
            item = post_item(server.url, "kept")

            database.pause()
            wait_for_ready(server, 503, timeout=60)
            assert status(f"{server.url}/health") == 200
            assert status(f"{server.url}/ready") == 503

            database.resume()
            wait_for_ready(server, 200, timeout=60)
            assert http_get(f"{server.url}/items/{item['id']}")[0] == 200
            server.check_alive()
        assert server.output().count("Application startup complete.") == 1
    finally:
        database.stop()


def postgres_processes(server: PostgresServer) -> list[int]:
    """The server's postmaster and its children (the backends serving connections)."""
    postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
    children = [
        int(stat.parent.name)
        for stat in Path("/proc").glob("[0-9]*/stat")
        if (fields := stat.read_text().rsplit(")", 1)[-1].split()) and int(fields[1]) == postmaster
    ]
    return [postmaster, *children]


@contextlib.contextmanager
def frozen(server: PostgresServer) -> Iterator[None]:
    """The database hangs: connections stay open, nothing answers (SIGSTOP), until SIGCONT."""
    pids = postgres_processes(server)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_ready_logs_each_change_once_and_answers_a_hung_database_in_time(
    projects: dict[str, Project], tmp_path: Path
) -> None:
    """Every failing /ready says why in the log only when the state changes; a database that
    hangs gets a 503 within /ready's own timeout instead of a request that never ends."""
    project = projects["postgres_migrations"]
    database = own_postgres()
    try:
        env = project_env(**database.create_database(), **ONE_WORKER)
        with serving(project, tmp_path / "app.log", env) as server:
            wait_for_ready(server)
            database.pause()
            wait_for_ready(server, 503, timeout=60)
            for _ in range(5):
                assert status(f"{server.url}/ready") == 503
            database.resume()
            wait_for_ready(server, 200, timeout=60)

            with frozen(database):
                started = time.monotonic()
                assert http_get(f"{server.url}/ready", timeout=20)[0] == 503
                assert time.monotonic() - started < 10  # its timeout, not the client's 20 s
                assert http_get(f"{server.url}/ready", timeout=20)[0] == 503
            wait_for_ready(server, 200, timeout=60)
            server.check_alive()
        lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
        changes = [
            (line["level"], line["message"].split(":")[0])
            for line in lines
            if line["message"].startswith(("Not ready", "Ready again"))
        ]
        assert changes == [("WARNING", "Not ready"), ("INFO", "Ready again")] * 2
        assert all(
            "the database does not answer: " in line["message"]
            for line in lines
            if line["message"].startswith("Not ready")
        )
    finally:
        database.stop()


# --- The data path on PostgreSQL ---------------------------------------------------------


def read_items(base: str, ids: list[int], clients: int) -> list[int | None]:
    """GET /items/{id} of each id, `clients` at a time; the statuses (None: no answer)."""
    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(lambda item_id: status(f"{base}/items/{item_id}"), ids))


def test_a_read_is_one_round_trip_to_postgresql(
    projects: dict[str, Project], postgres: dict[str, str], tmp_path: Path
) -> None:
    """GET /items/{id} sends the server its query and nothing else: no ping before it, no
    BEGIN and ROLLBACK around it (counted on the wire, tests/pgwire.py)."""
    project = projects["postgres_migrations"]
    relay = RoundTrips(postgres["POSTGRES_HOST"], int(postgres["POSTGRES_PORT"]))
    with relay.running():
        env = project_env(**{**postgres, "POSTGRES_PORT": str(relay.port)}, **ONE_WORKER)
        with serving(project, tmp_path / "app.log", env) as server:
            wait_for_ready(server)
            item = post_item(server.url, "counted")
            assert status(f"{server.url}/items/{item['id']}") == 200  # prepares the statement
            relay.reset()
            for _ in range(10):
                assert status(f"{server.url}/items/{item['id']}") == 200
            trips = relay.trips
    assert len(trips) == 10, trips
    assert all(trip.startswith("SELECT items.id") for trip in trips), trips


def test_reads_after_a_postgresql_restart_all_succeed(
    projects: dict[str, Project], tmp_path: Path
) -> None:
    """The server restarts while the pool holds connections to it: no read fails afterwards,
    not even the first on each closed connection (what `pool_pre_ping` guarded against, here
    without a round trip per request)."""
    project = projects["postgres_migrations"]
    database = own_postgres()
    try:
        env = project_env(**database.create_database(), **ONE_WORKER)
        with serving(project, tmp_path / "app.log", env) as server:
            wait_for_ready(server)
            ids = [post_item(server.url, f"item {n}")["id"] for n in range(8)]
            # 8 clients at once: the pool opens several connections, all kept open afterwards.
            assert read_items(server.url, ids * 10, clients=8) == [200] * 80
            opened = database.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND datname <> 'postgres'"
            )
            assert int(opened) > 1, opened

            database.pause()  # a fast shutdown: the server closes every connection
            database.resume()

            assert read_items(server.url, ids * 10, clients=8) == [200] * 80
            server.check_alive()
        assert not errors_in(server.output()), errors_in(server.output())
    finally:
        database.stop()


def keep_alive_load(url: str, paths: list[str], clients: int) -> list[int]:
    """`clients` HTTP/1.1 connections kept alive, each sending its next request as soon as the
    last is answered, as a load generator does, until all of `paths` are asked; the statuses."""
    host, port = url.removeprefix("http://").split(":")
    queue = list(reversed(paths))
    statuses: list[int] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        while queue:
            writer.write(f"GET {queue.pop()} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            statuses.append(int(head.split()[1]))
            length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
            await reader.readexactly(int(length.group(1)) if length else 0)
        writer.close()

    async def run() -> None:
        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), 120)

    asyncio.run(run())
    return statuses


def test_a_process_under_load_keeps_its_connections_for_the_next_requests(
    projects: dict[str, Project],
    postgres_server: PostgresServer,
    postgres: dict[str, str],
    tmp_path: Path,
) -> None:
    """Sixteen clients at once, each asking again as soon as it is answered: the process opens
    at most its pool's connections and serves every later request on them. (With 5 kept and
    10 overflowing, each overflow connection was closed as it came back, then opened again.)"""
    project = projects["postgres_migrations"]
    opened = f"SELECT sessions FROM pg_stat_database WHERE datname = '{postgres['POSTGRES_DB']}'"
    with serving(project, tmp_path / "app.log", project_env(**postgres, **ONE_WORKER)) as server:
        wait_for_ready(server)
        paths = [f"/items/{post_item(server.url, f'item {n}')['id']}" for n in range(4)]
        before = int(postgres_server.psql(opened))
        assert keep_alive_load(server.url, paths * 500, clients=16) == [200] * 2000
        during = int(postgres_server.psql(opened)) - before
    assert during <= 15, f"{during} connections opened for 2000 reads"


# Run by a project's Python: ASGI calls into its app (lifespan and all), the four item routes in
# turn; per call its status and how many connections the pool has lent out when the response
# starts, as JSON.
POOL_AT_RESPONSE_START = (
    """
import asyncio, importlib, json, os, sys

sys.path.insert(0, os.getcwd())  # the project's root, as under Uvicorn
app = importlib.import_module(sys.argv[1]).app
"""
    + ASGI_HTTP_SCOPE
    + """

async def call(method, path, body=b""):
    seen = {}
    scope = http_scope(method, path, [(b"content-type", b"application/json")])

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            seen.update(status=message["status"], lent=app.state.engine.pool.checkedout())
        elif message.get("body"):
            seen["body"] = json.loads(message["body"])

    await app(scope, receive, send)
    return seen


async def main():
    async with app.router.lifespan_context(app):
        created = await call("POST", "/items", b'{"name": "pooled"}')
        path = f"/items/{created['body']['id']}"
        calls = [created, await call("GET", path), await call("GET", "/items")]
        calls.append(await call("DELETE", path))
    print(json.dumps([[call["status"], call["lent"]] for call in calls]))


asyncio.run(main())
"""
)


@pytest.mark.parametrize("name", ["postgres_create_all", "sqlite_create_all"])
def test_a_request_gives_its_connection_back_before_its_response_starts(
    projects: dict[str, Project], request: pytest.FixtureRequest, tmp_path: Path, name: str
) -> None:
    """The session closes when the route returns, not after the response is sent: at a full
    pool, a request waiting for a connection gets it before the client's next request does."""
    project = projects[name]
    postgresql = project.answers["database"] == "postgresql"
    database = request.getfixturevalue("postgres") if postgresql else {}
    env = project_env(**database, DATA_DIR=str(tmp_path))
    script = tmp_path / "pool_at_response_start.py"
    script.write_text(POOL_AT_RESPONSE_START)
    module = project.module.split(":")[0]
    ran = subprocess.run(
        [str(project.bin / "python"), str(script), module],
        cwd=project.root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    calls = json.loads(ran.stdout.splitlines()[-1])
    assert calls == [[201, 0], [200, 0], [200, 0], [204, 0]], calls


# --- Data in volumes, under Docker --------------------------------------------------------


class Stack:
    """A project rendered for compose: its own name, image and published port."""

    def __init__(self, template: Path, dest: Path, answers: dict[str, Any]) -> None:
        self.slug = docker.unique_name("dbtest")
        answers = {**answers, "project_name": self.slug, "project_slug": self.slug}
        self.root = render(template, dest, answers, tasks=True)
        self.url = f"http://127.0.0.1:{free_port()}"
        with (self.root / ".env").open("a") as env:
            env.write(f"APP_PORT={self.url.rsplit(':', 1)[1]}\n")
        self.name = ""

    @contextlib.contextmanager
    def up(self) -> Iterator["Stack"]:
        """`compose up --build --wait`; afterwards down with the volumes, and the image removed."""
        try:
            with docker.compose_stack(self.root) as name:
                self.name = name
                yield self
        finally:
            docker.docker("rmi", "-f", f"{self.slug}:latest", check=False)

    def compose(self, *args: str) -> str:
        return docker.docker("compose", "-p", self.name, *args, cwd=self.root).stdout

    def service(self, service: str) -> dict[str, Any]:
        listed = self.compose("ps", "-a", "--format", "json", service)
        return dict(json.loads(listed.splitlines()[0]))

    def read_item(self, item_id: int) -> dict[str, Any]:
        status_code, body = http_get(f"{self.url}/items/{item_id}")
        assert status_code == 200, body
        return dict(json.loads(body))


@pytest.mark.docker
@pytest.mark.xdist_group("database-docker")
def test_compose_migrates_once_before_the_app_and_keeps_data_across_down_and_up(
    template: Path, tmp_path: Path
) -> None:
    docker.require_engine()
    answers = {**POSTGRES_MIGRATIONS, "process_model": "single"}
    with Stack(template, tmp_path / "pg", answers).up() as stack:
        migrate = stack.service("migrate")
        assert (migrate["State"], migrate["ExitCode"]) == ("exited", 0)
        assert stack.compose("logs", "--no-color", "migrate").count(UPGRADE_LINE) == 1
        item = post_item(stack.url, "survives")

        stack.compose("down")
        stack.compose("up", "--wait")
        assert stack.read_item(item["id"]) == item
        migrate = stack.service("migrate")
        assert (migrate["State"], migrate["ExitCode"]) == ("exited", 0)
        assert UPGRADE_LINE not in stack.compose("logs", "--no-color", "migrate")
        assert not errors_in(stack.compose("logs", "--no-color"))


@pytest.mark.docker
@pytest.mark.xdist_group("database-docker")
def test_readme_container_commands_serve_postgresql_as_written(
    template: Path, tmp_path: Path
) -> None:
    """The README's `docker build` / `docker run --env-file .env` reach the database (`.env`
    says localhost, which inside a container is the container itself, and POSTGRES_PORT, the
    port published on this machine, here not 5432, as a user sets it where 5432 is taken).
    The test names the container to remove it."""
    docker.require_engine()
    stack = Stack(template, tmp_path / "pg", {**POSTGRES_MIGRATIONS, "process_model": "single"})
    with (stack.root / ".env").open("a") as dotenv:
        dotenv.write(f"POSTGRES_PORT={docker.DOCKER_ENV['POSTGRES_PORT']}\n")
    commands = readme_block((stack.root / "README.md").read_text(), "Container")
    assert commands[0] == f"docker build -t {stack.slug} ."
    assert commands[-1].startswith("docker run --rm -p 127.0.0.1:8000:8000 --env-file .env")
    port = free_port()
    container = docker.unique_name("readme")
    run_line = (
        commands[-1]
        .replace("127.0.0.1:8000:", f"127.0.0.1:{port}:")
        .replace("docker run ", f"docker run --name {container} ", 1)
    )
    env = {**tool_env(), **docker.DOCKER_ENV}
    try:
        for command in commands[:-1]:
            subprocess.run(["bash", "-ec", command], cwd=stack.root, env=env, check=True)
        with (tmp_path / "run.log").open("wb") as log:
            process = subprocess.Popen(
                ["bash", "-ec", run_line], cwd=stack.root, env=env, stdout=log, stderr=log
            )
        try:
            until(
                lambda: status(f"http://127.0.0.1:{port}/ready") == 200,
                "the container answers /ready",
                timeout=180,
            )
            assert post_item(f"http://127.0.0.1:{port}", "from the readme")["id"] >= 1
        finally:
            docker.docker("stop", container, check=False)
            process.wait(timeout=60)
    finally:
        docker.docker("rm", "-f", container, check=False)
        docker.docker("compose", "down", "-v", cwd=stack.root, check=False)
        docker.docker("rmi", "-f", stack.slug, check=False)


@pytest.mark.docker
@pytest.mark.xdist_group("database-docker")
def test_readme_container_commands_keep_sqlite_data_in_their_named_volume(
    template: Path, tmp_path: Path
) -> None:
    """The README's `docker run` mounts a named volume at /srv/data: what one container wrote,
    the next one reads. The image declares no VOLUME, so no run leaves an anonymous one."""
    docker.require_engine()
    stack = Stack(template, tmp_path / "sqlite", {**SQLITE_MIGRATIONS, "process_model": "single"})
    volume = f"{stack.slug}-data"
    build, run = readme_block((stack.root / "README.md").read_text(), "Container")
    assert build == f"docker build -t {stack.slug} ."
    assert f" -v {volume}:/srv/data " in run, run
    port = free_port()
    container = docker.unique_name("readme")
    detached = run.replace("127.0.0.1:8000:", f"127.0.0.1:{port}:").replace(
        "docker run ", f"docker run --detach --name {container} ", 1
    )
    env = {**tool_env(), **docker.DOCKER_ENV}
    try:
        subprocess.run(["bash", "-ec", build], cwd=stack.root, env=env, check=True)
        image = docker.docker("image", "inspect", "-f", "{{json .Config.Volumes}}", stack.slug)
        assert json.loads(image.stdout) in (None, {}), image.stdout
        written = None
        for _ in range(2):
            subprocess.run(["bash", "-ec", detached], cwd=stack.root, env=env, check=True)
            until(
                lambda: status(f"http://127.0.0.1:{port}/health") == 200,
                "the container answers /health",
                timeout=120,
            )
            if written is None:
                written = post_item(f"http://127.0.0.1:{port}", "kept in the volume")
            else:
                status_code, body = http_get(f"http://127.0.0.1:{port}/items/{written['id']}")
                assert status_code == 200 and json.loads(body) == written, body
            docker.docker("stop", container)  # --rm: the container goes, its volume stays
            until(
                lambda: (
                    docker.docker("container", "inspect", container, check=False).returncode != 0
                ),
                "the container is removed",
                timeout=30,
            )
    finally:
        docker.docker("rm", "-f", container, check=False)
        docker.docker("volume", "rm", "-f", volume, check=False)
        docker.docker("rmi", "-f", stack.slug, check=False)


@pytest.mark.docker
@pytest.mark.xdist_group("database-docker")
def test_sqlite_data_survives_a_restart_and_a_new_container(template: Path, tmp_path: Path) -> None:
    docker.require_engine()
    with Stack(template, tmp_path / "sqlite", SQLITE_MIGRATIONS).up() as stack:
        item = post_item(stack.url, "survives")

        stack.compose("restart", "app")
        until(lambda: status(f"{stack.url}/ready") == 200, "the app is back after the restart")
        assert stack.read_item(item["id"]) == item

        stack.compose("down")
        stack.compose("up", "--wait")
        assert stack.read_item(item["id"]) == item
        assert not errors_in(stack.compose("logs", "--no-color"))


# --- Turning migrations on later ---------------------------------------------------------------


def test_turning_migrations_on_adopts_the_tables_the_app_created(
    projects: dict[str, Project], postgres: dict[str, str], tmp_path: Path
) -> None:
    """A project run without migrations has tables its app created at start-up; once it turns
    migrations on (`copier update --data migrations=true`), the first upgrade takes them as
    revision 0001 (no `relation "items" already exists`) and keeps their rows."""
    env = project_env(**postgres)
    with serving(projects["postgres_create_all"], tmp_path / "before.log", env) as server:
        wait_for_ready(server)
        item = post_item(server.url, "kept")

    migrated = projects["postgres_migrations"]  # its code with migrations on, same database
    alembic = [str(migrated.bin / "alembic")]
    for command in (["upgrade", "head"], ["current"]):
        result = subprocess.run(
            [*alembic, *command], cwd=migrated.root, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert "0001 (head)" in result.stdout

    with serving(migrated, tmp_path / "after.log", env) as server:
        wait_for_ready(server)
        assert status(f"{server.url}/items/{item['id']}") == 200


# --- Offline migrations: SQL for applying by hand ---------------------------------------------


@pytest.mark.parametrize("name", ["sqlite_migrations", "postgres_migrations"])
def test_offline_sql_builds_the_schema_on_an_empty_database(
    name: str,
    projects: dict[str, Project],
    postgres: dict[str, str],
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    """`alembic upgrade head --sql`, as the README gives it to a DBA, prints the SQL without
    reaching any database (none is configured); applied by hand to an empty database, it makes
    the table, and Alembic then finds that database at head."""
    project = projects[name]
    alembic = str(project.bin / "alembic")
    offline = subprocess.run(
        [alembic, "upgrade", "head", "--sql"],
        cwd=project.root,
        env=project_env(POSTGRES_HOST="no-such-host.invalid", DATA_DIR=str(tmp_path / "none")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert offline.returncode == 0, offline.stderr
    sql = offline.stdout
    assert "CREATE TABLE items" in sql
    assert '"level"' not in sql, "no log line in the SQL"
    if project.answers["database"] == "sqlite":
        data = tmp_path / "data"
        data.mkdir()
        with contextlib.closing(sqlite3.connect(data / f"{PACKAGE}.db")) as database:
            database.executescript(sql)
            tables = {row[0] for row in database.execute("SELECT name FROM sqlite_master")}
        assert "items" in tables
        online = project_env(DATA_DIR=str(data))
    else:
        postgres_server.psql(sql, postgres["POSTGRES_DB"])
        found = postgres_server.psql("SELECT to_regclass('items')", postgres["POSTGRES_DB"])
        assert found == "items"
        online = project_env(**postgres)
    current = subprocess.run(
        [alembic, "current"], cwd=project.root, env=online, capture_output=True, text=True
    )
    assert current.returncode == 0, current.stderr
    assert "0001 (head)" in current.stdout


# The next release's migration, expand only: a nullable column the release before ignores.
NEXT_RELEASE_MIGRATION = '''"""Add items.note."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("items", sa.Column("note", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("items", "note")
'''


def test_the_release_before_serves_on_the_schema_the_next_one_expanded(
    projects: dict[str, Project], postgres: dict[str, str], tmp_path: Path
) -> None:
    """A rollout: the next release migrates (an added nullable column) while this one serves,
    and this one keeps answering; restarted on that schema (a rollback, or a server restarted
    mid-rollout) it starts without migrating, instead of failing on a revision it does not
    know."""
    current = projects["postgres_migrations"]
    next_release = tmp_path / "next-release"
    shutil.copytree(current.root, next_release, ignore=shutil.ignore_patterns(".venv"))
    versions = next_release / "migrations" / "versions"
    (versions / "0002_add_item_note.py").write_text(NEXT_RELEASE_MIGRATION)
    env = project_env(**postgres, **ONE_WORKER)
    alembic = [str(current.bin / "alembic")]  # the next release's code, the same libraries

    with serving(current, tmp_path / "during.log", env) as server:
        wait_for_ready(server)
        before = post_item(server.url, "before")
        for command in (["upgrade", "head"], ["current"]):
            result = subprocess.run(
                [*alembic, *command], cwd=next_release, env=env, capture_output=True, text=True
            )
            assert result.returncode == 0, result.stdout + result.stderr
        assert "0002 (head)" in result.stdout
        during = post_item(server.url, "during")
        assert status(f"{server.url}/items/{before['id']}") == 200
        server.check_alive()

    with serving(current, tmp_path / "restarted.log", env) as server:
        wait_for_ready(server)
        assert status(f"{server.url}/items/{during['id']}") == 200
        post_item(server.url, "after")
    assert "a newer release's revision: not migrating" in server.output()
    assert not errors_in(server.output()), server.output()[-3000:]
