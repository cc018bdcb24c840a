"""Fixtures shared by the template's tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import PostgresServer, start_server
from tests.project import free_port, snapshot

REPO = Path(__file__).resolve().parent.parent


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
