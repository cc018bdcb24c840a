"""Every combination of the choice questions renders a clean, consistent project."""

import re
import subprocess
import sys
import tomllib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.combinations import (
    Answers,
    combination_id,
    deployment_combinations,
    every_combination,
    metrics_combinations,
    tls_combinations,
)
from tests.project import render

# The full product of the choice questions, then lists of their own for the answers that change
# only some files (crossing them with everything would multiply the renders).
COMBINATIONS = (
    every_combination() + metrics_combinations() + tls_combinations() + deployment_combinations()
)
pytestmark = pytest.mark.xdist_group("render")

LEFTOVER = re.compile(r"\{\{|\{%|%\}|\{#")
# Traefik fills these in from its environment when it reads traefik.yaml (Go templates).
TRAEFIK_TEMPLATE = re.compile(r'\{\{ (env "[A-Z_]+"|with env "[A-Z_]+"|\.|end) \}\}')
# GitHub Actions expressions, `${{ github.ref }}`, and docker/metadata-action's tag patterns,
# `{{version}}`, are the workflows' own syntax.
GITHUB_EXPRESSION = re.compile(r"\$\{\{ [^}]* \}\}|\{\{(version|major|minor|patch)\}\}")


def _render_one(job: tuple[Path, Path, Answers]) -> None:
    render(*job)


@pytest.fixture(scope="module")
def rendered(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """All combinations, rendered once (tasks skipped) in parallel."""
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
        if (
            blank_run in text
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
