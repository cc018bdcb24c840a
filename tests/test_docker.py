"""The generated container setup, proven with a real Docker engine.

Six images (every dependency tool x layout, mixing the other answers) are built once and
shared: each serves /health as a non-root user, holds no `.env`, stops within 2 s, finishes
the request in flight when the stop arrives, runs the server processes its process model asks
for, and rebuilds a code-only edit without reinstalling anything. Compose stacks come up
healthy on a port of 127.0.0.1, trust forwarded headers only from their proxy, and leave
nothing behind. hadolint checks the Dockerfile of many renders.
"""

import contextlib
import http.client
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.combinations import SIMPLE_INDEX, Answers
from tests.docker import (
    build,
    compose_stack,
    container,
    docker,
    logs,
    processes,
    require_engine,
    unique_name,
)
from tests.project import free_port, http_get, render, wait_for_http

DOCKER_GROUP = pytest.mark.xdist_group("docker")

# One image per dependency tool x layout; the other answers vary so that single and workers
# mode, the prestart entrypoint (SQLite) and every Python version are among them.
IMAGE_ANSWERS: dict[str, Answers] = {
    "uv-package": {
        "dependency_tool": "uv",
        "layout": "package",
        "python_version": "3.13",
        "process_model": "single",
        "database": "sqlite",
        "migrations": True,
    },
    "uv-single_file": {
        "dependency_tool": "uv",
        "layout": "single_file",
        "python_version": "3.12",
        "process_model": "workers",
        "reverse_proxy": "traefik",
        "database": "none",
    },
    "poetry-package": {
        "dependency_tool": "poetry",
        "layout": "package",
        "python_version": "3.11",
        "process_model": "workers",
        "reverse_proxy": "nginx",
        "database": "none",
        "package_index": SIMPLE_INDEX,
    },
    "poetry-single_file": {
        "dependency_tool": "poetry",
        "layout": "single_file",
        "python_version": "3.13",
        "process_model": "single",
        "reverse_proxy": "external",
        "database": "sqlite",
        "migrations": False,
        "package_index": SIMPLE_INDEX,
    },
    "pip-package": {
        "dependency_tool": "pip",
        "layout": "package",
        "python_version": "3.12",
        "process_model": "single",
        "database": "none",
    },
    "pip-single_file": {
        "dependency_tool": "pip",
        "layout": "single_file",
        "python_version": "3.11",
        "process_model": "workers",
        "database": "sqlite",
        "migrations": True,
    },
}
SINGLE = [key for key, answers in IMAGE_ANSWERS.items() if answers["process_model"] == "single"]
WORKERS = [key for key, answers in IMAGE_ANSWERS.items() if answers["process_model"] == "workers"]

# docker stop kills after 10 s: a graceful stop ends well before, even on a busy machine.
GRACEFUL_SECONDS = 5.0
SLOW_SECONDS = 4.0  # long enough for `docker stop` to arrive mid-request on a busy machine
SLOW_FINISHED = "slow request finished"
# Appended to the rendered app before building: the template has no slow endpoint, and the stop
# test needs a request in flight when the stop arrives. It streams a first line at once (so the
# client knows the handler runs), then the rest after a pause.
SLOW_ROUTE = f"""

import asyncio as _asyncio  # noqa: E402
from collections.abc import AsyncIterator as _AsyncIterator  # noqa: E402

from fastapi.responses import StreamingResponse as _StreamingResponse  # noqa: E402


@app.get("/slow")
async def slow() -> _StreamingResponse:
    async def body() -> _AsyncIterator[bytes]:
        yield b"started\\n"
        await _asyncio.sleep({SLOW_SECONDS})
        print("{SLOW_FINISHED}", flush=True)
        yield b"done\\n"

    return _StreamingResponse(body())
"""

INSTALL_STEP = {
    "uv": "uv sync --locked",
    "poetry": "poetry install --only main",
    "pip": "install --require-hashes",
}


@dataclass(frozen=True)
class Built:
    """A rendered project and the image built from it."""

    key: str
    answers: Answers
    project: Path
    tag: str
    canary: str

    def code_file(self) -> Path:
        return self.project / ("app/main.py" if self.answers["layout"] == "package" else "main.py")


def _render_locked(job: tuple[Path, Path, Answers]) -> None:
    render(*job, tasks=True)


def _render_without_tasks(job: tuple[Path, Path, Answers]) -> None:
    render(*job)


def _prepare(key: str, answers: Answers, project: Path) -> Built:
    """Add the slow route and a canary secret in .env, as a user's checkout would have one."""
    canary = f"canary-{uuid.uuid4().hex}"
    built = Built(key, answers, project, unique_name(f"tt-{key.replace('_', '-')}"), canary)
    with built.code_file().open("a") as code:
        code.write(SLOW_ROUTE)
    env = project / ".env"
    assert env.exists(), "the template's task writes .env"
    env.write_text(env.read_text() + f"IMAGE_LEAK_CANARY={canary}\n")
    return built


@pytest.fixture(scope="module")
def images(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Built]]:
    """The six projects, rendered with their lock files and built in parallel, once."""
    require_engine()
    root = tmp_path_factory.mktemp("images")
    jobs = [(template, root / key, answers) for key, answers in IMAGE_ANSWERS.items()]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_render_locked, jobs))
    built = {key: _prepare(key, answers, root / key) for key, answers in IMAGE_ANSWERS.items()}
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            list(pool.map(lambda item: build(item.project, item.tag), built.values()))
        yield built
    finally:
        docker("rmi", "-f", *(item.tag for item in built.values()), check=False)


def published_port(name: str, container_port: int = 8000) -> int:
    mapping = docker("port", name, f"{container_port}/tcp").stdout.split()[0]
    host, _, port = mapping.rpartition(":")
    assert host == "127.0.0.1", mapping
    return int(port)


@contextlib.contextmanager
def serving(built: Built, *run_args: str) -> Iterator[str]:
    """A container of the image, run as the README says (--env-file .env), answering /health."""
    publish = ["-p", "127.0.0.1::8000", "--env-file", str(built.project / ".env")]
    with container(built.tag, *publish, *run_args) as name:
        wait_until_healthy(name)
        yield name


@pytest.fixture(scope="module")
def shared(images: dict[str, Built]) -> Iterator[Callable[[str], str]]:
    """One long-lived container per image for the tests that only look at it."""
    started: dict[str, str] = {}
    with contextlib.ExitStack() as stack:

        def get(key: str) -> str:
            if key not in started:
                started[key] = stack.enter_context(serving(images[key]))
            return started[key]

        yield get


def wait_until_healthy(name: str, timeout: float = 60) -> int:
    port = published_port(name)
    try:
        status = wait_for_http(f"http://127.0.0.1:{port}/health", timeout=timeout)
    except OSError as error:
        raise AssertionError(f"{name} never answered: {error}\n{logs(name)}") from None
    assert status == 200, logs(name)
    return port


def worker_pids(name: str) -> set[int]:
    """Uvicorn's workers: the processes its supervisor (PID 1) spawned with multiprocessing."""
    return {p.pid for p in processes(name) if p.ppid == 1 and "spawn_main" in p.command}


def wait_for_workers(name: str, count: int, timeout: float = 30) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        pids = worker_pids(name)
        if len(pids) == count or time.monotonic() > deadline:
            return pids
        time.sleep(0.2)


# --- Each of the six images -------------------------------------------------------------

ALL = list(IMAGE_ANSWERS)


@pytest.mark.docker
@DOCKER_GROUP
@pytest.mark.parametrize("key", ALL)
def test_image_serves_health_as_non_root_with_server_as_pid_1(
    key: str, shared: Callable[[str], str]
) -> None:
    name = shared(key)
    assert docker("exec", name, "id", "-u").stdout.strip() not in {"", "0"}
    status = docker("exec", name, "cat", "/proc/1/status").stdout
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert "0" not in uids, status
    pid_1 = next(p for p in processes(name) if p.pid == 1)
    assert "uvicorn" in pid_1.command, "the server runs as PID 1 (in or instead of prestart)"


@pytest.mark.docker
@DOCKER_GROUP
@pytest.mark.parametrize("key", ALL)
def test_image_holds_no_env_file_in_any_layer(key: str, images: dict[str, Built]) -> None:
    built = images[key]
    leaks: list[str] = []
    seen: set[str] = set()
    with subprocess.Popen(["docker", "save", built.tag], stdout=subprocess.PIPE) as save:
        assert save.stdout is not None
        with tarfile.open(fileobj=save.stdout, mode="r|") as archive:
            for member in archive:
                blob = archive.extractfile(member) if member.isfile() else None
                if blob is not None and not member.name.endswith(".json"):
                    leaks += _env_leaks_in_layer(blob, built.canary, seen)
    assert save.returncode == 0
    code = built.code_file().relative_to(built.project).as_posix()
    assert f"srv/{code}" in seen, "the layers were read (the app's code is in one)"
    assert leaks == [], "a .env (or its content) is in the image"


def _env_leaks_in_layer(layer: IO[bytes], canary: str, seen: set[str]) -> list[str]:
    """Files of one layer (any tar in `docker save`'s archive) named .env or holding the canary."""
    found = []
    try:
        with tarfile.open(fileobj=layer, mode="r|") as files:
            for entry in files:
                seen.add(entry.name)
                if Path(entry.name).name == ".env":
                    found.append(entry.name)
                elif entry.isfile() and entry.size < 1_000_000:
                    content = files.extractfile(entry)
                    if content is not None and canary.encode() in content.read():
                        found.append(f"{entry.name} (holds the .env canary)")
    except tarfile.ReadError:
        return []
    return found


@pytest.mark.docker
@DOCKER_GROUP
@pytest.mark.parametrize("key", ALL)
def test_docker_stop_ends_well_before_the_kill(key: str, images: dict[str, Built]) -> None:
    with serving(images[key]) as name:
        stop_seconds = timed_stop(name)
        exit_code = docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
    assert stop_seconds < GRACEFUL_SECONDS, f"docker stop took {stop_seconds:.2f} s"
    assert exit_code == "0", "the server shut down by itself, it was not killed"


@pytest.mark.docker
@DOCKER_GROUP
@pytest.mark.parametrize("key", ALL)
def test_docker_stop_during_start_up_does_not_wait_for_the_kill(
    key: str, images: dict[str, Built]
) -> None:
    built = images[key]
    execs = built.answers["process_model"] == "workers"
    with container(built.tag, "--env-file", str(built.project / ".env")) as name:
        wait_until_the_server_catches_the_stop_signal(name, prestart_execs=execs)
        stop_seconds = timed_stop(name)
        exit_code = docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
    assert stop_seconds < GRACEFUL_SECONDS, f"docker stop took {stop_seconds:.2f} s"
    assert exit_code != "137", "killed after the stop timeout"


def wait_until_the_server_catches_the_stop_signal(name: str, prestart_execs: bool) -> None:
    """Until PID 1 runs the server (in workers mode prestart execs Uvicorn; in single mode it
    runs it in its own interpreter) and has a SIGINT handler. The kernel drops a signal that a
    container's PID 1 does not catch, so a stop sent in the first milliseconds of an
    interpreter's life, or during the exec, is lost for any image whose server is PID 1 without
    an init process. Start-up, for this test, is what comes after: the app's imports and its
    lifespan, and in single mode the preparation before them."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        probe = docker("exec", name, "cat", "/proc/1/cmdline", "/proc/1/status", check=False)
        if probe.returncode != 0:
            raise AssertionError(f"the container is not running:\n{logs(name)}")
        command, _, status = probe.stdout.partition("Name:")
        caught = next(
            (line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0"
        )
        is_server = "uvicorn" in command and not (prestart_execs and "prestart" in command)
        if is_server and int(caught, 16) & (1 << (signal.SIGINT - 1)):
            return
        time.sleep(0.05)
    raise AssertionError("the server never caught SIGINT, the image's STOPSIGNAL")


@pytest.mark.docker
@DOCKER_GROUP
@pytest.mark.parametrize("key", ALL)
def test_request_in_flight_when_the_stop_arrives_completes(
    key: str, images: dict[str, Built]
) -> None:
    with serving(images[key]) as name:
        connection = http.client.HTTPConnection("127.0.0.1", published_port(name), timeout=10)
        connection.request("GET", "/slow")
        response = connection.getresponse()
        assert response.readline() == b"started\n", "the handler is running"
        rest: list[bytes] = []
        reader = threading.Thread(target=lambda: rest.append(response.read()))
        reader.start()
        stop_seconds = timed_stop(name)
        reader.join(timeout=10)
        printed = logs(name)
        exit_code = docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
    assert rest == [b"done\n"], printed
    assert printed.index("Shutting down") < printed.index(SLOW_FINISHED), (
        "it finished before the stop"
    )
    assert stop_seconds < SLOW_SECONDS + GRACEFUL_SECONDS, f"docker stop took {stop_seconds:.2f} s"
    assert exit_code == "0", "the server shut down by itself, it was not killed"


def timed_stop(name: str) -> float:
    started = time.monotonic()
    docker("stop", name)
    return time.monotonic() - started


# --- Process model -------------------------------------------------------------------------


@pytest.mark.docker
@DOCKER_GROUP
@pytest.mark.parametrize("key", SINGLE)
def test_single_mode_runs_exactly_one_server_process(
    key: str, shared: Callable[[str], str]
) -> None:
    found = processes(shared(key))
    assert [p.pid for p in found] == [1], found
    assert "uvicorn" in found[0].command


@pytest.mark.docker
@DOCKER_GROUP
@pytest.mark.parametrize("cpus", [1, 2])
@pytest.mark.parametrize("key", WORKERS)
def test_workers_mode_runs_one_worker_per_cpu_of_the_containers_quota(
    key: str, cpus: int, images: dict[str, Built]
) -> None:
    spawned = cpus if cpus > 1 else 0  # for one worker, Uvicorn serves in PID 1 itself
    with serving(images[key], "--cpus", str(cpus)) as name:
        assert len(wait_for_workers(name, spawned)) == spawned
        assert f"Starting {cpus} workers: CPU quota {cpus} (" in logs(name)


@pytest.mark.docker
@DOCKER_GROUP
@pytest.mark.parametrize("key", WORKERS)
def test_web_concurrency_overrides_the_worker_count(key: str, images: dict[str, Built]) -> None:
    with serving(images[key], "--cpus", "1", "-e", "WEB_CONCURRENCY=3") as name:
        assert len(wait_for_workers(name, 3)) == 3
        assert "Starting 3 workers, as WEB_CONCURRENCY asks" in logs(name)


@pytest.mark.docker
@DOCKER_GROUP
@pytest.mark.parametrize("key", WORKERS)
def test_killed_worker_is_replaced(key: str, images: dict[str, Built]) -> None:
    count = 2
    with serving(images[key], "-e", f"WEB_CONCURRENCY={count}") as name:
        before = wait_for_workers(name, count)
        victim = min(before)
        docker("exec", name, "python", "-c", f"import os; os.kill({victim}, 9)")
        # The supervisor notices at its next health check; a kill landing while it waits for
        # the victim's answer costs it the whole healthcheck timeout first.
        deadline = time.monotonic() + worker_healthcheck_timeout(images[key].tag) + 15
        while True:
            after = worker_pids(name)
            if victim not in after and len(after) == count:
                break
            assert time.monotonic() < deadline, f"workers {before} became {after}"
            time.sleep(0.2)
        assert http_get(f"http://127.0.0.1:{published_port(name)}/health")[0] == 200


def worker_healthcheck_timeout(tag: str) -> float:
    """Seconds Uvicorn's supervisor waits for a worker's answer, from the image's CMD."""
    command = json.loads(docker("inspect", "-f", "{{json .Config.Cmd}}", tag).stdout)
    return float(command[command.index("--timeout-worker-healthcheck") + 1])


# --- Build cache ---------------------------------------------------------------------------


@pytest.mark.docker
@DOCKER_GROUP
@pytest.mark.parametrize("key", ALL)
def test_code_only_edit_rebuilds_without_reinstalling_dependencies(
    key: str, images: dict[str, Built], tmp_path: Path
) -> None:
    built = images[key]
    project = shutil.copytree(built.project, tmp_path / "project")
    code = project / built.code_file().relative_to(built.project)
    code.write_text(
        code.read_text()
        + f'\n\n@app.get("/edited-{uuid.uuid4().hex}")\nasync def edited() -> None:\n    pass\n'
    )
    tag = unique_name("tt-edit")
    try:
        output = build(project, tag).stderr
    finally:
        docker("rmi", "-f", tag, check=False)
    install = step_of(output, INSTALL_STEP[built.answers["dependency_tool"]])
    assert f"{install} CACHED" in output, output
    copy_code = step_of(output, f"COPY {code.relative_to(project).parts[0]} ")
    assert f"{copy_code} CACHED" not in output, "the edit reached the image"


def step_of(build_output: str, text: str) -> str:
    """The `#N` of the BuildKit step whose title contains the text (plain progress output)."""
    for line in build_output.splitlines():
        if line.startswith("#") and " [" in line and text in line:
            return line.split()[0]
    raise AssertionError(f"no build step with {text!r} in\n{build_output}")


# --- Compose -------------------------------------------------------------------------------


@pytest.mark.docker
@DOCKER_GROUP
@pytest.mark.parametrize(
    "answers",
    [{}, {"database": "postgresql", "migrations": True}],
    ids=["defaults", "postgresql"],
)
def test_compose_stack_is_healthy_on_127_0_0_1_and_down_removes_it(
    answers: Answers, template: Path, tmp_path: Path
) -> None:
    require_engine()
    slug = unique_name("tt-stack")
    project = render(template, tmp_path / "project", {**answers, "project_slug": slug}, tasks=True)
    port = free_port()
    with (project / ".env").open("a") as env:
        env.write(f"APP_PORT={port}\n")
    try:
        with compose_stack(project) as stack:
            running = docker("compose", "-p", stack, "ps", "--format", "json", cwd=project)
            assert "healthy" in running.stdout, running.stdout
            assert http_get(f"http://127.0.0.1:{port}/health")[0] == 200
            app = docker("compose", "-p", stack, "ps", "-q", "app", cwd=project).stdout.strip()
            assert_the_health_probe_is_sparing_and_reads_the_status(app)
            if answers.get("database") == "postgresql":
                assert http_get(f"http://127.0.0.1:{port}/ready")[0] == 200
        label = f"label=com.docker.compose.project={stack}"
        for listing in (["container", "ls", "--all"], ["volume", "ls"], ["network", "ls"]):
            left = docker(*listing, "--quiet", "--filter", label).stdout.strip()
            assert left == "", f"{listing[0]}s left after down -v: {left}"
    finally:
        docker("rmi", "-f", f"{slug}:latest", check=False)


def assert_the_health_probe_is_sparing_and_reads_the_status(name: str) -> None:
    """The image's HEALTHCHECK: a new interpreter every 10 s, not 5 (CPU on a small quota), and
    healthy only on a 200 from /health."""
    config = json.loads(docker("inspect", "-f", "{{json .Config.Healthcheck}}", name).stdout)
    assert config["Interval"] == 10 * 10**9, config
    kind, *probe = config["Test"]
    assert kind == "CMD" and probe[:3] == ["python", "-I", "-S"], config
    assert docker("exec", name, *probe, check=False).returncode == 0
    elsewhere = [part.replace("/health", "/no-such-route") for part in probe]
    assert docker("exec", name, *elsewhere, check=False).returncode == 1


# --- Static --------------------------------------------------------------------------------

HADOLINT_ANSWERS: list[Answers] = [
    {
        "dependency_tool": tool,
        "layout": layout,
        "process_model": process,
        "reverse_proxy": proxy,
        **database,
        **index,
    }
    for tool in ("uv", "poetry", "pip")
    for index in ({}, {"package_index": SIMPLE_INDEX})
    for layout, process, proxy, database in (
        ("package", "single", "none", {"database": "sqlite", "migrations": True}),
        ("single_file", "workers", "external", {"database": "postgresql", "migrations": False}),
        ("package", "workers", "traefik", {"database": "none"}),
    )
]


@pytest.mark.xdist_group("hadolint")
def test_generated_dockerfiles_pass_hadolint(template: Path, tmp_path: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    jobs = [
        (template, tmp_path / f"p{i:02d}", answers) for i, answers in enumerate(HADOLINT_ANSWERS)
    ]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_render_without_tasks, jobs))
    dockerfiles = [str(dest / "Dockerfile") for _, dest, _ in jobs]
    result = subprocess.run([str(hadolint), *dockerfiles], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
