"""The Linux server target: systemd units, the proxy's site and the install script, for real.

A Debian machine with systemd as PID 1 runs in Docker (`--cgroupns=private --cap-add SYS_ADMIN`,
tmpfs on /run; no --privileged), with nginx, Caddy, PostgreSQL, the distribution's Python, uv and
Poetry installed as an administrator would (tests/images/server). Three projects are installed on
a machine each, by the commands their deploy/server/README.md prints, one per dependency tool:
- uv, Gunicorn's workers, nginx, SQLite: the socket starts the app on the first request through
  nginx's HTTPS site, after the migration unit ran once; a reload under a stream of requests and
  a stop lose none of them, and the access lines are in the journal;
- Poetry, one Uvicorn process, Caddy, the machine's PostgreSQL: the role and database made as the
  README says, the migration unit migrates it once, items are stored and read through Caddy's
  HTTPS site (its local CA);
- pip, one Uvicorn process on the socket itself, SQLite: a restart refuses no connection.
Every variant's units pass `systemd-analyze verify` without a word and rate at most 2.0 with
`systemd-analyze security`.
"""

import contextlib
import json
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.combinations import SIMPLE_INDEX, combination_id
from tests.covering import answers_of, covering_array
from tests.docker import docker, require_engine, unique_name
from tests.project import readme_block, render, run

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.xdist_group("server")

# The installed project: workers (Gunicorn: sd_notify, reload), nginx with HTTPS for localhost,
# SQLite migrated by the migration unit. Python 3.11 is Debian 12's own.
INSTALLED: dict[str, Any] = {
    "project_slug": "srv-api",
    "python_version": "3.11",
    "dependency_tool": "uv",
    "process_model": "workers",
    "reverse_proxy": "nginx",
    "database": "sqlite",
    "migrations": True,
    "deploy_targets": ["server"],
}
SLUG = INSTALLED["project_slug"]
IDENTIFIER = SLUG.replace("-", "_")

# Every way the units differ: the covering array's projects with this target (tests/covering.py),
# their units checked statically beside the installed ones.
COMBINATIONS = [
    answers
    for answers in map(answers_of, covering_array().rows)
    if "server" in answers["deploy_targets"]
]
UNIT_SETS = ["installed", *map(combination_id, COMBINATIONS)]

# The projects installed besides: fixed answers, as the covering array's server rows mostly ask for
# Python 3.12 or 3.13 (Debian 12 has 3.11, and uv may download no other Python here) or for a
# public domain (no ACME server answers here); they cover what the installed one does not.
# Poetry, one Uvicorn process behind Caddy's HTTPS site (its local CA), this machine's PostgreSQL.
CADDY_POSTGRES: dict[str, Any] = {
    "project_slug": "srv-pg",
    "python_version": "3.11",
    "dependency_tool": "poetry",
    "package_index": SIMPLE_INDEX,
    "process_model": "single",
    "reverse_proxy": "caddy",
    "database": "postgresql",
    "migrations": True,
    "deploy_targets": ["server"],
}
# pip, one Uvicorn process on the socket (fd 3), exposed without a proxy.
SINGLE: dict[str, Any] = {
    "project_slug": "srv-single",
    "python_version": "3.11",
    "dependency_tool": "pip",
    "process_model": "single",
    "reverse_proxy": "none",
    "database": "sqlite",
    "migrations": True,
    "deploy_targets": ["server"],
}


@dataclass
class Machine:
    name: str
    slug: str
    url: str  # where requests go: the proxy's site, or the socket itself
    cafile: Path | None = None  # the certificate install.sh made, the only one trusted
    units: dict[str, list[str]] = field(default_factory=dict)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return docker("exec", self.name, *command, check=check)

    def sh(self, script: str, check: bool = True) -> str:
        return self.run("sh", "-c", script, check=check).stdout

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "--value", "-p", prop, unit).stdout.strip()

    def journal(self, unit: str) -> list[str]:
        return self.run("journalctl", "-u", unit, "-o", "cat", "--no-pager").stdout.splitlines()

    def app_log(self) -> list[dict[str, Any]]:
        """The app's JSON log lines in the journal."""
        return [json.loads(line) for line in self.journal(self.slug) if line.startswith("{")]

    def access_lines(self) -> list[dict[str, Any]]:
        """The app's access lines in the journal, one a request."""
        access = f"{self.slug.replace('-', '_')}.access"
        return [entry for entry in self.app_log() if entry["logger"] == access]

    def get(self, path: str, timeout: float = 30) -> int:
        return self.request(path, timeout=timeout)[0]

    def request(self, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        """GET, or POST `body` as JSON: the status and the JSON answered (None if none)."""
        context = ssl.create_default_context(cafile=self.cafile) if self.cafile else None
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                text = response.read()
                return int(response.status), json.loads(text) if text else None
        except urllib.error.HTTPError as error:
            return error.code, None


@pytest.fixture(scope="session")
def server_image() -> Iterator[str]:
    """The Debian machine's image, built once per session."""
    require_engine()
    tag = unique_name("server-systemd")
    docker("build", "-q", "-t", tag, str(REPO / "tests" / "images" / "server"))
    yield tag
    docker("rmi", "-f", tag, check=False)


@contextlib.contextmanager
def installed(
    image: str, template: Path, tmp: pytest.TempPathFactory, answers: dict[str, Any], port: int
) -> Iterator[tuple[Machine, Path]]:
    """A machine booted, `port` published on 127.0.0.1, and the project installed by the
    commands of its deploy/server/README.md: nothing started yet but the socket."""
    slug = answers["project_slug"]
    project = tmp.mktemp("server") / "project"
    if answers["dependency_tool"] == "pip":
        # pip-compile's two locks take minutes here (test_projects runs them): uv writes the
        # same pins with hashes of requirements.in, all the server installs, in seconds.
        render(template, project, answers)
        lock = ["uv", "pip", "compile", "-q", "--generate-hashes", "requirements.in"]
        run(
            [*lock, "--python-version", answers["python_version"], "-o", "requirements.txt"],
            project,
        )
    else:
        render(template, project, answers, tasks=True)
    readme = (project / "deploy" / "server" / "README.md").read_text()
    name = unique_name(f"server-{slug}")
    docker(
        "run", "-d", "--name", name, "--cgroupns=private", "--cap-add", "SYS_ADMIN",
        "--tmpfs", "/run", "--tmpfs", "/run/lock", "-p", f"127.0.0.1::{port}", image,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        state = ""
        while state not in {"running", "degraded"}:
            assert time.monotonic() < deadline, f"systemd did not boot: {state}"
            time.sleep(0.5)
            state = docker("exec", name, "systemctl", "is-system-running", check=False).stdout
            state = state.strip()
        # systemd mounts a unit's credentials in a namespace of its own and needs /run to pass
        # the mount back (shared, as on a booted machine; Docker's tmpfs is private).
        docker("exec", name, "mount", "--make-shared", "/run")
        docker("cp", f"{project}/.", f"{name}:/root/{slug}")
        if answers["database"] == "postgresql":
            commands = "\n".join(readme_block(readme, "The database"))
            docker("exec", "-w", f"/root/{slug}", name, "sh", "-eu", "-c", commands)
        # This machine reaches PyPI through a TLS-intercepting proxy whose CA is in the system
        # store, which uv, pip and Poetry read when told to.
        store = "/etc/ssl/certs/ca-certificates.crt"
        install = readme_block(readme, "Install and upgrade")[0]
        assert install == "sh deploy/server/install.sh"
        docker(
            "exec", "-w", f"/root/{slug}", "-e", f"SSL_CERT_FILE={store}",
            "-e", f"PIP_CERT={store}", "-e", f"REQUESTS_CA_BUNDLE={store}", name, *install.split(),
        )  # fmt: skip
        published = docker("port", name, f"{port}/tcp").stdout.splitlines()[0].rsplit(":", 1)[1]
        scheme = "https" if port == 443 else "http"
        machine = Machine(name, slug, f"{scheme}://localhost:{published}")
        machine.units["installed"] = [
            f"/etc/systemd/system/{unit.name}" for unit in units_of(project)
        ]
        yield machine, project
    finally:
        docker("rm", "-f", "-v", name, check=False)


@pytest.fixture(scope="module")
def machine(
    server_image: str, template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Machine]:
    """The project behind nginx's HTTPS site."""
    with installed(server_image, template, tmp_path_factory, INSTALLED, 443) as (machine, _):
        machine.cafile = tmp_path_factory.mktemp("tls") / "fullchain.pem"
        docker("cp", f"{machine.name}:/etc/{SLUG}/tls/fullchain.pem", str(machine.cafile))
        yield machine


@pytest.fixture(scope="module")
def units(
    machine: Machine, template: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[str]]:
    """The paths on the machine of the installed units, and of the other projects' (copied
    there, not installed)."""
    for number, answers in enumerate(COMBINATIONS):
        machine.units[combination_id(answers)] = copy_units(
            machine, template, tmp_path_factory, answers, f"/srv/units/{number}"
        )
    return machine.units


def units_of(project: Path) -> list[Path]:
    return sorted((project / "deploy" / "server" / "systemd").iterdir())


def copy_units(
    machine: Machine,
    template: Path,
    tmp: pytest.TempPathFactory,
    answers: dict[str, Any],
    directory: str,
) -> list[str]:
    """A project's units in a directory of their own on the machine, and stand-ins for the
    programs they run (`systemd-analyze verify` checks that those exist)."""
    project = render(template, tmp.mktemp("units") / "project", answers)
    slug = yaml.safe_load((project / ".copier-answers.yml").read_text())["project_slug"]
    machine.run("mkdir", "-p", directory, f"/opt/{slug}/.venv/bin")
    docker("cp", f"{project}/deploy/server/systemd/.", f"{machine.name}:{directory}")
    programs = " ".join(
        f"/opt/{slug}/.venv/bin/{name}" for name in ("gunicorn", "uvicorn", "alembic")
    )
    machine.sh(f"touch {programs} && chmod +x {programs}")
    return [f"{directory}/{unit.name}" for unit in units_of(project)]


@pytest.mark.parametrize("unit_set", UNIT_SETS)
def test_units_verify_without_a_word(
    machine: Machine, units: dict[str, list[str]], unit_set: str
) -> None:
    """systemd-analyze verify warns, exiting 0, on an unknown key or a bad value: any output at
    all is a finding."""
    verified = machine.run("systemd-analyze", "verify", *units[unit_set], check=False)
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")


@pytest.mark.parametrize("unit_set", UNIT_SETS)
def test_services_expose_little(
    machine: Machine, units: dict[str, list[str]], unit_set: str
) -> None:
    """systemd-analyze's exposure rating, 0 (locked down) to 10 (unprotected), at most 2.0 for
    the app and its migration."""
    for unit in units[unit_set]:
        if unit.endswith(".service"):
            rated = machine.run("systemd-analyze", "security", "--offline=yes", unit).stdout
            exposure = float(re.findall(r"Overall exposure level for \S+: ([0-9.]+)", rated)[0])
            assert exposure <= 2.0, rated


@dataclass(frozen=True)
class FirstStart:
    """What the first requests found, and the state of the units around them."""

    before: tuple[str, str]
    statuses: tuple[int, int]
    after: str
    migration_result: str
    migrated_at: int
    started_at: int
    migration_runs: int
    state_files: list[str]


@pytest.fixture(scope="module")
def first_start(machine: Machine) -> FirstStart:
    """The first requests after the install (tests run in any order: they all take this)."""
    before = (
        machine.show(f"{SLUG}.socket", "ActiveState"),
        machine.show(f"{SLUG}.service", "ActiveState"),
    )
    statuses = (machine.get("/health"), machine.get("/items"))  # the table the migration made
    return FirstStart(
        before=before,
        statuses=statuses,
        after=machine.show(f"{SLUG}.service", "ActiveState"),
        migration_result=machine.show(f"{SLUG}-migrate.service", "Result"),
        migrated_at=int(machine.show(f"{SLUG}-migrate.service", "ExecMainExitTimestampMonotonic")),
        started_at=int(machine.show(f"{SLUG}.service", "ExecMainStartTimestampMonotonic")),
        migration_runs=sum(
            line.startswith("Finished ") for line in machine.journal(f"{SLUG}-migrate.service")
        ),
        # Where the state directory keeps SQLite's file for the dynamic user.
        state_files=machine.sh(f"ls /var/lib/private/{SLUG}").split(),
    )


def test_the_socket_starts_the_app_after_the_migration_on_the_first_request(
    first_start: FirstStart,
) -> None:
    assert first_start.before == ("active", "inactive")
    assert first_start.statuses == (200, 200)
    assert first_start.after == "active"
    assert first_start.migration_result == "success"
    assert 0 < first_start.migrated_at < first_start.started_at
    assert first_start.migration_runs == 1
    assert f"{IDENTIFIER}.db" in first_start.state_files


class RequestStream:
    """GET /health through the proxy, one new connection after another, until stopped (at most
    `limit` requests): the statuses, or the error instead of one."""

    def __init__(self, machine: Machine, limit: int = 2000) -> None:
        self.machine = machine
        self.limit = limit
        self.results: list[int | str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        while not self.stopping.is_set() and len(self.results) < self.limit:
            try:
                self.results.append(self.machine.get("/health"))
            except OSError as error:
                self.results.append(repr(error))

    def __enter__(self) -> "RequestStream":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)


def worker_pids(machine: Machine) -> set[int]:
    main = machine.show(f"{SLUG}.service", "MainPID")
    return {int(pid) for pid in machine.sh(f"pgrep -P {main} || true").split()}


def test_reload_replaces_the_workers_under_load_and_loses_no_request(
    machine: Machine, first_start: FirstStart
) -> None:
    assert machine.get("/health") == 200
    main, before = machine.show(f"{SLUG}.service", "MainPID"), worker_pids(machine)

    def ready() -> int:
        return sum("Application startup complete" in line for line in machine.journal(SLUG))

    started = ready()
    with RequestStream(machine) as stream:
        time.sleep(1)
        machine.run("systemctl", "reload", f"{SLUG}.service")
        # Until the new workers serve and the old ones are gone.
        deadline = time.monotonic() + 60
        while ready() < started + len(before) or not worker_pids(machine).isdisjoint(before):
            assert time.monotonic() < deadline, "the workers were not replaced"
            time.sleep(0.2)
        time.sleep(1)
    assert machine.show(f"{SLUG}.service", "MainPID") == main
    assert len(worker_pids(machine)) == len(before)
    assert len(stream.results) > 20
    failed = [r for r in stream.results if r != 200][:5]
    assert not failed, (failed, machine.sh("tail -n 5 /var/log/nginx/error.log"))


def test_stop_is_graceful_and_the_socket_starts_it_again(
    machine: Machine, first_start: FirstStart
) -> None:
    assert machine.get("/health") == 200
    with RequestStream(machine) as stream:
        time.sleep(1)
        machine.run("systemctl", "stop", f"{SLUG}.service")
        stopped = machine.show(f"{SLUG}.service", "Result")
        time.sleep(1)
    assert stopped == "success"  # exited by itself within TimeoutStopSec, not killed
    lines = machine.journal(SLUG)
    last_stop = max(i for i, line in enumerate(lines) if "Shutting down: Master" in line)
    assert any("Application shutdown complete" in line for line in lines[:last_stop])
    # Requests that arrived meanwhile waited on the socket, which started the app again.
    assert set(stream.results) == {200}, [r for r in stream.results if r != 200][:5]
    assert machine.show(f"{SLUG}.service", "ActiveState") == "active"


def test_the_access_lines_are_in_the_journal_with_the_clients_address(
    machine: Machine, first_start: FirstStart
) -> None:
    assert machine.get("/health?from=journal") == 200
    access = machine.access_lines()
    assert access and access[-1]["route"] == "/health" and access[-1]["status"] == 200
    # The client as nginx saw it (the Docker host), not nginx's own loopback address.
    assert access[-1]["client"] not in {"127.0.0.1", None}


# Where Debian's Caddy (user caddy) keeps its local CA's root certificate.
CADDY_ROOT = "/var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt"


@pytest.fixture(scope="module")
def caddy_machine(
    server_image: str, template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Machine]:
    """The Poetry project behind Caddy's HTTPS site, its database the machine's PostgreSQL."""
    with installed(server_image, template, tmp_path_factory, CADDY_POSTGRES, 443) as (machine, _):
        deadline = time.monotonic() + 30
        while machine.run("test", "-s", CADDY_ROOT, check=False).returncode:
            assert time.monotonic() < deadline, "Caddy made no local CA"
            time.sleep(0.5)
        machine.cafile = tmp_path_factory.mktemp("caddy") / "root.crt"
        docker("cp", f"{machine.name}:{CADDY_ROOT}", str(machine.cafile))
        yield machine


def test_poetry_behind_caddy_stores_items_in_the_machines_postgresql_migrated_once(
    caddy_machine: Machine,
) -> None:
    machine, slug = caddy_machine, CADDY_POSTGRES["project_slug"]
    identifier = slug.replace("-", "_")
    assert machine.show(f"{slug}.service", "ActiveState") == "inactive"
    # Caddy's certificate for localhost, from its own CA, is the only one trusted.
    assert machine.get("/health") == 200
    created = machine.request("/items", {"name": "stored through Caddy"})
    assert created[0] == 201 and created[1]["name"] == "stored through Caddy"
    assert machine.request("/items") == (200, [created[1]])
    assert machine.show(f"{slug}-migrate.service", "Result") == "success"
    assert int(machine.show(f"{slug}-migrate.service", "ExecMainExitTimestampMonotonic")) < int(
        machine.show(f"{slug}.service", "ExecMainStartTimestampMonotonic")
    )
    runs = [line for line in machine.journal(f"{slug}-migrate.service") if "Finished " in line]
    assert len(runs) == 1
    # The row is in the machine's PostgreSQL, in the database the README had made, at the head
    # revision.
    psql = f"runuser -u postgres -- psql -At -d {identifier} -c"
    assert machine.sh(f"cd / && {psql} 'SELECT name FROM items'").split("\n")[0] == (
        "stored through Caddy"
    )
    assert machine.sh(f"cd / && {psql} 'SELECT version_num FROM alembic_version'").strip()
    # The client as Caddy saw it, passed on in X-Forwarded-For.
    access = machine.access_lines()
    assert access[-1]["route"] == "/items" and access[-1]["client"] not in {"127.0.0.1", None}


@pytest.fixture(scope="module")
def single_machine(
    server_image: str, template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Machine]:
    """The one-process project installed with pip, its socket on port 8000 of every address."""
    with installed(server_image, template, tmp_path_factory, SINGLE, 8000) as (machine, _):
        yield machine


def test_one_uvicorn_process_takes_the_socket_and_restarts_without_refusing_a_connection(
    single_machine: Machine,
) -> None:
    """While Uvicorn restarts, the socket holds the new connections: none is refused. (One that
    Uvicorn accepted in the instant it stops may be closed unanswered, as Uvicorn closes idle
    connections at shutdown; Gunicorn's reload is the way that loses none.)"""
    machine, slug = single_machine, SINGLE["project_slug"]
    assert machine.show(f"{slug}.service", "ActiveState") == "inactive"
    assert machine.get("/items") == 200  # the socket started it, after the migration
    assert machine.show(f"{slug}-migrate.service", "Result") == "success"
    main = machine.show(f"{slug}.service", "MainPID")
    assert machine.sh(f"cat /proc/{main}/comm").strip() == "uvicorn"

    with RequestStream(machine) as stream:
        time.sleep(1)
        machine.run("systemctl", "restart", f"{slug}.service")
        time.sleep(2)
    assert machine.show(f"{slug}.service", "MainPID") != main
    assert len(stream.results) > 20
    assert stream.results.count(200) >= len(stream.results) - 1, stream.results
    assert not [r for r in stream.results if "Refused" in str(r)]

    machine.run("systemctl", "stop", f"{slug}.service")
    assert machine.show(f"{slug}.service", "Result") == "success"
    access = machine.access_lines()
    assert access and access[-1]["route"] == "/health"
    assert any(e["message"] == "Application shutdown complete." for e in machine.app_log())


@pytest.mark.parametrize("domain", ["localhost", "api.example.com"])
def test_the_caddy_site_is_valid_where_caddy_imports_it(
    template: Path, tmp_path: Path, domain: str
) -> None:
    """Caddy (the stand-in image's) validates its main configuration importing the site, as
    install.sh leaves it: a local CA for localhost, Let's Encrypt with the account's e-mail."""
    require_engine()
    answers = {"reverse_proxy": "caddy", "domain": domain, "deploy_targets": ["server"]}
    if domain != "localhost":
        answers["acme_email"] = "ops@example.com"
    project = render(template, tmp_path / "project", answers)
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "my-api.caddy").write_text((project / "deploy/server/caddy/my-api.caddy").read_text())
    (etc / "Caddyfile").write_text("import my-api.caddy\n")
    validate = "caddy validate --config /etc/caddy/Caddyfile --adapter caddyfile"
    result = docker("run", "--rm", "-v", f"{etc}:/etc/caddy:ro", "caddy:2", *validate.split())
    assert "Valid configuration" in result.stdout + result.stderr


def test_the_nginx_site_for_a_public_domain_is_valid(
    machine: Machine, template: Path, tmp_path: Path
) -> None:
    """The public domain's site (certbot's certificate paths, HSTS) passes `nginx -t` on the
    machine, beside the installed site, with a stand-in certificate where certbot keeps it."""
    answers = {"reverse_proxy": "nginx", "domain": "api.example.com", "deploy_targets": ["server"]}
    project = render(template, tmp_path / "project", answers)
    live = "/etc/letsencrypt/live/api.example.com"
    machine.sh(
        f"mkdir -p {live} /srv/public && openssl req -x509 -newkey rsa:2048 -nodes -days 1"
        f" -subj /CN=api.example.com -keyout {live}/privkey.pem -out {live}/fullchain.pem"
        " 2>/dev/null"
    )
    docker("cp", f"{project}/deploy/server/nginx/my-api.conf", f"{machine.name}:/srv/public/")
    config = "events {} http { include /etc/nginx/conf.d/*.conf; include /srv/public/*.conf; }"
    machine.sh(f"echo '{config}' > /srv/public.conf")
    tested = machine.run("nginx", "-t", "-q", "-c", "/srv/public.conf", check=False)
    assert (tested.returncode, tested.stderr) == (0, "")
