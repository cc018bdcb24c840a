"""The generated repository's automation (.github/, pre-commit), checked statically.

Per family of the answers that change .github/ (tests/github.py): zizmor finds nothing of
medium severity or above, and every workflow and the Dependabot file match their JSON schemas.
Then what the linters cannot see: actions pinned to commits, the package index's credentials
reaching only the steps that install, Dependabot watching the tool the project uses, releases
publishing an image with SBOM and provenance. The workflows' commands run for real in
tests/test_projects.py and tests/test_template_update.py.
"""

import os
import re
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.combinations import COVERING_SET, SIMPLE_INDEX, Answers, combination_id
from tests.github import BIN, FAMILIES, schema_findings, zizmor_findings
from tests.project import git, render, tool_env

pytestmark = pytest.mark.xdist_group("github")

PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$")
# An image by tag and the digest of that tag's build: readable, and immutable.
IMAGE_PINNED = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")


def _render(job: tuple[Path, Path, Answers]) -> None:
    render(*job)


@pytest.fixture(scope="module")
def families(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One rendered project per family (tasks skipped)."""
    root = tmp_path_factory.mktemp("families")
    jobs = [(template, root / name, answers) for name, answers in FAMILIES.items()]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_render, jobs))
    return {name: root / name for name in FAMILIES}


@pytest.fixture(scope="module")
def covering(template: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The projects of tests/combinations.py COVERING_SET (tasks skipped)."""
    root = tmp_path_factory.mktemp("covering")
    jobs = [(template, root / combination_id(answers), answers) for answers in COVERING_SET]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_render, jobs))
    return [dest for _, dest, _ in jobs]


@pytest.fixture(scope="module")
def findings(families: dict[str, Path]) -> dict[Path, list[str]]:
    projects = list(families.values())
    zizmor, schemas = zizmor_findings(projects), schema_findings(projects)
    return {project: zizmor[project] + schemas[project] for project in projects}


@pytest.mark.parametrize("family", FAMILIES)
def test_workflows_pass_zizmor_and_their_schemas(
    family: str, families: dict[str, Path], findings: dict[Path, list[str]]
) -> None:
    project = families[family]
    assert {path.name for path in (project / ".github/workflows").iterdir()} == {
        "ci.yml",
        "release.yml",
        "template-update.yml",
    }
    assert findings[project] == []


def test_auditor_persona_finds_nothing_of_high_severity(
    families: dict[str, Path], covering: list[Path]
) -> None:
    """zizmor's auditor persona (false positives allowed) on every family and the covering set:
    nothing high, such as a service container whose image a registry could swap."""
    found = zizmor_findings([*families.values(), *covering], "auditor", "high")
    assert {str(project): high for project, high in found.items() if high} == {}
    # The regular persona's medium findings, checked above per family, for these too.
    regular = zizmor_findings(covering)
    assert {str(project): medium for project, medium in regular.items() if medium} == {}


def test_service_containers_are_pinned_by_digest(families: dict[str, Path]) -> None:
    images = [
        (name, job, service["image"])
        for project in families.values()
        for name, workflow in workflows(project).items()
        for job, spec in workflow["jobs"].items()
        for service in spec.get("services", {}).values()
    ]
    assert {(name, job) for name, job, _ in images} == {
        ("ci.yml", "check"),
        ("template-update.yml", "update"),
    }
    for name, job, image in images:
        assert IMAGE_PINNED.match(image), f"{name} {job}: {image}"
    # CI tests against the PostgreSQL the project runs: the compose file's tag (Dependabot
    # moves that one; the workflows' comes with the template).
    for project in families.values():
        compose = yaml.safe_load((project / "compose.yaml").read_text())
        if "db" in compose["services"]:
            tag = compose["services"]["db"]["image"].split("@")[0]
            for workflow in workflows(project).values():
                for spec in workflow["jobs"].values():
                    for service in spec.get("services", {}).values():
                        assert service["image"].split("@")[0] == tag


def workflows(project: Path) -> dict[str, dict[Any, Any]]:
    """Each workflow as YAML 1.1 reads it (`on` becomes the key True)."""
    return {
        path.name: yaml.safe_load(path.read_text())
        for path in (project / ".github/workflows").glob("*.yml")
    }


def steps(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each job's steps (a job that calls a reusable workflow has none of its own)."""
    return [(job, step) for job, spec in workflow["jobs"].items() for step in spec.get("steps", [])]


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_top_level_grants_and_actions_pin_commits(
    family: str, families: dict[str, Path]
) -> None:
    for name, workflow in workflows(families[family]).items():
        assert workflow["permissions"] == {"contents": "read"}, name
        text = (families[family] / ".github/workflows" / name).read_text()
        for action in re.findall(r"uses: (.+)", text):
            # A workflow of the repository itself is at the same commit.
            local = action.startswith("./.github/workflows/")
            assert local or PINNED.match(action), f"{name}: {action}"
        for job, step in steps(workflow):
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, f"{name} {job}"
    ci = workflows(families[family])["ci.yml"]
    assert ci["concurrency"]["cancel-in-progress"] is True
    assert all("timeout-minutes" in job for job in ci["jobs"].values())


@pytest.mark.parametrize("family", FAMILIES)
def test_template_update_writes_only_from_a_job_that_runs_none_of_the_projects_code(
    family: str, families: dict[str, Path]
) -> None:
    """copier (the template's tasks), the install and the checks run with a read-only token;
    the job that may push gets only their result (a bundle) and runs git and gh on it."""
    workflow = workflows(families[family])["template-update.yml"]
    update, pull_request = workflow["jobs"]["update"], workflow["jobs"]["pull-request"]
    writers = [
        job
        for job, spec in workflow["jobs"].items()
        if "write" in spec.get("permissions", {}).values()
    ]
    assert writers == ["pull-request"]
    assert update["permissions"] == {"contents": "read"}
    assert any("scripts/template_update.py" in step.get("run", "") for step in update["steps"])
    assert pull_request["needs"] == "update"
    assert [step.get("uses", "run").split("@")[0] for step in pull_request["steps"]] == [
        "actions/download-artifact",
        "run",
    ]
    push = pull_request["steps"][-1]
    commands = {line.split()[0] for line in push["run"].splitlines()}
    assert commands == {"git", "gh", 'number="$(gh', "if", "else"}, commands
    for project_code in ("scripts/", "python", "uv ", "poetry", "pip ", "copier", "pytest"):
        assert project_code not in push["run"]
    # The branch is named by this job, never by what the update job's code output.
    assert push["env"]["BRANCH"] == "template-update"
    assert "needs.update.outputs.branch" not in str(push)


@pytest.mark.parametrize("family", [name for name in FAMILIES if "-index" in name])
def test_index_credentials_reach_only_the_steps_that_need_them(
    family: str, families: dict[str, Path]
) -> None:
    """Never through $GITHUB_ENV (every later step and dependency could read them)."""
    seen = []
    for name, workflow in workflows(families[family]).items():
        for job, spec in workflow["jobs"].items():
            assert "INDEX_CREDENTIALS" not in str(spec.get("env", {})), f"{name} {job}"
        for job, step in steps(workflow):
            assert "GITHUB_ENV" not in step.get("run", ""), f"{name} {job}"
            if "secrets.INDEX_CREDENTIALS" in str(step.get("env", {})):
                seen.append((name, job, step.get("name") or step.get("uses", "").split("@")[0]))
    assert sorted(seen) == [
        ("ci.yml", "check", "Install the locked dependencies"),
        ("ci.yml", "compose", "Build and start the stack"),
        ("release.yml", "image", "docker/build-push-action"),
        ("template-update.yml", "update", "Update from the template, run the checks"),
    ]
    # The release runs the CI workflow with the one secret it needs, named (never `inherit`).
    release = workflows(families[family])["release.yml"]
    assert release["jobs"]["checks"]["secrets"] == {
        "INDEX_CREDENTIALS": "${{ secrets.INDEX_CREDENTIALS }}"
    }
    ci_secrets = workflows(families[family])["ci.yml"][True]["workflow_call"]["secrets"]
    assert ci_secrets == {"INDEX_CREDENTIALS": {"required": False}}


# Which files Dependabot reads in a directory it is given (dependabot-core's file fetchers):
# Dockerfiles, and YAML whose first document is a Kubernetes object, for `docker`; files named
# like compose files for `docker-compose`.
DOCKERFILE = re.compile(r"dockerfile|containerfile", re.IGNORECASE)
COMPOSE_FILE = re.compile(r"(docker-)?compose(-\w+)?(\.[\w-]+)?\.ya?ml", re.IGNORECASE)
MAJOR_UPGRADE = "### Upgrading PostgreSQL to a new major version"
IMAGE_VALUE = re.compile(r"^\s*(?:- )?image:\s*(\S+)", re.MULTILINE)


def read_by_dependabot(ecosystem: str, directory: Path) -> list[Path]:
    files = [path for path in directory.iterdir() if path.is_file()]
    if ecosystem == "docker-compose":
        return [path for path in files if COMPOSE_FILE.search(path.name)]
    found = [path for path in files if DOCKERFILE.search(path.name)]
    for path in files:
        if path.suffix in (".yaml", ".yml") and not path.name.startswith("."):
            first = next(yaml.safe_load_all(path.read_text()), None)
            if isinstance(first, dict) and {"apiVersion", "kind"} <= first.keys():
                found.append(path)
    return found


@pytest.mark.parametrize("family", FAMILIES)
def test_dependabot_watches_the_tool_the_actions_and_the_images(
    family: str, families: dict[str, Path]
) -> None:
    answers, project = FAMILIES[family], families[family]
    config = yaml.safe_load((project / ".github/dependabot.yml").read_text())
    ecosystems = [update["package-ecosystem"] for update in config["updates"]]
    python = "uv" if answers["dependency_tool"] == "uv" else "pip"
    compose_images = answers["database"] == "postgresql" or answers["reverse_proxy"] != "none"
    expected = [python, "github-actions", "docker"] + (["docker-compose"] * compose_images)
    assert ecosystems == expected
    for update in config["updates"]:
        assert update["schedule"]["interval"] == "weekly"
        assert [group["patterns"] for group in update["groups"].values()] == [["*"]]
    assert ("registries" in config) == ("package_index" in answers)

    # Every file that names an image from a registry (the workflows' PostgreSQL aside: no
    # ecosystem reads a workflow's images, the template's updates bring its digest) is read
    # by an entry that lists its directory: the compose files, the Swarm stack, the
    # Kubernetes dev overlay's PostgreSQL.
    read = {
        path
        for update in config["updates"][2:]
        for directory in update.get("directories") or [update["directory"]]
        for path in read_by_dependabot(update["package-ecosystem"], project / directory[1:])
    }
    assert set(naming_registry_images(project)) <= read


def naming_registry_images(project: Path) -> list[Path]:
    """The project's files that name an image pulled from a registry: a Dockerfile's FROM, an
    `image:` in YAML (outside .github/) that is not the project's own image."""
    own = yaml.safe_load((project / ".copier-answers.yml").read_text())["project_slug"]
    found = []
    for path in sorted(project.rglob("*")):
        relative = path.relative_to(project).parts
        if not path.is_file() or relative[0] in (".github", ".venv", ".git"):
            continue
        if DOCKERFILE.search(path.name):
            found.append(path)
        elif path.suffix in (".yaml", ".yml"):
            images = IMAGE_VALUE.findall(path.read_text())
            if any(own not in image for image in images):
                found.append(path)
    return found


@pytest.mark.parametrize("family", FAMILIES)
def test_dependabot_proposes_a_major_image_version_alone_with_its_runbook(
    family: str, families: dict[str, Path]
) -> None:
    """A week's image updates share one pull request, but a major version (PostgreSQL 17 to
    18: a new on-disk format, which CI on an empty database passes) comes in its own, and the
    file points to the README's runbook."""
    project = families[family]
    text = (project / ".github/dependabot.yml").read_text()
    config = yaml.safe_load(text)
    for update in config["updates"]:
        if update["package-ecosystem"] in ("docker", "docker-compose"):
            assert [group["update-types"] for group in update["groups"].values()] == [
                ["minor", "patch"]
            ]
        else:
            assert all("update-types" not in group for group in update["groups"].values())
    readme = (project / "README.md").read_text()
    postgresql = FAMILIES[family]["database"] == "postgresql"
    assert (MAJOR_UPGRADE in readme) == postgresql
    assert (
        'README.md, "Upgrading PostgreSQL to a new major version"'
        in " ".join(line.lstrip("# ") for line in text.splitlines())
    ) == postgresql


def test_release_publishes_version_and_commit_tags_with_sbom_and_provenance(
    families: dict[str, Path],
) -> None:
    release = workflows(next(iter(families.values())))["release.yml"]
    assert release[True]["push"]["tags"] == ["v*.*.*"]  # YAML 1.1 reads `on` as True
    job = release["jobs"]["image"]
    assert job["permissions"] == {
        "contents": "read",
        "packages": "write",
        "id-token": "write",
        "attestations": "write",
    }
    by_action = {step["uses"].split("@")[0]: step for _, step in steps(release) if "uses" in step}
    tags = by_action["docker/metadata-action"]["with"]["tags"].split()
    assert tags == ["type=semver,pattern={{version}}", "type=sha,format=long"]
    build = by_action["docker/build-push-action"]["with"]
    assert (build["push"], build["sbom"], build["provenance"]) == (True, True, "mode=max")
    assert by_action["actions/attest-build-provenance"]["with"]["push-to-registry"] is True


def test_release_publishes_only_a_commit_that_passes_the_ci_workflow(
    families: dict[str, Path],
) -> None:
    for project in families.values():
        ci, release = workflows(project)["ci.yml"], workflows(project)["release.yml"]
        assert "workflow_call" in ci[True]
        assert release["jobs"]["checks"]["uses"] == "./.github/workflows/ci.yml"
        assert release["jobs"]["image"]["needs"] == "checks"
        assert list(release["jobs"]) == ["checks", "image"]


# The command that looks the locked dependencies up, and the file it reads, per tool.
AUDIT = "pipx run --spec pip-audit==2.10.1 pip-audit --disable-pip --requirement "
AUDITED: dict[str, tuple[str | None, str]] = {
    "uv": ("uv export --locked --all-groups --no-emit-project", '"$RUNNER_TEMP/requirements.txt"'),
    "poetry": ("poetry export --all-groups", '"$RUNNER_TEMP/requirements.txt"'),
    "pip": (None, "requirements-dev.txt"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_ci_audits_the_locked_dependencies_and_reads_deploy_for_the_chosen_targets(
    family: str, families: dict[str, Path]
) -> None:
    answers, ci = FAMILIES[family], workflows(families[family])["ci.yml"]
    targets = answers.get("deploy_targets", [])
    assert list(ci["jobs"]) == ["check", "audit", *(["deploy"] if targets else []), "compose"]
    export, requirements = AUDITED[answers["dependency_tool"]]
    commands = [step["run"] for step in ci["jobs"]["audit"]["steps"] if "run" in step]
    assert commands[-1] == AUDIT + requirements
    assert export is None or any(command.startswith(export) for command in commands)
    if targets:
        deploy = " ".join(step.get("run", "") for step in ci["jobs"]["deploy"]["steps"])
        assert ("kubectl kustomize" in deploy) == ("kubernetes" in targets)
        assert ("kubernetes-validate --strict" in deploy) == ("kubernetes" in targets)
        assert ("deploy/swarm/compose.yaml config" in deploy) == ("swarm" in targets)
        assert ("systemd-analyze security" in deploy) == ("server" in targets)


def job_steps(project: Path, job: str) -> list[dict[str, Any]]:
    """The shell steps of a CI job, but installing a tool with pipx (the runner's business)."""
    return [
        step
        for step in workflows(project)["ci.yml"]["jobs"][job]["steps"]
        if "run" in step and not step["run"].startswith("pipx install ")
    ]


def run_job(project: Path, job: str, tools: Path) -> list[subprocess.CompletedProcess[str]]:
    """Run a CI job's shell steps in order, as the runner does, until one fails."""
    runner_temp = project.parent / f"{project.name}-runner-temp"
    runner_temp.mkdir(exist_ok=True)
    env = tool_env(PATH=f"{tools}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}")
    results = []
    for step in job_steps(project, job):
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=project,
            env={**env, "RUNNER_TEMP": str(runner_temp)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        results.append(result)
        if result.returncode != 0:
            break
    return results


# pipx as the audit job calls it (`pipx run --spec SPEC COMMAND ARGS`), run by uvx here.
PIPX = """#!/bin/sh
[ "$1" = run ] && [ "$2" = --spec ] || { echo "unexpected: pipx $*" >&2; exit 2; }
spec="$3"; shift 3
exec uvx --from "$spec" "$@"
"""


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tools = tmp_path_factory.mktemp("tools")
    (tools / "pipx").write_text(PIPX)
    (tools / "pipx").chmod(0o755)
    return tools


def checkout(project: Path, dest: Path) -> Path:
    """A clean clone of the project, as the runner checks it out: no git-ignored file."""
    git(project, "init", "--quiet")
    git(project, "add", "--all")
    git(project, "commit", "--quiet", "--message", "Generated from the template")
    git(project.parent, "clone", "--quiet", str(project), str(dest))
    return dest


def test_deploy_job_reads_each_target_and_fails_on_a_broken_one(
    template: Path, tmp_path: Path, tools: Path
) -> None:
    answers = {
        "database": "postgresql",
        "reverse_proxy": "traefik",
        "deploy_targets": ["kubernetes", "swarm"],
    }
    project = checkout(render(template, tmp_path / "rendered", answers), tmp_path / "project")

    results = run_job(project, "deploy", tools)
    assert [result.returncode for result in results] == [0, 0, 0], [r.stderr for r in results]

    # A misspelt field in a manifest, then a Swarm-only key with a wrong value: each fails.
    deployment = project / "deploy/kubernetes/base/deployment.yaml"
    original = deployment.read_text()
    deployment.write_text(original.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"))
    assert run_job(project, "deploy", tools)[-1].returncode != 0
    deployment.write_text(original)
    stack = project / "deploy/swarm/compose.yaml"
    stack.write_text(stack.read_text().replace("replicas: 3", "replicas: three", 1))
    failed = run_job(project, "deploy", tools)
    assert len(failed) == 3 and failed[-1].returncode != 0


# Poetry with the export plugin, as the audit job's (skipped) `pipx install` step installs it.
POETRY = """#!/bin/sh
exec uvx --from {poetry} --with {plugin} poetry "$@"
"""


@pytest.mark.parametrize("tool", ["uv", "poetry", "pip"])
def test_audit_job_looks_up_every_locked_dependency(
    tool: str, template: Path, tmp_path: Path, tools: Path
) -> None:
    """The job's commands run on a locked project. Whether a vulnerable release fails it is
    pip-audit's business, with the advisory data PyPI serves (not served on this machine)."""
    answers: Answers = {"dependency_tool": tool}
    if tool == "poetry":
        answers["package_index"] = SIMPLE_INDEX
    project = render(template, tmp_path / "project", answers, tasks=True)
    if tool == "poetry":
        audit = workflows(project)["ci.yml"]["jobs"]["audit"]["steps"]
        install = next(step["run"] for step in audit if step.get("run", "").startswith("pipx "))
        found = re.fullmatch(r"pipx install (\S+) && pipx inject poetry (\S+)", install)
        assert found, install
        tools = tmp_path / "tools"
        tools.mkdir()
        (tools / "pipx").write_text(PIPX)
        (tools / "poetry").write_text(POETRY.format(poetry=found[1], plugin=found[2]))
        for shim in tools.iterdir():
            shim.chmod(0o755)
    results = run_job(project, "audit", tools)
    assert all(result.returncode == 0 for result in results), [r.stderr for r in results]
    assert "No known vulnerabilities found" in results[-1].stdout + results[-1].stderr
    audited = project / "requirements-dev.txt"
    if tool != "pip":
        audited = project.parent / "project-runner-temp/requirements.txt"
    for package in ("fastapi", "uvicorn", "pydantic", "pytest", "mypy", "ruff"):
        assert re.search(rf"^{package}==", audited.read_text(), re.MULTILINE), package


def test_release_names_the_image_in_lowercase_as_the_registry_requires(
    families: dict[str, Path], tmp_path: Path
) -> None:
    release = workflows(next(iter(families.values())))["release.yml"]
    naming = next(step for _, step in steps(release) if step.get("id") == "image")
    output = tmp_path / "github_output"
    environment = {"GITHUB_REPOSITORY": "Acme-Corp/Billing-API", "GITHUB_OUTPUT": str(output)}
    subprocess.run(["bash", "-e", "-c", naming["run"]], env=environment, check=True)
    assert output.read_text() == "name=ghcr.io/acme-corp/billing-api\n"
    by_action = {step["uses"].split("@")[0]: step for _, step in steps(release) if "uses" in step}
    named = "${{ steps.image.outputs.name }}"
    assert by_action["docker/metadata-action"]["with"]["images"] == named
    assert by_action["actions/attest-build-provenance"]["with"]["subject-name"] == named
