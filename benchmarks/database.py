"""Print how fast a generated project starts and serves its CRUD endpoint, per database.

    uv run python -m benchmarks.database

Renders a SQLite and a PostgreSQL project (migrations in the entrypoint, as for one server),
installs them with uv, starts Debian's PostgreSQL on a free loopback port, then measures:

- start to first 200 on /ready: Uvicorn alone (schema already there), and through prestart
  (wait for the database and `alembic upgrade head`) on a current and on a fresh database;
- requests/s of POST /items and GET /items/{id} served by one Uvicorn process, under a bounded
  load: a fixed number of requests over a few keep-alive connections, with a time cap.

The client runs on the same machine as the server (and shares its cores): figures compare the
databases and the start paths with each other, not with other machines. Only 127.0.0.1 is used.
"""

import contextlib
import functools
import http.client
import json
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.postgres import PostgresServer, start_server
from tests.project import free_port, http_get, install, render, snapshot, tool_env

REPO = Path(__file__).resolve().parent.parent
DATABASES = ("sqlite", "postgresql")
STARTS = 3  # runs per start figure; the median is printed
REQUESTS = 2000  # per load run
CONNECTIONS = 4
TIME_CAP = 20.0  # seconds per load run


def project(template: Path, dest: Path, database: str) -> Path:
    answers = {"database": database, "migrations": True, "process_model": "workers"}
    render(template, dest, answers, tasks=True)
    (dest / ".env").unlink()
    install(dest, {"dependency_tool": "uv", "python_version": "3.13"})
    return dest


@contextlib.contextmanager
def server(root: Path, env: dict[str, str], prestart: bool) -> Iterator[str]:
    """One Uvicorn process (through prestart or not); its base URL while it runs."""
    port = free_port()
    uvicorn = [".venv/bin/uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    command = [".venv/bin/python", "prestart.py", *uvicorn] if prestart else uvicorn
    process = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if http_get(f"{url}/ready")[0] == 200:
                return
        time.sleep(0.02)
    raise RuntimeError(f"{url}: no 200 from /ready within {timeout} s")


def first_200(root: Path, env: Callable[[], dict[str, str]], prestart: bool) -> str:
    """Median seconds from process start to the first 200 on /ready."""
    times = []
    for _ in range(STARTS):
        run_env = env()
        started = time.monotonic()
        with server(root, run_env, prestart) as url:
            wait_ready(url)
            times.append(time.monotonic() - started)
    return f"{statistics.median(times):.2f} s"


def load(url: str, request: Callable[[http.client.HTTPConnection, int], None]) -> dict[str, float]:
    """REQUESTS requests over CONNECTIONS keep-alive connections, stopped at TIME_CAP."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0
    counter = iter(range(REQUESTS))
    lock = threading.Lock()
    deadline = time.monotonic() + TIME_CAP

    def worker() -> None:
        nonlocal errors
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        while time.monotonic() < deadline:
            with lock:
                number = next(counter, None)
            if number is None:
                break
            began = time.perf_counter()
            try:
                request(connection, number)
            except (OSError, http.client.HTTPException, AssertionError):
                connection.close()
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - began)
        connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50": latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan"),
        "done": len(latencies),
        "errors": errors,
    }


def create(connection: http.client.HTTPConnection, number: int) -> None:
    body = json.dumps({"name": f"item {number}", "description": "benchmark"})
    connection.request("POST", "/items", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    assert response.status == 201


def read(connection: http.client.HTTPConnection, number: int) -> None:
    connection.request("GET", f"/items/{number % 100 + 1}")
    response = connection.getresponse()
    response.read()
    assert response.status == 200


def settings(database: str, workdir: Path, pg: PostgresServer | None) -> dict[str, str]:
    """The environment of a run on a fresh database."""
    env = {
        key: value
        for key, value in tool_env().items()
        if not key.startswith(("POSTGRES_", "DATA_DIR", "WEB_CONCURRENCY"))
    }
    if database == "sqlite":
        return {**env, "DATA_DIR": tempfile.mkdtemp(dir=workdir)}
    assert pg is not None
    return {**env, **pg.create_database()}


def migrate(root: Path, env: dict[str, str]) -> None:
    subprocess.run(
        [".venv/bin/alembic", "upgrade", "head"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-db-") as tmp:
        workdir = Path(tmp)
        template = snapshot(REPO, workdir / "template")
        roots = {db: project(template, workdir / db, db) for db in DATABASES}
        pg = start_server(free_port())
        if pg is None:
            raise SystemExit("no PostgreSQL server binaries (apt-get install postgresql)")
        try:
            starts = []
            loads = []
            for database, root in roots.items():
                current = settings(database, workdir, pg)
                migrate(root, current)
                fresh = functools.partial(settings, database, workdir, pg)
                starts.append(
                    (
                        database,
                        first_200(root, functools.partial(dict, current), prestart=False),
                        first_200(root, functools.partial(dict, current), prestart=True),
                        first_200(root, fresh, prestart=True),
                    )
                )
                with server(root, current, prestart=False) as url:
                    wait_ready(url)
                    loads.append((database, "POST /items", load(url, create)))
                    loads.append((database, "GET /items/{id}", load(url, read)))
        finally:
            pg.stop()

    print(f"Start to first 200 on /ready (median of {STARTS}, one Uvicorn process)")
    print(
        f"{'database':<11} {'uvicorn alone':>14} {'prestart, current':>18} {'prestart, fresh':>16}"
    )
    for database, alone, migrated, empty in starts:
        print(f"{database:<11} {alone:>14} {migrated:>18} {empty:>16}")
    print()
    print(
        f"CRUD on one Uvicorn process: {REQUESTS} requests over {CONNECTIONS} keep-alive"
        f" connections, capped at {TIME_CAP:.0f} s"
    )
    print(
        f"{'database':<11} {'endpoint':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'done':>6} {'errors':>6}"
    )
    for database, endpoint, figures in loads:
        print(
            f"{database:<11} {endpoint:<16} {figures['rps']:>8.0f} {figures['p50']:>8.1f}"
            f" {figures['p99']:>8.1f} {figures['done']:>6.0f} {figures['errors']:>6.0f}"
        )


if __name__ == "__main__":
    main()
