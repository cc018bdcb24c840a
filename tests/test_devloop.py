"""The developer's loop in containers, run for real.

`docker compose -f compose.yaml -f compose.dev.yaml watch` brings a rendered project up; a saved
edit of a route reaches the running container and the next request answers with it within
seconds, the server still running as the image's user; a dependency added with the project's
tool rebuilds the image and replaces the container. The devcontainer's configuration parses and
names compose files and a service that exist. `@devcontainers/cli` (or, without it, the compose
commands the CLI runs) starts it on the stack with the database and the proxy: its first start
installs the environment, in which the project's own tests pass, and the server started in it
answers through the proxy. For the other dependency tools, their install and tests run in the
same compose service. With metrics on, compose's `metrics` profile runs a Prometheus that scrapes
the app behind a proxy.
"""

import json
import os
import re
import shutil
import signal
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

from tests.combinations import SIMPLE_INDEX, Answers
from tests.docker import DOCKER_ENV, docker, require_engine, unique_name
from tests.project import free_port, http_get, render, run

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("devloop")]

REPO = Path(__file__).resolve().parent.parent
DEV_FILES = ["-f", "compose.yaml", "-f", "compose.dev.yaml"]
UNVERIFIED = ssl._create_unverified_context()

# Both forms of the development command: the image's entrypoint replaced (no proxy), and the
# proxy's address lookup kept before it (a proxy in compose); a package and a single file.
WATCHED: dict[str, Answers] = {
    "uv-package-direct": {
        "dependency_tool": "uv",
        "layout": "package",
        "process_model": "single",
        "reverse_proxy": "none",
        "database": "sqlite",
        "migrations": True,
    },
    "pip-single-file-traefik": {
        "dependency_tool": "pip",
        "layout": "single_file",
        "process_model": "workers",
        "reverse_proxy": "traefik",
        "database": "none",
    },
}


@dataclass(frozen=True)
class Watched:
    answers: Answers
    project: Path
    name: str
    port: int

    @property
    def base_url(self) -> str:
        scheme = "http" if self.answers["reverse_proxy"] == "none" else "https"
        return f"{scheme}://127.0.0.1:{self.port}"

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return docker("compose", "-p", self.name, *DEV_FILES, *args, cwd=self.project, check=check)

    def container_id(self) -> str:
        return self.compose("ps", "-q", "app").stdout.strip()


def get(url: str) -> tuple[int, str]:
    """One GET, as the proxy's domain (localhost) over TLS; (0, error) if nothing answers."""
    request = urllib.request.Request(url, headers={"Host": "localhost"})
    try:
        with urllib.request.urlopen(request, timeout=5, context=UNVERIFIED) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (OSError, urllib.error.URLError) as error:
        return 0, str(error)


def redirect(url: str) -> str:
    """Where a GET, as the proxy's domain over TLS, is redirected to (not followed)."""

    class Unfollowed(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(
        Unfollowed, urllib.request.HTTPSHandler(context=UNVERIFIED)
    )
    request = urllib.request.Request(url, headers={"Host": "localhost"})
    try:
        with opener.open(request, timeout=5) as response:
            raise AssertionError(f"{url} answered {response.status}, not a redirect")
    except urllib.error.HTTPError as error:
        assert error.code in (307, 308), error.code
        return str(error.headers["Location"])


def wait_for_line(log: Path, text: str, process: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert process.poll() is None, f"watch exited {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in watch's output:\n{log.read_text()}"
        time.sleep(0.5)


def require_compose_watch() -> None:
    """Compose watch came with Compose 2.22."""
    require_engine()
    version = docker("compose", "version", "--short").stdout.strip().lstrip("v")
    major, minor = (int(part) for part in version.split(".")[:2])
    if (major, minor) < (2, 22):
        pytest.skip(f"docker compose {version} has no watch (2.22 or later)")


@pytest.fixture(scope="module", params=list(WATCHED))
def watched(
    request: pytest.FixtureRequest, template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Watched]:
    """The project under `docker compose ... watch`, serving; watch stopped and the stack
    removed afterwards."""
    require_compose_watch()
    key: str = request.param
    answers = {**WATCHED[key], "project_slug": unique_name("devloop-watch")}
    workdir = tmp_path_factory.mktemp(key)
    project = render(template, workdir / "project", answers, tasks=True)
    port = free_port()
    settings = [f"APP_PORT={port}"]
    if answers["reverse_proxy"] != "none":
        settings += [f"HTTPS_PORT={port}", f"HTTP_PORT={free_port()}"]
    with (project / ".env").open("a") as env:
        env.write("".join(f"{line}\n" for line in settings))
    name = str(answers["project_slug"])
    log = workdir / "watch.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            ["docker", "compose", "-p", name, *DEV_FILES, "watch"],
            cwd=project,
            env={**os.environ, **DOCKER_ENV},
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: the CLI and its compose plugin
        )
    built = Watched(answers, project, name, port)
    try:
        wait_for_line(log, "Watch enabled", process, timeout=900)
        deadline = time.monotonic() + 180
        while get(f"{built.base_url}/health")[0] != 200:
            assert time.monotonic() < deadline, f"no 200 on /health:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        yield built
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        built.compose("down", "-v", "--remove-orphans", check=False)
        docker("rmi", "-f", f"{name}:latest", check=False)


def test_a_saved_edit_of_a_route_answers_the_next_request_within_seconds(
    watched: Watched,
) -> None:
    code = watched.project / (
        "app/routes/health.py" if watched.answers["layout"] == "package" else "main.py"
    )
    marker = uuid.uuid4().hex
    source = code.read_text()
    assert 'return {"status": "ok"}' in source
    code.write_text(
        source.replace('return {"status": "ok"}', f'return {{"status": "{marker}"}}', 1)
    )
    saved = time.monotonic()
    while marker not in get(f"{watched.base_url}/health")[1]:
        # About 2 s on an idle machine; the bound leaves room for a CI machine's busy cores.
        assert time.monotonic() - saved < 60, "the edit did not reach the server within 60 s"
        time.sleep(0.1)
    print(f"edit answered {time.monotonic() - saved:.1f} s after the save ({watched.answers})")

    # The reloaded server still runs as the image's user (setpriv), not as the container's root.
    top = docker("top", watched.container_id(), "-eo", "pid,uid,args").stdout.splitlines()[1:]
    server = [line for line in top if "uvicorn" in line or "multiprocessing" in line]
    assert server, top
    assert all(line.split()[1] == "10001" for line in server), top


def test_a_dependency_added_with_the_tool_rebuilds_the_image(watched: Watched) -> None:
    if watched.answers["dependency_tool"] != "uv":
        pytest.skip("one rebuild proves watch's rule; test_render checks each tool's lock files")
    before = watched.container_id()
    probe = ["exec", "-T", "app", "python", "-c", "import six"]
    assert watched.compose(*probe, check=False).returncode != 0
    run(["uv", "add", "--no-sync", "six"], watched.project)  # pyproject.toml and uv.lock
    deadline = time.monotonic() + 600
    while watched.compose(*probe, check=False).returncode != 0:
        assert time.monotonic() < deadline, "no rebuilt container with the new dependency"
        time.sleep(2)
    assert watched.container_id() != before
    deadline = time.monotonic() + 120
    while get(f"{watched.base_url}/health")[0] != 200:
        assert time.monotonic() < deadline, "the rebuilt app does not answer"
        time.sleep(0.5)


# --- The devcontainer ---------------------------------------------------------------------

DEVCONTAINER_PROJECTS: dict[str, Answers] = {
    "uv": {"dependency_tool": "uv", "database": "sqlite", "layout": "package"},
    "poetry": {
        "dependency_tool": "poetry",
        "database": "postgresql",
        "reverse_proxy": "traefik",
        "layout": "package",
        "package_index": SIMPLE_INDEX,
    },
    "pip": {"dependency_tool": "pip", "database": "none", "layout": "single_file"},
}
# The one project the devcontainer CLI starts as an editor would, on its whole stack (the
# database and the proxy): what the CLI does is the same for every tool, so the other tools'
# projects only install their environment and pass their tests in the same compose service.
CLI_STARTED = "poetry"
CLI = REPO / "tests" / "devcontainer" / "node_modules" / ".bin" / "devcontainer"
# The dev user's uid in the devcontainer's image. The CLI gives it the uid of the user who
# opens the project, except root's: this suite runs as root, so the project gets that uid
# instead, as a developer's own files would have it.
DEV_UID = 1000
RUN_TESTS = {"uv": "uv run pytest -q", "poetry": "poetry run pytest -q", "pip": "pytest -q"}


def jsonc(text: str) -> Any:
    """devcontainer.json's JSON with comments: whole-line // comments dropped."""
    return json.loads(
        "\n".join(line for line in text.splitlines() if not line.strip().startswith("//"))
    )


@dataclass(frozen=True)
class Devcontainer:
    answers: Answers
    project: Path
    config: Any  # devcontainer.json
    service: Any  # its compose service, as compose merges the files

    @property
    def compose(self) -> list[str]:
        return ["compose", "-p", str(self.answers["project_slug"]), *DEV_FILES]

    @property
    def check(self) -> str:
        """The project's tests and ruff in its environment, then the interpreter's path."""
        tool = str(self.answers["dependency_tool"])
        check = (
            f"{RUN_TESTS[tool]} && ruff check . && python -c 'import sys; print(sys.executable)'"
        )
        if self.answers["database"] == "postgresql":
            # The generated CORS tests build Settings() without its secrets directory, so they
            # read the password from the environment only (as CI and the template's tests do).
            check = f'export POSTGRES_PASSWORD="$(cat secrets/postgres_password)" && {check}'
        return check

    def shell(self, how: list[str], command: str) -> subprocess.CompletedProcess[str]:
        """`sh -c command` in the dev service, by the compose command `how` (exec, run...)."""
        return docker(
            *self.compose,
            *how,
            self.config["service"],
            "sh",
            "-c",
            command,
            cwd=self.project,
            check=False,
        )

    def assert_checked(self, result: subprocess.CompletedProcess[str]) -> None:
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
        assert re.search(r"\d+ passed", result.stdout), result.stdout[-3000:]
        interpreter = self.config["customizations"]["vscode"]["settings"][
            "python.defaultInterpreterPath"
        ]
        assert result.stdout.strip().splitlines()[-1] == interpreter

    def down(self) -> None:
        docker(
            *self.compose,
            "--profile",
            "devcontainer",
            "down",
            "-v",
            "--rmi",
            "local",
            cwd=self.project,
            check=False,
        )


def devcontainer(template: Path, tmp_path: Path, tool: str) -> Devcontainer:
    """The tool's project rendered and owned by the dev user; its devcontainer.json parses and
    names compose files, a service, a workspace, an interpreter and an install that exist."""
    require_engine()
    answers = {**DEVCONTAINER_PROJECTS[tool], "project_slug": unique_name("devloop-dc")}
    project = render(template, tmp_path / "project", answers, tasks=True)
    config = jsonc((project / ".devcontainer" / "devcontainer.json").read_text())
    files = [(project / ".devcontainer" / name).resolve() for name in config["dockerComposeFile"]]
    assert files == [project / "compose.yaml", project / "compose.dev.yaml"]
    compose = ["compose", "-p", str(answers["project_slug"]), *DEV_FILES]
    merged = json.loads(
        docker(
            *compose, "--profile", "devcontainer", "config", "--format", "json", cwd=project
        ).stdout
    )
    service = merged["services"][config["service"]]
    assert config["runServices"] == [config["service"]]
    assert [volume["target"] for volume in service["volumes"]] == [config["workspaceFolder"]]
    settings = config["customizations"]["vscode"]["settings"]
    venv = service["environment"]["VIRTUAL_ENV"]
    assert settings["python.defaultInterpreterPath"] == f"{venv}/bin/python"
    assert "charliermarsh.ruff" in config["customizations"]["vscode"]["extensions"]
    install = {"uv": "uv sync --locked", "poetry": "poetry install", "pip": "requirements-dev.txt"}
    assert install[tool] in config["postCreateCommand"]
    subprocess.run(["chown", "-R", f"{DEV_UID}:{DEV_UID}", str(project)], check=True)
    return Devcontainer(answers, project, config, service)


def test_the_devcontainer_starts_on_the_stack_and_the_proxy_reaches_its_server(
    template: Path, tmp_path: Path
) -> None:
    """The devcontainer CLI (or, without it, the compose commands it runs) starts the dev
    service with the database and the proxy; its first start installs the environment, in
    which the project's tests pass. The server started in it as the README says answers
    through the proxy on its published HTTPS port, the app service not running."""
    dev = devcontainer(template, tmp_path, CLI_STARTED)
    assert set(dev.service["depends_on"]) == {"db", "proxy"}
    https_port = free_port()
    with (dev.project / ".env").open("a") as env:
        # The ports the stack publishes on the host, free ones (5432 may be another's).
        env.write(f"HTTPS_PORT={https_port}\nHTTP_PORT={free_port()}\n")
        env.write(f"POSTGRES_PORT={free_port()}\n")
    readme = (dev.project / "README.md").read_text()
    [serve] = re.findall(r"after `([^`]+)`\s+in its terminal", readme)
    # Started in the background by a shell of the container, its output in a file.
    start = f"nohup {serve} > /tmp/server.log 2>&1 &"
    config = dev.config
    try:
        if CLI.exists():
            up = [str(CLI), "up", "--workspace-folder", str(dev.project)]
            result = subprocess.run(up, capture_output=True, text=True, timeout=900)
            if '"outcome":"success"' not in result.stdout:
                # The CLI does not pass compose's own words on: the stack's state and logs.
                stack = [*dev.compose, "--profile", "devcontainer"]
                states = docker(*stack, "ps", "-a", cwd=dev.project, check=False).stdout
                logs = docker(*stack, "logs", "--tail=30", cwd=dev.project, check=False)
                raise AssertionError(
                    f"{result.stdout[-3000:]}{result.stderr[-3000:]}\n--- compose ps -a\n"
                    f"{states}\n--- logs\n{logs.stdout[-4000:]}{logs.stderr[-2000:]}"
                )

            def in_dev(command: str, **options: Any) -> subprocess.CompletedProcess[str]:
                execute = [str(CLI), "exec", "--workspace-folder", str(dev.project)]
                return subprocess.run(
                    [*execute, "sh", "-c", command], capture_output=True, text=True, **options
                )
        else:
            # What the CLI runs: the service (and what it depends on) up, then the
            # postCreateCommand and the commands as the remote user in the workspace folder.
            docker(
                *dev.compose, "up", "-d", "--build", "--wait", config["service"], cwd=dev.project
            )
            as_user = ["exec", "-T", "-u", config["remoteUser"], "-w", config["workspaceFolder"]]

            def in_dev(command: str, **options: Any) -> subprocess.CompletedProcess[str]:
                return dev.shell(as_user, command)

            result = in_dev(config["postCreateCommand"])
            assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
        dev.assert_checked(in_dev(dev.check, timeout=900))

        running = docker(*dev.compose, "ps", "--services", cwd=dev.project).stdout.split()
        assert sorted(running) == ["db", "dev", "proxy"]
        assert in_dev(start, timeout=60).returncode == 0
        deadline = time.monotonic() + 120
        while (answer := get(f"https://127.0.0.1:{https_port}/health"))[0] != 200:
            log = in_dev("cat /tmp/server.log").stdout
            assert time.monotonic() < deadline, f"{answer}\n--- server output\n{log[-3000:]}"
            time.sleep(0.5)
        # The server trusts the proxy's X-Forwarded-Proto: the redirect it builds (to the route
        # without the trailing slash) is to the https URL the client asked.
        assert redirect(f"https://127.0.0.1:{https_port}/items/") == "https://localhost/items"
    finally:
        dev.down()


@pytest.mark.parametrize("tool", [tool for tool in DEVCONTAINER_PROJECTS if tool != CLI_STARTED])
def test_the_devcontainer_service_installs_the_tools_environment_where_the_tests_pass(
    tool: str, template: Path, tmp_path: Path
) -> None:
    """What differs from one tool to another: the postCreateCommand and the environment it
    makes, run in the dev service as the remote user in the workspace folder (one container,
    removed afterwards; the CLI's start is the test above's)."""
    dev = devcontainer(template, tmp_path, tool)
    config = dev.config
    as_user = ["-u", config["remoteUser"], "-w", config["workspaceFolder"]]
    command = f"{config['postCreateCommand']} && {dev.check}"
    try:
        run_once = ["--profile", "devcontainer", "run", "--rm", "--build", *as_user]
        dev.assert_checked(dev.shell(run_once, command))
    finally:
        dev.down()


# --- Prometheus you can see ---------------------------------------------------------------


def test_the_metrics_profile_runs_a_prometheus_that_scrapes_the_app_behind_the_proxy(
    template: Path, tmp_path: Path
) -> None:
    require_engine()
    answers = {
        "project_slug": unique_name("devloop-metrics"),
        "reverse_proxy": "traefik",
        "database": "none",
        "metrics": "prometheus",
    }
    project = render(template, tmp_path / "project", answers, tasks=True)
    promtool = shutil.which("promtool")
    if promtool:
        run([promtool, "check", "config", "prometheus.yml"], project)
    image = re.search(r"image: (prom/prometheus:\S+)", (project / "compose.yaml").read_text())
    assert image, "no Prometheus service in compose.yaml"
    stand_in = subprocess.run(
        [str(REPO / "tests" / "images" / "prometheus"), image[1]],
        capture_output=True,
        text=True,
        env={**os.environ, **DOCKER_ENV},
    )
    if stand_in.returncode != 0:
        pytest.skip(f"no {image[1]} image here: {stand_in.stdout}{stand_in.stderr}")
    https_port, prometheus_port = free_port(), free_port()
    with (project / ".env").open("a") as env:
        env.write(f"HTTPS_PORT={https_port}\nHTTP_PORT={free_port()}\n")
        env.write(f"PROMETHEUS_PORT={prometheus_port}\n")
    name = str(answers["project_slug"])
    compose = ["compose", "-p", name, "--profile", "metrics"]
    try:
        docker(*compose, "up", "--build", "--wait", cwd=project)
        # Three requests through the proxy, to a route nothing else calls (the health probe
        # calls /health): Prometheus, on the proxy's network, counts exactly those.
        # The proxy may answer 502 for a moment after the app turns healthy: such a request
        # never reached the app, so it is asked again.
        for name_asked in ("ada", "grace", "alan"):
            deadline = time.monotonic() + 60
            while (answer := get(f"https://127.0.0.1:{https_port}/greetings/{name_asked}"))[
                0
            ] != 200:
                assert time.monotonic() < deadline, answer
                time.sleep(0.5)
        query = 'sum(http_requests_total{route="/greetings/{name}"})'
        url = f"http://127.0.0.1:{prometheus_port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": query}
        )
        deadline = time.monotonic() + 180
        while True:
            status, body = http_get(url)
            result = json.loads(body)["data"]["result"] if status == 200 else []
            if result and float(result[0]["value"][1]) == 3:
                break
            assert time.monotonic() < deadline, f"Prometheus holds {result}"
            time.sleep(1)
        targets = json.loads(http_get(f"http://127.0.0.1:{prometheus_port}/api/v1/targets")[1])
        health = [target["health"] for target in targets["data"]["activeTargets"]]
        assert health == ["up"], targets
    finally:
        docker(*compose, "down", "-v", "--remove-orphans", cwd=project, check=False)
        docker("rmi", "-f", f"{name}:latest", check=False)
