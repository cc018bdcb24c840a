"""Generated projects' proxy stacks for the tests and benchmarks: rendered, published on
127.0.0.1, and with pebble (Debian's test-only ACME server) as their certificate authority."""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.combinations import Answers
from tests.docker import docker, free_subnet, unique_name
from tests.project import free_port, render
from tests.tls import Answer, TestCA, https_get

DOMAIN = "api.example.test"

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


def wait_for_https(stack: Stack, path: str, timeout: float, interval: float = 0.5) -> Answer:
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
        time.sleep(interval)


def nginx_stack(template: Path, dest: Path, ca: TestCA, **answers: Any) -> Stack:
    stack = render_stack(template, dest, "nginx", ca.pem, **answers)
    ca.issue(stack.domain).write(stack.project / "certs")
    return stack


# Debian's pebble and pebble-challtestsrv, and wrk for the benchmark, in one image.
TOOLS_DOCKERFILE = """\
FROM debian:bookworm
RUN apt-get update \\
    && apt-get install -y --no-install-recommends pebble wrk \\
    && rm -rf /var/lib/apt/lists/*
"""


def build_tools_image(context: Path) -> str:
    """Build the tools image in an empty directory; its unique tag (remove it afterwards)."""
    (context / "Dockerfile").write_text(TOOLS_DOCKERFILE)
    tag = unique_name("tt-pebble")
    docker("build", "-q", "-t", tag, ".", cwd=context)
    return tag


# Pebble's certificates live this long (seconds): the proxies renew them while the test runs.
CERT_SECONDS = 100

# pebble, with its files at /acme-test (write_pebble_files), asking challtestsrv for addresses.
PEBBLE_COMMAND = ["pebble", "-config", "/acme-test/pebble.json", "-dnsserver", "challtestsrv:8053"]


def write_pebble_files(directory: Path, ca: TestCA, cert_seconds: int | None = None) -> None:
    """pebble's configuration and its directory's HTTPS certificate (of `ca`, for the name
    `pebble`) in `directory`, which PEBBLE_COMMAND reads at /acme-test. It validates on ports
    80 and 443; its certificates live `cert_seconds`, or its default."""
    ca.issue("pebble").write(directory, "pebble.pem", "pebble.key")
    config: dict[str, Any] = {
        "listenAddress": "0.0.0.0:14000",
        "managementListenAddress": "0.0.0.0:15000",
        "certificate": "/acme-test/pebble.pem",
        "privateKey": "/acme-test/pebble.key",
        "httpPort": 80,
        "tlsPort": 443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    if cert_seconds is not None:
        config["certificateValidityPeriod"] = cert_seconds
    (directory / "pebble.json").write_text(json.dumps({"pebble": config}))


def challtestsrv_command(address: str) -> list[str]:
    """pebble-challtestsrv as pebble's DNS alone, answering `address` for every name."""
    return [
        "pebble-challtestsrv", "-defaultIPv4", address, "-defaultIPv6", "", "-dns01", ":8053",
        "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", ":8055",
    ]  # fmt: skip


def acme_stack(
    template: Path,
    dest: Path,
    proxy: str,
    pebble_image: str,
    ca: TestCA,
    cert_seconds: int = CERT_SECONDS,
    **answers: Any,
) -> Stack:
    """The project's stack plus pebble and challtestsrv (compose.acme.yaml, test-only).

    On a test network with its own subnet the proxy has a fixed address, which challtestsrv
    answers for every name; pebble asks challtestsrv, and the proxy trusts the test CA that
    signed pebble's own HTTPS certificate (the directory), as it trusts Let's Encrypt's.
    """
    stack = render_stack(template, dest, proxy, b"", **{"database": "sqlite", **answers})
    project = stack.project
    acme_dir = project / "acme-test"
    write_pebble_files(acme_dir, ca, cert_seconds)
    (acme_dir / "ca.pem").write_bytes(ca.pem)
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
                "command": PEBBLE_COMMAND,
                "environment": {"PEBBLE_VA_NOSLEEP": "1"},
                "volumes": ["./acme-test:/acme-test:ro"],
                "ports": ["127.0.0.1::15000"],
                "networks": ["acme"],
            },
            "challtestsrv": {
                "image": pebble_image,
                "command": challtestsrv_command(proxy_address),
                "networks": ["acme"],
            },
        },
        "networks": {
            "acme": {"ipam": {"config": [{"subnet": subnet, "ip_range": f"{prefix}.128/25"}]}}
        },
    }
    set_env(project, ACME_CA_SERVER="https://pebble:14000/dir")
    if cert_seconds < 86400:
        renew_while_running(stack, override)
    (project / "compose.acme.yaml").write_text(yaml.safe_dump(override))
    stack.files.append("compose.acme.yaml")
    return stack


def renew_while_running(stack: Stack, override: dict[str, Any]) -> None:
    """Short-lived certificates are renewed while a test runs: Traefik is told how long they
    live (it checks every minute once they live less than a day), Caddy checks every 10 s
    instead of every 10 min."""
    if stack.project.joinpath("traefik.yaml").exists():
        rendered = json.loads(stack.compose("config", "--format", "json").stdout)
        command = rendered["services"]["proxy"]["command"]
        duration = "--certificatesresolvers.acme.acme.certificatesduration=1"
        override["services"]["proxy"]["command"] = [*command, duration]
    else:
        caddyfile = stack.project / "Caddyfile"
        caddyfile.write_text(caddyfile.read_text().replace("{\n", "{\n\trenew_interval 10s\n", 1))


def pebble_root(stack: Stack, ca: TestCA) -> bytes:
    """The root pebble signs with (a new one at each start), from its management API."""
    port = int(stack.compose("port", "pebble", "15000").stdout.strip().rpartition(":")[2])
    return pebble_root_at(port, ca, stack.logs)


def pebble_root_at(port: int, ca: TestCA, logs: Callable[[], str]) -> bytes:
    """The root pebble signs with, from its management API on this loopback port, once it
    answers (within 30 s; else fail with `logs`)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            answer = https_get(port, "pebble", ca.pem, "/roots/0")
            if answer.status == 200:
                return answer.body
        except OSError:
            pass
        assert time.monotonic() < deadline, logs()
        time.sleep(0.5)
