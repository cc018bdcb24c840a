"""HTTPS at the edge, proven with real proxies, a real ACME CA and a verifying client.

Traefik and Caddy get their certificate from pebble (Debian's test-only ACME server) through a
real TLS-ALPN-01 or HTTP-01 challenge: pebble resolves the test domain with pebble-challtestsrv's
DNS inside a compose network, to the proxy. nginx serves a certificate made by the tests. The
client connects to 127.0.0.1 only, asks for the domain (SNI and Host), and verifies the chain
against the CA of the test and the hostname.
"""

import contextlib
import http.client
import json
import os
import shlex
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.hashes import SHA256

from tests.covering import acme_proxies, local_certificate_file_proxies
from tests.docker import (
    docker,
    established_peers,
    host_pid,
    require_engine,
    settled_health,
    unique_name,
)
from tests.edge import (
    CERT_SECONDS,
    PROBE_ROUTES,
    Stack,
    acme_stack,
    build_tools_image,
    nginx_stack,
    pebble_root,
    render_stack,
    set_env,
    wait_for_https,
)
from tests.project import free_port, render, wait_for_http
from tests.tls import Answer, TestCA, http_get_as, https_connection, negotiated_protocol

DOCKER_GROUP = pytest.mark.xdist_group("docker")
SPOOFED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "http"}

ASK_WHOAMI = f"""
import urllib.request
request = urllib.request.Request("http://127.0.0.1:8000/whoami", headers={SPOOFED!r})
print(urllib.request.urlopen(request).read().decode())
"""


@contextlib.contextmanager
def running(stack: Stack, ready: str = "/health", timeout: float = 120) -> Iterator[Stack]:
    """`up --build`, then wait for a verified HTTPS 200; `down -v` and rmi afterwards.

    (Not `--wait`: on a loaded machine the app may be marked unhealthy before it has started,
    and --wait gives up then; the verified 200 through the proxy is what counts.)
    """
    try:
        stack.compose("up", "--build", "--detach")
        wait_for_https(stack, ready, timeout)
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)
        docker("rmi", "-f", f"{stack.slug}:latest", check=False)


# --- nginx: certificate files the tests make -------------------------------------------------


@pytest.fixture(scope="module")
def test_ca() -> TestCA:
    return TestCA()


@pytest.mark.docker
@DOCKER_GROUP
def test_two_projects_proxy_stacks_run_side_by_side(
    template: Path, tmp_path: Path, test_ca: TestCA
) -> None:
    """Docker picks each edge subnet: no two generated projects ask for the same one."""
    require_engine()
    first = nginx_stack(template, tmp_path / "first", test_ca)
    second = nginx_stack(template, tmp_path / "second", test_ca)
    with running(first), running(second):
        for stack in (first, second):
            seen = json.loads(stack.get("/whoami", SPOOFED).body)
            assert seen["client"] not in {"203.0.113.9", *stack.address("proxy").split(), ""}
            assert seen["scheme"] == "https"


@pytest.mark.docker
@DOCKER_GROUP
def test_nginx_finds_a_recreated_app_without_a_restart(
    template: Path, tmp_path: Path, test_ca: TestCA
) -> None:
    require_engine()
    stack = nginx_stack(template, tmp_path / "project", test_ca)
    with running(stack):
        proxy = stack.container("proxy")
        started = docker("inspect", "-f", "{{.State.StartedAt}}", proxy).stdout
        before = stack.address("app")
        # Another container takes the freed address, so the new app container gets another.
        holder = unique_name("tt-holder")
        stack.compose("rm", "--stop", "--force", "app")
        network = f"{stack.name}_edge"
        docker(
            "run", "-d", "--name", holder, "--network", network, "debian:bookworm", "sleep", "300"
        )
        try:
            stack.compose("up", "--detach", "--no-deps", "app")
            after = stack.address("app")
            assert after != before
            answer = wait_for_https(stack, "/health", timeout=90)
        finally:
            docker("rm", "-f", holder, check=False)
        assert answer.status == 200
        assert docker("inspect", "-f", "{{.State.StartedAt}}", proxy).stdout == started
        assert settled_health(proxy) == "healthy", stack.logs()


# nginx's ports towards the app, narrowed so that the test needs few requests to use them all,
# and where the container shows them.
NARROW_PORTS = """\
services:
  proxy:
    sysctls:
      net.ipv4.ip_local_port_range: "40000 40127"
"""
PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


@pytest.mark.docker
@DOCKER_GROUP
def test_nginx_keeps_its_connections_to_the_app_under_sustained_load(
    template: Path, tmp_path: Path, test_ca: TestCA
) -> None:
    """A connection per request would leave each of nginx's ports to the app in TIME_WAIT for a
    minute: with 128 ports, 80 requests/s for 6 s would get 502 after the first 128. Kept-alive
    connections to the app need a handful."""
    require_engine()
    stack = nginx_stack(template, tmp_path / "project", test_ca)
    (stack.project / "compose.narrow-ports.yaml").write_text(NARROW_PORTS)
    stack.files.append("compose.narrow-ports.yaml")
    with running(stack):
        ports = docker("exec", stack.container("proxy"), "cat", PORT_RANGE).stdout.split()
        assert ports == ["40000", "40127"], "nginx has the narrowed ports"
        statuses: list[int] = []
        connection = https_connection(stack.https_port, stack.domain, stack.trust)
        try:
            for _ in range(480):
                started = time.monotonic()
                connection.request("GET", "/health", headers={"Host": stack.domain})
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
                time.sleep(max(0.0, 1 / 80 - (time.monotonic() - started)))
        finally:
            connection.close()
    assert statuses.count(200) == len(statuses), f"statuses: {sorted(set(statuses))}"


@pytest.mark.docker
@DOCKER_GROUP
def test_nginx_serves_the_given_certificate_and_a_reload_keeps_requests_in_flight(
    template: Path, tmp_path: Path, test_ca: TestCA
) -> None:
    require_engine()
    stack = nginx_stack(template, tmp_path / "project", test_ca)
    set_env(stack.project, ROOT_PATH="/api")
    with running(stack, "/api/health"):
        first = stack.get("/api/health")
        assert first.status == 200
        assert_https_edge(stack, first)
        assert_behind_the_prefix(stack)
        assert_the_proxy_lets_go_of_idle_connections_first(stack, "/api/health")
        # From any address but the proxy's (here the app's own loopback) the headers are ignored.
        direct = stack.compose("exec", "-T", "app", "python", "-c", ASK_WHOAMI).stdout
        assert json.loads(direct)["client"] == "127.0.0.1"
        assert json.loads(direct)["scheme"] == "http"

        # A renewed certificate: swap the files, reload; the request in flight completes.
        connection = https_connection(stack.https_port, stack.domain, stack.trust)
        connection.request("GET", "/api/slow", headers={"Host": stack.domain})
        response = connection.getresponse()
        assert response.readline() == b"started\n"
        rest: list[bytes] = []
        reader = threading.Thread(target=lambda: rest.append(response.read()))
        reader.start()
        test_ca.issue(stack.domain).write(stack.project / "certs")
        stack.compose("exec", "-T", "proxy", "nginx", "-s", "reload")
        reader.join(timeout=15)
        connection.close()
        assert rest == [b"done\n"], stack.logs()
        deadline = time.monotonic() + 15
        while stack.get("/api/health").cert.serial_number == first.cert.serial_number:
            assert time.monotonic() < deadline, "the new certificate is not served"
            time.sleep(0.5)


@pytest.mark.docker
@DOCKER_GROUP
def test_nginx_without_its_certificate_stops_naming_the_path(
    template: Path, tmp_path: Path, test_ca: TestCA
) -> None:
    require_engine()
    stack = render_stack(template, tmp_path / "project", "nginx", test_ca.pem)
    try:
        # No TLS_DIR: compose refuses to start the proxy and names the path.
        missing_dir = stack.compose("up", "--detach", "--no-deps", "proxy", check=False)
        assert missing_dir.returncode != 0
        assert str(stack.project / "certs") in missing_dir.stderr, missing_dir.stderr
        # The directory without the files: nginx exits (and is restarted) naming the file.
        (stack.project / "certs").mkdir()
        stack.compose("up", "--detach", "--no-deps", "proxy")
        proxy = stack.container("proxy")
        deadline = time.monotonic() + 30
        while "fullchain.pem" not in (logs := docker("logs", proxy).stderr):
            assert time.monotonic() < deadline, logs
            time.sleep(0.5)
        assert 'cannot load certificate "/etc/nginx/tls/fullchain.pem"' in logs, logs
        assert docker("inspect", "-f", "{{.RestartCount}}", proxy).stdout.strip() != "0" or (
            docker("inspect", "-f", "{{.State.Running}}", proxy).stdout.strip() == "false"
        )
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)


@pytest.mark.docker
@DOCKER_GROUP
@pytest.mark.parametrize("proxy", local_certificate_file_proxies())
def test_proxy_on_localhost_serves_the_copied_certificate_from_the_first_up_and_after_restarts(
    proxy: str, template: Path, tmp_path: Path
) -> None:
    """The after-copy message's last command, run as printed, with nothing in between: the
    copy wrote a self-signed certificate for localhost (git-ignored), and the proxy serves it,
    the same one after the stack is taken down and started again, so a client that trusted it
    once (the README's curl) keeps working. The proxy does not serve /metrics; the README's
    command shows them from inside the app's container."""
    require_engine()
    answers = {"domain": "localhost", "metrics": "prometheus"}
    stack = render_stack(template, tmp_path / "project", proxy, b"", **answers)
    cert = stack.project / "certs" / "fullchain.pem"
    assert cert.is_file() and (stack.project / "certs" / "privkey.pem").is_file()
    stack.trust = cert.read_bytes()  # self-signed: the certificate is its own root
    assert "certs/" in (stack.project / ".gitignore").read_text().splitlines()
    readme = (stack.project / "README.md").read_text()
    curl = "curl --cacert certs/fullchain.pem https://localhost/health"
    assert f"`{curl}`" in readme
    as_printed = curl.replace("localhost/", f"localhost:{stack.https_port}/")
    try:
        stack.compose("up", "--build", "--wait")
        first = stack.get("/health")
        assert first.status == 200, first
        assert http_get_as(stack.http_port, "localhost", "/health")[0] in {301, 308}
        assert stack.get("/metrics").status == 404
        section = readme[readme.index("\n## Metrics\n") :]
        section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
        [look] = [
            line.strip()
            for line in section.splitlines()
            if "/metrics" in line and line.lstrip().startswith("docker compose")
        ]
        metrics = subprocess.run(
            ["bash", "-ec", look],
            cwd=stack.project,
            env={**os.environ, "COMPOSE_PROJECT_NAME": stack.name},
            capture_output=True,
            text=True,
        )
        assert "http_requests_total" in metrics.stdout, metrics
        for restart in (("restart", "proxy"), ("down", "-v")):
            stack.compose(*restart)
            stack.compose("up", "--wait")
            again = wait_for_https(stack, "/health", 60)
            assert again.cert.fingerprint(SHA256()) == first.cert.fingerprint(SHA256()), restart
        result = subprocess.run(
            shlex.split(as_printed), cwd=stack.project, capture_output=True, text=True
        )
        assert result.returncode == 0 and '"ok"' in result.stdout, result
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)
        docker("rmi", "-f", f"{stack.slug}:latest", check=False)


# --- Caddy locally: its own CA, its healthcheck, the redirect to the published port ---------


@pytest.mark.docker
@DOCKER_GROUP
def test_caddy_on_localhost_is_healthy_and_redirects_to_the_published_https_port(
    template: Path, tmp_path: Path
) -> None:
    require_engine()
    stack = render_stack(template, tmp_path / "project", "caddy", b"", domain="localhost")
    try:
        stack.compose("up", "--build", "--detach")
        assert settled_health(stack.container("proxy")) == "healthy", stack.logs()
        host = f"localhost:{stack.http_port}"  # as a browser sends it
        status, headers = http_get_as(stack.http_port, host, "/health?x=1")
        assert status in {301, 308}
        assert headers["Location"] == f"https://localhost:{stack.https_port}/health?x=1"
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)
        docker("rmi", "-f", f"{stack.slug}:latest", check=False)


# --- Traefik and Caddy: certificates from pebble, a real ACME CA ------------------------------


@pytest.fixture(scope="module")
def pebble_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's pebble and pebble-challtestsrv in one image, built once per module."""
    require_engine()
    tag = build_tools_image(tmp_path_factory.mktemp("pebble"))
    yield tag
    docker("rmi", "-f", tag, check=False)


@contextlib.contextmanager
def acme_running(stack: Stack, ca: TestCA, timeout: float = 180) -> Iterator[Stack]:
    try:
        stack.compose("up", "--build", "--detach")
        stack.trust = pebble_root(stack, ca)
        wait_for_https(stack, "/api/health", timeout)
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)
        docker("rmi", "-f", f"{stack.slug}:latest", check=False)


def served_serial(stack: Stack) -> int:
    return stack.get("/api/health").cert.serial_number


@pytest.mark.docker
@DOCKER_GROUP
@pytest.mark.parametrize("proxy", acme_proxies())
def test_acme_certificate_is_obtained_served_and_renewed(
    proxy: str, template: Path, tmp_path: Path, test_ca: TestCA, pebble_image: str
) -> None:
    require_engine()
    stack = acme_stack(template, tmp_path / "project", proxy, pebble_image, test_ca)
    set_env(stack.project, ROOT_PATH="/api")
    with acme_running(stack, test_ca):
        first = stack.get("/api/health")
        items = stack.get("/api/items")
        assert (first.status, items.status) == (200, 200), stack.logs()
        assert json.loads(items.body) == []
        assert_https_edge(stack, first)
        assert_behind_the_prefix(stack)
        assert_go_runs_on_the_one_core_it_has(stack)
        assert_the_proxy_lets_go_of_idle_connections_first(stack, "/api/health")
        # Renewal: the proxy gets a new certificate by itself and serves it, still running.
        proxy_container = stack.container("proxy")
        started = docker("inspect", "-f", "{{.State.StartedAt}}", proxy_container).stdout
        deadline = time.monotonic() + 3 * CERT_SECONDS
        while served_serial(stack) == first.cert.serial_number:
            assert time.monotonic() < deadline, f"not renewed\n{stack.logs()}"
            time.sleep(2)
        assert docker("inspect", "-f", "{{.State.StartedAt}}", proxy_container).stdout == started


def assert_https_edge(stack: Stack, answer: Answer) -> None:
    """Redirect to HTTPS, HSTS, HTTP/2, URLs the app builds, and the client address it sees and
    logs."""
    status, headers = http_get_as(stack.http_port, stack.domain, "/api/items?limit=1")
    assert status in {301, 308}
    assert headers["Location"] == f"https://{stack.domain}/api/items?limit=1"
    # Two years, for this domain alone: an HTTP-only subdomain stays reachable (opt-in in README).
    assert answer.headers["Strict-Transport-Security"] == "max-age=63072000", answer.headers
    # HTTP/2 for a client that offers it, from each of the three proxies.
    assert negotiated_protocol(stack.https_port, stack.domain, stack.trust) == "h2"
    seen = json.loads(stack.get("/api/whoami", SPOOFED).body)
    assert seen["scheme"] == "https"
    assert seen["url"] == f"https://{stack.domain}/api/whoami"
    assert seen["client"] not in {"203.0.113.9", "", *stack.address("proxy").split()}, seen
    logged = [line for line in stack.compose("logs", "app").stdout.splitlines() if "whoami" in line]
    assert logged and all(seen["client"] in line for line in logged), logged
    assert "203.0.113.9" not in stack.compose("logs", "app").stdout


def assert_go_runs_on_the_one_core_it_has(stack: Stack) -> None:
    """One CPU for the proxy, and one thread of Go code in it (no threads spinning for work
    on the app's cores)."""
    state = json.loads(docker("inspect", stack.container("proxy")).stdout)[0]
    assert state["HostConfig"]["NanoCpus"] == 10**9
    environ = docker("exec", stack.container("proxy"), "cat", "/proc/1/environ").stdout
    assert "GOMAXPROCS=1" in environ.split("\0"), environ


def assert_the_proxy_lets_go_of_idle_connections_first(stack: Stack, path: str) -> None:
    """The proxy keeps its connections to the app for the next requests, and closes an idle
    one before Uvicorn would (5 s): else a request sent as the app closes it gets a 502."""
    app, proxy = host_pid(stack.container("app")), set(stack.address("proxy").split())
    for _ in range(3):
        assert stack.get(path).status == 200
    idle_since = time.monotonic()
    assert proxy & set(established_peers(app, 8000)), "no connection kept for the next request"
    while proxy & set(established_peers(app, 8000)):
        assert time.monotonic() - idle_since < 4.8, "the app would close it first"
        time.sleep(0.05)


def assert_behind_the_prefix(stack: Stack) -> None:
    docs = stack.get("/api/docs")
    assert docs.status == 200
    assert b"/api/openapi.json" in docs.body
    schema = json.loads(stack.get("/api/openapi.json").body)
    assert schema["servers"] == [{"url": "/api"}]


# --- external: the load balancer terminates TLS ---------------------------------------------

AS_THE_LOAD_BALANCER = """
import json, urllib.request
headers = {"Host": "api.example.com", "X-Forwarded-Proto": "https"}
headers["X-Forwarded-For"] = "198.51.100.7"
request = urllib.request.Request("http://127.0.0.1:8000/whoami", headers=headers)
print(urllib.request.urlopen(request).read().decode())
"""


@pytest.mark.docker
@DOCKER_GROUP
def test_external_proxy_is_trusted_from_forwarded_allow_ips_only(
    template: Path, tmp_path: Path
) -> None:
    """Behind a TLS-terminating load balancer the app builds https:// URLs under ROOT_PATH, and
    keeps idle connections open longer than the balancer."""
    require_engine()
    slug = unique_name("tt-external")
    answers = {
        "project_slug": slug,
        "reverse_proxy": "external",
        "forwarded_allow_ips": "127.0.0.1",  # the load balancer, played by the app's loopback
        "database": "none",
    }
    project = render(template, tmp_path / "project", answers, tasks=True)
    with (project / "app" / "main.py").open("a") as code:
        code.write(PROBE_ROUTES)
    port = free_port()
    set_env(project, APP_PORT=str(port), ROOT_PATH="/api")
    name = unique_name("tt-https")
    try:
        docker("compose", "-p", name, "up", "--build", "--detach", cwd=project)
        assert wait_for_http(f"http://127.0.0.1:{port}/health", timeout=90) == 200
        trusted = json.loads(
            docker(
                "compose",
                "-p",
                name,
                "exec",
                "-T",
                "app",
                "python",
                "-c",
                AS_THE_LOAD_BALANCER,
                cwd=project,
            ).stdout
        )
        # The same headers from another address (the host, through the published port).
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/whoami",
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            untrusted = json.loads(response.read())
        # A load balancer's idle connection outlives Uvicorn's default 5 s.
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        statuses = []
        try:
            for pause in (0, 6):
                time.sleep(pause)
                kept.request("GET", "/health")
                with kept.getresponse() as answer:
                    answer.read()
                    statuses.append(answer.status)
        finally:
            kept.close()
        logs = docker("compose", "-p", name, "logs", "app", cwd=project).stdout
    finally:
        docker("compose", "-p", name, "down", "-v", "--remove-orphans", cwd=project, check=False)
        docker("rmi", "-f", f"{slug}:latest", check=False)
    assert trusted == {
        "client": "198.51.100.7",
        "scheme": "https",
        "url": "https://api.example.com/api/whoami",
    }
    assert untrusted["scheme"] == "http"
    assert statuses == [200, 200]
    assert untrusted["client"] != "198.51.100.7"
    assert untrusted["url"] == f"http://127.0.0.1:{port}/api/whoami"
    assert any("198.51.100.7" in line and "whoami" in line for line in logs.splitlines()), logs
