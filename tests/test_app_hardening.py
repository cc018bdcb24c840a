"""What a generated app refuses, shown on a real server: bodies over the limit, unsafe settings.

The app refuses a body over MAX_REQUEST_BODY_BYTES with 413 before reading it, whether its
length is declared or it comes chunked: a 100 MB one leaves the server's memory where it was.
Each bundled proxy carries the same limit, rendered from the one name in includes/server.jinja,
and refuses one byte more with 413 in a running compose stack.
CORS credentials for any origin stop the app at start, naming both settings. A route that
crashes still answers with its request id, in one access line.
"""

import http.client
import json
import re
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests import docker
from tests.bodies import MIB, post_body, rss_mib
from tests.covering import compose_proxies
from tests.edge import Stack, nginx_stack, render_stack, set_env
from tests.project import free_port, install, render, run, stop, tool_env, wait_for_http
from tests.tls import TestCA, https_connection

LIMIT = 1024 * 1024
# What a 100 MB request may add to the server's memory: far less than the body, more than noise.
GROWTH_BOUND_MIB = 16
# Appended to the rendered app: a route with a bug.
CRASH_ROUTE = """

@app.get("/crash")
async def crash() -> None:
    raise RuntimeError("a bug")
"""


@dataclass(frozen=True)
class Project:
    path: Path
    venv: Path
    env: dict[str, str]

    def uvicorn(self, port: int) -> list[str]:
        """The server command as the image runs it (no prestart: migrated already)."""
        command = [str(self.venv / "uvicorn"), "app.main:app", "--port", str(port)]
        return [*command, "--log-config", "logging.json", "--no-access-log"]


@pytest.fixture(scope="module")
def project(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The default project (SQLite, migrations), installed and migrated."""
    answers = {"database": "sqlite"}
    path = render(template, tmp_path_factory.mktemp("hardening"), answers, tasks=True)
    venv = install(path, {"dependency_tool": "uv", "python_version": "3.13"})
    env = {"DATA_DIR": str(path / "data")}
    run([str(venv / "alembic"), "upgrade", "head"], path, **env)
    return Project(path, venv, env)


@dataclass(frozen=True)
class Server:
    port: int
    pid: int
    log: Path

    def lines_of(self, request_id: str) -> list[dict[str, object]]:
        """The JSON lines logged so far for one request."""
        lines = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [line for line in lines if line.get("request_id") == request_id]


@pytest.fixture(scope="module")
def server(project: Project) -> Iterator[Server]:
    """One Uvicorn process of the project, with a crashing route added; its JSON lines in `log`."""
    with (project.path / "app" / "main.py").open("a") as code:
        code.write(CRASH_ROUTE)
    port = free_port()
    log = project.path / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            project.uvicorn(port),
            cwd=project.path,
            env=tool_env(**project.env, PYTHONUNBUFFERED="1"),  # each line in the log at once
            stdout=output,
            text=True,
        )
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/health", process=process) == 200
        yield Server(port, process.pid, log)
    finally:
        stop(process)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_100_mb_body_is_refused_without_the_memory_growing(server: Server, chunked: bool) -> None:
    before = rss_mib(server.pid)
    assert post_body(server.port, "/items", 100 * MIB, chunked=chunked) == 413
    assert rss_mib(server.pid) - before < GROWTH_BOUND_MIB
    assert post_body(server.port, "/items", LIMIT, chunked=chunked) == 422  # read: no JSON


def test_each_proxy_carries_the_apps_limit(template: Path, tmp_path: Path) -> None:
    """The app's default and the three proxies' limits are one number."""
    found: dict[str, int] = {}
    for proxy in compose_proxies():
        answers = {"reverse_proxy": proxy, "domain": "api.example.com", "acme_email": "a@b.example"}
        project = render(template, tmp_path / proxy, answers)
        if proxy == "nginx":
            nginx_conf = (project / "nginx.conf").read_text()
            [size] = re.findall(r"client_max_body_size (\d+);", nginx_conf)
            found[proxy] = int(size)
        elif proxy == "traefik":
            http = yaml.safe_load((project / "traefik.yaml").read_text())["http"]
            assert "body-limit" in http["routers"]["app"]["middlewares"]
            found[proxy] = http["middlewares"]["body-limit"]["buffering"]["maxRequestBodyBytes"]
        else:
            caddyfile = (project / "Caddyfile").read_text()
            [size] = re.findall(r"request_body \{\s+max_size (\d+)\s+\}", caddyfile)
            found[proxy] = int(size)
        config = (project / "app" / "config.py").read_text()
        [default] = re.findall(r"max_request_body_bytes: PositiveInt = ([\d_]+)", config)
        found[f"app behind {proxy}"] = int(default.replace("_", ""))
    assert set(found.values()) == {LIMIT}, found


def test_credentials_for_any_origin_stop_the_server_at_start_naming_both_settings(
    project: Project,
) -> None:
    env = {**project.env, "CORS_ORIGINS": "*", "CORS_ALLOW_CREDENTIALS": "true"}
    started = subprocess.run(
        project.uvicorn(free_port()),
        cwd=project.path,
        env=tool_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0
    output = started.stdout + started.stderr
    assert "CORS_ORIGINS=* with CORS_ALLOW_CREDENTIALS=true" in output, output


def test_a_crash_answers_500_with_the_request_id_in_one_access_line_and_the_error_line(
    server: Server,
) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/crash", headers={"X-Request-ID": "crash-on-a-server"}
    )
    with pytest.raises(urllib.error.HTTPError) as answered:
        urllib.request.urlopen(request, timeout=10)
    assert answered.value.code == 500
    assert answered.value.headers["X-Request-ID"] == "crash-on-a-server"
    deadline = time.monotonic() + 10  # Uvicorn logs the error once the 500 is sent
    while len(lines := server.lines_of("crash-on-a-server")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    [access] = [line for line in lines if str(line["logger"]).endswith(".access")]
    assert (access["status"], access["route"]) == (500, "/crash")
    [error] = [line for line in lines if line["level"] == "ERROR"]
    assert "RuntimeError: a bug" in str(error["exception"])


@pytest.mark.docker
@pytest.mark.xdist_group("docker")
def test_a_container_refuses_a_100_mb_body_within_its_memory(project: Project) -> None:
    """The image as built and started: a 100 MB body, declared or chunked, gets 413, and the
    container's processes hold about what they held before (compose allows the app 192 MB)."""
    docker.require_engine()
    with (
        docker.image(project.path) as tag,
        docker.container(tag, "-p", "127.0.0.1::8000") as name,
    ):
        mapping = docker.docker("port", name, "8000/tcp").stdout.split()[0]
        port = int(mapping.rpartition(":")[2])
        assert wait_for_http(f"http://127.0.0.1:{port}/health", timeout=120) == 200
        before = sum(process.rss_kb for process in docker.processes(name)) / 1024
        statuses = [post_body(port, "/items", 100 * MIB, chunked=c) for c in (False, True)]
        after = sum(process.rss_kb for process in docker.processes(name)) / 1024
    assert statuses == [413, 413]
    assert after - before < GROWTH_BOUND_MIB, (before, after)


def post_over_https(stack: Stack, size: int) -> tuple[int, str | None]:
    """POST `size` bytes to /items through the stack's proxy: the status, and the request id
    (only the app sets one). Localhost's certificate is the proxy's own: not verified here."""
    if stack.trust:
        connection = https_connection(stack.https_port, stack.domain, stack.trust)
    else:
        raw = socket.create_connection(("127.0.0.1", stack.https_port), timeout=30)
        unverified = ssl._create_unverified_context()
        connection = http.client.HTTPConnection(stack.domain, stack.https_port, timeout=30)
        connection.sock = unverified.wrap_socket(raw, server_hostname=stack.domain)
    try:
        headers = {"Host": stack.domain, "Content-Type": "application/json"}
        connection.request("POST", "/items", body=b"x" * size, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, response.headers["X-Request-ID"]
    finally:
        connection.close()


@pytest.mark.docker
@pytest.mark.xdist_group("docker")
@pytest.mark.parametrize("proxy", compose_proxies())
def test_the_proxy_refuses_a_body_over_the_limit_before_the_app_sees_it(
    proxy: str, template: Path, tmp_path: Path
) -> None:
    """Through the compose stack, with the app's own limit raised out of the way: a body at
    the limit reaches the app (which reads it and answers, with its request id), one byte more
    is refused by the proxy with 413."""
    docker.require_engine()
    if proxy == "nginx":
        stack = nginx_stack(template, tmp_path / "project", TestCA(), database="sqlite")
    else:
        dest = tmp_path / "project"
        stack = render_stack(template, dest, proxy, b"", domain="localhost", database="sqlite")
    set_env(stack.project, MAX_REQUEST_BODY_BYTES=str(10 * LIMIT))
    try:
        stack.compose("up", "--build", "--detach")
        deadline = time.monotonic() + 180
        while True:
            try:
                if post_over_https(stack, 0)[0] == 422:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(1)
        at_limit, over = post_over_https(stack, LIMIT), post_over_https(stack, LIMIT + 1)
        app_log = stack.compose("logs", "--no-color", "app").stdout
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)
        docker.docker("rmi", "-f", f"{stack.slug}:latest", check=False)
    assert at_limit[0] == 422 and at_limit[1], "the app read it (it is no JSON)"
    assert over == (413, None), "the proxy answered it"
    assert '"status": 413' not in app_log
