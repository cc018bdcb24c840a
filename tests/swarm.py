"""Drive a Docker Swarm stack of a generated project: deploy, roll out, watch, and a client that
sends requests all along. Shared by tests/test_swarm.py and benchmarks/rollout.py.

The engine is shared: the node joins a swarm only if it is in none, and leaves it only then (a
test run once all its tests are over); every stack, image and node label made here carries a
unique name and is removed afterwards.
"""

import contextlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.docker import DOCKER_ENV, RUN, docker, stack_client, unique_name
from tests.edge import DOMAIN
from tests.project import free_port
from tests.tls import https_get

# A broken release: the image of a good one whose server never starts (its prestart.py, which
# every command of the stack runs first, sleeps instead), so the health check of /health fails.
BROKEN_DOCKERFILE = (
    "FROM {image}\n"
    "USER root\n"
    "RUN printf 'import time\\ntime.sleep(900)\\n' > prestart.py\n"
    "USER 10001:10001\n"
)
# A new release of the same code: another image (so every replica is replaced).
RELEASE_DOCKERFILE = "FROM {image}\nLABEL release={release}\n"
# The project the Swarm tests and the rollout benchmark deploy: PostgreSQL behind nginx (HTTPS).
ANSWERS = {
    "database": "postgresql",
    "migrations": True,
    "process_model": "single",
    "reverse_proxy": "nginx",
    "domain": DOMAIN,
    "deploy_targets": ["swarm"],
}


@contextlib.contextmanager
def swarm_node() -> Iterator[str]:
    """This engine as a swarm manager; yields the node id. Leaves only a swarm it made (for a
    benchmark, which runs alone: a test run leaves once it is over, see `join_for_the_run`)."""
    created = join()
    try:
        yield node_id()
    finally:
        if created:
            docker("swarm", "leave", "--force", check=False)


def join() -> bool:
    """Make this engine a swarm manager if it is in no swarm; say whether it was made here."""
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    if state != "inactive":
        return False
    docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    return True


def node_id() -> str:
    """This engine's id as a swarm node."""
    return docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()


# Leaving a swarm drops the engine's name records of the containers then running on bridge
# networks: a compose stack started before it can no longer resolve `db`. So a test run leaves
# only after its last test, in the process that ran them all (tests/conftest.py).
MADE_BY_THE_RUN = Path(tempfile.gettempdir()) / f"template-tests-{RUN}-swarm"


def join_for_the_run() -> str:
    """This engine as a swarm manager until the test run is over; returns the node id."""
    if join():
        MADE_BY_THE_RUN.touch()
    return node_id()


def leave_if_the_run_joined() -> None:
    """Once every test is over: leave the swarm the run made, and only that one."""
    if MADE_BY_THE_RUN.exists():
        docker("swarm", "leave", "--force", check=False)
        MADE_BY_THE_RUN.unlink()


def derived_image(base: str, dockerfile: str) -> str:
    """An image built FROM the base with this Dockerfile text (no context)."""
    tag = f"{unique_name(base.split(':')[0])}:latest"  # as a service's containers name it
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, "-"],
        input=dockerfile,
        env={**os.environ, **DOCKER_ENV},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return tag


def remove_images(prefix: str) -> None:
    """Remove the images named prefix*; derived ones first (a parent with children stays)."""
    for _ in range(3):
        images = docker("images", "-q", "--filter", f"reference={prefix}*").stdout.split()
        if not images:
            return
        docker("rmi", "-f", *dict.fromkeys(images), check=False)


@dataclass
class Stack:
    """A stack deployed from a project's deploy/swarm/compose.yaml, its proxy published in host
    mode on free ports. nginx (and Traefik for localhost) serves the certificate in `tls_dir`,
    verified against `ca_pem`; without them, the proxy's own certificate (Caddy's local CA) is
    taken unverified."""

    project: Path
    name: str
    domain: str = "localhost"
    ca_pem: bytes | None = None
    tls_dir: Path | None = None
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    # Without a proxy the app publishes its port through the routing mesh, on every address of
    # the node; a test that reaches the replicas from inside them deploys it unpublished.
    without_published_app: bool = False

    def get(self, path: str) -> int:
        """The status of an HTTPS request through the proxy, for `domain` (SNI and Host)."""
        if self.ca_pem is not None:
            return https_get(self.https_port, self.domain, self.ca_pem, path).status
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", self.https_port), timeout=10)
        connection = http.client.HTTPConnection(self.domain, self.https_port, timeout=10)
        connection.sock = context.wrap_socket(raw, server_hostname=self.domain)
        try:
            connection.request("GET", path, headers={"Host": self.domain})
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def settings(self) -> dict[str, str]:
        """The variables of .env, read by the README's own command where it has one (the
        stack's file interpolates some, as a proxy's ACME_EMAIL)."""
        result = self._readme_line("set -a && . ./.env", "env -0")
        if result is None:
            return {}
        pairs = (item.partition("=") for item in result.stdout.split("\0") if item)
        return {name: value for name, _, value in pairs}

    def configs_version(self) -> dict[str, str]:
        """CONFIGS_VERSION, computed by the README's own command (no proxy, no configs)."""
        result = self._readme_line("export CONFIGS_VERSION=", 'printf %s "$CONFIGS_VERSION"')
        if result is None:
            return {}
        assert result.stdout.strip(), result.stderr
        return {"CONFIGS_VERSION": result.stdout}

    def _readme_line(self, start: str, then: str) -> subprocess.CompletedProcess[str] | None:
        """The README's command line that begins with `start` (its comment dropped), run in
        the project with `then` after it; None where the README has no such line."""
        readme = (self.project / "deploy" / "swarm" / "README.md").read_text()
        found = [line for line in readme.splitlines() if line.startswith(start)]
        if not found:
            return None
        command = re.sub(r"\s+#.*", "", found[0])
        return subprocess.run(
            ["sh", "-c", f"{command} && {then}"],
            cwd=self.project,
            capture_output=True,
            text=True,
            check=True,
        )

    def deploy(self, image: str) -> None:
        env = {
            **os.environ,
            **self.settings(),
            **self.configs_version(),
            "IMAGE": image,
            "HTTP_PORT": str(self.http_port),
            "HTTPS_PORT": str(self.https_port),
            **({"TLS_DIR": str(self.tls_dir)} if self.tls_dir else {}),
        }
        stack_file = self.project / "deploy" / "swarm" / "compose.yaml"
        if self.without_published_app:
            stack = yaml.safe_load(stack_file.read_text())
            stack["services"]["app"].pop("ports", None)
            stack_file = stack_file.with_name("compose.unpublished.yaml")
            stack_file.write_text(yaml.safe_dump(stack, sort_keys=False))
        command = [stack_client(), "stack", "deploy", "--resolve-image", "never", "-c"]
        result = subprocess.run(
            [*command, str(stack_file), self.name],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def remove(self) -> None:
        docker("stack", "rm", self.name, check=False)
        deadline = time.monotonic() + 90
        label = f"label=com.docker.stack.namespace={self.name}"
        while time.monotonic() < deadline:
            # The containers of a job's finished tasks (the migration) outlive `docker stack
            # rm`: remove them, as `docker container prune` would.
            exited = docker("ps", "-aq", "--filter", label, "--filter", "status=exited").stdout
            if exited.split():
                docker("rm", *exited.split(), check=False)
            left = docker("ps", "-aq", "--filter", label).stdout.split()
            networks = docker("network", "ls", "-q", "--filter", label).stdout.split()
            if not left and not networks:
                break
            time.sleep(1)
        # A volume is freed a moment after its container is gone.
        for _ in range(10):
            volumes = docker("volume", "ls", "-q", "--filter", label).stdout.split()
            if not volumes or docker("volume", "rm", "-f", *volumes, check=False).returncode == 0:
                break
            time.sleep(2)

    def service(self, name: str) -> str:
        return f"{self.name}_{name}"

    def update_state(self, service: str = "app") -> str:
        found = docker(
            "service", "inspect", self.service(service), "--format", "{{json .UpdateStatus}}"
        )
        status = json.loads(found.stdout or "null")
        return status.get("State", "") if status else ""

    def running_images(self, service: str = "app") -> list[str]:
        """Images of the service's containers that are up and healthy."""
        label = f"label=com.docker.swarm.service.name={self.service(service)}"
        ids = docker("ps", "-q", "--filter", label, "--filter", "health=healthy").stdout.split()
        if not ids:
            return []
        found = docker("inspect", "--format", "{{.Config.Image}}", *ids).stdout.split()
        return [image.split("@")[0] for image in found]

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = 300) -> float:
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{what}: not within {timeout} s\n{self.diagnose()}")
            time.sleep(0.5)
        return time.monotonic() - started

    def wait_converged(self, image: str, replicas: int = 3, timeout: float = 300) -> float:
        return self.wait_until(
            lambda: self.running_images() == [image] * replicas,
            f"{replicas} healthy replicas of {image}",
            timeout,
        )

    def wait_serving(self, path: str = "/ready", timeout: float = 60) -> float:
        """Wait for a 200 through the proxy. The proxy finds the replicas by Docker's DNS, some
        seconds after they are up: nginx asks again once an answer is 5 s old, and before the
        first replica started the name did not resolve at all."""

        def serving() -> bool:
            try:
                return self.get(path) == 200
            except (OSError, http.client.HTTPException):
                return False

        return self.wait_until(serving, f"a 200 for {path} through the proxy", timeout)

    def logs(self, service: str) -> str:
        """The output of every container the service ran, exited ones included (`docker
        service logs` can hang on a task whose container is gone)."""
        label = f"label=com.docker.swarm.service.name={self.service(service)}"
        output = []
        for container in docker("ps", "-aq", "--filter", label).stdout.split():
            result = docker("logs", container, check=False, timeout=60)
            output.append(result.stdout + result.stderr)
        return "".join(output)

    def containers(self) -> list[str]:
        label = f"label=com.docker.stack.namespace={self.name}"
        return docker("ps", "-aq", "--filter", label).stdout.split()

    def diagnose(self) -> str:
        tasks = docker("stack", "ps", "--no-trunc", self.name, check=False).stdout
        app, proxy = self.logs("app")[-3000:], self.logs("proxy")[-3000:]
        return f"{tasks}\n--- app\n{app}\n--- proxy\n{proxy}"


@dataclass
class Client:
    """Sends requests (`request` returns a status) from a few threads until stopped, at most
    `limit` requests and `seconds` seconds; counts what succeeded and what failed."""

    request: Callable[[], int]
    threads: int = 2
    limit: int = 20_000
    seconds: float = 400
    served: int = 0
    failed: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.served + len(self.failed) >= self.limit:
                    return
            try:
                status = self.request()
                ok, reason = status == 200, f"HTTP {status}"
            except (OSError, http.client.HTTPException) as error:
                ok, reason = False, repr(error)
            with self._lock:
                if ok:
                    self.served += 1
                else:
                    self.failed.append(reason)
            time.sleep(0.05)

    @contextlib.contextmanager
    def running(self) -> Iterator["Client"]:
        workers = [threading.Thread(target=self._run) for _ in range(self.threads)]
        for worker in workers:
            worker.start()
        try:
            yield self
        finally:
            self._stop.set()
            for worker in workers:
                worker.join()
