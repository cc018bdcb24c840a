"""Day-two operability, proven on running compose stacks.

Each stack (a process model and a proxy answer each, metrics on where they matter) comes up
healthy with every container locked down; its logs, as `docker compose logs` prints them, are
JSON line by line, at LOG_LEVEL; a request's id reaches the response, its access line and an
application line of the same request, and a malformed one is replaced; CORS preflights are
allowed or denied by CORS_ORIGINS, and a malformed origin stops the app naming the setting;
writes outside the allowed paths fail; /metrics stays off the public route; and a real
Prometheus server scraping the workers stack counts exactly the requests sent, across a worker
killed and replaced.
"""

import contextlib
import json
import re
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.combinations import Answers
from tests.docker import compose_stack, container, docker, require_engine, unique_name
from tests.project import free_port, http_get, render, stop, wait_for_http
from tests.tls import TestCA, http_get_as

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("operability")]

STACKS: dict[str, Answers] = {
    "workers-direct": {
        "layout": "package",
        "python_version": "3.13",
        "process_model": "workers",
        "workers": 2,
        "reverse_proxy": "none",
        "database": "sqlite",
        "migrations": True,
        "metrics": "prometheus",
    },
    "single-traefik": {
        "layout": "single_file",
        "python_version": "3.12",
        "process_model": "single",
        "reverse_proxy": "traefik",
        "database": "postgresql",
        "migrations": True,
        "metrics": "prometheus",
    },
    "workers-nginx": {
        "layout": "package",
        "python_version": "3.13",
        "process_model": "workers",
        "workers": 2,
        "reverse_proxy": "nginx",
        "database": "none",
        "metrics": "prometheus",
    },
    "single-external": {
        "layout": "single_file",
        "python_version": "3.13",
        "process_model": "single",
        "reverse_proxy": "external",
        "database": "sqlite",
        "migrations": False,
        "metrics": "none",
    },
}
# The proxy stacks serve HTTPS for the default domain, localhost: Traefik with the self-signed
# certificate the copy writes, nginx with one the tests make. TLS itself is proven in
# test_https; here the client only needs to get through.
TLS_PROXIES = {"traefik", "nginx"}
UNVERIFIED = ssl._create_unverified_context()
ALLOWED_ORIGIN = "https://app.example.com"
LOGGED_MESSAGE = "handled a logged request"
# Appended to the rendered app before the build: a route that writes an application log line
# while it handles the request (the template's routes log nothing per request).
LOGGED_ROUTE = f"""

import logging as _logging  # noqa: E402


@app.get("/logged")
async def logged() -> dict[str, str]:
    _logging.getLogger("tests").info("{LOGGED_MESSAGE}")
    return {{"status": "ok"}}
"""
# Run in a workers container: SIGKILL a worker (a child of the supervisor, PID 1) whose metric
# files (PROMETHEUS_MULTIPROC_DIR, one per process) count requests to the route in argv[1].
KILL_A_WORKER_THAT_COUNTED = """
import os, signal, sys
for pid in filter(str.isdigit, os.listdir("/proc")):
    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    command = open(f"/proc/{pid}/cmdline", "rb").read()
    counts = f"/run/metrics/counter_{pid}.db"
    if stat[1] == "1" and b"spawn_main" in command and os.path.exists(counts):
        if sys.argv[1].encode() in open(counts, "rb").read():
            os.kill(int(pid), signal.SIGKILL)
            print(pid)
            break
"""


@dataclass(frozen=True)
class Stack:
    key: str
    answers: Answers
    project: Path
    name: str
    port: int
    http_port: int | None = None  # the proxy's plain-HTTP port, where it terminates TLS

    @property
    def tls(self) -> bool:
        return self.answers["reverse_proxy"] in TLS_PROXIES

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return docker("compose", "-p", self.name, *args, cwd=self.project, check=check)

    def container(self, service: str) -> str:
        return f"{self.name}-{service}-1"

    def services(self) -> list[str]:
        return self.compose("ps", "--services").stdout.split()

    def log_lines(self, service: str = "app") -> list[str]:
        output = self.compose("logs", "--no-log-prefix", "--no-color", service).stdout
        return [line for line in output.splitlines() if line.strip()]


@pytest.fixture(scope="module", params=list(STACKS))
def stack(
    request: pytest.FixtureRequest, template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    require_engine()
    key: str = request.param
    answers = {**STACKS[key], "project_slug": unique_name(f"tt-{key}")}
    project = render(template, tmp_path_factory.mktemp(key), answers, tasks=True)
    code = project / ("app/main.py" if answers["layout"] == "package" else "main.py")
    code.write_text(code.read_text() + LOGGED_ROUTE)
    port = free_port()
    http_port = free_port() if answers["reverse_proxy"] in TLS_PROXIES else None
    settings = [f"APP_PORT={port}", f"CORS_ORIGINS={ALLOWED_ORIGIN}"]
    if answers["reverse_proxy"] in TLS_PROXIES:
        settings += [f"HTTPS_PORT={port}", f"HTTP_PORT={http_port}"]
    if answers["reverse_proxy"] == "nginx":
        TestCA().issue("localhost").write(project / "certs")
    with (project / ".env").open("a") as env:
        env.write("".join(f"{line}\n" for line in settings))
    # A first health check may fail while the machine is busy: only a pass counts.
    (project / "compose.override.yaml").write_text(
        "services:\n  app:\n    healthcheck:\n      start_period: 300s\n"
    )
    try:
        with compose_stack(project) as name:
            built = Stack(key, answers, project, name, port, http_port)
            status = wait_for_http(
                built.url("/health"), timeout=120, ask=lambda url: int(get(url).status)
            )
            assert status == 200
            yield built
    finally:
        docker("rmi", "-f", f"{answers['project_slug']}:latest", check=False)


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Any:
    """One request, as the proxy's domain (localhost) if it goes through TLS."""
    tls = url.startswith("https:")
    headers = {**({"Host": "localhost"} if tls else {}), **(headers or {})}
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10, context=UNVERIFIED) as response:
            return response
    except urllib.error.HTTPError as error:
        return error


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    """Every line parsed as one JSON object; a line that is not fails the test."""
    parsed = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"a log line is not JSON: {line!r}") from None
        assert isinstance(entry, dict), line
        parsed.append(entry)
    return parsed


def lines_with_request_id(stack: Stack, request_id: str, expected: int) -> list[dict[str, Any]]:
    """The app's log entries carrying the id, once at least `expected` of them are written."""
    deadline = time.monotonic() + 15
    while True:
        found = [e for e in json_lines(stack.log_lines()) if e.get("request_id") == request_id]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


# --- Logs ----------------------------------------------------------------------------------


def test_every_log_line_is_json_the_supervisors_included(stack: Stack) -> None:
    entries = json_lines(stack.log_lines())
    messages = [entry["message"] for entry in entries]
    assert any("Application startup complete" in message for message in messages), messages
    if stack.answers["process_model"] == "workers":
        assert any(message.startswith("Started parent process") for message in messages)


def test_request_id_is_on_the_response_the_access_line_and_an_app_line(stack: Stack) -> None:
    request_id = f"test-{uuid.uuid4().hex}"
    response = get(stack.url("/logged"), {"X-Request-ID": request_id})
    assert response.status == 200
    assert response.headers["X-Request-ID"] == request_id
    found = lines_with_request_id(stack, request_id, expected=2)
    access = [entry for entry in found if entry["logger"].endswith(".access")]
    assert len(access) == 1, f"one access line, not {found}"
    assert {key: access[0][key] for key in ("method", "route", "status")} == {
        "method": "GET",
        "route": "/logged",
        "status": 200,
    }
    assert access[0]["duration_ms"] >= 0
    assert access[0]["client"], "the client's address, as the proxy headers resolve it"
    assert [entry["message"] for entry in found if entry not in access] == [LOGGED_MESSAGE]


def test_a_malformed_request_id_is_replaced(stack: Stack) -> None:
    malformed = f"not valid {uuid.uuid4().hex}"
    response = get(stack.url("/logged"), {"X-Request-ID": malformed})
    replaced = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", replaced), replaced
    assert len(lines_with_request_id(stack, replaced, expected=2)) == 2
    assert all(malformed not in line for line in stack.log_lines())


def test_log_level_warning_silences_info_lines_of_every_logger(stack: Stack) -> None:
    if stack.key != "workers-direct":
        pytest.skip("one image suffices: the level is read the same way in every answer")
    image = f"{stack.answers['project_slug']}:latest"
    run = ["-p", "127.0.0.1::8000", "--env-file", str(stack.project / ".env")]
    with container(image, *run, "-e", "LOG_LEVEL=WARNING") as name:
        mapping = docker("port", name, "8000/tcp").stdout.split()[0]
        assert wait_for_http(f"http://{mapping}/health", timeout=300) == 200
        assert http_get(f"http://{mapping}/items/1")[0] == 404
        docker("stop", name)
        output = docker("logs", name)
    lines = [line for line in (output.stdout + output.stderr).splitlines() if line.strip()]
    levels = {entry["level"] for entry in json_lines(lines)}
    assert levels <= {"WARNING", "ERROR", "CRITICAL"}, lines


def test_http_redirects_to_https_on_the_published_port(stack: Stack) -> None:
    """Locally (localhost) the proxy's ports are rarely 80 and 443: the redirect keeps the one
    HTTPS is published on, as a browser needs it."""
    if stack.http_port is None:
        pytest.skip("no proxy terminating TLS in the compose file")
    status, headers = http_get_as(stack.http_port, f"localhost:{stack.http_port}", "/health?x=1")
    assert status in {301, 308}
    assert headers["Location"] == f"https://localhost:{stack.port}/health?x=1"


# --- CORS ----------------------------------------------------------------------------------


def preflight(stack: Stack, origin: str) -> Any:
    headers = {"Origin": origin, "Access-Control-Request-Method": "GET"}
    return get(stack.url("/health"), headers, method="OPTIONS")


def test_cors_preflight_from_an_allowed_origin_succeeds(stack: Stack) -> None:
    response = preflight(stack, ALLOWED_ORIGIN)
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN


def test_cors_preflight_from_another_origin_gets_no_cors_headers(stack: Stack) -> None:
    response = preflight(stack, "https://elsewhere.example.com")
    assert response.headers.get("Access-Control-Allow-Origin") is None


def test_a_malformed_cors_origin_stops_the_app_naming_the_setting(stack: Stack) -> None:
    if stack.key != "workers-direct":
        pytest.skip("one image suffices: settings are read the same way in every answer")
    image = f"{stack.answers['project_slug']}:latest"
    bad = "CORS_ORIGINS=https://app.example.com,app.example.com/"
    env = ["--env-file", str(stack.project / ".env"), "-e", bad]
    result = docker("run", "--rm", *env, image, check=False, timeout=300)
    assert result.returncode != 0
    assert "CORS_ORIGINS: 'app.example.com/' is not an origin" in result.stdout + result.stderr


# --- Lock-down -----------------------------------------------------------------------------


def test_every_container_is_locked_down(stack: Stack) -> None:
    """(The stack came up healthy: `compose up --wait` waited for it.)"""
    for service in stack.services():
        state = json.loads(docker("inspect", stack.container(service)).stdout)[0]
        host = state["HostConfig"]
        assert host["ReadonlyRootfs"] is True, service
        assert host["CapDrop"] == ["ALL"], service
        assert "no-new-privileges:true" in host["SecurityOpt"], service
        assert host["PidsLimit"] and host["PidsLimit"] > 0, service
        assert host["Memory"] > 0, service
        assert state["State"]["Running"], service
        if service == "proxy":  # it may not take the app's cores
            assert host["NanoCpus"] == 10**9


WRITE = """
import sys
for path in sys.argv[1:]:
    try:
        open(path, "w").close()
        print(path, "written")
    except OSError as error:
        print(path, "refused", error.errno)
"""


def test_the_app_writes_only_where_it_must(stack: Stack) -> None:
    paths = ["/srv/new-file", "/etc/new-file", "/tmp/new-file"]
    if stack.answers["database"] == "sqlite":
        paths.append("/srv/data/new-file")
    result = stack.compose("exec", "-T", "app", "python", "-c", WRITE, *paths).stdout
    assert "/srv/new-file refused 30" in result, result  # EROFS: read-only file system
    assert "/etc/new-file refused" in result, result
    assert "/tmp/new-file written" in result, result
    if stack.answers["database"] == "sqlite":
        assert "/srv/data/new-file written" in result, result


def test_the_other_services_cannot_write_their_root_filesystem(stack: Stack) -> None:
    # PostgreSQL runs as its own user: its home directory is where it could write otherwise.
    writable_but_for_read_only = {"db": "/var/lib/postgresql/new-file"}
    for service in set(stack.services()) - {"app"}:
        path = writable_but_for_read_only.get(service, "/new-file")
        result = stack.compose("exec", "-T", service, "touch", path, check=False)
        assert result.returncode != 0, service
        assert "Read-only file system" in result.stderr + result.stdout, service


# --- Metrics -------------------------------------------------------------------------------


def test_metrics_are_not_served_through_the_proxy(stack: Stack) -> None:
    if stack.answers["metrics"] != "prometheus" or stack.answers["reverse_proxy"] == "none":
        pytest.skip("no metrics, or no proxy in the compose file")
    if stack.answers["reverse_proxy"] == "external":
        pytest.skip("the external proxy is the user's")
    assert get(stack.url("/metrics")).status == 404
    scrape = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())"
    inside = stack.compose("exec", "-T", "app", "python", "-c", scrape).stdout
    assert "http_requests_total" in inside


@contextlib.contextmanager
def prometheus(target: str, workdir: Path) -> Iterator[str]:
    """Debian's Prometheus server scraping `target` every 2 seconds; yields its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus server (apt-get install prometheus)")
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "2s", "scrape_timeout": "2s"},
                "scrape_configs": [{"job_name": "app", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        # It listens before it is ready: /-/ready answers 503 while its storage opens.
        deadline = time.monotonic() + 120
        while (answer := wait_for_http(f"{url}/-/ready", timeout=120, process=server)) != 200:
            assert time.monotonic() < deadline, f"Prometheus still answers {answer} on /-/ready"
            time.sleep(0.2)
        yield url
    finally:
        stop(server)
        log.close()


def scraped_total(prometheus_url: str, query: str) -> float | None:
    url = f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    status, body = http_get(url)
    assert status == 200, body
    result = json.loads(body)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def wait_for_total(prometheus_url: str, query: str, expected: int) -> None:
    """Until Prometheus holds `expected`: on a busy machine a scrape can take a while or fail
    (the target's last error is in the message)."""
    deadline = time.monotonic() + 120
    while (total := scraped_total(prometheus_url, query)) != expected:
        if time.monotonic() > deadline:
            targets = json.loads(http_get(f"{prometheus_url}/api/v1/targets")[1])
            health = [
                (target["health"], target["lastError"])
                for target in targets["data"]["activeTargets"]
            ]
            raise AssertionError(f"Prometheus holds {total}, not {expected}; target: {health}")
        time.sleep(0.5)


def test_prometheus_scrapes_exactly_the_requests_sent_across_a_killed_worker(
    stack: Stack, tmp_path: Path
) -> None:
    """A worker killed with SIGKILL leaves its counter files: what it answered stays counted.

    A worker counts a request just after its response goes out, so the client may read the
    answer before it is counted: the kill waits until Prometheus holds every answered request.
    """
    if stack.key != "workers-direct":
        pytest.skip("the workers stack published without a proxy")
    requests = 40
    route = "/items/{item_id}"
    query = f'sum(http_requests_total{{route="{route}"}})'
    with prometheus(f"127.0.0.1:{stack.port}", tmp_path) as server:
        for number in range(requests // 2):
            assert http_get(stack.url(f"/items/{number + 1000}"), timeout=120)[0] == 404
        wait_for_total(server, query, requests // 2)
        kill = ["exec", "-T", "app", "python", "-c", KILL_A_WORKER_THAT_COUNTED, route]
        killed = stack.compose(*kill).stdout.strip()
        assert killed, "no worker had counted a request"
        replaced = f"Child process [{killed}] died"
        deadline = time.monotonic() + 180
        while not any(replaced in line for line in stack.log_lines()):
            assert time.monotonic() < deadline, "the supervisor did not replace the worker"
            time.sleep(1)
        # A request the client gave up on may still be counted: wait long rather than retry.
        for number in range(requests // 2, requests):
            assert http_get(stack.url(f"/items/{number + 1000}"), timeout=120)[0] == 404
        wait_for_total(server, query, requests)
