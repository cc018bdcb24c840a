"""HTTPS at the edge, proven with real proxies, a real ACME CA and a verifying client.

Traefik and Caddy get their certificate from pebble (Debian's test-only ACME server) through a
real TLS-ALPN-01 or HTTP-01 challenge: pebble resolves the test domain with pebble-challtestsrv's
DNS inside a compose network, to the proxy. nginx serves a certificate made by the tests. The
client connects to 127.0.0.1 only, asks for the domain (SNI and Host), and verifies the chain
against the CA of the test and the hostname.
"""

import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.combinations import Answers
from tests.docker import docker, free_subnet, require_engine, unique_name
from tests.project import free_port, render, wait_for_http
from tests.tls import Answer, TestCA, http_get_as, https_connection, https_get

DOCKER_GROUP = pytest.mark.xdist_group("docker")
DOMAIN = "api.example.test"
SPOOFED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "http"}

# Appended to the rendered app: what the app sees of a request, and a slow route that streams
# its first line at once (a request in flight during a reload).
PROBE_ROUTES = """

import asyncio as _asyncio  # noqa: E402
from collections.abc import AsyncIterator as _AsyncIterator  # noqa: E402

from fastapi import Request as _Request  # noqa: E402
from fastapi.responses import StreamingResponse as _StreamingResponse  # noqa: E402


@app.get("/whoami", name="whoami")
async def whoami(request: _Request) -> dict[str, str]:
    client = request.client.host if request.client else ""
    return {"client": client, "scheme": request.url.scheme, "url": str(request.url_for("whoami"))}


@app.get("/slow")
async def slow() -> _StreamingResponse:
    async def body() -> _AsyncIterator[bytes]:
        yield b"started\\n"
        await _asyncio.sleep(3)
        yield b"done\\n"

    return _StreamingResponse(body())
"""

ASK_WHOAMI = f"""
import urllib.request
request = urllib.request.Request("http://127.0.0.1:8000/whoami", headers={SPOOFED!r})
print(urllib.request.urlopen(request).read().decode())
"""


def set_env(project: Path, **values: str) -> None:
    """Set variables in the project's .env, replacing the lines that set them already."""
    env = project / ".env"
    lines = [line for line in env.read_text().splitlines() if line.partition("=")[0] not in values]
    env.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in values.items())]) + "\n")


@dataclass
class Stack:
    """A generated project's compose stack behind its proxy, published on 127.0.0.1."""

    project: Path
    slug: str
    domain: str
    trust: bytes  # PEM of the CA the client trusts
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    name: str = field(default_factory=lambda: unique_name("tt-https"))
    files: list[str] = field(default_factory=lambda: ["compose.yaml"])

    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> Any:
        files = [arg for name in self.files for arg in ("-f", name)]
        return docker(
            "compose",
            "-p",
            self.name,
            *files,
            *args,
            cwd=self.project,
            check=check,
            timeout=timeout,
        )

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return https_get(self.https_port, self.domain, self.trust, path, headers)

    def container(self, service: str) -> str:
        return str(self.compose("ps", "-q", service).stdout.strip())

    def address(self, service: str) -> str:
        """The service's addresses on the stack's networks (the edge one for the app)."""
        return str(
            docker(
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                self.container(service),
            ).stdout.strip()
        )

    def logs(self) -> str:
        result = self.compose("logs", "--no-color", check=False)
        return str(result.stdout + result.stderr)


def render_stack(template: Path, dest: Path, proxy: str, trust: bytes, **answers: Any) -> Stack:
    slug = unique_name(f"tt-{proxy}")
    all_answers: Answers = {
        "project_slug": slug,
        "reverse_proxy": proxy,
        "domain": DOMAIN,
        "acme_email": "ops@example.test",
        "database": "none",
        **answers,
    }
    project = render(template, dest, all_answers, tasks=True)
    code = project / (
        "app/main.py" if all_answers.get("layout", "package") == "package" else "main.py"
    )
    with code.open("a") as file:
        file.write(PROBE_ROUTES)
    stack = Stack(project, slug, all_answers["domain"], trust)
    set_env(
        project,
        PUBLISH_ADDRESS="127.0.0.1",
        HTTP_PORT=str(stack.http_port),
        HTTPS_PORT=str(stack.https_port),
    )
    return stack


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


def wait_for_https(stack: Stack, path: str, timeout: float) -> Answer:
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = stack.get(path)
            if answer.status == 200:
                return answer
            problem = f"status {answer.status}"
        except OSError as error:  # refused, reset, or a certificate not (yet) trusted
            problem = repr(error)
        if time.monotonic() > deadline:
            raise AssertionError(f"no verified HTTPS 200 on {path}: {problem}\n{stack.logs()}")
        time.sleep(0.5)


# --- nginx: certificate files the tests make -------------------------------------------------


@pytest.fixture(scope="module")
def test_ca() -> TestCA:
    return TestCA()


def nginx_stack(template: Path, dest: Path, ca: TestCA, **answers: Any) -> Stack:
    stack = render_stack(template, dest, "nginx", ca.pem, **answers)
    ca.issue(stack.domain).write(stack.project / "certs")
    return stack


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
        health = docker("inspect", "-f", "{{json .State.Health}}", proxy).stdout
        assert json.loads(health)["Status"] == "healthy", health


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


# --- Traefik and Caddy: certificates from pebble, a real ACME CA ------------------------------

PEBBLE_DOCKERFILE = """\
FROM debian:bookworm
RUN apt-get update \\
    && apt-get install -y --no-install-recommends pebble \\
    && rm -rf /var/lib/apt/lists/*
"""
# Pebble's certificates live this long (seconds): the proxies renew them while the test runs.
CERT_SECONDS = 100


@pytest.fixture(scope="module")
def pebble_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's pebble and pebble-challtestsrv in one image, built once per module."""
    require_engine()
    context = tmp_path_factory.mktemp("pebble")
    (context / "Dockerfile").write_text(PEBBLE_DOCKERFILE)
    tag = unique_name("tt-pebble")
    docker("build", "-q", "-t", tag, ".", cwd=context)
    yield tag
    docker("rmi", "-f", tag, check=False)


def acme_stack(
    template: Path, dest: Path, proxy: str, pebble_image: str, ca: TestCA, **answers: Any
) -> Stack:
    """The project's stack plus pebble and challtestsrv (compose.acme.yaml, test-only).

    On a test network with its own subnet the proxy has a fixed address, which challtestsrv
    answers for every name; pebble asks challtestsrv, and the proxy trusts the test CA that
    signed pebble's own HTTPS certificate (the directory), as it trusts Let's Encrypt's.
    """
    stack = render_stack(template, dest, proxy, b"", database="sqlite", **answers)
    project = stack.project
    acme_dir = project / "acme-test"
    ca.issue("pebble").write(acme_dir, "pebble.pem", "pebble.key")
    (acme_dir / "ca.pem").write_bytes(ca.pem)
    config = {
        "pebble": {
            "listenAddress": "0.0.0.0:14000",
            "managementListenAddress": "0.0.0.0:15000",
            "certificate": "/acme-test/pebble.pem",
            "privateKey": "/acme-test/pebble.key",
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "certificateValidityPeriod": CERT_SECONDS,
        }
    }
    (acme_dir / "pebble.json").write_text(json.dumps(config))
    subnet = free_subnet()
    prefix = subnet.rsplit(".", 1)[0]
    proxy_address = f"{prefix}.10"
    override = {
        "services": {
            "proxy": {
                "environment": {"SSL_CERT_FILE": "/acme-test/ca.pem"},
                "volumes": ["./acme-test:/acme-test:ro"],
                "networks": {"edge": {}, "acme": {"ipv4_address": proxy_address}},
            },
            "pebble": {
                "image": pebble_image,
                "command": [
                    "pebble",
                    "-config",
                    "/acme-test/pebble.json",
                    "-dnsserver",
                    "challtestsrv:8053",
                ],
                "environment": {"PEBBLE_VA_NOSLEEP": "1"},
                "volumes": ["./acme-test:/acme-test:ro"],
                "ports": ["127.0.0.1::15000"],
                "networks": ["acme"],
            },
            "challtestsrv": {
                "image": pebble_image,
                "command": [
                    "pebble-challtestsrv",
                    "-defaultIPv4",
                    proxy_address,
                    "-defaultIPv6",
                    "",
                    "-dns01",
                    ":8053",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    ":8055",
                ],
                "networks": ["acme"],
            },
        },
        "networks": {
            "acme": {"ipam": {"config": [{"subnet": subnet, "ip_range": f"{prefix}.128/25"}]}}
        },
    }
    set_env(project, ACME_CA_SERVER="https://pebble:14000/dir")
    # Renewal while the test runs: Traefik is told how long its certificates live (it checks
    # every minute once they live less than a day), Caddy checks every 10 s instead of 10 min.
    if proxy == "traefik":
        rendered = json.loads(stack.compose("config", "--format", "json").stdout)
        command = rendered["services"]["proxy"]["command"]
        duration = "--certificatesresolvers.acme.acme.certificatesduration=1"
        override["services"]["proxy"]["command"] = [*command, duration]
    else:
        caddyfile = project / "Caddyfile"
        caddyfile.write_text(caddyfile.read_text().replace("{\n", "{\n\trenew_interval 10s\n", 1))
    (project / "compose.acme.yaml").write_text(yaml.safe_dump(override))
    stack.files.append("compose.acme.yaml")
    return stack


def pebble_root(stack: Stack, ca: TestCA) -> bytes:
    """The root pebble signs with (a new one at each start), from its management API."""
    port = int(stack.compose("port", "pebble", "15000").stdout.strip().rpartition(":")[2])
    deadline = time.monotonic() + 30
    while True:
        try:
            answer = https_get(port, "pebble", ca.pem, "/roots/0")
            if answer.status == 200:
                return answer.body
        except OSError:
            pass
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.5)


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
@pytest.mark.parametrize("proxy", ["traefik", "caddy"])
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
        # Renewal: the proxy gets a new certificate by itself and serves it, still running.
        proxy_container = stack.container("proxy")
        started = docker("inspect", "-f", "{{.State.StartedAt}}", proxy_container).stdout
        deadline = time.monotonic() + 3 * CERT_SECONDS
        while served_serial(stack) == first.cert.serial_number:
            assert time.monotonic() < deadline, f"not renewed\n{stack.logs()}"
            time.sleep(2)
        assert docker("inspect", "-f", "{{.State.StartedAt}}", proxy_container).stdout == started


def assert_https_edge(stack: Stack, answer: Answer) -> None:
    """Redirect to HTTPS, HSTS, URLs the app builds, and the client address it sees and logs."""
    status, headers = http_get_as(stack.http_port, stack.domain, "/api/items?limit=1")
    assert status in {301, 308}
    assert headers["Location"] == f"https://{stack.domain}/api/items?limit=1"
    hsts = answer.headers["Strict-Transport-Security"]
    assert hsts is not None and hsts.startswith("max-age="), answer.headers
    seen = json.loads(stack.get("/api/whoami", SPOOFED).body)
    assert seen["scheme"] == "https"
    assert seen["url"] == f"https://{stack.domain}/api/whoami"
    assert seen["client"] not in {"203.0.113.9", "", *stack.address("proxy").split()}, seen
    logged = [line for line in stack.compose("logs", "app").stdout.splitlines() if "whoami" in line]
    assert logged and all(seen["client"] in line for line in logged), logged
    assert "203.0.113.9" not in stack.compose("logs", "app").stdout


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
    """Behind a TLS-terminating load balancer the app builds https:// URLs under ROOT_PATH."""
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
    assert untrusted["client"] != "198.51.100.7"
    assert untrusted["url"] == f"http://127.0.0.1:{port}/api/whoami"
    assert any("198.51.100.7" in line and "whoami" in line for line in logs.splitlines()), logs
