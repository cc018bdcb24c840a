"""Print the generated data path's speed per database, next to SQLAlchemy's and the driver's.

    uv run python -m benchmarks.database [--seconds 5] [--rounds 3] [--connections 16]
        [--asgi-calls 2000] [--base REV]

Renders a SQLite and a PostgreSQL project (package layout, migrations, uv), installs them,
starts Debian's PostgreSQL on a free loopback port (tests/postgres.py, as the tests' `postgres`
fixture), then prints, in one run:

- start to first 200 on /ready: Uvicorn alone (schema already there), and through prestart
  (wait for the database and `alembic upgrade head`) on a current and on a fresh database;
- per database, requests/s and p99 of the generated app's `GET /items/{id}` and `POST /items`
  and `/health`, next to the same read and create written as a bare async SQLAlchemy ORM
  endpoint (its own engine with SQLAlchemy's defaults, a session per request, a dict back;
  aiosqlite on SQLite, installed into the benchmark's copy, as the generated app no longer uses
  it) and the same read with the raw driver (sqlite3 and aiosqlite; asyncpg's pool) and, on
  SQLite, with a synchronous SQLAlchemy session in a `def` endpoint (FastAPI's thread pool), the
  kind of code the generated SQLite app is, and so its read's bare reference, and that read with
  each of the two FastAPI features the generated read adds (its `response_model`, whose
  validation FastAPI runs in a second thread hand-off for a `def` route, and its `yield` session
  dependency), to show what each costs, and with a `yield` dependency that does nothing (what
  FastAPI's handling of one costs by itself), and with both (the generated read's proposed
  baseline: the same FastAPI features, without the app's own code), and the read as FastAPI's SQL
  tutorial writes it (a `def` generator dependency yielding the Session, the model as return
  type). All are routes of one Uvicorn process (the image's command line, one process): the
  benchmark's endpoints are added to the generated app, so they pass through the same
  middleware. Uvicorn runs pinned on
  CPU 0 and `wrk` on CPU 1, against 127.0.0.1, for --seconds per run; each round runs every
  endpoint once in turn, and the median of --rounds rounds is printed, with the server process's
  CPU time per request (all its threads, aiosqlite's too), steadier than requests/s on a busy
  machine. With --base REV the template at REV is rendered too, and its read and create are
  measured in the same rounds (a second process on the same core);
- per database, the same reads called in-process: ASGI calls straight into the app (the same
  middleware, no HTTP server, no client sharing the core), one at a time, on CPU 0, each
  --asgi-calls times a round, median of --rounds: the CPU per request without the noise of
  wrk's run, so the ratios between endpoints hold still from run to run (the HTTP parsing both
  sides share is left out, so they come out lower than through Uvicorn);
- the round trips each read costs on PostgreSQL: the same endpoints served through a relay that
  counts the client's round trips on the wire (tests/pgwire.py), with the SQL each carried.

Targets: the generated read >= 0.9x the bare SQLAlchemy read of its kind on both databases
(async on PostgreSQL, the sync `def` endpoint on SQLite; proposed on SQLite: the sync read with
the same FastAPI features), and >= 0.25x the app's own /health on SQLite; one round trip per
read on PostgreSQL. The client shares the machine with the server: the figures compare
endpoints of the same run, not machines.
"""

import argparse
import contextlib
import functools
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.pgwire import RoundTrips
from tests.postgres import PostgresServer, start_server
from tests.project import (
    ASGI_HTTP_SCOPE,
    free_port,
    http_get,
    install,
    render,
    snapshot,
    tool_env,
)

REPO = Path(__file__).resolve().parent.parent
DATABASES = ("sqlite", "postgresql")
STARTS = 3  # runs per start figure; the median is printed
SERVER_CPU, CLIENT_CPU = "0", "1"
SEEDED = 100  # items created before the load; reads cycle over none, they all ask for one id
COUNTED_READS = 50
MODULE = "benchmark_routes:app"  # the generated app with the reference endpoints
READ_TARGET = 0.9  # x the bare SQLAlchemy read of the same kind (BARE_READS)
HEALTH_TARGET = 0.25  # x /health, on SQLite

# Added to the generated app of the benchmark's copy only (never to the template): the same
# read and create written the way SQLAlchemy's and the drivers' documentation shows them.
ROUTES = '''
"""The benchmark's reference endpoints, added to the generated app."""

import asyncio

from fastapi import APIRouter, HTTPException
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.config import get_settings
from app.main import app
from app.models import Item, ItemCreate

settings = get_settings()
url = settings.engine_url
if url.drivername == "sqlite":  # the app's sqlite3, used synchronously: aiosqlite here
    url = url.set(drivername="sqlite+aiosqlite")
engine = create_async_engine(url)
Session = async_sessionmaker(engine, expire_on_commit=False)
router = APIRouter(prefix="/bench")
opening = asyncio.Lock()
opened = {}


@router.get("/sqlalchemy/items/{item_id}")
async def sqlalchemy_read(item_id: int):
    async with Session() as session:
        item = await session.get(Item, item_id)
    if item is None:
        raise HTTPException(404)
    return {"id": item.id, "name": item.name, "description": item.description}


@router.post("/sqlalchemy/items", status_code=201)
async def sqlalchemy_create(body: ItemCreate):
    async with Session() as session:
        item = Item(**body.model_dump())
        session.add(item)
        await session.commit()
    return {"id": item.id, "name": item.name, "description": item.description}


async def once(name, open_it):
    async with opening:
        if name not in opened:
            opened[name] = await open_it()
    return opened[name]
'''

SQLITE_ROUTES = """
import sqlite3

import aiosqlite
from sqlalchemy import create_engine
from sqlalchemy.orm import Session as SyncSession

PATH = settings.engine_url.database
SQL = "SELECT id, name, description FROM items WHERE id = ?"
blocking = sqlite3.connect(PATH, check_same_thread=False)


@router.get("/sqlite3/items/{item_id}")
async def sqlite3_read(item_id: int):
    row = blocking.execute(SQL, (item_id,)).fetchone()
    if row is None:
        raise HTTPException(404)
    return {"id": row[0], "name": row[1], "description": row[2]}


sync_engine = create_engine(f"sqlite:///{PATH}")


@router.get("/sync-sqlalchemy/items/{item_id}")
def sync_sqlalchemy_read(item_id: int):
    with SyncSession(sync_engine) as session:
        item = session.get(Item, item_id)
    if item is None:
        raise HTTPException(404)
    return {"id": item.id, "name": item.name, "description": item.description}


# The sync read with one of FastAPI's features the generated read uses, each alone: what
# they cost. A `def` route's response_model is validated in a second thread hand-off (FastAPI
# runs it in the thread pool); a `yield` dependency enters and leaves its own context.
from typing import Annotated

from fastapi import Depends

from app.db import SessionDep
from app.models import ItemRead


@router.get("/sync-sqlalchemy-model/items/{item_id}", response_model=ItemRead)
def sync_sqlalchemy_model_read(item_id: int) -> Item:
    with SyncSession(sync_engine) as session:
        item = session.get(Item, item_id)
    if item is None:
        raise HTTPException(404)
    return item


@router.get("/sync-sqlalchemy-dependency/items/{item_id}")
def sync_sqlalchemy_dependency_read(item_id: int, session: SessionDep):
    item = session.get(Item, item_id)
    if item is None:
        raise HTTPException(404)
    return {"id": item.id, "name": item.name, "description": item.description}


# The sync read with a `yield` dependency that does nothing: what FastAPI's handling of such a
# dependency costs by itself, whatever it yields (SessionDep's session comes on top).
async def nothing():
    yield None


@router.get("/sync-sqlalchemy-empty-dependency/items/{item_id}")
def sync_sqlalchemy_empty_dependency_read(item_id: int, _: Annotated[None, Depends(nothing)]):
    with SyncSession(sync_engine) as session:
        item = session.get(Item, item_id)
    if item is None:
        raise HTTPException(404)
    return {"id": item.id, "name": item.name, "description": item.description}


# The sync read with both: what FastAPI's features cost together, the generated read's
# baseline once its FastAPI features are held equal (the figure proposed for issue 27).
@router.get("/sync-sqlalchemy-features/items/{item_id}", response_model=ItemRead)
def sync_sqlalchemy_features_read(item_id: int, session: SessionDep) -> Item:
    item = session.get(Item, item_id)
    if item is None:
        raise HTTPException(404)
    return item


# The read as FastAPI's SQL tutorial writes it: a `def` generator dependency yielding a
# Session (FastAPI enters and leaves it in the thread pool) and the model as return type.
def tutorial_session():
    with SyncSession(sync_engine) as session:
        yield session


@router.get("/tutorial/items/{item_id}")
def tutorial_read(
    item_id: int, session: Annotated[SyncSession, Depends(tutorial_session)]
) -> ItemRead:
    item = session.get(Item, item_id)
    if item is None:
        raise HTTPException(404)
    return item


@router.get("/aiosqlite/items/{item_id}")
async def aiosqlite_read(item_id: int):
    connection = await once("aiosqlite", lambda: aiosqlite.connect(PATH))
    async with connection.execute(SQL, (item_id,)) as cursor:
        row = await cursor.fetchone()
    if row is None:
        raise HTTPException(404)
    return {"id": row[0], "name": row[1], "description": row[2]}


app.include_router(router)
"""

POSTGRES_ROUTES = """
import asyncpg

SQL = "SELECT id, name, description FROM items WHERE id = $1"


def pool():
    return asyncpg.create_pool(
        host=settings.postgres_host,
        port=settings.postgres_port,
        user=settings.postgres_user,
        password=settings.postgres_password.get_secret_value(),
        database=settings.postgres_db,
        min_size=1,
    )


@router.get("/asyncpg/items/{item_id}")
async def asyncpg_read(item_id: int):
    row = await (await once("asyncpg", pool)).fetchrow(SQL, item_id)
    if row is None:
        raise HTTPException(404)
    return {"id": row[0], "name": row[1], "description": row[2]}


app.include_router(router)
"""

# Run by the project's Python: ASGI calls straight into the app with the benchmark's routes,
# one at a time, and the process's CPU time (all threads) per call, written as JSON to a file
# (the app logs each request on stdout, sent nowhere, as under Uvicorn here).
ASGI_SCRIPT = (
    """
import json
import sys
import time
from pathlib import Path

import uvloop  # the loop Uvicorn runs the app on (uvicorn[standard])

from benchmark_routes import app, opened

out, calls, rounds, paths = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
"""
    + ASGI_HTTP_SCOPE
    + """

async def call(path):
    scope = http_scope("GET", path)
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 200, (path, sent[0])


async def main():
    cpu = {path: [] for path in paths}
    async with app.router.lifespan_context(app):
        for path in paths:  # warm-up: connections opened, statements cached
            for _ in range(200):
                await call(path)
        for _ in range(rounds):
            for path in paths:
                started = time.process_time()
                for _ in range(calls):
                    await call(path)
                cpu[path].append((time.process_time() - started) / calls * 1e6)
        for resource in opened.values():  # aiosqlite's thread would keep the process alive
            await resource.close()
    out.write_text(json.dumps(cpu))


uvloop.run(main())
"""
)

POST_SCRIPT = """wrk.method = "POST"
wrk.body = '{"name": "benchmark item", "description": "created under load"}'
wrk.headers["Content-Type"] = "application/json"
"""


@dataclass(frozen=True)
class Endpoint:
    label: str
    path: str
    post: bool = False


HEALTH = Endpoint("GET /health", "/health")
READ = Endpoint("GET /items/{id}", "/items/1")
BARE_READ = Endpoint("bare SQLAlchemy read", "/bench/sqlalchemy/items/1")
SYNC_READ = Endpoint("sync SQLAlchemy read (def)", "/bench/sync-sqlalchemy/items/1")
# The bare read the generated one is held to: the same kind of code (async SQLAlchemy on
# PostgreSQL; on SQLite a sync session in a `def` endpoint, as the generated app has).
BARE_READS = {"sqlite": SYNC_READ, "postgresql": BARE_READ}
CREATE = Endpoint("POST /items", "/items", post=True)
BARE_CREATE = Endpoint("bare SQLAlchemy create", "/bench/sqlalchemy/items", post=True)
# On SQLite: the sync read with the generated read's response_model, or with its session
# dependency (each alone), or with a `yield` dependency that yields nothing: what FastAPI's
# features cost beside SQLAlchemy's read.
WITH_MODEL = Endpoint("sync read + response_model", "/bench/sync-sqlalchemy-model/items/1")
WITH_DEPENDENCY = Endpoint("sync read + SessionDep", "/bench/sync-sqlalchemy-dependency/items/1")
WITH_EMPTY_DEPENDENCY = Endpoint(
    "sync read + empty yield dependency", "/bench/sync-sqlalchemy-empty-dependency/items/1"
)
WITH_BOTH = Endpoint(
    "sync read + response_model + SessionDep", "/bench/sync-sqlalchemy-features/items/1"
)
TUTORIAL = Endpoint("FastAPI tutorial's sync read", "/bench/tutorial/items/1")
# The sync read's variants, each printed beside the sync read.
SYNC_VARIANTS = (WITH_MODEL, WITH_DEPENDENCY, WITH_EMPTY_DEPENDENCY, WITH_BOTH, TUTORIAL)
DRIVERS = {
    "sqlite": [
        SYNC_READ,
        *SYNC_VARIANTS,
        Endpoint("sqlite3 read", "/bench/sqlite3/items/1"),
        Endpoint("aiosqlite read", "/bench/aiosqlite/items/1"),
    ],
    "postgresql": [Endpoint("asyncpg read", "/bench/asyncpg/items/1")],
}


@dataclass
class Load:
    rps: float
    p99_ms: float
    cpu_us: float  # the server process's CPU time per request (all its threads)
    errors: int


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


@dataclass(frozen=True)
class Target:
    """An endpoint of a server, and the name its row gets."""

    label: str
    server: Server
    endpoint: Endpoint


def project(template: Path, dest: Path, database: str) -> Path:
    answers = {
        "database": database,
        "migrations": True,
        "process_model": "workers",
        "layout": "package",
    }
    render(template, dest, answers, tasks=True)
    (dest / ".env").unlink()
    install(dest, {"dependency_tool": "uv", "python_version": "3.13"})
    if database == "sqlite":  # the async references' driver and SQLAlchemy's asyncio extra
        python = str(dest / ".venv" / "bin" / "python")
        subprocess.run(
            ["uv", "pip", "install", "--python", python, "aiosqlite", "greenlet"],
            cwd=dest, env=tool_env(), check=True, capture_output=True,
        )  # fmt: skip
    extra = SQLITE_ROUTES if database == "sqlite" else POSTGRES_ROUTES
    (dest / "benchmark_routes.py").write_text(ROUTES + extra)
    return dest


def image_command(root: Path, module: str, port: int) -> list[str]:
    """The image's CMD (its Uvicorn options: log config, no Uvicorn access log ...), on
    127.0.0.1:port, serving `module`."""
    found = re.search(r"^CMD (\[.*\])$", (root / "Dockerfile").read_text(), re.MULTILINE)
    assert found, "no CMD in the generated Dockerfile"
    command: list[str] = json.loads(found.group(1))
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    command[1] = module
    return [str(root / ".venv" / "bin" / command[0]), *command[1:]]


@contextlib.contextmanager
def server(
    root: Path, env: dict[str, str], *, prestart: bool = False, module: str = "app.main:app"
) -> Iterator[Server]:
    """One Uvicorn process (through prestart or not) while it runs."""
    port = free_port()
    command = image_command(root, module, port)
    if prestart:
        command = [".venv/bin/python", "prestart.py", *command]
    else:  # pinned for the load (taskset execs Uvicorn); prestart's runs measure starts
        command = ["taskset", "-c", SERVER_CPU, *command]
    process = subprocess.Popen(
        command,
        cwd=root,
        env={**env, "WEB_CONCURRENCY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield Server(f"http://127.0.0.1:{port}", process.pid)
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
        with server(root, run_env, prestart=prestart) as running:
            wait_ready(running.url)
            times.append(time.monotonic() - started)
    return f"{statistics.median(times):.2f} s"


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def cpu_seconds(pid: int) -> float:
    """User and system time of a process, its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(target: Target, seconds: int, connections: int, script: Path) -> Load:
    command = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    if target.endpoint.post:
        command += ["-s", str(script)]
    command += ["--latency", target.server.url + target.endpoint.path]
    before = cpu_seconds(target.server.pid)
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    cpu = cpu_seconds(target.server.pid) - before
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return Load(rps, p99, cpu / max(requests, 1) * 1e6, errors)


def loads(
    targets: list[Target], seconds: int, connections: int, rounds: int, script: Path
) -> dict[str, Load]:
    """A warm-up second per target, then `rounds` rounds of every target in turn; medians."""
    for target in targets:
        wrk(target, 1, connections, script)
    runs: dict[str, list[Load]] = {target.label: [] for target in targets}
    for _ in range(rounds):
        for target in targets:
            runs[target.label].append(wrk(target, seconds, connections, script))
    return {
        label: Load(
            statistics.median(load.rps for load in measured),
            statistics.median(load.p99_ms for load in measured),
            statistics.median(load.cpu_us for load in measured),
            sum(load.errors for load in measured),
        )
        for label, measured in runs.items()
    }


def asgi_cpu(
    root: Path, env: dict[str, str], endpoints: list[Endpoint], calls: int, rounds: int
) -> dict[str, float]:
    """Per endpoint, the median CPU time per request (microseconds) of ASGI calls straight
    into the app, in the project's Python pinned on the server's CPU (ASGI_SCRIPT)."""
    script, out = root / "benchmark_asgi.py", root / "benchmark_asgi.json"
    script.write_text(ASGI_SCRIPT)
    paths = [endpoint.path for endpoint in endpoints]
    subprocess.run(
        ["taskset", "-c", SERVER_CPU, str(root / ".venv" / "bin" / "python"), script.name,
         str(out), str(calls), str(rounds), *paths],
        cwd=root, env=env, check=True, stdout=subprocess.DEVNULL, timeout=1800,
    )  # fmt: skip
    cpu: dict[str, list[float]] = json.loads(out.read_text())
    return {endpoint.label: statistics.median(cpu[endpoint.path]) for endpoint in endpoints}


def round_trips(
    root: Path, env: dict[str, str], endpoints: list[Endpoint], module: str
) -> dict[str, list[str]]:
    """Per endpoint, the round trips of COUNTED_READS reads one after another (after a warm-up
    that opens the connection and prepares the statements), through the counting relay."""
    relay = RoundTrips(env["POSTGRES_HOST"], int(env["POSTGRES_PORT"]))
    counted: dict[str, list[str]] = {}
    with (
        relay.running(),
        server(root, {**env, "POSTGRES_PORT": str(relay.port)}, module=module) as running,
    ):
        wait_ready(running.url)
        for endpoint in endpoints:
            for _ in range(5):
                http_get(running.url + endpoint.path)
            relay.reset()
            for _ in range(COUNTED_READS):
                assert http_get(running.url + endpoint.path)[0] == 200
            counted[endpoint.label] = relay.trips
    return counted


def settings(database: str, workdir: Path, pg: PostgresServer) -> dict[str, str]:
    """The environment of a run on a fresh database."""
    env = {
        key: value
        for key, value in tool_env().items()
        if not key.startswith(("POSTGRES_", "DATA_DIR", "WEB_CONCURRENCY"))
    }
    if database == "sqlite":
        return {**env, "DATA_DIR": tempfile.mkdtemp(dir=workdir)}
    return {**env, **pg.create_database()}


def migrate(root: Path, env: dict[str, str]) -> None:
    subprocess.run(
        [".venv/bin/alembic", "upgrade", "head"], cwd=root, env=env, check=True, capture_output=True
    )


def seed(url: str) -> None:
    for number in range(SEEDED):
        body = json.dumps({"name": f"item {number}", "description": "seeded"}).encode()
        request = urllib.request.Request(
            f"{url}/items", body, {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201


def template_at(revision: str, dest: Path) -> Path:
    """The template's files at a git revision."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", revision], cwd=REPO, check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument(
        "--asgi-calls", type=int, default=2000, help="in-process calls per endpoint and round"
    )
    parser.add_argument(
        "--base", help="also measure the generated read and create of the template at this revision"
    )
    parser.add_argument("--databases", nargs="+", default=list(DATABASES), choices=DATABASES)
    parser.add_argument("--no-starts", action="store_true", help="skip the start-up figures")
    args = parser.parse_args()
    starts = []
    measured: dict[str, dict[str, Load]] = {}
    in_process: dict[str, dict[str, float]] = {}
    trips: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-db-") as tmp:
        workdir = Path(tmp)
        script = workdir / "post.lua"
        script.write_text(POST_SCRIPT)
        template = snapshot(REPO, workdir / "template")
        roots = {db: project(template, workdir / db, db) for db in args.databases}
        bases = {}
        if args.base:
            old = template_at(args.base, workdir / "base-template")
            bases = {db: project(old, workdir / f"base-{db}", db) for db in args.databases}
        pg = start_server(free_port())
        if pg is None:
            raise SystemExit("no PostgreSQL server binaries (apt-get install postgresql)")
        try:
            for database, root in roots.items():
                current = settings(database, workdir, pg)
                migrate(root, current)
                fresh = functools.partial(settings, database, workdir, pg)
                starts.append(
                    (database, "", "", "")
                    if args.no_starts
                    else (
                        database,
                        first_200(root, functools.partial(dict, current), prestart=False),
                        first_200(root, functools.partial(dict, current), prestart=True),
                        first_200(root, fresh, prestart=True),
                    )
                )
                reads = [HEALTH, READ, BARE_READ, *DRIVERS[database]]  # GETs, wrk and in-process
                with contextlib.ExitStack() as stack:
                    app = stack.enter_context(server(root, current, module=MODULE))
                    wait_ready(app.url)
                    seed(app.url)
                    endpoints = [*reads, CREATE, BARE_CREATE]
                    targets = [Target(e.label, app, e) for e in endpoints]
                    if database in bases:
                        base = stack.enter_context(server(bases[database], current, module=MODULE))
                        wait_ready(base.url)
                        for endpoint in (READ, CREATE):
                            targets.append(
                                Target(f"{endpoint.label} at {args.base}", base, endpoint)
                            )
                    measured[database] = loads(
                        targets, args.seconds, args.connections, args.rounds, script
                    )
                in_process[database] = asgi_cpu(root, current, reads, args.asgi_calls, args.rounds)
                if database == "postgresql":
                    counted = [READ, BARE_READ, *DRIVERS[database]]
                    trips = round_trips(root, current, counted, MODULE)
                    if database in bases:
                        before = round_trips(bases[database], current, [READ], MODULE)
                        trips[f"{READ.label} at {args.base}"] = before[READ.label]
        finally:
            pg.stop()
    report(starts, measured, in_process, trips, args)


@dataclass(frozen=True)
class Reference:
    """An endpoint a figure is compared with, and the ratio (1/CPU) it must reach; 0: none."""

    label: str
    target: float = 0.0
    proposed: bool = False  # a figure proposed in place of the issue's


def references(database: str, label: str, in_process: bool = False) -> list[Reference]:
    """What the figure of the endpoint `label` is compared with, in both tables."""
    if label.startswith(READ.label):
        found = [Reference(BARE_READS[database].label, READ_TARGET)]
        if database == "sqlite":
            # The /health target is set on requests through Uvicorn: in-process, the HTTP
            # parsing both share is left out, so the ratio is shown without it.
            health = 0.0 if in_process else HEALTH_TARGET
            found += [
                Reference(HEALTH.label, health),
                Reference(WITH_BOTH.label, READ_TARGET, proposed=True),
                Reference(TUTORIAL.label),
            ]
        return found
    if database == "sqlite" and "SQLAlchemy read" in label:
        # How far SQLAlchemy itself gets from /health: async (aiosqlite's thread hand-offs)
        # and synchronous (one hand-off, FastAPI's thread pool).
        return [Reference(HEALTH.label)]
    if label in {variant.label for variant in SYNC_VARIANTS}:
        return [Reference(SYNC_READ.label)]
    if label.startswith(CREATE.label):
        return [Reference(BARE_CREATE.label)]
    return []


# One comparison: its ratio cells, the reference, and the ratio of CPU per request.
Comparison = tuple[list[str], Reference, float]


def compared_rows(cells: list[str], comparisons: list[Comparison], width: int) -> list[list[str]]:
    """The `width` columns of one endpoint's rows: its cells, then per reference the ratio
    cells, the target and the verdict (judged on CPU per request: requests/s on a shared
    machine also measure whoever else runs); the endpoint's cells on the first row only."""
    if not comparisons:
        return [cells + [""] * (width - len(cells))]
    rows = []
    for number, (ratios, reference, per_cpu) in enumerate(comparisons):
        target = verdict = ""
        if reference.target:
            target = f">= {reference.target:.2f}x" + (" (proposed)" if reference.proposed else "")
            verdict = "met" if per_cpu >= reference.target else "MISSED"
        rows.append([*(cells if not number else [""] * len(cells)), *ratios, target, verdict])
    return rows


def report(
    starts: list[tuple[str, str, str, str]],
    measured: dict[str, dict[str, Load]],
    in_process: dict[str, dict[str, float]],
    trips: dict[str, list[str]],
    args: argparse.Namespace,
) -> None:
    print(f"Start to first 200 on /ready (median of {STARTS}, one Uvicorn process)")
    print(
        f"{'database':<11} {'uvicorn alone':>14} {'prestart, current':>18} {'prestart, fresh':>16}"
    )
    for database, alone, migrated, empty in starts:
        print(f"{database:<11} {alone:>14} {migrated:>18} {empty:>16}")
    print()
    print(
        f"One Uvicorn process on CPU {SERVER_CPU}; wrk -t1 -c{args.connections} -d{args.seconds}s"
        f" on CPU {CLIENT_CPU}; median of {args.rounds} rounds; {os.cpu_count()} cores, load"
        f" average {os.getloadavg()[0]:.1f} after the runs. CPU: the server process's time per"
        " request; its ratio compares 1/CPU, the requests/s a core would serve."
    )
    rows: list[list[str]] = [
        ["database", "endpoint", "req/s", "p99 ms", "CPU us", "errors", "ratio req/s", "CPU",
         "target (CPU)", ""]
    ]  # fmt: skip
    for database, figures in measured.items():
        for label, load in figures.items():
            cells = [database, label, f"{load.rps:.0f}", f"{load.p99_ms:.1f}", f"{load.cpu_us:.0f}"]
            cells.append(str(load.errors))
            comparisons: list[Comparison] = []
            for reference in references(database, label):
                baseline = figures[reference.label]
                per_cpu = baseline.cpu_us / load.cpu_us
                ratios = [f"{load.rps / baseline.rps:.2f}x {reference.label}", f"{per_cpu:.2f}x"]
                comparisons.append((ratios, reference, per_cpu))
            rows += compared_rows(cells, comparisons, len(rows[0]))
    print_table(rows)
    print()
    report_in_process(in_process, args)
    if not trips:
        return
    print()
    print(f"Round trips per read on PostgreSQL ({COUNTED_READS} reads in a row, on the wire)")
    for label, taken in trips.items():
        per_read = len(taken) / COUNTED_READS
        verdict = "met" if per_read <= 1 else "MISSED"
        goal = f"target 1: {verdict}" if label.startswith(READ.label) else ""
        print(f"{label:<32} {per_read:>4.1f}  {goal}")
        for statement in dict.fromkeys(taken):  # each distinct one once, in order
            print(f"{'':<38}{' '.join(statement.split())[:100]}")


def report_in_process(in_process: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    """The in-process figures, with the read's ratios to its references."""
    print(
        f"In-process, the same app: {args.asgi_calls} ASGI calls per endpoint and round, one at a"
        f" time, on CPU {SERVER_CPU}, median of {args.rounds} rounds; CPU per request, ratio 1/CPU"
    )
    rows = [["database", "endpoint", "CPU us", "ratio CPU", "target", ""]]
    for database, cpu in in_process.items():
        for label, us in cpu.items():
            comparisons: list[Comparison] = []
            for reference in references(database, label, in_process=True):
                per_cpu = cpu[reference.label] / us
                comparisons.append(([f"{per_cpu:.2f}x {reference.label}"], reference, per_cpu))
            rows += compared_rows([database, label, f"{us:.0f}"], comparisons, len(rows[0]))
    print_table(rows)


def print_table(rows: list[list[str]]) -> None:
    """Rows of cells in left-aligned columns; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
