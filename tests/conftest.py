"""Fixtures shared by the template's tests."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from plumbum import local

from tests import docker
from tests.postgres import PostgresServer, start_server
from tests.project import free_port, reuse_compiled_templates, snapshot
from tests.pypi_json import pypi_json
from tests.swarm import leave_if_the_run_joined

REPO = Path(__file__).resolve().parent.parent

reuse_compiled_templates()


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker more than CPUs. Much of a test's time is spent waiting (for a
    container to become healthy, a certificate to be renewed, Swarm to roll back) while the
    CPUs have work the extra worker brings."""
    return (os.cpu_count() or 1) + 1


def pytest_unconfigure(config: pytest.Config) -> None:
    """Once the whole run is over (in the process that ran it, not in an xdist worker)."""
    if not hasattr(config, "workerinput") and docker.engine_problem() is None:
        leave_if_the_run_joined()
        docker.remove_run_images()


@pytest.fixture(scope="session", autouse=True)
def pip_index_with_json_api() -> Iterator[None]:
    """pip, where a project leaves the index to it, reads PyPI with its JSON API, so that
    pip-compile takes the hashes from it instead of downloading every file
    (tests/pypi_json.py). A PIP_INDEX_URL set for the run is kept.

    Copier runs its tasks in plumbum's copy of the environment, taken when copier was
    imported, so the variable goes there too."""
    if "PIP_INDEX_URL" in os.environ:
        yield
        return
    with pypi_json() as url, local.env(PIP_INDEX_URL=url), pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIP_INDEX_URL", url)
        yield


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template as in the working tree, without its git history (so no tag is picked)."""
    return snapshot(REPO, tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL on a free loopback port, for this test process."""
    server = start_server(free_port())
    if server is None:
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)")
    yield server
    server.stop()


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> dict[str, str]:
    """A fresh database: the POSTGRES_* environment a generated project reaches it with."""
    return postgres_server.create_database()


# Tests that failed in the last integration run of the merged branches and are not mended yet.
# Each stays visible as a skip with its reason; the closing note and the open issue name it.
# Each entry: "module.py::test_name_prefix" -> (text the test id must also hold, reason).
QUARANTINED: dict[str, tuple[str, str]] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for where, (variant, reason) in QUARANTINED.items():
            if where in item.nodeid and variant in item.nodeid:
                item.add_marker(pytest.mark.skip(reason=f"quarantined: {reason}"))
