"""Drive the Docker engine for the tests: build generated projects, run them, clean up.

Every image, container and compose project a test makes carries a unique name, so tests run in
parallel (and several checkouts share one engine) without stepping on each other.
"""

import contextlib
import functools
import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.project import free_port

# BuildKit for cache and secret mounts; compose builds with its built-in builder where no buildx.
# Compose publishes PostgreSQL on 127.0.0.1 at POSTGRES_PORT (5432 in .env): a port of this test
# process instead (the shell environment wins over .env), so stacks never compete for 5432.
DOCKER_ENV = {"DOCKER_BUILDKIT": "1", "COMPOSE_BAKE": "false", "POSTGRES_PORT": str(free_port())}


@functools.cache
def engine_problem() -> str | None:
    """Why Docker cannot be used here, or None when an engine answers."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        probe = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if probe.returncode != 0:
        return f"no Docker engine answers: {probe.stderr.strip()[:200]}"
    return None


@functools.cache
def stack_client() -> str:
    """The newest docker client on PATH: a stack with a Swarm job (`mode: replicated-job`)
    needs 23 or later, and the client that builds here (first on PATH) may be older."""
    found: dict[tuple[int, ...], str] = {}
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        client = Path(directory) / "docker"
        if not os.access(client, os.X_OK):
            continue
        answer = subprocess.run([client, "--version"], capture_output=True, text=True).stdout
        version = re.search(r"(\d+)\.(\d+)\.(\d+)", answer)
        if version:
            found.setdefault(tuple(map(int, version.groups())), str(client))
    assert found, "no docker client on PATH"
    return found[max(found)]


def require_engine() -> None:
    """Skip the calling test, saying why, where no engine can be had."""
    problem = engine_problem()
    if problem:
        pytest.skip(f"Docker unavailable ({problem}); run ../shared/offline-docker/setup")


# This run's mark in every name it makes, inherited by xdist's workers: what the run built is
# removed at its end, and only that (other checkouts' runs may share the engine).
RUN = os.environ.setdefault("TEMPLATE_TESTS_RUN", uuid.uuid4().hex[:4])


def unique_name(prefix: str) -> str:
    return f"{prefix}-{RUN}{uuid.uuid4().hex[:6]}"


def docker(
    *args: str, cwd: Path | None = None, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run a docker command; fail with its output when `check` and it fails."""
    result = subprocess.run(
        ["docker", *args],
        cwd=cwd,
        env={**os.environ, **DOCKER_ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def remove_run_images(keep_cache: str = "2GB") -> None:
    """Remove the images this run tagged, then the build cache beyond `keep_cache` (the most
    recently used stays). A full run builds dozens of images of a few hundred MB each and caches
    their layers again: left behind, they fill a disk shared with other machines."""
    listing = docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    ours = [name for name in listing if re.search(f"-{RUN}[0-9a-f]{{6}}\\b", name)]
    for start in range(0, len(ours), 50):
        docker("rmi", "-f", *ours[start : start + 50], check=False)
    docker("builder", "prune", "-f", "--keep-storage", keep_cache, check=False)


def build(project: Path, tag: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Build the project's image; the plain progress output lists each step and CACHED ones."""
    return docker("build", "--progress=plain", "-t", tag, *extra, ".", cwd=project)


@contextlib.contextmanager
def image(project: Path, prefix: str = "template-test") -> Iterator[str]:
    """A freshly built image of the project, removed afterwards (its layers stay cached)."""
    tag = unique_name(prefix)
    build(project, tag)
    try:
        yield tag
    finally:
        docker("rmi", "-f", tag, check=False)


@contextlib.contextmanager
def container(tag: str, *run_args: str, command: tuple[str, ...] = ()) -> Iterator[str]:
    """A detached container of the image; removed (with its anonymous volumes) afterwards."""
    name = unique_name("template-test")
    docker("run", "-d", "--name", name, *run_args, tag, *command)
    try:
        yield name
    finally:
        docker("rm", "-f", "-v", name, check=False)


def settled_health(name: str, timeout: float = 120) -> str:
    """The container's health once its healthcheck has judged it: Docker says "starting" until
    the first check, an `interval` after the start, however well the process already answers."""
    deadline = time.monotonic() + timeout
    while True:
        health = docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()
        if health != "starting" or time.monotonic() > deadline:
            return health
        time.sleep(1)


def logs(name: str) -> str:
    result = docker("logs", name, check=False)
    return result.stdout + result.stderr


@contextlib.contextmanager
def compose_stack(project: Path, *up_args: str) -> Iterator[str]:
    """`docker compose up --build --wait` under a unique project name; `down -v` afterwards."""
    name = unique_name("tt")
    try:
        docker("compose", "-p", name, "up", "--build", "--wait", *up_args, cwd=project)
        yield name
    finally:
        docker("compose", "-p", name, "down", "-v", "--remove-orphans", cwd=project, check=False)


def free_subnet() -> str:
    """A /24 that overlaps no Docker network: for a test network whose containers need fixed
    addresses. Taken from 10.213.0.0/16, a range Docker's default pools never hand out."""
    networks = docker("network", "ls", "-q").stdout.split()
    used = docker(
        "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", *networks
    )
    taken = [ipaddress.ip_network(subnet) for subnet in used.stdout.split()]
    for third in random.sample(range(256), 256):
        subnet = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(subnet.overlaps(other) for other in taken):
            return str(subnet)
    raise AssertionError("no free subnet in 10.213.0.0/16")


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    rss_kb: int
    command: str


# Run by the image's own Python (slim images have no ps): [pid, ppid, RSS in kB, command line]
# of each process, leaving out itself and the image's HEALTHCHECK probes.
_PROCESS_LISTING = """
import json, os
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        status = open(f"/proc/{pid}/status").read()
        command = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
    except OSError:
        continue
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields.get("VmRSS", "0 kB").split()[0])
    if int(pid) != os.getpid() and "/health" not in command:
        found.append([int(pid), int(fields["PPid"]), rss, command.strip()])
print(json.dumps(found))
"""


def processes(name: str) -> list[Process]:
    """The container's processes, less the listing itself, the healthcheck and `runc init` (the
    start of a concurrent exec, such as the healthcheck) or any other without a command line."""
    listing = docker("exec", name, "python", "-c", _PROCESS_LISTING).stdout
    return [Process(*row) for row in json.loads(listing) if row[3] not in {"", "runc init"}]


def host_pid(name: str) -> int:
    """The host's PID of the container's first process: its /proc shows the container's cgroup
    and network namespace."""
    return int(docker("inspect", "-f", "{{.State.Pid}}", name).stdout)


def cpu_seconds(name: str) -> float:
    """CPU time the container has used so far (all its processes), from its cgroup on this host:
    cgroup v2's cpu.stat or v1's cpuacct."""
    pid = host_pid(name)
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            stat = Path(f"/sys/fs/cgroup{path}/cpu.stat")
            if stat.exists():
                usage = dict(row.split() for row in stat.read_text().splitlines())
                return int(usage["usage_usec"]) / 1e6
        elif "cpuacct" in controllers.split(","):
            return int(Path(f"/sys/fs/cgroup/cpuacct{path}/cpuacct.usage").read_text()) / 1e9
    raise AssertionError(f"no CPU accounting found for {name} (pid {pid})")


def established_peers(pid: int, port: int) -> list[str]:
    """The IPv4 addresses with a TCP connection established to `port` in the network namespace
    of host process `pid` (a container's: `host_pid`), read at once: no exec."""
    peers = []
    for row in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = row.split()[1:4]
        if state == "01" and int(local.split(":")[1], 16) == port:
            address = bytes.fromhex(remote.split(":")[0])[::-1]  # little-endian on x86 and arm
            peers.append(str(ipaddress.IPv4Address(address)))
    return peers
