"""Bad requests never make a generated service fail: fuzzing its own OpenAPI schema.

Schemathesis (schema-driven, property-based) sends what the schema allows and what it does not
(boundaries, wrong types, huge integers, odd strings, broken bodies) to a real Uvicorn server of
the project, on SQLite and on a real PostgreSQL. No answer may be a 5xx, and every status the
service gives must be declared in its schema. The run is bounded in examples and in time.
"""

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.project import free_port, http_get, install, render, serve, tool_env, wait_for_http

# One worker serves and fuzzes both projects: two servers per worker would only compete.
pytestmark = pytest.mark.xdist_group("fuzz")
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
]
PROJECTS: dict[str, dict[str, Any]] = {
    "sqlite": {"database": "sqlite", "layout": "package"},
    "postgresql": {"database": "postgresql", "layout": "single_file", "migrations": False},
}
# What a fuzzer found before: integers beyond the database's, and text PostgreSQL cannot store.
REGRESSIONS = [
    ("DELETE", "/items/9223372036854775808", None),
    ("GET", "/items/15986631771485997056", None),
    ("GET", "/items/2147483648", None),
    ("GET", "/items?offset=9223372036854775808", None),
    ("POST", "/items", b'{"name": "a\\u0000b"}'),
    ("POST", "/items", b'{"name": "\\ud800"}'),
    ("POST", "/items", b'{"name": "\xff\xfe"}'),
    ("POST", "/items", b'{"name": '),
]


@pytest.fixture(scope="module", params=list(PROJECTS))
def server(
    request: pytest.FixtureRequest, template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The project served by Uvicorn, started as the image starts it (prestart first)."""
    answers: dict[str, Any] = {"project_slug": "fuzzed", **PROJECTS[request.param]}
    project = render(template, tmp_path_factory.mktemp("fuzz"), answers, tasks=True)
    (project / ".env").unlink()
    venv = install(project, {"dependency_tool": "uv", "python_version": "3.13", **answers})
    env = {"DATA_DIR": str(project / "data")}
    if request.param == "postgresql":
        env = request.getfixturevalue("postgres_server").create_database()
    port = free_port()
    module = "app.main:app" if answers["layout"] == "package" else "main:app"
    uvicorn = [str(venv / "uvicorn"), module, "--host", "127.0.0.1", "--port", str(port)]
    with serve([str(venv / "python"), "prestart.py", *uvicorn], project, **env) as process:
        url = f"http://127.0.0.1:{port}"
        assert wait_for_http(f"{url}/ready", timeout=300, process=process) == 200
        yield url


def declared_statuses(url: str, method: str, path: str) -> set[int]:
    schema = json.loads(http_get(f"{url}/openapi.json")[1])
    template_path = "/items/{item_id}" if path.startswith("/items/") else path.split("?")[0]
    return {int(code) for code in schema["paths"][template_path][method.lower()]["responses"]}


@pytest.mark.parametrize(("method", "path", "body"), REGRESSIONS)
def test_found_before_now_answers_a_declared_4xx(
    server: str, method: str, path: str, body: bytes | None
) -> None:
    request = urllib.request.Request(f"{server}{path}", data=body, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    assert 400 <= status < 500, status
    assert status in declared_statuses(server, method, path)


def test_fuzzing_the_openapi_schema_finds_no_server_error_and_no_undeclared_status(
    server: str, tmp_path: Path
) -> None:
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{server}/openapi.json",
        f"--checks={','.join(CHECKS)}",
        "--phases=examples,coverage,fuzzing",
        "--max-examples=40",
        "--max-time=60",
        "--seed=20261127",
        "--workers=1",
        "--request-timeout=60",
        "--suppress-health-check=all",
        "--no-color",
    ]
    result = subprocess.run(
        command, cwd=tmp_path, env=tool_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
