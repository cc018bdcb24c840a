"""Print the app's memory before and after a 100 MB request body, with and without the limit.

    uv run python -m benchmarks.body_limit [--size-mib 100]

Renders the default project (SQLite, migrations), installed with uv, and starts it twice as one
Uvicorn process each (as the image starts it: `logging.json`, no Uvicorn access log): with the
default MAX_REQUEST_BODY_BYTES (1 MiB), and with the limit out of the way (1 TB, the baseline:
the app as it was without one). Each gets `POST /items` with a body of --size-mib MiB, once
with a Content-Length and once chunked; the process's RSS (from /proc) is printed before and
after each, beside the status it answered.
"""

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.bodies import MIB, post_body, rss_mib
from tests.project import free_port, install, render, run, serve, snapshot, wait_for_http

REPO = Path(__file__).resolve().parent.parent
LIMITS = {"1 MiB (the default)": None, "none (1 TB, the baseline)": str(10**12)}


@contextlib.contextmanager
def server(project: Path, venv: Path, limit: str | None) -> Iterator[tuple[int, int]]:
    """One Uvicorn process of the project, with this MAX_REQUEST_BODY_BYTES: (port, pid)."""
    env = {"DATA_DIR": str(project / "data")}
    if limit is not None:
        env["MAX_REQUEST_BODY_BYTES"] = limit
    port = free_port()
    command = [str(venv / "uvicorn"), "app.main:app", "--port", str(port)]
    command += ["--log-config", "logging.json", "--no-access-log"]
    with serve(command, project, **env) as process:
        wait_for_http(f"http://127.0.0.1:{port}/health", timeout=60, process=process)
        yield port, process.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=100, help="size of the body sent")
    size = parser.parse_args().size_mib
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-body-limit-") as tmp:
        workdir = Path(tmp)
        template = snapshot(REPO, workdir / "template")
        project = render(template, workdir / "project", {"database": "sqlite"}, tasks=True)
        venv = install(project, {"dependency_tool": "uv", "python_version": "3.13"})
        run([str(venv / "alembic"), "upgrade", "head"], project, DATA_DIR=str(project / "data"))
        for name, limit in LIMITS.items():
            for chunked in (False, True):
                # A fresh process for each body: what one request does to a process that serves.
                with server(project, venv, limit) as (port, pid):
                    before = rss_mib(pid)
                    status = post_body(port, "/items", size * MIB, chunked=chunked)
                    after = rss_mib(pid)
                framing = "chunked" if chunked else "Content-Length"
                rows.append((name, framing, status, before, after))

    print(f"POST /items with a {size} MiB body; RSS of the one Uvicorn process, from /proc")
    print()
    print(f"| {'limit':<26} | {'body':<14} | status | RSS before | RSS after | growth |")
    print(f"| {'-' * 26} | {'-' * 14} | ---: | ---: | ---: | ---: |")
    for name, framing, status, before, after in rows:
        print(
            f"| {name:<26} | {framing:<14} | {status:>6} | {before:>6.0f} MiB | "
            f"{after:>5.0f} MiB | {after - before:>+4.0f} MiB |"
        )


if __name__ == "__main__":
    main()
