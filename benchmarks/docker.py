"""Print what the generated container setup costs next to the FastAPI docs' naive Dockerfile.

Measured in one run for each dependency tool (default answers otherwise: SQLite with
migrations, so the prestart entrypoint runs first), for uv without a database (no prestart),
and for the naive baseline on the default app: cold build (`--no-cache`; BuildKit cache
mounts, which only the template uses, stay as on a developer's machine), rebuild after a
code-only edit, image size, start-to-first-200 on /health (from `docker run` to the first 200)
and `docker stop` of an idle server (medians of a few runs); then the ratios to the targets.

    uv run python -m benchmarks.docker [--runs N]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.combinations import SIMPLE_INDEX
from tests.docker import docker, engine_problem, unique_name
from tests.project import http_get, render, snapshot

REPO = Path(__file__).resolve().parent.parent

PYTHON = "3.13"
TARGETS = "image <= 0.35x naive, code-edit rebuild < 3 s, start-to-200 < 1.5 s, stop < 1 s"

# The Dockerfile of FastAPI's "FastAPI in Containers" page, on the same app.
NAIVE_DOCKERFILE = f"""FROM python:{PYTHON}
WORKDIR /code
COPY ./requirements.txt /code/requirements.txt
RUN pip install --no-cache-dir --upgrade -r /code/requirements.txt
COPY ./app /code/app
CMD ["fastapi", "run", "app/main.py", "--port", "80"]
"""


@dataclass
class Figures:
    cold_build: float
    edit_rebuild: float
    size_mb: float
    start_to_200: float
    stop: float


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def build(project: Path, tag: str, *extra: str) -> float:
    return timed(lambda: docker("build", "-q", "-t", tag, *extra, ".", cwd=project))


def start_to_first_200(tag: str, port: int) -> tuple[float, float]:
    """Seconds from `docker run` to the first 200 on /health, and of `docker stop` after."""
    name = unique_name("bench")
    started = time.monotonic()
    docker("run", "-d", "--name", name, "-p", f"127.0.0.1::{port}", tag)
    try:
        host_port = docker("port", name, f"{port}/tcp").stdout.split()[0].rpartition(":")[2]
        while True:
            try:
                if http_get(f"http://127.0.0.1:{host_port}/health", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() - started > 60:
                raise RuntimeError(docker("logs", name, check=False).stderr[-2000:])
            time.sleep(0.01)
        first_200 = time.monotonic() - started
        time.sleep(0.5)
        stop = timed(lambda: docker("stop", name))
        return first_200, stop
    finally:
        docker("rm", "-f", "-v", name, check=False)


def measure(project: Path, code_file: Path, port: int, runs: int) -> Figures:
    tag = unique_name("bench")
    try:
        cold = build(project, tag, "--no-cache")
        code_file.write_text(code_file.read_text() + "\n# edited\n")
        edit = build(project, tag)
        size = int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout) / 1e6
        starts, stops = zip(*(start_to_first_200(tag, port) for _ in range(runs)), strict=True)
        return Figures(cold, edit, size, statistics.median(starts), statistics.median(stops))
    finally:
        docker("rmi", "-f", tag, check=False)


def naive_project(uv_project: Path, dest: Path) -> Path:
    """The same app, with the naive Dockerfile and an unpinned requirements.txt."""
    shutil.copytree(uv_project / "app", dest / "app")
    pyproject = tomllib.loads((uv_project / "pyproject.toml").read_text())
    requirements = ["fastapi[standard]", *pyproject["project"]["dependencies"]]
    (dest / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (dest / "Dockerfile").write_text(NAIVE_DOCKERFILE)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="starts and stops per image")
    args = parser.parse_args()
    problem = engine_problem()
    if problem:
        sys.exit(f"Docker unavailable: {problem}")
    root = Path(tempfile.mkdtemp(prefix="bench-docker-"))
    template = snapshot(REPO, root / "template")
    figures: dict[str, Figures] = {}
    variants: dict[str, dict[str, str]] = {
        "uv": {"dependency_tool": "uv"},
        "poetry": {"dependency_tool": "poetry", "package_index": SIMPLE_INDEX},
        "pip": {"dependency_tool": "pip"},
        # Without a database there is no prestart: the server's own start, as naive's is.
        "uv, no database": {"dependency_tool": "uv", "database": "none"},
    }
    for name, answers in variants.items():
        project = render(template, root / name, {**answers, "python_version": PYTHON}, tasks=True)
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        figures[name] = measure(project, project / "app" / "main.py", 8000, args.runs)
    naive = naive_project(root / "uv", root / "naive")
    print("measuring naive ...", file=sys.stderr, flush=True)
    figures["naive"] = measure(naive, naive / "app" / "main.py", 80, args.runs)
    report(figures)


def report(figures: dict[str, Figures]) -> None:
    naive = figures["naive"]
    print(
        f"\nDefault answers, Python {PYTHON}; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores. Targets: {TARGETS}.\n"
    )
    header = (
        "image",
        "cold build s",
        "code-edit rebuild s",
        "size MB",
        "x naive size",
        "start-to-200 s",
        "stop s",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, f in figures.items():
        cells = (
            name,
            f"{f.cold_build:.1f}",
            f"{f.edit_rebuild:.1f}",
            f"{f.size_mb:.0f}",
            f"{f.size_mb / naive.size_mb:.2f}",
            f"{f.start_to_200:.2f}",
            f"{f.stop:.2f}",
        )
        print("| " + " | ".join(cells) + " |")
    print()
    for name, f in figures.items():
        if name == "naive":
            continue
        verdicts = {
            "size": f.size_mb <= 0.35 * naive.size_mb,
            "rebuild": f.edit_rebuild < 3,
            "start": f.start_to_200 < 1.5,
            "stop": f.stop < 1,
        }
        summary = ", ".join(f"{k} {'ok' if ok else 'MISSED'}" for k, ok in verdicts.items())
        print(f"{name}: {summary}")


if __name__ == "__main__":
    main()
