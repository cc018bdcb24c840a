"""The generated READMEs are well-formed Markdown: parsed as GitHub renders them (tables on),
every table row is inside its table. The template's own README names every question and the
value `--data` takes for each choice, and its example for several deployment targets works."""

import re
import shlex
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

from tests.combinations import COVERING_SET, Answers, combination_id
from tests.project import render

pytestmark = pytest.mark.xdist_group("readme")

REPO = Path(__file__).resolve().parent.parent

# The covering set, and one project with every deployment target (their READMEs too).
PROJECTS: list[Answers] = [
    *COVERING_SET,
    {
        "database": "postgresql",
        "reverse_proxy": "caddy",
        "metrics": "prometheus",
        "deploy_targets": ["kubernetes", "swarm", "server"],
    },
]


def _render_one(job: tuple[Path, Path, Answers]) -> None:
    render(*job)


@pytest.fixture(scope="module")
def rendered(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("readmes")
    jobs = [(template, root / f"p{i}", answers) for i, answers in enumerate(PROJECTS)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_render_one, jobs))
    return {combination_id(answers): dest for _, dest, answers in jobs}


def table_problems(markdown: str) -> list[str]:
    """Table rows outside any table: a line written as a row that the parser reads as text
    (say, a row printed after the section that follows its table)."""
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    problems: list[str] = []
    inside = False
    for token in tokens:
        if token.type in ("table_open", "table_close"):
            inside = token.type == "table_open"
        elif token.type == "inline" and not inside:
            for offset, line in enumerate(token.content.splitlines()):
                if line.startswith("|") and line.rstrip().endswith("|"):
                    problems.append(f"line {line_of(token) + offset}: a table row outside a table")
    return problems


def line_of(token: Token) -> int:
    return token.map[0] + 1 if token.map else 0


def test_a_row_outside_its_table_is_found() -> None:
    table = "| A | B |\n| --- | --- |\n| 1 | 2 |\n"
    assert table_problems(table) == []
    assert table_problems(table + "\nText.\n| 3 | 4 |\n") == ["line 6: a table row outside a table"]


@pytest.mark.parametrize("answers", PROJECTS, ids=combination_id)
def test_every_table_row_of_every_readme_is_inside_its_table(
    answers: Answers, rendered: dict[str, Path]
) -> None:
    project = rendered[combination_id(answers)]
    readmes = sorted(project.rglob("*.md"))
    assert project / "README.md" in readmes
    problems = [
        f"{path.relative_to(project)}: {problem}"
        for path in readmes
        for problem in table_problems(path.read_text())
    ]
    assert not problems, "\n".join(problems)


def template_questions_table() -> dict[str, str]:
    """The rows of the template README's Questions table, by the questions their first cell
    names."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Questions\n", 1)[1].split("\n#", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            for name in re.findall(r"`(\w+)`", line.split("|")[1]):
                rows[name] = line
    return rows


def test_template_readme_names_every_question_and_the_data_value_of_each_choice() -> None:
    rows = template_questions_table()
    config = yaml.safe_load((REPO / "copier.yml").read_text())
    missing = []
    for name, question in config.items():
        if name.startswith("_") or question.get("when") is False:
            continue
        if name not in rows:
            missing.append(name)
            continue
        values = [str(value) for value in question.get("choices", {}).values()]
        missing += [f"{name}={value}" for value in values if f"`{value}`" not in rows[name]]
    assert not missing, missing


def test_template_readme_example_for_several_deployment_targets_works(
    template: Path, tmp_path: Path
) -> None:
    readme = (REPO / "README.md").read_text()
    example = re.search(r"`(--data 'deploy_targets=[^`]*')`", readme)
    assert example, "the README shows no --data example for several deployment targets"
    dest = tmp_path / "my-api"
    command = [sys.executable, "-m", "copier", "copy", "--defaults", "--skip-tasks"]
    subprocess.run(
        [
            *command,
            "--data",
            "database=none",
            *shlex.split(example.group(1)),
            str(template),
            str(dest),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    answers = yaml.safe_load((dest / ".copier-answers.yml").read_text())
    assert answers["deploy_targets"] == ["kubernetes", "swarm"]
    assert (dest / "deploy/kubernetes").is_dir() and (dest / "deploy/swarm").is_dir()
