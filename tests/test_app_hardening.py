"""What a generated app refuses, shown on a real server: bodies over the limit, unsafe settings.

The app refuses a body over MAX_REQUEST_BODY_BYTES with 413 before reading it, whether its
length is declared or it comes chunked: a 100 MB one leaves the server's memory where it was.
Each bundled proxy carries the same limit, rendered from the one name in includes/server.jinja.
CORS credentials for any origin stop the app at start, naming both settings.
"""

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.bodies import MIB, post_body, rss_mib
from tests.project import free_port, install, render, run, serve, tool_env, wait_for_http

LIMIT = 1024 * 1024
# What a 100 MB request may add to the server's memory: far less than the body, more than noise.
GROWTH_BOUND_MIB = 16


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


@pytest.fixture(scope="module")
def server(project: Project) -> Iterator[tuple[int, int]]:
    """One Uvicorn process of the project: (port, pid)."""
    port = free_port()
    with serve(project.uvicorn(port), project.path, **project.env) as process:
        assert wait_for_http(f"http://127.0.0.1:{port}/health", process=process) == 200
        yield port, process.pid


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_100_mb_body_is_refused_without_the_memory_growing(
    server: tuple[int, int], chunked: bool
) -> None:
    port, pid = server
    before = rss_mib(pid)
    assert post_body(port, "/items", 100 * MIB, chunked=chunked) == 413
    assert rss_mib(pid) - before < GROWTH_BOUND_MIB
    assert post_body(port, "/items", LIMIT, chunked=chunked) == 422  # read: it is no JSON


def test_each_proxy_carries_the_apps_limit(template: Path, tmp_path: Path) -> None:
    """The app's default and the three proxies' limits are one number."""
    found: dict[str, int] = {}
    for proxy in ("nginx", "traefik", "caddy"):
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
