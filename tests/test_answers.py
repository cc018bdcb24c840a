"""Free-text answers are data: whatever they hold, every rendered file stays valid and says it.

Hostile names, descriptions and authors (quotes, backslashes, Jinja, YAML and shell specials,
non-ASCII) are rendered across the combination families, and each rendered file is parsed by the
parser of its own kind; the project's own ruff configuration and validate-pyproject judge them
too. Slug and identifier are left to their derived defaults, so these are also names a user
never typed.
"""

import ast
import configparser
import json
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from markdown_it import MarkdownIt
from validate_pyproject.api import Validator

from tests.combinations import Answers, combination_id
from tests.covering import compose_projects
from tests.project import render

pytestmark = pytest.mark.xdist_group("answers")

HOSTILE: dict[str, Answers] = {
    "quotes": {
        "project_name": 'Bob "The" API \\ O\'Brien\'s """',
        "description": 'Say "hi" \\n and \\\\ \'\'\' """ \\x00 \\N{BULLET}',
        "author": 'Bob "The" O\'Brien <bob@example.com>',
    },
    "specials": {
        "project_name": "{{ 7*7 }} {% raw %} #: - ? & * ! | > % @ `id` $HOME $(id);",
        "description": "- [x] key: value # not a comment; <script>alert(1)</script> &amp; *a*",
        "author": "{{ author }} $(id) <jinja.shell@example.com>",
    },
    "unicode": {
        "project_name": "Café Ünïcødé Straße Привет 日本語 😀",
        # Look-alike quotes on purpose: ruff flags them in Python source, so they are escaped.
        "description": "Übersicht — résumé ☕ ‘quoted’ «guillemets» 🚀",  # noqa: RUF001
        "author": "Zoë Ægir-Łukasiewicz 山田 <zoe@example.com>",
    },
}
CASES = [
    (kind, {**family, **text}) for kind, text in HOSTILE.items() for family in compose_projects()
]


def case_id(kind: str, answers: Answers) -> str:
    family = {key: value for key, value in answers.items() if key not in HOSTILE[kind]}
    return f"{kind}-{combination_id(family)}"


def _render_one(job: tuple[Path, Path, Answers]) -> None:
    render(*job)


@pytest.fixture(scope="module")
def rendered(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every hostile answer set with every family of the covering set (tasks skipped)."""
    root = tmp_path_factory.mktemp("hostile")
    jobs = [(template, root / f"p{i:03d}", answers) for i, (_, answers) in enumerate(CASES)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_render_one, jobs))
    return {case_id(*case): dest for case, (_, dest, _) in zip(CASES, jobs, strict=True)}


@pytest.fixture(scope="module")
def ruff_findings(rendered: dict[str, Path]) -> str:
    """The projects' own ruff configuration, run once over all of them."""
    root = next(iter(rendered.values())).parent
    ruff = [sys.executable, "-m", "ruff"]
    check = [*ruff, "check", "--no-cache", "--output-format", "concise", "."]
    fmt = [*ruff, "format", "--no-cache", "--check", "."]
    return "".join(
        subprocess.run(command, cwd=root, capture_output=True, text=True).stdout
        for command in (check, fmt)
    )


def parse(path: Path) -> None:
    """Parse a rendered file with the parser of its kind; raise if it does not parse."""
    text = path.read_text()
    if path.suffix == ".py":
        ast.parse(text, str(path))
    elif path.suffix == ".toml":
        tomllib.loads(text)
    elif path.suffix in {".yml", ".yaml"}:  # a Kubernetes manifest may hold several documents
        list(yaml.safe_load_all(text))
    elif path.suffix == ".json":  # devcontainer.json: JSON with whole-line // comments
        json.loads(
            "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
        )
    elif path.suffix == ".ini":
        configparser.ConfigParser().read_string(text)
    elif path.suffix == ".sh" or text.startswith(("#!/bin/sh", "#!/usr/bin/env bash")):
        subprocess.run(["sh", "-n", str(path)], check=True, capture_output=True)
    elif path.name == "Dockerfile":
        hadolint = Path(sys.executable).parent / "hadolint"
        result = subprocess.run(
            [str(hadolint), "--no-fail", "--format", "json", str(path)],
            capture_output=True,
            text=True,
        )
        assert '"DL1000"' not in result.stdout, result.stdout  # DL1000: not a Dockerfile
    elif path.name.startswith(".env"):
        for line in text.splitlines():
            assert not line or line.startswith("#") or re.match(r"^[A-Z_][A-Z0-9_]*=", line)


def field_value(tree: ast.AST, name: str) -> Any:
    """The literal default of the annotated field `name`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name:
            assert node.value is not None
            return ast.literal_eval(node.value)
    raise AssertionError(f"no field {name}")


def argument_value(tree: ast.AST, function: str, name: str) -> Any:
    """The literal keyword argument `name` of a call to `function`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == function:
            for keyword in node.keywords:
                if keyword.arg == name:
                    return ast.literal_eval(keyword.value)
    raise AssertionError(f"no call {function}({name}=...)")


def markdown_heading_and_lead(text: str) -> tuple[str, str]:
    """The text of the README's first heading and of the paragraph right after it."""
    tokens = MarkdownIt("commonmark").parse(text)
    kinds = [token.type for token in tokens]
    heading = kinds.index("heading_open")
    assert tokens[heading].tag == "h1"
    assert kinds[heading + 3] == "paragraph_open"

    def plain(inline: Any) -> str:
        return "".join(child.content for child in inline.children or [] if child.type == "text")

    inline_kinds = {child.type for child in tokens[heading + 4].children or []}
    assert inline_kinds <= {"text"}, inline_kinds  # no link, emphasis or HTML made of it
    return plain(tokens[heading + 1]), plain(tokens[heading + 4])


@pytest.mark.parametrize(("kind", "answers"), CASES, ids=[case_id(*case) for case in CASES])
def test_free_text_renders_valid_files_that_say_it_as_typed(
    kind: str, answers: Answers, rendered: dict[str, Path], ruff_findings: str
) -> None:
    project = rendered[case_id(kind, answers)]
    for path in project.rglob("*"):
        if path.is_file():
            parse(path)

    # Each file says the answer as typed, once parsed.
    app = project / ("app" if answers["layout"] == "package" else "")
    settings = app / ("config.py" if answers["layout"] == "package" else "main.py")
    assert field_value(ast.parse(settings.read_text()), "app_name") == answers["project_name"]
    factory = app / "main.py"
    described = argument_value(ast.parse(factory.read_text()), "FastAPI", "description")
    assert described == answers["description"]
    heading, lead = markdown_heading_and_lead((project / "README.md").read_text())
    assert (heading, lead) == (answers["project_name"].strip(), answers["description"].strip())
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    Validator()(pyproject)
    assert pyproject["project"]["description"] == answers["description"]
    name, email = re.fullmatch(r"(.*) <(.*)>", answers["author"]).groups()  # type: ignore[union-attr]
    assert pyproject["project"]["authors"] == [{"name": name, "email": email}]
    recorded = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert {key: recorded[key] for key in HOSTILE[kind]} == HOSTILE[kind]

    # The derived names satisfy their own validators.
    assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", recorded["project_slug"])
    assert recorded["project_identifier"] == recorded["project_slug"].replace("-", "_")

    mine = [line for line in ruff_findings.splitlines() if f"{project.name}/" in line]
    assert not mine, "\n".join(mine)


SLUGS = [
    ("Acme's API v2.0", "acme-s-api-v2-0"),
    ("Café Ünïcødé Straße", "cafe-unicode-strasse"),
    ("2048 Game", "service-2048-game"),
    ("日本語", "service"),
    ("  --Dashes__and   spaces--  ", "dashes-and-spaces"),
    ("x" * 80, "x" * 63),
]


@pytest.mark.parametrize(("name", "slug"), SLUGS, ids=[slug for _, slug in SLUGS])
def test_any_project_name_derives_a_valid_slug_and_identifier(
    template: Path, tmp_path: Path, name: str, slug: str
) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "copier", "copy", "--defaults", "--skip-tasks"),
            *("--data", f"project_name={name}", str(template), str(tmp_path / "p")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    recorded = yaml.safe_load((tmp_path / "p/.copier-answers.yml").read_text())
    assert (recorded["project_slug"], recorded["project_identifier"]) == (
        slug,
        slug.replace("-", "_"),
    )
