"""Every project of the covering array (tests/covering.py) renders clean and consistent."""

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.combinations import Answers, combination_id
from tests.covering import answers_of, compose_proxies, covering_array
from tests.docker import docker, require_engine
from tests.platforms import PLATFORMS, RELEASE, schema_check, start_and_release_commands
from tests.project import readme_block, render_with_secrets

REPO = Path(__file__).resolve().parent.parent

COMBINATIONS = [answers_of(row) for row in covering_array().rows]
pytestmark = pytest.mark.xdist_group("render")

LEFTOVER = re.compile(r"\{\{|\{%|%\}|\{#")
# Traefik fills these in from its environment when it reads traefik.yaml (Go templates).
TRAEFIK_TEMPLATE = re.compile(r'\{\{ (env "[A-Z_]+"|with env "[A-Z_]+"|\.|end) \}\}')
# GitHub Actions expressions, `${{ github.ref }}`, docker/metadata-action's tag patterns,
# `{{version}}`, and the docker CLI's Go templates, `--format '{{.Networks}}'`, are the files'
# own syntax.
GITHUB_EXPRESSION = re.compile(
    r"\$\{\{ [^}]* \}\}|\{\{(version|major|minor|patch)\}\}|'\{\{\.[A-Za-z]+\}\}'"
)


# A fenced code block of a Markdown file, from its opening fence to its closing one.
FENCED_CODE = re.compile(r"^```[^\n]*\n.*?^```", re.MULTILINE | re.DOTALL)


def _render_one(job: tuple[Path, Path, Answers]) -> None:
    """Render, then write what the copy's tasks write but the lock: `.env`, the secret files,
    the certificate of a proxy that serves files from TLS_DIR (nginx for a public domain too:
    the files it would be given)."""
    project = render_with_secrets(*job)
    hooks = REPO / "hooks"
    subprocess.run([sys.executable, str(hooks / "write_env.py")], cwd=project, check=True)
    if "TLS_DIR=" in (project / ".env").read_text():
        certificate = [sys.executable, str(hooks / "write_certificate.py")]
        subprocess.run(certificate, cwd=project, check=True, capture_output=True)


@pytest.fixture(scope="module")
def rendered(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The covering array, rendered once (tasks skipped, secret files written) in parallel."""
    root = tmp_path_factory.mktemp("all")
    jobs = [(template, root / f"p{i:03d}", answers) for i, answers in enumerate(COMBINATIONS)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_render_one, jobs, chunksize=8))
    return {combination_id(answers): dest for _, dest, answers in jobs}


def _failures_by_project(root: Path, output: str) -> dict[str, list[str]]:
    failures: dict[str, list[str]] = {}
    for line in output.splitlines():
        match = re.search(r"(p\d{3})/", line)
        if match:
            failures.setdefault(match.group(1), []).append(line)
    return failures


@pytest.fixture(scope="module")
def ruff_findings(rendered: dict[str, Path]) -> dict[str, list[str]]:
    """Ruff lint and format run once over the whole tree, each project with its own config."""
    root = next(iter(rendered.values())).parent
    ruff = [sys.executable, "-m", "ruff"]
    check = subprocess.run(
        [*ruff, "check", "--no-cache", "--output-format", "concise", "."],
        cwd=root,
        capture_output=True,
        text=True,
    )
    fmt = subprocess.run(
        [*ruff, "format", "--no-cache", "--check", "."], cwd=root, capture_output=True, text=True
    )
    return _failures_by_project(root, check.stdout + fmt.stdout)


def _text_files(project: Path) -> list[Path]:
    return [path for path in project.rglob("*") if path.is_file()]


def compose_reference_problems(compose: Path) -> list[str]:
    """What `docker compose config` would refuse in how the file's parts refer to each other:
    top-level sections that are not mappings, and services naming an undeclared volume, secret
    or network."""
    config = yaml.safe_load(compose.read_text())
    problems = [
        f"compose.yaml: top-level {section} is not a mapping"
        for section in ("services", "volumes", "secrets", "networks")
        if section in config and not isinstance(config[section], dict)
    ]
    if problems:
        return problems
    for name, service in config["services"].items():
        build = service.get("build")
        build_secrets = build.get("secrets", []) if isinstance(build, dict) else []
        used = {
            "volumes": [
                volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
                for volume in service.get("volumes", [])
            ],
            "secrets": [
                secret if isinstance(secret, str) else secret["source"]
                for secret in [*service.get("secrets", []), *build_secrets]
            ],
            "networks": list(service.get("networks", [])),
        }
        for section, names in used.items():
            declared = config.get(section) or {}
            for used_name in names:
                # Bind mounts name a path; every stack has the network `default`.
                local = used_name.startswith((".", "/", "$")) or used_name in {"", "default"}
                if not local and used_name not in declared:
                    problems.append(f"compose.yaml: {name} uses undeclared {section} {used_name}")
    return problems


@pytest.mark.parametrize("answers", COMBINATIONS, ids=combination_id)
def test_combination_renders_clean(
    answers: Answers, rendered: dict[str, Path], ruff_findings: dict[str, list[str]]
) -> None:
    project = rendered[combination_id(answers)]
    problems: list[str] = []
    for path in _text_files(project):
        name = path.relative_to(project).as_posix()
        text = path.read_text()
        if not text:
            continue
        own_syntax = TRAEFIK_TEMPLATE if name == "traefik.yaml" else GITHUB_EXPRESSION
        if LEFTOVER.search(own_syntax.sub("", text)):
            problems.append(f"{name}: Jinja leftover")
        blank_run = "\n\n\n\n" if path.suffix in {".py", ".mako"} else "\n\n\n"
        # A Markdown file's code blocks are code: Python there keeps its two blank lines.
        prose = FENCED_CODE.sub("```\n```", text) if path.suffix == ".md" else text
        if (
            blank_run in prose
            or text.startswith("\n")
            or text.endswith("\n\n")
            or not text.endswith("\n")
        ):
            problems.append(f"{name}: blank-line noise at start, end or in a run")
        if path.suffix == ".py":
            try:
                compile(text, name, "exec")
            except SyntaxError as error:
                problems.append(f"{name}: {error}")
        elif path.suffix == ".toml":
            tomllib.loads(text)
        elif path.suffix in {".yml", ".yaml"}:
            list(yaml.safe_load_all(text))  # Kubernetes manifests hold several documents
    problems += compose_reference_problems(project / "compose.yaml")
    problems += ruff_findings.get(project.name, [])
    assert not problems, "\n".join(problems)

    recorded = yaml.safe_load((project / ".copier-answers.yml").read_text())
    for key, value in answers.items():
        if key != "migrations" or answers["database"] != "none":
            assert recorded[key] == value, key


# --- Where the app writes --------------------------------------------------------------------

ENV_DIRECTORY = re.compile(r"PROMETHEUS_MULTIPROC_DIR=(\S+)")
APP_DIRECTORY = re.compile(r"install -d -o app -g app (\S+)")


def app_writes(project: Path) -> set[str]:
    """The directories the app's image writes to, read from its Dockerfile: /tmp, the
    directories its settings point to, and those it makes for the app's user (SQLite's
    /srv/data)."""
    dockerfile = (project / "Dockerfile").read_text()
    return {"/tmp", *ENV_DIRECTORY.findall(dockerfile), *APP_DIRECTORY.findall(dockerfile)}


def _compose_mounts(service: dict[str, Any]) -> set[str]:
    mounts = {path.split(":")[0] for path in service.get("tmpfs", [])}
    for volume in service.get("volumes", []):
        mounts.add(volume.split(":")[1] if isinstance(volume, str) else volume["target"])
    return mounts


def _runs_the_app_image(project: Path, service: dict[str, Any]) -> bool:
    slug = yaml.safe_load((project / ".copier-answers.yml").read_text())["project_slug"]
    return "build" in service or str(service.get("image", "")).split(":")[0].endswith(slug)


def unmounted_compose(project: Path, path: Path, writes: set[str]) -> list[str]:
    services = yaml.safe_load(path.read_text())["services"]
    return [
        f"{path.relative_to(project)}: {name} writes {directory} on a read-only root"
        for name, service in services.items()
        if _runs_the_app_image(project, service) and service.get("read_only")
        for directory in sorted(writes - _compose_mounts(service))
    ]


def _pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        spec = obj.get("spec", {})
        template = spec.get("jobTemplate", {}).get("spec", spec).get("template")
        if template:
            yield f"{obj['kind']}/{obj['metadata']['name']}", template["spec"]


def unmounted_kubernetes(project: Path, writes: set[str]) -> list[str]:
    problems = []
    for overlay in sorted((project / "deploy" / "kubernetes" / "overlays").iterdir()):
        result = subprocess.run(
            ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        for where, pod in _pod_specs(objects):
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                security = container.get("securityContext", {})
                if not security.get("readOnlyRootFilesystem") or container["image"].startswith(
                    "postgres"
                ):
                    continue
                mounted = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
                problems += [
                    f"{overlay.name} {where} {container['name']}: writes {directory} on a "
                    "read-only root"
                    for directory in sorted(writes - mounted)
                ]
    return problems


@pytest.mark.parametrize("answers", COMBINATIONS, ids=combination_id)
def test_every_directory_the_app_writes_is_mounted_where_its_root_is_read_only(
    answers: Answers, rendered: dict[str, Path]
) -> None:
    """Compose, the Swarm stack, and every pod of every Kubernetes overlay (the server and the
    migration) give the app a volume or tmpfs wherever it writes."""
    project = rendered[combination_id(answers)]
    writes = app_writes(project)
    problems = unmounted_compose(project, project / "compose.yaml", writes)
    if "swarm" in answers["deploy_targets"]:
        problems += unmounted_compose(project, project / "deploy/swarm/compose.yaml", writes)
    if "kubernetes" in answers["deploy_targets"]:
        if shutil.which("kubectl") is None:
            pytest.skip("no kubectl (with kustomize v5) on PATH")
        problems += unmounted_kubernetes(project, writes)
    assert not problems, "\n".join(problems)


def image_command(project: Path) -> list[str]:
    """What the app's image runs: its ENTRYPOINT (if any), then its CMD (exec form)."""
    final_stage = (project / "Dockerfile").read_text().split("\nFROM ")[-1]
    command: list[str] = []
    for instruction in ("ENTRYPOINT", "CMD"):
        lines = [line for line in final_stage.splitlines() if line.startswith(f"{instruction} ")]
        command += json.loads(lines[-1].split(" ", 1)[1]) if lines else []
    return command


@pytest.mark.parametrize("answers", COMBINATIONS, ids=combination_id)
def test_compose_runs_the_images_own_command_after_its_lookup(
    answers: Answers, rendered: dict[str, Path]
) -> None:
    """Where compose or the Swarm stack replace the app's entrypoint (to look up the proxy's
    addresses first), they then run the image's ENTRYPOINT and CMD, word for word; elsewhere they
    leave the image's command alone."""
    project = rendered[combination_id(answers)]
    files = [project / "compose.yaml"]
    if "swarm" in answers["deploy_targets"]:
        files.append(project / "deploy/swarm/compose.yaml")
    for path in files:
        app = yaml.safe_load(path.read_text())["services"]["app"]
        if "entrypoint" in app:
            shell, flag, script, *_ = app["entrypoint"]
            assert (shell, flag) == ("sh", "-c") and script.endswith('exec "$$@"'), script
            assert app["command"] == image_command(project), path
        else:
            assert "command" not in app, path


@pytest.mark.parametrize("answers", COMBINATIONS, ids=combination_id)
def test_the_development_override_runs_the_images_command_with_the_reloader(
    answers: Answers, rendered: dict[str, Path]
) -> None:
    """compose.dev.yaml (`docker compose watch`) runs compose.yaml's entrypoint, then setpriv
    to the image's user, then the image's own command word for word with Uvicorn's reloader
    added; it copies in the code the Dockerfile copies, and rebuilds on every file the builder
    installs the dependencies from."""
    project = rendered[combination_id(answers)]
    production = yaml.safe_load((project / "compose.yaml").read_text())["services"]["app"]
    dev = yaml.safe_load((project / "compose.dev.yaml").read_text())["services"]["app"]
    assert "--reload" not in production.get("command", []) + image_command(project)
    argv = dev.get("entrypoint", production.get("entrypoint", [])) + dev["command"]
    switch = argv.index("setpriv")
    assert argv[:switch] == production.get("entrypoint", [])
    assert argv[switch : switch + 5] == [
        "setpriv",
        "--reuid=10001",
        "--regid=10001",
        "--clear-groups",
        "--",
    ]
    command = image_command(project)
    assert argv[switch + 5 : switch + 5 + len(command)] == command
    assert argv[switch + 5 + len(command)] == "--reload"
    assert "USER 10001:10001" in (project / "Dockerfile").read_text()

    rules = dev["develop"]["watch"]
    dockerfile = (project / "Dockerfile").read_text()
    installed_from = set(re.findall(r"--mount=type=bind,source=([^,]+),", dockerfile))
    assert {r["path"][2:] for r in rules if r["action"] == "rebuild"} == installed_from
    [synced] = [r for r in rules if r["action"] == "sync"]
    code = synced["path"][2:]
    assert f"\nCOPY {code} ./{code}\n" in dockerfile and synced["target"] == f"/srv/{code}"


# --- Each tool's own check ------------------------------------------------------------------


@pytest.mark.parametrize("answers", COMBINATIONS, ids=combination_id)
def test_docker_compose_accepts_the_compose_file_and_the_stack(
    answers: Answers, rendered: dict[str, Path]
) -> None:
    """The compose file as `docker compose` reads it (with .env), alone and under the development
    override with its profiles, and the Swarm stack as its README deploys it: the settings its
    Deploy block exports, an image named."""
    if shutil.which("docker") is None:
        pytest.skip("no docker client (with the compose plugin) on PATH")
    project = rendered[combination_id(answers)]
    result = docker("compose", "config", "--quiet", cwd=project, check=False)
    assert result.returncode == 0, f"compose.yaml: {result.stderr}"
    development = ["-f", "compose.yaml", "-f", "compose.dev.yaml", "--profile", "devcontainer"]
    result = docker(
        "compose",
        *development,
        "--profile",
        "metrics",
        "config",
        "--quiet",
        cwd=project,
        check=False,
    )
    assert result.returncode == 0, f"compose.dev.yaml: {result.stderr}"
    if "swarm" in answers["deploy_targets"]:
        readme = (project / "deploy" / "swarm" / "README.md").read_text()
        # The Deploy block's settings lines as printed, then the stack read instead of deployed.
        settings = [
            line.split("#")[0].strip()
            for line in readme_block(readme, "Deploy")
            if line.startswith(("set -a", "export "))
        ]
        stack = "docker compose -f deploy/swarm/compose.yaml config --quiet"
        command = " && ".join([*settings, f"IMAGE=registry.example.com/app:1 {stack}"])
        result = subprocess.run(
            ["bash", "-c", command], cwd=project, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"deploy/swarm/compose.yaml: {result.stderr}"


# How each proxy that runs in compose checks its configuration, inside its own image with the
# compose file's mounts and environment. Traefik has no check command: it runs for a few seconds
# and must neither stop nor log an error.
PROXY_CHECKS = {
    "nginx": ["nginx", "-t"],
    "caddy": ["caddy", "validate", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"],
    "traefik": ["--entrypoint", "timeout", "proxy", "5", "traefik"],
}


def _proxy_check(project: Path, proxy: str) -> subprocess.CompletedProcess[str]:
    run = ["compose", "run", "--rm", "--no-deps"]
    if proxy != "traefik":
        return docker(*run, "proxy", *PROXY_CHECKS[proxy], cwd=project, check=False)
    config = json.loads(docker("compose", "config", "--format", "json", cwd=project).stdout)
    flags = config["services"]["proxy"].get("command", [])
    return docker(*run, *PROXY_CHECKS[proxy], *flags, cwd=project, check=False)


def test_every_proxy_in_compose_has_its_check() -> None:
    assert set(PROXY_CHECKS) == set(compose_proxies())


@pytest.mark.docker
@pytest.mark.parametrize(
    "answers",
    [a for a in COMBINATIONS if a["reverse_proxy"] in PROXY_CHECKS],
    ids=combination_id,
)
def test_the_proxy_accepts_its_configuration(answers: Answers, rendered: dict[str, Path]) -> None:
    require_engine()
    proxy = answers["reverse_proxy"]
    result = _proxy_check(rendered[combination_id(answers)], proxy)
    output = result.stdout + result.stderr
    if proxy == "traefik":
        assert result.returncode == 124, output  # still running when timeout stopped it
        assert '"level":"error"' not in output and " ERR " not in output, output
    else:
        assert result.returncode == 0, output


PLATFORM_COMBINATIONS = [a for a in COMBINATIONS if set(a["deploy_targets"]) & set(PLATFORMS)]


@pytest.mark.parametrize(
    ("schema", "pattern"),
    [("fly.json", "deploy/fly/fly.toml"), ("cloud-run-v1.json", "deploy/cloudrun/*.yaml")],
    ids=["fly", "cloudrun"],
)
def test_every_platform_file_matches_its_schema(
    rendered: dict[str, Path], schema: str, pattern: str
) -> None:
    """fly.toml and the Cloud Run service and job of every project with them: one
    check-jsonschema run each (tests/schemas/, SchemaStore's)."""
    files = [file for project in rendered.values() for file in sorted(project.glob(pattern))]
    assert files, f"no project of the array has {pattern}"
    checked = schema_check(schema, *files)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("answers", PLATFORM_COMBINATIONS, ids=combination_id)
def test_every_platform_starts_and_releases_with_the_same_commands(
    answers: Answers, rendered: dict[str, Path]
) -> None:
    """One start command and one release command (migrating, where there are migrations),
    whichever platform runs them (tests/test_paas.py runs them)."""
    starts, releases = start_and_release_commands(rendered[combination_id(answers)])
    assert len(starts) == 1, starts
    migrates = answers["database"] != "none" and answers["migrations"]
    assert releases == ({RELEASE} if migrates else set())
