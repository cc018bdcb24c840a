"""The Linux server target: systemd units, the proxy's site and the install script, for real.

A Debian machine with systemd as PID 1 runs in Docker (`--cgroupns=private --cap-add SYS_ADMIN`,
tmpfs on /run; no --privileged), with nginx, Caddy, PostgreSQL, the distribution's Python 3.11,
Pythons 3.12 and 3.13 in /usr/local, uv and Poetry installed as an administrator would
(tests/images/server). The projects installed are the covering array's (issue 22):
`server_projects()` (tests/covering.py) picks as few of the array's server projects that this
machine can run (no public domain: those are below) as hold every dependency tool, every Python,
each reverse proxy with each process model, and each database with and without migrations that
those projects hold. Each is installed on a machine of
its own, by the commands its deploy/server/README.md prints (the README's database commands for
PostgreSQL), and each test runs on every one its answers make it meaningful for (it is skipped on
the others):
- all: the socket starts the app on the first request, after the migration unit ran once where
  there are migrations; a stop is graceful and the socket starts the app again, a restart
  refuses no connection, and behind nginx or Caddy (which send again a request a stopping
  process closed unanswered) loses none; the access lines are in the journal with the client's
  address (the one nginx or Caddy forwards, or the socket's peer; from an external proxy's
  addresses only);
- workers: a reload under a stream of requests replaces Gunicorn's workers, the main process
  staying, refuses no connection and, behind nginx or Caddy, loses no request;
- nginx or Caddy: HTTPS trusting only the certificate install.sh made or Caddy's local CA;
- PostgreSQL: items stored and read, in the database the README made, at the head revision.
Every server project's units in the array pass `systemd-analyze verify` without a word and rate
at most 2.0 with `systemd-analyze security`, and so do the installed ones. The array's server
projects with a public name, one per proxy on the machine, are installed on a machine that an
ACME CA (pebble, with its DNS) reaches: nginx's certificate obtained by certbot as the README
says, and renewed while nginx serves, Caddy's by Caddy.
"""

import contextlib
import json
import re
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.combinations import combination_id
from tests.covering import (
    SERVER_GROUPS,
    answers_of,
    compose_proxies,
    covering_array,
    installable_here,
    lockable_here,
    public_domain,
    run_for_real,
    server_projects,
)
from tests.docker import docker, free_subnet, require_engine, unique_name
from tests.edge import (
    PEBBLE_COMMAND,
    build_tools_image,
    challtestsrv_command,
    pebble_root_at,
    write_pebble_files,
)
from tests.project import readme_block, readme_blocks, render, run
from tests.tls import TestCA, https_get

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.xdist_group("server")

# Every way the units differ: the covering array's projects with this target (tests/covering.py),
# their units checked statically.
COMBINATIONS = [
    answers
    for answers in map(answers_of, covering_array().rows)
    if "server" in answers["deploy_targets"]
]
UNIT_SETS = list(map(combination_id, COMBINATIONS))

# The projects installed on a machine each (tests/covering.py `server_projects`).
PROJECTS = server_projects()

Answers = dict[str, Any]
Test = TypeVar("Test", bound=Callable[..., None])


def in_front(answers: Answers) -> bool:
    """Whether a proxy on the machine (nginx, Caddy) serves HTTPS in front of the socket."""
    return answers["reverse_proxy"] in compose_proxies()


def workers(answers: Answers) -> bool:
    return answers["process_model"] == "workers"


def postgresql(answers: Answers) -> bool:
    return answers["database"] == "postgresql"


def migrates(answers: Answers) -> bool:
    """Whether the migration unit runs: migrations, and a database to run them on."""
    return bool(answers.get("migrations")) and answers["database"] != "none"


def on_the_socket(answers: Answers) -> bool:
    """Whether clients reach the socket itself: no proxy, or an external one."""
    return not in_front(answers)


def nginx(answers: Answers) -> bool:
    return answers["reverse_proxy"] == "nginx"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each test taking `machine` runs on every installed project; skipped on those its
    `applies` predicate refuses (a skip mark: no machine is made for it)."""
    if "machine" not in metafunc.fixturenames:
        return
    predicate = getattr(metafunc.function, "applies", None)
    metafunc.parametrize(
        "machine",
        [
            pytest.param(
                answers,
                id=combination_id(answers),
                marks=()
                if predicate is None or predicate(answers)
                else pytest.mark.skip(reason=f"not for these answers: {predicate.__name__}"),
            )
            for answers in PROJECTS
        ],
        indirect=True,
        scope="module",
    )


def applies(predicate: Callable[[Answers], bool]) -> Callable[[Test], Test]:
    """The installed projects a test is meaningful for, by their answers."""

    def mark(test: Test) -> Test:
        setattr(test, "applies", predicate)  # noqa: B010 (read by pytest_generate_tests)
        return test

    return mark


@dataclass
class Machine:
    name: str
    answers: Answers
    slug: str
    url: str  # where requests go: the proxy's site, or the socket itself
    cafile: Path | None = None  # the certificate install.sh or Caddy made, the only one trusted
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
def booted(image: str, prefix: str, port: int, run_args: tuple[str, ...] = ()) -> Iterator[str]:
    """A machine (its container's name) with systemd running, `port` published on 127.0.0.1."""
    name = unique_name(prefix)
    docker(
        "run", "-d", "--name", name, *run_args, "--cgroupns=private", "--cap-add", "SYS_ADMIN",
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
        yield name
    finally:
        docker("rm", "-f", "-v", name, check=False)


@contextlib.contextmanager
def installed(
    image: str,
    template: Path,
    tmp: pytest.TempPathFactory,
    answers: Answers,
    run_args: tuple[str, ...] = (),
    prepare: Callable[[str], None] | None = None,
) -> Iterator[Machine]:
    """A machine booted (`docker run` with `run_args`, then `prepare` given its name: what the
    administrator set up) and the project installed by the commands of its
    deploy/server/README.md: nothing started yet but the socket, published on 127.0.0.1 (the
    proxy's HTTPS port, or the socket's)."""
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
    slug = yaml.safe_load((project / ".copier-answers.yml").read_text())["project_slug"]
    readme = (project / "deploy" / "server" / "README.md").read_text()
    port = 443 if in_front(answers) else 8000
    with booted(image, f"server-array-{slug}", port, run_args) as name:
        # systemd mounts a unit's credentials in a namespace of its own and needs /run to pass
        # the mount back (shared, as on a booted machine; Docker's tmpfs is private).
        docker("exec", name, "mount", "--make-shared", "/run")
        if prepare is not None:
            prepare(name)
        docker("cp", f"{project}/.", f"{name}:/root/{slug}")
        if postgresql(answers):
            commands = "\n".join(readme_block(readme, "The database"))
            docker("exec", "-w", f"/root/{slug}", name, "sh", "-eu", "-c", commands)
        # The section's commands before install.sh's (nginx's certificate for a public name).
        *first, (install, *_) = readme_blocks(readme, "Install and upgrade")
        for block in first:
            docker("exec", "-w", f"/root/{slug}", name, "sh", "-eu", "-c", "\n".join(block))
        assert install == "sh deploy/server/install.sh"
        # This machine reaches PyPI through a TLS-intercepting proxy whose CA is in the system
        # store, which uv, pip and Poetry read when told to.
        store = "/etc/ssl/certs/ca-certificates.crt"
        docker(
            "exec", "-w", f"/root/{slug}", "-e", f"SSL_CERT_FILE={store}",
            "-e", f"PIP_CERT={store}", "-e", f"REQUESTS_CA_BUNDLE={store}", name, *install.split(),
        )  # fmt: skip
        published = docker("port", name, f"{port}/tcp").stdout.splitlines()[0].rsplit(":", 1)[1]
        scheme = "https" if port == 443 else "http"
        machine = Machine(name, answers, slug, f"{scheme}://localhost:{published}")
        machine.units["installed"] = [
            f"/etc/systemd/system/{unit.name}" for unit in units_of(project)
        ]
        yield machine


# Where Debian's Caddy (user caddy) keeps its local CA's root certificate.
CADDY_ROOT = "/var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt"


@pytest.fixture(scope="module")
def machine(
    request: pytest.FixtureRequest,
    server_image: str,
    template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Machine]:
    """One of the installed projects (pytest_generate_tests: each in turn), requests trusting
    only the certificate its proxy serves: the one install.sh made for nginx, Caddy's local CA."""
    answers: Answers = request.param
    with installed(server_image, template, tmp_path_factory, answers) as machine:
        if nginx(answers):
            certificate = f"/etc/{machine.slug}/tls/fullchain.pem"
        elif answers["reverse_proxy"] == "caddy":
            deadline = time.monotonic() + 30
            while machine.run("test", "-s", CADDY_ROOT, check=False).returncode:
                assert time.monotonic() < deadline, "Caddy made no local CA"
                time.sleep(0.5)
            certificate = CADDY_ROOT
        else:
            assert not in_front(answers), answers["reverse_proxy"]
            yield machine
            return
        machine.cafile = tmp_path_factory.mktemp("tls") / "ca.pem"
        docker("cp", f"{machine.name}:{certificate}", str(machine.cafile))
        yield machine


@pytest.fixture(scope="module")
def units(
    server_image: str, template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Machine, dict[str, list[str]]]]:
    """A machine with every server project's units of the array copied there (not installed),
    and their paths by project."""
    with booted(server_image, "server-array-units", 8000) as name:
        machine = Machine(name, {}, "", "")
        for number, answers in enumerate(COMBINATIONS):
            machine.units[combination_id(answers)] = copy_units(
                machine, template, tmp_path_factory, answers, f"/srv/units/{number}"
            )
        yield machine, machine.units


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


def verify(machine: Machine, units: list[str]) -> None:
    """systemd-analyze verify warns, exiting 0, on an unknown key or a bad value: any output at
    all is a finding."""
    verified = machine.run("systemd-analyze", "verify", *units, check=False)
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")


def rate(machine: Machine, units: list[str]) -> None:
    """systemd-analyze's exposure rating, 0 (locked down) to 10 (unprotected), at most 2.0 for
    the app and its migration."""
    for unit in units:
        if unit.endswith(".service"):
            rated = machine.run("systemd-analyze", "security", "--offline=yes", unit).stdout
            exposure = float(re.findall(r"Overall exposure level for \S+: ([0-9.]+)", rated)[0])
            assert exposure <= 2.0, rated


# --- The covering set ----------------------------------------------------------------------------


def test_the_installed_projects_hold_every_answer_that_changes_what_the_machine_runs() -> None:
    """Each value of each of SERVER_GROUPS that the array's server projects this machine can
    run hold is in an installed project."""
    array = [
        answers_of(row)
        for row in covering_array().rows
        if "server" in (row["deploy_targets"] or []) and installable_here(row)
    ]
    for group in SERVER_GROUPS:
        held = [{tuple(a.get(name) for name in group) for a in each} for each in (PROJECTS, array)]
        assert held[0] == held[1], group


# --- The units, statically -----------------------------------------------------------------------


@pytest.mark.parametrize("unit_set", UNIT_SETS)
def test_units_verify_without_a_word(
    units: tuple[Machine, dict[str, list[str]]], unit_set: str
) -> None:
    machine, paths = units
    verify(machine, paths[unit_set])


@pytest.mark.parametrize("unit_set", UNIT_SETS)
def test_services_expose_little(units: tuple[Machine, dict[str, list[str]]], unit_set: str) -> None:
    machine, paths = units
    rate(machine, paths[unit_set])


def test_the_installed_units_verify_without_a_word_and_expose_little(machine: Machine) -> None:
    """The units as install.sh installed them, the programs they run real."""
    verify(machine, machine.units["installed"])
    rate(machine, machine.units["installed"])


# --- The installed projects ----------------------------------------------------------------------


@dataclass(frozen=True)
class FirstStart:
    """What the first requests found, and the state of the units around them."""

    before: tuple[str, str]
    statuses: list[int]
    after: str
    migration_result: str
    migrated_at: int
    started_at: int
    migration_runs: int
    state_files: list[str]


@pytest.fixture(scope="module")
def first_start(machine: Machine) -> FirstStart:
    """The first requests after the install (tests run in any order: they all take this)."""
    slug = machine.slug
    before = (
        machine.show(f"{slug}.socket", "ActiveState"),
        machine.show(f"{slug}.service", "ActiveState"),
    )
    paths = ["/health"] + (["/items"] if machine.answers["database"] != "none" else [])
    statuses = [machine.get(path) for path in paths]  # the table the migration made
    migration = f"{slug}-migrate.service"
    migrated = migrates(machine.answers)
    return FirstStart(
        before=before,
        statuses=statuses,
        after=machine.show(f"{slug}.service", "ActiveState"),
        migration_result=machine.show(migration, "Result") if migrated else "",
        migrated_at=int(machine.show(migration, "ExecMainExitTimestampMonotonic"))
        if migrated
        else 0,
        started_at=int(machine.show(f"{slug}.service", "ExecMainStartTimestampMonotonic")),
        migration_runs=sum(line.startswith("Finished ") for line in machine.journal(migration)),
        # Where the state directory keeps SQLite's file for the dynamic user.
        state_files=machine.sh(f"ls /var/lib/private/{slug} 2>/dev/null || true").split(),
    )


def test_the_socket_starts_the_app_on_the_first_request_after_the_migration(
    machine: Machine, first_start: FirstStart
) -> None:
    assert first_start.before == ("active", "inactive")
    assert set(first_start.statuses) == {200}
    assert first_start.after == "active"
    if migrates(machine.answers):
        assert first_start.migration_result == "success"
        assert 0 < first_start.migrated_at < first_start.started_at
        assert first_start.migration_runs == 1
    else:
        assert first_start.migration_runs == 0
    if machine.answers["database"] == "sqlite":
        assert f"{machine.slug.replace('-', '_')}.db" in first_start.state_files


class RequestStream:
    """GET /health through the proxy or on the socket, one new connection after another, until
    stopped (at most `limit` requests): the statuses, or the error instead of one."""

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
    main = machine.show(f"{machine.slug}.service", "MainPID")
    return {int(pid) for pid in machine.sh(f"pgrep -P {main} || true").split()}


def uvicorn_processes(machine: Machine) -> int:
    """How many Uvicorn processes serve: Gunicorn's workers, or the one."""
    return len(worker_pids(machine)) if workers(machine.answers) else 1


def assert_none_lost(machine: Machine, results: list[int | str], stopping: int) -> None:
    """While Uvicorn processes stop, the socket holds new connections: none is refused. A
    connection that a stopping process accepted before its request arrived is closed unanswered
    (Uvicorn closes those at shutdown): a proxy on the machine sends that request again, so
    behind one every request is answered; on the socket itself, at most one is lost a stopping
    process, Gunicorn's workers included."""
    failed = [result for result in results if result != 200]
    assert len(failed) <= (0 if in_front(machine.answers) else stopping), failed[:5]
    assert not [result for result in failed if "Refused" in str(result)], failed[:5]


@applies(workers)
def test_reload_replaces_the_workers_under_load_and_loses_no_request_behind_a_proxy(
    machine: Machine, first_start: FirstStart
) -> None:
    slug = machine.slug
    assert machine.get("/health") == 200
    main, before = machine.show(f"{slug}.service", "MainPID"), worker_pids(machine)

    def ready() -> int:
        return sum("Application startup complete" in line for line in machine.journal(slug))

    started = ready()
    with RequestStream(machine) as stream:
        time.sleep(1)
        machine.run("systemctl", "reload", f"{slug}.service")
        # Until the new workers serve and the old ones are gone.
        deadline = time.monotonic() + 60
        while ready() < started + len(before) or not worker_pids(machine).isdisjoint(before):
            assert time.monotonic() < deadline, "the workers were not replaced"
            time.sleep(0.2)
        time.sleep(1)
    assert machine.show(f"{slug}.service", "MainPID") == main
    assert len(worker_pids(machine)) == len(before)
    assert len(stream.results) > 20
    assert_none_lost(machine, stream.results, len(before))


def shutdowns(machine: Machine) -> int:
    """How many times the app (each worker) finished its shutdown."""
    return sum("Application shutdown complete" in line for line in machine.journal(machine.slug))


def test_stop_is_graceful_and_the_socket_starts_it_again(
    machine: Machine, first_start: FirstStart
) -> None:
    """Requests that arrive while the app stops wait on the socket, which starts it again."""
    slug = machine.slug
    assert machine.get("/health") == 200
    finished, stopping = shutdowns(machine), uvicorn_processes(machine)
    with RequestStream(machine) as stream:
        time.sleep(1)
        machine.run("systemctl", "stop", f"{slug}.service")
        stopped = machine.show(f"{slug}.service", "Result")
        time.sleep(1)
    assert stopped == "success"  # exited by itself within TimeoutStopSec, not killed
    assert shutdowns(machine) > finished
    assert_none_lost(machine, stream.results, stopping)
    assert machine.show(f"{slug}.service", "ActiveState") == "active"


def test_a_restart_refuses_no_connection(machine: Machine, first_start: FirstStart) -> None:
    """While the app restarts (a new main process: Gunicorn, or the one Uvicorn process on the
    socket), the socket holds the new connections."""
    slug = machine.slug
    assert machine.get("/health") == 200
    main = machine.show(f"{slug}.service", "MainPID")
    program = "gunicorn" if workers(machine.answers) else "uvicorn"
    assert machine.sh(f"cat /proc/{main}/comm").strip() == program
    stopping = uvicorn_processes(machine)
    with RequestStream(machine) as stream:
        time.sleep(1)
        machine.run("systemctl", "restart", f"{slug}.service")
        time.sleep(2)
    assert machine.show(f"{slug}.service", "MainPID") != main
    assert len(stream.results) > 20
    assert_none_lost(machine, stream.results, stopping)


def test_the_access_lines_are_in_the_journal_with_the_clients_address(
    machine: Machine, first_start: FirstStart
) -> None:
    assert machine.get("/health?from=journal") == 200
    access = machine.access_lines()
    assert access and access[-1]["route"] == "/health" and access[-1]["status"] == 200
    # The client as nginx or Caddy saw it (the Docker host), forwarded; or the socket's peer:
    # not the proxy's loopback address.
    assert access[-1]["client"] not in {"127.0.0.1", None}


@applies(on_the_socket)
def test_a_forwarded_client_address_counts_only_from_the_proxys_addresses(
    machine: Machine, first_start: FirstStart
) -> None:
    """A request from 127.0.0.1 on the machine naming another client in X-Forwarded-For: the
    app logs that client where 127.0.0.1 is an external proxy's address (FORWARDED_ALLOW_IPS),
    and the request's own address otherwise (no proxy: nobody's header is believed)."""
    forwarded = "203.0.113.7"
    sent = (
        "import urllib.request as r; r.urlopen(r.Request('http://127.0.0.1:8000/health',"
        f" headers={{'X-Forwarded-For': '{forwarded}'}}))"
    )
    machine.run("python3", "-c", sent)
    access = machine.access_lines()
    trusted = machine.answers["reverse_proxy"] == "external" and "127.0.0.1" in machine.answers[
        "forwarded_allow_ips"
    ].replace(" ", "").split(",")
    # The socket takes IPv6 and IPv4 on one address: an IPv4 client shows as ::ffff:a.b.c.d.
    own = "::ffff:127.0.0.1"
    assert access and access[-1]["client"] == (forwarded if trusted else own), access


@applies(in_front)
def test_https_is_served_with_the_certificate_made_on_the_machine(
    machine: Machine, first_start: FirstStart
) -> None:
    """nginx serves the certificate install.sh made, Caddy one from its local CA: trusted as the
    only authority, and by nothing else."""
    assert machine.url.startswith("https://")
    assert machine.get("/health") == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(machine.url + "/health", timeout=30)


@applies(postgresql)
def test_items_are_stored_in_the_machines_postgresql_at_the_head_revision(
    machine: Machine, first_start: FirstStart
) -> None:
    name = f"stored on {machine.answers['reverse_proxy']}"
    created = machine.request("/items", {"name": name})
    assert created[0] == 201 and created[1]["name"] == name
    assert machine.request("/items") == (200, [created[1]])
    # The row is in the machine's PostgreSQL, in the database the README had made, at the head
    # revision where there are migrations.
    psql = f"runuser -u postgres -- psql -At -d {machine.slug.replace('-', '_')} -c"
    assert machine.sh(f"cd / && {psql} 'SELECT name FROM items'").split("\n")[0] == name
    if machine.answers.get("migrations"):
        assert machine.sh(f"cd / && {psql} 'SELECT version_num FROM alembic_version'").strip()


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


# --- A public name: the certificate from an ACME CA ----------------------------------------------

# The array's server projects with a public name and a proxy on the machine, one per proxy:
# nginx's certificate obtained by certbot as the README says, Caddy's by Caddy.
ACME_PROJECTS = [
    lockable_here(answers)
    for answers in run_for_real(
        "server", [("reverse_proxy",)], lambda row: public_domain(row) and in_front(row)
    )
]


@dataclass
class AcmeCA:
    """pebble, a real ACME CA, and pebble-challtestsrv, its DNS, on a network of their own:
    every name resolves to `address`, where the machine runs. pebble's directory is served
    with a certificate of `ca`, which the machine trusts as it trusts Let's Encrypt's. Each
    order is validated anew, as a renewal is: Let's Encrypt reuses a validation for 30 days,
    and renewals come after 60."""

    network: str
    address: str
    ca: TestCA
    pebble: str  # its container
    management_port: int

    @property
    def run_args(self) -> tuple[str, ...]:
        return ("--network", self.network, "--ip", self.address)

    def point_at_it(self, answers: Answers, name: str) -> None:
        """What an administrator sets to use this CA instead of Let's Encrypt: the CA's root in
        the system's trust store, and certbot's settings file (with the account's e-mail and
        the terms agreed, which certbot otherwise asks for), or Caddy's global `acme_ca`."""
        files = {"/usr/local/share/ca-certificates/acme-test.crt": self.ca.pem.decode()}
        if nginx(answers):
            files["/etc/letsencrypt/cli.ini"] = (
                f"server = {DIRECTORY}\nemail = ops@example.com\n"
                "agree-tos = true\nnon-interactive = true\n"
            )
        else:
            files["/tmp/acme-options"] = f"{{\n\tacme_ca {DIRECTORY}\n}}\n"
        with tempfile.TemporaryDirectory() as here:
            for number, (path, text) in enumerate(files.items()):
                (Path(here) / str(number)).write_text(text)
                docker("exec", name, "mkdir", "-p", str(Path(path).parent))
                docker("cp", f"{here}/{number}", f"{name}:{path}")
        docker("exec", name, "update-ca-certificates")
        if not nginx(answers):
            # Global options come first in a Caddyfile.
            caddyfile = "/etc/caddy/Caddyfile"
            script = f"cat /tmp/acme-options {caddyfile} > /tmp/c && cat /tmp/c > {caddyfile}"
            docker("exec", name, "sh", "-c", script)

    def root(self) -> bytes:
        """The root pebble signs with (a new one at each start), once it answers."""
        return pebble_root_at(self.management_port, self.ca, self.logs)

    def logs(self) -> str:
        return docker("logs", self.pebble, check=False).stderr


DIRECTORY = "https://pebble:14000/dir"


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeCA]:
    require_engine()
    directory = tmp_path_factory.mktemp("acme")
    image = build_tools_image(tmp_path_factory.mktemp("pebble-image"))
    ca = TestCA()
    write_pebble_files(directory, ca)
    subnet = free_subnet()
    prefix = subnet.rsplit(".", 1)[0]
    network = unique_name("tt-acme")
    docker("network", "create", "--subnet", subnet, "--ip-range", f"{prefix}.128/25", network)
    dns, pebble = unique_name("tt-challtestsrv"), unique_name("tt-pebble")
    try:
        docker(
            "run", "-d", "--name", dns, "--network", network, "--network-alias", "challtestsrv",
            image, *challtestsrv_command(f"{prefix}.10"),
        )  # fmt: skip
        docker(
            "run", "-d", "--name", pebble, "--network", network, "--network-alias", "pebble",
            "-e", "PEBBLE_VA_NOSLEEP=1", "-e", "PEBBLE_AUTHZREUSE=0",
            "-v", f"{directory}:/acme-test:ro", "-p", "127.0.0.1::15000", image, *PEBBLE_COMMAND,
        )  # fmt: skip
        port = int(docker("port", pebble, "15000/tcp").stdout.splitlines()[0].rsplit(":", 1)[1])
        found = AcmeCA(network, f"{prefix}.10", ca, pebble, port)
        found.root()  # pebble answers
        yield found
    finally:
        docker("rm", "-f", dns, pebble, check=False)
        docker("network", "rm", network, check=False)
        docker("rmi", "-f", image, check=False)


@pytest.mark.parametrize("answers", ACME_PROJECTS, ids=combination_id)
def test_a_public_name_is_served_with_the_certificate_of_an_acme_ca(
    answers: Answers,
    acme: AcmeCA,
    server_image: str,
    template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """As the README says: nginx's certificate, which certbot obtains through the running nginx
    before the first install.sh, and renews through it while it serves (its timer's `certbot
    renew`), the renewed one served after the deploy hook's reload; Caddy's, which Caddy
    obtains by itself. Requests trust the CA's root alone."""
    with installed(
        server_image,
        template,
        tmp_path_factory,
        answers,
        acme.run_args,
        prepare=lambda name: acme.point_at_it(answers, name),
    ) as machine:
        port = int(machine.url.rsplit(":", 1)[1])
        domain = answers["domain"]
        root = acme.root()
        deadline = time.monotonic() + 90  # Caddy obtains it in the background
        while True:
            try:
                first = https_get(port, domain, root, "/health")
                break
            except (OSError, ssl.SSLError):
                assert time.monotonic() < deadline, machine.sh("journalctl -u caddy -n 40")
                time.sleep(1)
        assert first.status == 200
        if nginx(answers):
            # What certbot's timer runs, at once (unattended, it first sleeps up to 8 minutes to
            # spread the CA's load) and forced (the certificate is new).
            renew = ("certbot", "renew", "--force-renewal", "--no-random-sleep-on-renew")
            renewed = machine.run(*renew, check=False)
            assert renewed.returncode == 0, renewed.stdout + renewed.stderr
            second = https_get(port, domain, root, "/health")
            assert second.status == 200
            assert second.cert.serial_number != first.cert.serial_number
