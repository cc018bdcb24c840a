"""Read a generated project's platform files (issue 25) as the platforms read them, and check
their schemas: shared by tests/test_paas.py (the platform projects run for real) and
tests/test_render.py (every project of the covering array)."""

import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

from tests.covering import platform_targets

SCHEMAS = Path(__file__).resolve().parent / "schemas"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"

PLATFORMS = platform_targets()
# How a shell start command (Procfile, Render) names the port: PORT, which must be set.
PORT_REQUIRED = '--port "${PORT:?the platform sets PORT, the port to serve on}"'
RELEASE = "python prestart.py alembic upgrade head"


def schema_check(schema: str, *files: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema of the files against one of tests/schemas/ (no network)."""
    command = [str(CHECK_JSONSCHEMA), "--schemafile", str(SCHEMAS / schema), *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def procfile(project: Path) -> dict[str, str]:
    """The Procfile's processes, as Heroku reads it: `name: command` lines."""
    lines = (project / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def blueprint(project: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        (project / "deploy" / "render" / "render.yaml").read_text()
    )
    return loaded


def fly_config(project: Path) -> dict[str, Any]:
    return tomllib.loads((project / "deploy" / "fly" / "fly.toml").read_text())


def cloud_run_service(project: Path) -> dict[str, Any]:
    """The revision template's spec of the Cloud Run service."""
    loaded = yaml.safe_load((project / "deploy" / "cloudrun" / "service.yaml").read_text())
    spec: dict[str, Any] = loaded["spec"]["template"]["spec"]
    return spec


def cloud_run_container(project: Path) -> dict[str, Any]:
    [container] = cloud_run_service(project)["containers"]
    assert isinstance(container, dict)
    return container


def migration_job_container(project: Path) -> dict[str, Any]:
    loaded = yaml.safe_load((project / "deploy" / "cloudrun" / "migrate-job.yaml").read_text())
    [container] = loaded["spec"]["template"]["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def start_and_release_commands(project: Path) -> tuple[set[str], set[str]]:
    """Each platform's start command, written as a shell start on PORT, and each one's release
    command: one of each when every platform runs the same."""
    starts: set[str] = set()
    releases: set[str] = set()
    if (project / "Procfile").exists():
        processes = procfile(project)
        starts.add(processes["web"])
        if "release" in processes:
            releases.add(processes["release"])
    if (project / "deploy" / "render").is_dir():
        [service] = blueprint(project)["services"]
        starts.add(service["startCommand"])
        if "preDeployCommand" in service:
            releases.add(service["preDeployCommand"])
    if (project / "deploy" / "cloudrun").is_dir():
        container = cloud_run_container(project)
        image_start = [*container["command"], *container["args"]]
        starts.add(shlex.join(image_start).replace("--port 8000", PORT_REQUIRED))
        if (project / "deploy" / "cloudrun" / "migrate-job.yaml").exists():
            job = migration_job_container(project)
            releases.add(shlex.join([*job["command"], *job["args"]]))
    if (project / "deploy" / "fly").is_dir():
        # Fly replaces the image's CMD and keeps its ENTRYPOINT.
        assert 'ENTRYPOINT ["python", "prestart.py"]' in (project / "Dockerfile").read_text()
        config = fly_config(project)
        fly_start = ["python", "prestart.py", *config["processes"]["app"].split()]
        starts.add(shlex.join(fly_start).replace("--port 8000", PORT_REQUIRED))
        if "deploy" in config:
            releases.add(f"python prestart.py {config['deploy']['release_command']}")
    return starts, releases
