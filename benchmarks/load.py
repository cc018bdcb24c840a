"""Print what each server setup delivers under a bounded load, next to the naive image's.

    uv run python -m benchmarks.load [--runs N] [--seconds S]

Renders the project (uv, package layout, SQLite with migrations, workers mode) with Gunicorn,
uvicorn-worker and Granian added to its dependencies, builds its image once, and runs it with
each server's command line; renders it again with PostgreSQL for the `/items/{id}` column on
PostgreSQL (a postgres container in the same network). Each configuration then takes Debian's
`wrk` on 127.0.0.1 for a few seconds per endpoint (median of the runs): req/s, p99, the sum of
the container's process RSS after the load, and errors (socket errors and non-2xx answers).
The same app behind each proxy (nginx, Traefik, Caddy) is the generated project's own compose
stack for it (workers, SQLite, domain localhost: nginx with a certificate made here, Traefik and
Caddy with their local ones), loaded over HTTPS on its published port. The FastAPI docs' naive
image (`fastapi run`, benchmarks/docker.py) is the floor.

Then two measurements that decide the process manager: the RSS of one process and of each added
worker (WEB_CONCURRENCY 1, 2, 4), and what becomes of a worker whose event loop hangs (a route
that calls time.sleep): replaced by the supervisor within the wait, or not.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.docker import naive_project
from tests.covering import compose_proxies, proxy_names
from tests.docker import docker, engine_problem, processes, unique_name
from tests.edge import render_stack, set_env
from tests.project import http_get, render, snapshot, tool_env
from tests.tls import TestCA

REPO = Path(__file__).resolve().parent.parent
PYTHON = "3.13"
THREADS = 2
CONNECTIONS = 32
HANG_SECONDS = 600
GUNICORN_TIMEOUT = 10
MODULE = "app.main:app"
BIND = ("--host", "0.0.0.0", "--port", "8000")

# Appended to the app of the benchmark's copy only: a route whose handler blocks the event loop,
# as a call to a blocking library in an `async def` does.
HANG_ROUTE = f"""

import time as _time  # noqa: E402


@app.get("/hang")
async def hang() -> None:
    _time.sleep({HANG_SECONDS})
"""


@dataclass
class Server:
    """How a configuration runs the image: the command after the entrypoint, and its env."""

    name: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


SERVERS = [
    Server("Uvicorn, 1 process", ("uvicorn", MODULE, *BIND), {"WEB_CONCURRENCY": "1"}),
    Server("Uvicorn, 2 workers", ("uvicorn", MODULE, *BIND), {"WEB_CONCURRENCY": "2"}),
    Server(
        "Gunicorn + Uvicorn workers (2)",
        ("gunicorn", MODULE, "-k", "uvicorn_worker.UvicornWorker", "-w", "2", "-b", "0.0.0.0:8000"),
    ),
    Server(
        "Gunicorn ASGI worker (2)",
        ("gunicorn", MODULE, "-k", "asgi", "-w", "2", "-b", "0.0.0.0:8000"),
    ),
    Server(
        "Granian (2)",
        (
            "granian",
            "--interface",
            "asgi",
            "--workers",
            "2",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            MODULE,
        ),
    ),
]
# The generated project's own stacks behind its compose proxies (copier.yml's), by the names the
# rows print (each proxy's folder, includes/proxy/<name>/names.jinja, names it).
PROXIES = {proxy: proxy_names(proxy).title for proxy in compose_proxies()}


@dataclass
class Load:
    rps: float
    p99_ms: float
    errors: int


@dataclass
class Row:
    name: str
    health: Load | None = None
    items_sqlite: Load | None = None
    items_postgres: Load | None = None
    rss_mb: float | None = None
    note: str = ""


def wrk_command(url: str, seconds: int) -> list[str]:
    return ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", url]


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, seconds: int) -> Load:
    output = subprocess.run(
        wrk_command(url, seconds), capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return Load(rps, p99, errors + (int(non_2xx.group(1)) if non_2xx else 0))


def median_load(url: str, runs: int, seconds: int) -> Load:
    loads = [wrk(url, seconds) for _ in range(runs)]
    return Load(
        statistics.median(load.rps for load in loads),
        statistics.median(load.p99_ms for load in loads),
        sum(load.errors for load in loads),
    )


def rss_mb(name: str) -> float:
    return sum(p.rss_kb for p in processes(name)) / 1024


def wait_for_200(url: str, timeout: float = 120) -> None:
    """Poll until a 200; over HTTPS the proxies' local certificates are taken as they are."""
    deadline = time.monotonic() + timeout
    while True:
        if url.startswith("https:"):
            probe = ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", url]
            if subprocess.run(probe, capture_output=True, text=True).stdout == "200":
                return
        else:
            try:
                if http_get(url, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} never answered 200")
        time.sleep(0.1)


def port_of(name: str, container_port: int) -> int:
    return int(docker("port", name, f"{container_port}/tcp").stdout.split()[0].rpartition(":")[2])


@contextlib.contextmanager
def running(tag: str, network: str, *args: str, command: tuple[str, ...] = ()) -> Iterator[str]:
    name = unique_name("bench-load")
    docker("run", "-d", "--name", name, "--network", network, *args, tag, *command)
    try:
        yield name
    finally:
        docker("rm", "-f", "-v", name, check=False)


def create_item(base: str) -> int:
    request = subprocess.run(
        [
            "curl",
            "-sfk",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"name": "bench"}',
            f"{base}/items",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(json.loads(request.stdout)["id"])


@contextlib.contextmanager
def served(
    tag: str, network: str, server: Server, env: dict[str, str]
) -> Iterator[tuple[str, str]]:
    """The app: the base URL on 127.0.0.1 and the app's container name."""
    settings = [
        arg for key, value in {**env, **server.env}.items() for arg in ("-e", f"{key}={value}")
    ]
    with running(tag, network, "-p", "127.0.0.1::8000", *settings, command=server.command) as app:
        yield f"http://127.0.0.1:{port_of(app, 8000)}", app


@contextlib.contextmanager
def behind(template: Path, root: Path, proxy: str) -> Iterator[tuple[str, str]]:
    """The generated project's compose stack behind `proxy`, 2 workers as the direct row:
    its HTTPS base URL on 127.0.0.1 (as localhost, the certificate's name) and the app's
    container."""
    answers = {
        "python_version": PYTHON,
        "process_model": "workers",
        "database": "sqlite",
        "domain": "localhost",
    }
    stack = render_stack(template, root / f"behind-{proxy}", proxy, b"", **answers)
    set_env(stack.project, WEB_CONCURRENCY="2")
    if proxy == "nginx":
        TestCA().issue("localhost").write(stack.project / "certs")
    try:
        stack.compose("up", "--build", "--detach")
        yield f"https://localhost:{stack.https_port}", stack.container("app")
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)
        docker("rmi", "-f", f"{stack.slug}:latest", check=False)


def measure(
    server: Server,
    tags: dict[str, str],
    network: str,
    postgres_env: dict[str, str],
    runs: int,
    seconds: int,
) -> Row:
    row = Row(server.name)
    try:
        with served(tags["sqlite"], network, server, {}) as (base, app):
            measure_sqlite(row, base, app, runs, seconds)
        with served(tags["postgresql"], network, server, postgres_env) as (base, _):
            wait_for_200(f"{base}/health")
            item = create_item(base)
            row.items_postgres = median_load(f"{base}/items/{item}", runs, seconds)
    except (RuntimeError, AssertionError, subprocess.CalledProcessError) as error:
        row.note = str(error).strip().splitlines()[-1][:120] if str(error).strip() else repr(error)
    return row


def measure_behind(template: Path, root: Path, proxy: str, runs: int, seconds: int) -> Row:
    row = Row(f"Uvicorn, 2 workers, behind {PROXIES[proxy]} (HTTPS)")
    try:
        with behind(template, root, proxy) as (base, app):
            measure_sqlite(row, base, app, runs, seconds)
    except (RuntimeError, AssertionError, subprocess.CalledProcessError) as error:
        row.note = str(error).strip().splitlines()[-1][:120] if str(error).strip() else repr(error)
    return row


def measure_sqlite(row: Row, base: str, app: str, runs: int, seconds: int) -> None:
    wait_for_200(f"{base}/health")
    row.health = median_load(f"{base}/health", runs, seconds)
    item = create_item(base)
    row.items_sqlite = median_load(f"{base}/items/{item}", runs, seconds)
    row.rss_mb = rss_mb(app)


def naive_row(naive_tag: str, network: str, runs: int, seconds: int) -> Row:
    row = Row("naive `fastapi run` (floor)")
    with running(naive_tag, network, "-p", "127.0.0.1::80") as name:
        base = f"http://127.0.0.1:{port_of(name, 80)}"
        wait_for_200(f"{base}/health")
        row.health = median_load(f"{base}/health", runs, seconds)
        row.rss_mb = rss_mb(name)
    row.note = "/health only: it has no migrations step, so no items table"
    return row


def memory_per_worker(tag: str, network: str, seconds: int) -> list[tuple[int, float, float]]:
    """(workers, supervisor RSS MB, mean worker RSS MB) after a short load, for 1, 2 and 4."""
    figures = []
    for workers in (1, 2, 4):
        server = Server("", ("uvicorn", MODULE, *BIND), {"WEB_CONCURRENCY": str(workers)})
        with served(tag, network, server, {}) as (base, app):
            wait_for_200(f"{base}/health")
            wrk(f"{base}/health", seconds)
            listed = processes(app)
            if workers == 1:
                figures.append((1, 0.0, listed[0].rss_kb / 1024))
                continue
            supervisor = next(p for p in listed if p.pid == 1)
            children = [p for p in listed if p.ppid == 1 and "spawn_main" in p.command]
            mean = statistics.mean(p.rss_kb for p in children) / 1024
            figures.append(
                (
                    workers,
                    supervisor.rss_kb / 1024
                    + sum(p.rss_kb for p in listed if p.pid != 1 and p not in children) / 1024,
                    mean,
                )
            )
    return figures


def hung_worker(tag: str, network: str, server: Server, wait: float) -> str:
    """Block one worker's event loop; say whether the supervisor replaced it within `wait`."""
    with served(tag, network, server, {}) as (base, app):
        wait_for_200(f"{base}/health")
        before = {p.pid for p in processes(app) if p.pid != 1}
        subprocess.Popen(
            ["curl", "-s", "-m", str(HANG_SECONDS), f"{base}/hang"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(2)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            now = {p.pid for p in processes(app) if p.pid != 1}
            if before - now:
                return f"replaced after {wait - (deadline - time.monotonic()):.0f} s"
            time.sleep(1)
        return f"not replaced within {wait:.0f} s"


def prepare(template: Path, root: Path, database: str) -> Path:
    project = render(
        template,
        root / database,
        {"python_version": PYTHON, "database": database, "process_model": "workers"},
        tasks=True,
    )
    if database == "sqlite":  # the naive image gets the app with the template's dependencies
        naive_project(project, root / "naive")
    subprocess.run(
        ["uv", "add", "--quiet", "gunicorn", "uvicorn-worker", "granian"],
        cwd=project,
        env=tool_env(),
        check=True,
    )
    with (project / "app" / "main.py").open("a") as code:
        code.write(HANG_ROUTE)
    return project


def fmt(load: Load | None, what: str) -> str:
    if load is None:
        return "-"
    return f"{load.rps:.0f}" if what == "rps" else f"{load.p99_ms:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="wrk runs per figure (median)")
    parser.add_argument("--seconds", type=int, default=3, help="length of one wrk run")
    args = parser.parse_args()
    problem = engine_problem()
    if problem or shutil.which("wrk") is None:
        sys.exit(f"needs Docker and wrk (apt-get install wrk): {problem or 'no wrk'}")
    root = Path(tempfile.mkdtemp(prefix="bench-load-"))
    template = snapshot(REPO, root / "template")
    projects = {
        database: prepare(template, root, database) for database in ("sqlite", "postgresql")
    }
    naive = root / "naive"
    tags = {name: unique_name(f"bench-load-{name}") for name in ("sqlite", "postgresql", "naive")}
    network = unique_name("bench-load")
    docker("network", "create", network)
    try:
        # The naive image installs everything from the index (no lock, no cache): slow on a busy
        # machine, so it builds while the others are measured.
        naive_build = subprocess.Popen(
            ["docker", "build", "-q", "-t", tags["naive"], "."],
            cwd=naive,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, path in projects.items():
            print(f"building {name} ...", file=sys.stderr, flush=True)
            docker("build", "-q", "-t", tags[name], ".", cwd=path)
        with running(
            "postgres:17",
            network,
            "--network-alias",
            "db",
            "-e",
            "POSTGRES_PASSWORD=bench",
            "-e",
            "POSTGRES_USER=my_api",
        ) as db:
            while docker("exec", db, "pg_isready", "-U", "my_api", check=False).returncode:
                time.sleep(0.5)
            postgres_env = {"POSTGRES_HOST": "db", "POSTGRES_PASSWORD": "bench"}
            load_before = os.getloadavg()[0]
            rows = []
            for server in SERVERS:
                print(f"measuring {server.name} ...", file=sys.stderr, flush=True)
                rows.append(measure(server, tags, network, postgres_env, args.runs, args.seconds))
        for proxy in PROXIES:
            print(f"measuring the stack behind {proxy} ...", file=sys.stderr, flush=True)
            rows.append(measure_behind(template, root, proxy, args.runs, args.seconds))
        print("measuring memory and hung workers ...", file=sys.stderr, flush=True)
        memory = memory_per_worker(tags["sqlite"], network, args.seconds)
        hangs = {
            "Uvicorn, 2 workers": hung_worker(tags["sqlite"], network, SERVERS[1], 30),
            f"Gunicorn + Uvicorn workers (2), --timeout {GUNICORN_TIMEOUT}": hung_worker(
                tags["sqlite"],
                network,
                Server("", (*SERVERS[2].command, "--timeout", str(GUNICORN_TIMEOUT))),
                30,
            ),
        }
        print("waiting for the naive image ...", file=sys.stderr, flush=True)
        if naive_build.wait(timeout=1800) == 0:
            rows.append(naive_row(tags["naive"], network, args.runs, args.seconds))
        else:
            rows.append(Row("naive `fastapi run` (floor)", note="its build failed"))
    finally:
        for tag in tags.values():
            docker("rmi", "-f", tag, check=False)
        docker("network", "rm", network, check=False)
    report(rows, memory, hangs, args.seconds, load_before)


def report(
    rows: list[Row],
    memory: list[tuple[int, float, float]],
    hangs: dict[str, str],
    seconds: int,
    load_before: float,
) -> None:
    print(
        f"\nPython {PYTHON}; load average {load_before:.1f} at the first run, "
        f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} cores; each figure the "
        f"median of the runs of\n    "
        f"{' '.join(wrk_command('http://127.0.0.1:PORT/PATH', seconds))}\n"
        f"or, behind a proxy,\n    "
        f"{' '.join(wrk_command('https://localhost:PORT/PATH', seconds))}\n"
    )
    header = (
        "configuration",
        "/health req/s",
        "p99 ms",
        "/items/{id} SQLite req/s",
        "p99 ms",
        "/items/{id} PostgreSQL req/s",
        "p99 ms",
        "RSS MB",
        "errors",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        errors = sum(
            load.errors for load in (row.health, row.items_sqlite, row.items_postgres) if load
        )
        cells = (
            row.name + (f" ({row.note})" if row.note else ""),
            fmt(row.health, "rps"),
            fmt(row.health, "p99"),
            fmt(row.items_sqlite, "rps"),
            fmt(row.items_sqlite, "p99"),
            fmt(row.items_postgres, "rps"),
            fmt(row.items_postgres, "p99"),
            f"{row.rss_mb:.0f}" if row.rss_mb is not None else "-",
            str(errors) if row.health else "-",
        )
        print("| " + " | ".join(cells) + " |")
    by_name = {row.name: row for row in rows}
    ours, gunicorn = by_name["Uvicorn, 2 workers"], by_name["Gunicorn + Uvicorn workers (2)"]
    print()
    if ours.health and gunicorn.health:
        print(
            f"Uvicorn workers / Gunicorn+Uvicorn workers on /health: "
            f"{ours.health.rps / gunicorn.health.rps:.2f}x (target >= 1.0x)"
        )
    for proxy in PROXIES.values():
        stack = by_name[f"Uvicorn, 2 workers, behind {proxy} (HTTPS)"]
        if ours.health and stack.health:
            print(
                f"behind {proxy} (HTTPS) / direct on /health: "
                f"{stack.health.rps / ours.health.rps:.2f} (target >= 0.75)"
            )
    print("\nRSS after a short load (WEB_CONCURRENCY workers; supervisor = PID 1):")
    for workers, supervisor, mean in memory:
        print(f"  {workers} worker(s): supervisor {supervisor:.0f} MB, per worker {mean:.0f} MB")
    print("\nA worker whose event loop hangs (GET /hang: time.sleep in an async route):")
    for name, outcome in hangs.items():
        print(f"  {name}: {outcome}")


if __name__ == "__main__":
    main()
