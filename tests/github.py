"""Lint a generated project's .github/: zizmor (offline audits) and the JSON schemas that
check-jsonschema ships (GitHub workflows, with a timeout on every job, and Dependabot)."""

import json
import subprocess
import sys
from pathlib import Path

from tests.combinations import Answers
from tests.covering import platform_targets

BIN = Path(sys.executable).parent
# Which schema each file is checked against (check-jsonschema's built-in copies: no network).
SCHEMAS = {
    ".github/workflows/*.yml": [
        "vendor.github-workflows",
        "custom.github-workflows-require-timeout",
    ],
    ".github/dependabot.yml": ["vendor.dependabot"],
}

# The answers that change what .github/ renders: the tool (setup, cache, Dependabot
# ecosystem), a package index (credentials, registry), PostgreSQL (service), a proxy (port,
# compose images), the deployment targets (the images Dependabot watches). Each family is one
# project; every value of these questions appears.
FAMILIES: dict[str, Answers] = {
    f"{tool}{'-index' if index else ''}-{database}-{proxy}": {
        "dependency_tool": tool,
        "database": database,
        "reverse_proxy": proxy,
        **({"package_index": "https://pypi.example.com/simple/"} if index else {}),
    }
    for tool in ("uv", "poetry", "pip")
    for index in (False, True)
    for database, proxy in (
        ("none", "none"),
        ("sqlite", "nginx"),
        ("postgresql", "traefik"),
        ("postgresql", "external"),
    )
} | {
    f"uv-{database}-{proxy}-{'+'.join(targets)}": {
        "dependency_tool": "uv",
        "database": database,
        "reverse_proxy": proxy,
        "deploy_targets": targets,
    }
    for database, proxy, targets in (
        ("postgresql", "caddy", ["kubernetes", "swarm"]),
        ("sqlite", "none", ["kubernetes"]),
        ("none", "traefik", ["swarm"]),
        ("postgresql", "none", platform_targets()),
        ("sqlite", "caddy", ["server"]),
    )
}


def zizmor_findings(
    projects: list[Path], persona: str = "regular", min_severity: str = "medium"
) -> dict[Path, list[str]]:
    """zizmor's findings of `min_severity` or above (inline-ignored ones excluded), by project;
    the auditor persona also reports what the regular one leaves out as likely noise."""
    result = subprocess.run(
        [str(BIN / "zizmor"), "--offline", "--format", "json", f"--persona={persona}"]
        + ["--min-severity", min_severity]
        + [str(project) for project in projects],
        capture_output=True,
        text=True,
    )
    if not result.stdout.strip():
        raise AssertionError(f"zizmor failed: {result.stderr[-3000:]}")
    found: dict[Path, list[str]] = {project: [] for project in projects}
    for finding in json.loads(result.stdout):
        location = finding["locations"][0]
        path = Path(location["symbolic"]["key"]["Local"]["verbatim_path"])
        line = location["concrete"]["location"]["start_point"]["row"] + 1
        project = next(project for project in projects if path.is_relative_to(project))
        if finding.get("ignored"):
            continue
        severity = finding["determinations"]["severity"]
        where = f"{path.relative_to(project)}:{line}"
        found[project].append(f"{where}: {finding['ident']} ({severity}): {finding['desc']}")
    return found


def schema_findings(projects: list[Path]) -> dict[Path, list[str]]:
    """Schema violations by project: one check-jsonschema run per schema over every project."""
    found: dict[Path, list[str]] = {project: [] for project in projects}
    for pattern, schemas in SCHEMAS.items():
        files = sorted(str(path) for project in projects for path in project.glob(pattern))
        for schema in schemas if files else []:
            result = subprocess.run(
                [str(BIN / "check-jsonschema"), "--builtin-schema", schema, "-o", "json", *files],
                capture_output=True,
                text=True,
            )
            report = json.loads(result.stdout)
            for error in report["errors"] + report.get("parse_errors", []):
                path = Path(error["filename"])
                project = next(project for project in projects if path.is_relative_to(project))
                detail = error.get("best_deep_match", error).get("message", "")
                found[project].append(f"{path.relative_to(project)}: {schema}: {detail}")
    return found
