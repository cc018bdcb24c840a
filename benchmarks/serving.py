"""One Uvicorn process of a rendered project, as its image starts it, and the bounded wrk runs
that load several such servers in turns, for the load benchmarks."""

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.project import free_port, http_get, tool_env

WRK = ["wrk", "--threads", "1", "--connections", "8", "--latency", "--duration"]
DURATION = "4s"
PATHS = ("/health", "/items/1")
SOCKET_ERRORS = r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
Run = tuple[float, float, int, int]  # requests/s, p99 in ms, requests, errors


@contextlib.contextmanager
def uvicorn_server(
    root: Path, data: Path, env: dict[str, str] | None = None, *, image_logging: bool = True
) -> Iterator[str]:
    """The project migrated and served on 127.0.0.1 (`logging.json`, no Uvicorn access line,
    as the image runs it; or Uvicorn's default logging and access line): its base URL, with one
    item stored."""
    settings = {**tool_env(), "DATA_DIR": str(data), "LOG_LEVEL": "INFO", **(env or {})}
    subprocess.run(
        [".venv/bin/alembic", "upgrade", "head"],
        cwd=root,
        env=settings,
        check=True,
        capture_output=True,
    )
    port = free_port()
    command = [".venv/bin/uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    if image_logging:
        command += ["--log-config", "logging.json", "--no-access-log"]
    process = subprocess.Popen(
        command, cwd=root, env=settings, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError):
                if http_get(f"{url}/health")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer")
            time.sleep(0.1)
        curl = ["curl", "-sf", "-X", "POST", "-H", "Content-Type: application/json"]
        subprocess.run(
            [*curl, "-d", '{"name": "one"}', f"{url}/items"], check=True, capture_output=True
        )
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def wrk(url: str) -> Run:
    """Requests/s, p99 in ms, requests and non-2xx/socket errors of one bounded wrk run."""
    output = subprocess.run(
        [*WRK, DURATION, url], capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(SOCKET_ERRORS, output)
    count = int(errors.group(1)) if errors else 0
    count += sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    return rps, p99, requests, count


def warm_up(urls: dict[str, str]) -> None:
    """A second of load on each path of each server, not measured."""
    for url in urls.values():
        for path in PATHS:
            subprocess.run([*WRK, "1s", f"{url}{path}"], capture_output=True)


def take_turns(
    urls: dict[str, str], rounds: int
) -> tuple[dict[tuple[str, str], list[Run]], float, float]:
    """Each path of each server loaded in turn, `rounds` times: the runs by (server, path), and
    the load average before and after."""
    results: dict[tuple[str, str], list[Run]] = {}
    load_before = os.getloadavg()[0]
    for _ in range(rounds):
        for path in PATHS:
            for name, url in urls.items():
                results.setdefault((name, path), []).append(wrk(f"{url}{path}"))
    return results, load_before, os.getloadavg()[0]


def print_load(rounds: int, load_before: float, load_after: float) -> None:
    print(f"Load: {' '.join(WRK)} {DURATION} URL")
    print(f"(one Uvicorn process each; median of {rounds} rounds, the variants taking turns)")
    print(
        f"Machine: load average {load_before:.1f} before the runs, {load_after:.1f} after, "
        f"on {os.cpu_count()} cores"
    )
