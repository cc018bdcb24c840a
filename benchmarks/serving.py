"""One Uvicorn process of a rendered project, as its image starts it, for the load benchmarks."""

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.project import free_port, http_get, tool_env


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
