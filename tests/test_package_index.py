"""The package_index question: a private index for uv, Poetry and pip, all the way into the image.

Each tool's project is rendered against a private index on 127.0.0.1 that serves PyPI's simple
API only to requests carrying its credentials (tests/private_index.py). So every step below
passes only if the credentials reached the tool the way the generated README says: from the
environment for lock and install, from the BuildKit secret for the image. Each tool also runs
the whole path against https://pypi.org/simple/, an index reached over HTTPS.
"""

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import IO

import copier
import pytest
import yaml

from tests import docker
from tests.combinations import SIMPLE_INDEX
from tests.private_index import PrivateIndex, private_index
from tests.project import free_port, git, install, render, run, tool_env, wait_for_http

COPIER = Path(sys.executable).parent / "copier"
TOOLS = ["uv", "poetry", "pip"]
# This machine's pip configuration adds local wheel directories; pip must see only the index.
PIP_ONLY_THE_INDEX = {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": ""}
# What the generated README tells each tool's user to export.
CREDENTIAL_VARIABLES = {
    "uv": {"UV_INDEX_PRIVATE_USERNAME", "UV_INDEX_PRIVATE_PASSWORD"},
    "poetry": {"POETRY_HTTP_BASIC_PRIVATE_USERNAME", "POETRY_HTTP_BASIC_PRIVATE_PASSWORD"},
    "pip": {"PIP_INDEX_URL"},
}
# Any of these in a file means it configures a package index.
INDEX_MARKERS = re.compile(
    r"tool\.uv\.index|tool\.poetry\.source|(?<![\w-])--index-url|PIP_INDEX_URL|UV_INDEX_"
    r"|POETRY_HTTP_BASIC_|index_credentials|INDEX_CREDENTIALS|## Package index|type: python-index"
)


def copier_copy(
    template: Path, dest: Path, answers: dict[str, str], *extra: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """`copier copy --trust --defaults --data ...` as a user runs it, with this environment."""
    data = [f"--data={key}={value}" for key, value in answers.items()]
    return subprocess.run(
        [str(COPIER), "copy", "--trust", "--defaults", *extra, *data, str(template), str(dest)],
        env=tool_env(**env),
        capture_output=True,
        text=True,
        timeout=900,
    )


def readme_credentials(project: Path, index: PrivateIndex) -> dict[str, str]:
    """The variables the generated README tells the user to export, with the real values."""
    readme = (project / "README.md").read_text()
    section = readme[readme.index("## Package index") :]
    line = next(line for line in section.splitlines() if line.startswith("export "))
    pairs = (word.split("=", 1) for word in line.removeprefix("export ").split())
    return {
        name: value.replace("USER", index.username).replace("PASSWORD", index.password)
        for name, value in pairs
    }


def files_containing(root: Path, *needles: str) -> list[str]:
    return [
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and any(needle.encode() in path.read_bytes() for needle in needles)
    ]


def stream_contains(stream: IO[bytes], needles: list[bytes]) -> set[bytes]:
    """Which needles occur in the stream, read in chunks that overlap by the longest needle."""
    found: set[bytes] = set()
    overlap = max(map(len, needles)) - 1
    tail = b""
    while chunk := stream.read(1 << 20):
        window = tail + chunk
        found.update(needle for needle in needles if needle in window)
        tail = window[-overlap:]
    return found


def image_occurrences(tag: str, needles: list[str], tmp: Path) -> dict[str, set[str]]:
    """Where each needle occurs: the image history, and every file of `docker save` (layers)."""
    encoded = [needle.encode() for needle in needles]
    places: dict[str, set[str]] = {needle: set() for needle in needles}
    history = docker.docker("history", "--no-trunc", tag).stdout
    for needle in needles:
        if needle in history:
            places[needle].add("history")
    archive = tmp / f"{tag}.tar"
    docker.docker("save", "-o", str(archive), tag)
    try:
        with tarfile.open(archive) as saved:
            for member in saved:
                stream = saved.extractfile(member) if member.isfile() else None
                if stream is not None:
                    for found in stream_contains(stream, encoded):
                        places[found.decode()].add(member.name)
    finally:
        archive.unlink()
    return places


def render_and_lock(
    template: Path, project: Path, tool: str, index: PrivateIndex, **extra: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Copy the template with its tasks, credentials exported as its README says; return the
    answers and those credentials."""
    answers = {
        "dependency_tool": tool,
        "package_index": index.url,
        "project_slug": f"index-{tool}-{index.password[-8:]}",
        "python_version": "3.13",
        "database": "none",
        **extra,
    }
    # Rendered once without tasks for the README, so the credentials are the ones it names.
    readme = copier_copy(template, project, answers, "--skip-tasks")
    assert readme.returncode == 0, readme.stderr[-3000:]
    credentials = readme_credentials(project, index)
    assert set(credentials) == CREDENTIAL_VARIABLES[tool]
    shutil.rmtree(project)
    result = copier_copy(template, project, answers, **credentials, **PIP_ONLY_THE_INDEX)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return answers, credentials


def check_lock_records_the_index(project: Path, answers: dict[str, str]) -> None:
    """uv and Poetry record the index of every package; pip's files name no index at all."""
    url = answers["package_index"]
    if answers["dependency_tool"] == "uv":
        packages = tomllib.loads((project / "uv.lock").read_text())["package"]
        sources = {package["name"]: package["source"] for package in packages}
        assert sources.pop(answers["project_slug"]) == {"virtual": "."}
        assert {source["registry"] for source in sources.values()} == {url}
    elif answers["dependency_tool"] == "poetry":
        packages = tomllib.loads((project / "poetry.lock").read_text())["package"]
        named = {(entry["source"]["reference"], entry["source"]["url"]) for entry in packages}
        assert named == {("private", url.rstrip("/"))}
    else:
        for name in ["requirements.txt", "requirements-dev.txt"]:
            text = (project / name).read_text()
            assert "--hash=sha256:" in text
            assert not re.search(r"^--(index-url|extra-index-url|find-links)", text, re.M), name


def check_image_build_uses_the_secret_and_no_layer_keeps_it(
    project: Path, index: PrivateIndex, credentials: dict[str, str], tmp_path: Path
) -> None:
    """`docker build --secret id=index_credentials,src=FILE` as the README says; the index on
    this machine's loopback is reached with `--network host` (the Dockerfile is the user's)."""
    secret = tmp_path / "index.env"
    secret.write_text("".join(f"{name}={value}\n" for name, value in credentials.items()))
    build_args = ["--network", "host", "--secret", f"id=index_credentials,src={secret}"]
    tag = docker.unique_name("template-test-index")
    before = len(index.requests)
    try:
        docker.build(project, tag, *build_args)
        assert index.authorized_since(before), "the image build never used the index"
        docker.build(project, f"{tag}-builder", *build_args, "--target", "builder")
        for image in [tag, f"{tag}-builder"]:
            places = image_occurrences(image, [index.password, "FastAPI"], tmp_path)
            assert places[index.password] == set(), image
            assert places["FastAPI"], "the search does find what a layer holds"
        with docker.container(tag, "-p", "127.0.0.1::8000") as name:
            port = docker.docker("port", name, "8000/tcp").stdout.split(":")[-1].strip()
            assert wait_for_http(f"http://127.0.0.1:{port}/health", timeout=60) == 200
    finally:
        docker.docker("rmi", "-f", tag, f"{tag}-builder", check=False)


def check_compose_build_passes_the_secret(
    project: Path, index: PrivateIndex, credentials: dict[str, str], tmp_path: Path
) -> None:
    """`INDEX_CREDENTIALS=... docker compose build`, as the README says (here on the host
    network through an override file, to reach the index on loopback)."""
    override = tmp_path / "host-network.yaml"
    override.write_text("services:\n  app:\n    build:\n      network: host\n")
    lines = "".join(f"{name}={value}\n" for name, value in credentials.items())
    compose = ["docker", "compose", "-p", docker.unique_name("tt"), "-f", "compose.yaml"]
    before = len(index.requests)
    try:
        result = subprocess.run(
            [*compose, "-f", str(override), "build", "--no-cache", "app"],
            cwd=project,
            env={**os.environ, **docker.DOCKER_ENV, "INDEX_CREDENTIALS": lines},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        assert index.authorized_since(before), "compose never passed the secret"
    finally:
        image = yaml.safe_load((project / "compose.yaml").read_text())["services"]["app"]["image"]
        docker.docker("rmi", "-f", image, check=False)


@pytest.mark.docker
def test_compose_stack_with_migrations_builds_one_image_with_the_index_secret(
    template: Path, tmp_path: Path
) -> None:
    """PostgreSQL, one process per container, migrations: the `migrate` service runs the image
    the app builds, so `docker compose up --build --wait` builds once, with the secret."""
    docker.require_engine()
    with private_index() as index:
        project = tmp_path / "project"
        answers, credentials = render_and_lock(
            template,
            project,
            "uv",
            index,
            database="postgresql",
            migrations="true",
            process_model="single",
        )
        config = yaml.safe_load((project / "compose.yaml").read_text())["services"]
        assert [name for name, service in config.items() if "build" in service] == ["app"]
        assert config["migrate"]["image"] == config["app"]["image"]

        # The index listens on this machine's loopback: every build runs on the host network.
        override = tmp_path / "host-network.yaml"
        override.write_text(
            yaml.safe_dump(
                {
                    "services": {
                        name: {"build": {"network": "host"}}
                        for name, service in config.items()
                        if "build" in service
                    }
                }
            )
        )
        port = free_port()
        with (project / ".env").open("a") as dotenv:
            dotenv.write(f"APP_PORT={port}\n")
        lines = "".join(f"{name}={value}\n" for name, value in credentials.items())
        name = docker.unique_name("tt")
        compose = ["docker", "compose", "-p", name, "-f", "compose.yaml", "-f", str(override)]
        env = {**os.environ, **docker.DOCKER_ENV, "INDEX_CREDENTIALS": lines}
        before = len(index.requests)
        try:
            result = subprocess.run(
                [*compose, "up", "--build", "--wait"],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
            assert index.authorized_since(before), "compose never passed the secret"
            assert not any(
                path for path, authorized in index.requests[before:] if not authorized
            ), "a build reached the index without the credentials"
            assert wait_for_http(f"http://127.0.0.1:{port}/ready", timeout=60) == 200
            migrate = subprocess.run(
                [*compose, "ps", "-a", "--format", "{{.State}} {{.ExitCode}}", "migrate"],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
            )
            assert migrate.stdout.split() == ["exited", "0"]
        finally:
            subprocess.run(
                [*compose, "down", "-v", "--remove-orphans"],
                cwd=project,
                env=env,
                capture_output=True,
            )
            docker.docker("rmi", "-f", f"{answers['project_slug']}:latest", check=False)


# One test per tool keeps its locked project to itself, whichever worker runs it.
@pytest.mark.docker
@pytest.mark.parametrize("tool", TOOLS)
def test_private_index_takes_credentials_from_the_environment_and_the_build_secret_only(
    tool: str, template: Path, tmp_path: Path
) -> None:
    """Lock, install, the project's own tests, image build and run, each against an index that
    refuses every request without its credentials; no file and no image layer keeps them."""
    with private_index() as index:
        project = tmp_path / "project"
        answers, credentials = render_and_lock(template, project, tool, index)
        assert "/simple/fastapi/" in index.authorized_paths(), "the lock never used the index"
        check_lock_records_the_index(project, answers)

        before = len(index.requests)
        venv_bin = install(project, answers, **credentials, **PIP_ONLY_THE_INDEX)
        assert index.authorized_since(before), "the install never used the index"
        run([str(venv_bin / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"], project)
        assert files_containing(project, index.password) == []

        docker.require_engine()
        check_image_build_uses_the_secret_and_no_layer_keeps_it(
            project, index, credentials, tmp_path
        )
        if tool == "uv":  # compose passes the secret the same way whatever the tool
            check_compose_build_passes_the_secret(project, index, credentials, tmp_path)


@pytest.mark.docker
@pytest.mark.parametrize("tool", TOOLS)
def test_project_on_an_https_index_locks_installs_passes_its_tests_and_serves(
    tool: str, template: Path, tmp_path: Path
) -> None:
    """The whole path against https://pypi.org/simple/ as the index, no credentials needed."""
    answers = {
        "dependency_tool": tool,
        "package_index": SIMPLE_INDEX,
        "project_slug": f"https-index-{tool}",
        "python_version": "3.13",
    }
    project = tmp_path / "project"
    result = copier_copy(template, project, answers, **PIP_ONLY_THE_INDEX)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_lock_records_the_index(project, answers)
    venv_bin = install(project, answers, **PIP_ONLY_THE_INDEX)
    run([str(venv_bin / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"], project)
    docker.require_engine()
    with (
        docker.image(project) as tag,
        docker.container(tag, "-p", "127.0.0.1::8000") as name,
    ):
        port = docker.docker("port", name, "8000/tcp").stdout.split(":")[-1].strip()
        assert wait_for_http(f"http://127.0.0.1:{port}/health", timeout=60) == 200


@pytest.mark.parametrize("tool", TOOLS)
def test_default_output_configures_no_package_index(
    tool: str, template: Path, tmp_path: Path
) -> None:
    public = tmp_path / "public"
    render(template, public, {"dependency_tool": tool})
    found = {
        path.relative_to(public).as_posix(): match.group()
        for path in public.rglob("*")
        if path.is_file() and (match := INDEX_MARKERS.search(path.read_text()))
    }
    assert found == {}
    assert yaml.safe_load((public / ".copier-answers.yml").read_text())["package_index"] == ""

    private = tmp_path / "private"
    render(template, private, {"dependency_tool": tool, "package_index": SIMPLE_INDEX})
    configured = {
        path.relative_to(private).as_posix()
        for path in private.rglob("*")
        if path.is_file() and INDEX_MARKERS.search(path.read_text())
    }
    expected = {"Dockerfile", "compose.yaml", "README.md", ".github/dependabot.yml"} | {
        f".github/workflows/{name}.yml" for name in ("ci", "release", "template-update")
    }
    # pip's development override builds with the index too (uv and Poetry read pyproject.toml).
    by_tool = {"pyproject.toml"} if tool != "pip" else {"compose.dev.yaml"}
    assert configured == expected | by_tool


SECRET = "s3cr3t-canary"
# The reason copier must give; the first also finds an existing destination, to leave it alone.
REJECTED_BY_THE_CLI = {
    "credentials": (
        f"https://deploy:{SECRET}@pypi.example.com/simple/",
        "credentials are not",
        True,
    ),
    "plain-http": ("http://pypi.example.com/simple/", "not a simple-API index URL", False),
    "not-simple": ("https://pypi.example.com/pypi/", "not a simple-API index URL", False),
}


@pytest.mark.parametrize(
    "url, reason, existing", REJECTED_BY_THE_CLI.values(), ids=REJECTED_BY_THE_CLI
)
def test_copier_cli_rejects_the_index_url_and_writes_nothing(
    url: str, reason: str, existing: bool, template: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "project"
    if existing:
        dest.mkdir()
        (dest / "notes.txt").write_text("mine\n")
    result = copier_copy(template, dest, {"package_index": url})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"Validation error for question 'package_index': package_index: {reason}" in output
    assert SECRET not in output.replace(url, "")
    if existing:
        assert [path.name for path in dest.iterdir()] == ["notes.txt"]
        assert (dest / "notes.txt").read_text() == "mine\n"
    else:
        assert not dest.exists()


@pytest.mark.parametrize(
    "url",
    [
        f"https://{SECRET}@pypi.example.com/simple/",
        f"HTTPS://deploy:{SECRET}@pypi.example.com/simple/",
        f"deploy:{SECRET}@pypi.example.com/simple/",
        "https://pypi.org/pypi/fastapi/json",
        "ftp://pypi.example.com/simple/",
        "http://192.168.1.10/simple/",
        " https://pypi.org/simple/",
    ],
)
def test_other_unsafe_or_malformed_index_urls_are_rejected(
    url: str, template: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="question 'package_index'") as error:
        render(template, tmp_path / "p", {"package_index": url})
    assert SECRET not in str(error.value)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "url",
    [
        "https://pypi.org/simple",
        "https://nexus.example.com/repository/pypi-proxy/simple/",
        "https://devpi.example.com/root/pypi/+simple/",
        "https://example.jfrog.io/artifactory/api/pypi/pypi-remote/simple",
        "http://localhost:3141/root/pypi/+simple/",
        "http://127.0.0.1:8080/simple/",
    ],
)
def test_simple_api_urls_are_accepted(url: str, template: Path, tmp_path: Path) -> None:
    render(template, tmp_path / "p", {"package_index": url})
    assert f'url = "{url}"' in (tmp_path / "p" / "pyproject.toml").read_text()


def test_update_from_a_project_made_before_the_question_keeps_working(
    template: Path, tmp_path: Path
) -> None:
    repo = shutil.copytree(template, tmp_path / "template")
    copier_yml = repo / "copier.yml"
    current = copier_yml.read_text()
    start = current.index("\npackage_index:\n")
    copier_yml.write_text(current[:start] + current[current.index("\n\n", start + 1) :])
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "before the question")
    git(repo, "tag", "v1")
    copier_yml.write_text(current)
    git(repo, "commit", "-q", "-am", "the question")
    git(repo, "tag", "v2")

    project = tmp_path / "project"
    copier.run_copy(
        str(repo),
        str(project),
        vcs_ref="v1",
        defaults=True,
        unsafe=True,
        skip_tasks=True,
        quiet=True,
    )
    assert "package_index" not in (project / ".copier-answers.yml").read_text()
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "generated")
    copier.run_update(
        str(project), defaults=True, unsafe=True, skip_tasks=True, overwrite=True, quiet=True
    )
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert (answers["_commit"], answers["package_index"]) == ("v2", "")
    assert not any(
        INDEX_MARKERS.search(path.read_text())
        for path in project.rglob("*")
        if path.is_file() and ".git" not in path.parts
    )
