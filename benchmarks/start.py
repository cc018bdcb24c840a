"""Print start-to-first-200 with a database: the generated image next to the naive one.

    uv run python -m benchmarks.start [--runs N]

Renders the project (uv, PostgreSQL with migrations, one process per container), builds its
image and the FastAPI docs' naive image of the same app (benchmarks/docker.py), starts a
postgres container, migrates it once, and then times, from `docker run` to the first 200 on
/health, medians of the runs, all in one run against the same ready database:

- the image as generated: prestart waits for the database, checks the connection budget and
  runs Uvicorn in its own interpreter;
- the same image started the way it used to be: prestart prepares, then a second interpreter
  (`exec uvicorn`) imports the app again;
- the naive image: `fastapi run`, no wait, no check.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.docker import naive_project
from benchmarks.load import PYTHON, port_of, running
from tests.docker import docker, engine_problem, unique_name
from tests.project import http_get, render, snapshot

REPO = Path(__file__).resolve().parent.parent
SERVER = "uvicorn app.main:app --host 0.0.0.0 --port 8000 --no-proxy-headers"
DATABASE = {"POSTGRES_HOST": "db", "POSTGRES_PASSWORD": "bench"}


def first_200(
    tag: str, network: str, port: int, *args: str, command: tuple[str, ...] = ()
) -> float:
    started = time.monotonic()
    with running(tag, network, "-p", f"127.0.0.1::{port}", *args, command=command) as name:
        url = f"http://127.0.0.1:{port_of(name, port)}/health"
        while True:
            try:
                if http_get(url, timeout=1)[0] == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            if time.monotonic() - started > 120:
                raise RuntimeError(docker("logs", name, check=False).stdout[-2000:])
            time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="starts per image (median)")
    args = parser.parse_args()
    problem = engine_problem()
    if problem:
        sys.exit(f"Docker unavailable: {problem}")
    root = Path(tempfile.mkdtemp(prefix="bench-start-"))
    template = snapshot(REPO, root / "template")
    answers = {"python_version": PYTHON, "database": "postgresql", "process_model": "single"}
    project = render(template, root / "project", answers, tasks=True)
    naive = naive_project(project, root / "naive")
    tags = {"ours": unique_name("bench-start"), "naive": unique_name("bench-start-naive")}
    network = unique_name("bench-start")
    docker("network", "create", network)
    env = [arg for key, value in DATABASE.items() for arg in ("-e", f"{key}={value}")]
    try:
        docker("build", "-q", "-t", tags["ours"], ".", cwd=project)
        docker("build", "-q", "-t", tags["naive"], ".", cwd=naive)
        database = ("-e", "POSTGRES_PASSWORD=bench", "-e", "POSTGRES_USER=my_api")
        with running("postgres:17", network, "--network-alias", "db", *database) as db:
            while docker("exec", db, "pg_isready", "-U", "my_api", check=False).returncode:
                time.sleep(0.5)
            time.sleep(2)  # the image's init restarts the server once
            migrate = ("alembic", "upgrade", "head")
            docker("run", "--rm", "--network", network, *env, tags["ours"], *migrate)
            variants = {
                "generated image (prestart, Uvicorn in the same interpreter)": lambda: first_200(
                    tags["ours"], network, 8000, *env
                ),
                "same image, prestart then exec uvicorn (a second interpreter)": lambda: first_200(
                    tags["ours"],
                    network,
                    8000,
                    *env,
                    "--entrypoint",
                    "sh",
                    command=("-c", f"python prestart.py && exec {SERVER}"),
                ),
                "naive image (`fastapi run`)": lambda: first_200(tags["naive"], network, 80, *env),
            }
            # Interleaved, so a change in the machine's load hits every variant alike.
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.runs):
                for name, start in variants.items():
                    times[name].append(start())
    finally:
        for tag in tags.values():
            docker("rmi", "-f", tag, check=False)
        docker("network", "rm", network, check=False)
    naive_s = statistics.median(times["naive image (`fastapi run`)"])
    print(f"\nStart-to-first-200 on /health against a ready PostgreSQL, median of {args.runs}:\n")
    print("| image | s | x naive |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / naive_s:.2f} |")


if __name__ == "__main__":
    main()
