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

from tests.combinations import Answers, combination_id
from tests.covering import compose_projects
from tests.project import render, tool_env

pytestmark = pytest.mark.xdist_group("readme")

REPO = Path(__file__).resolve().parent.parent

# The covering set (the array's projects that run with compose), and one project with every
# deployment target (their READMEs too).
PROJECTS: list[Answers] = [
    *compose_projects(),
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


def file_tree(root: Path, skip: frozenset[str] = frozenset({".git"})) -> list[str]:
    """The files under root as `tree` draws them, directories with a trailing slash, in
    name order."""
    lines = [f"{root.name}/"]

    def walk(directory: Path, prefix: str) -> None:
        entries = sorted(p for p in directory.iterdir() if p.name not in skip)
        for index, entry in enumerate(entries):
            last = index == len(entries) - 1
            name = f"{entry.name}/" if entry.is_dir() else entry.name
            lines.append(f"{prefix}{'└── ' if last else '├── '}{name}")
            if entry.is_dir():
                walk(entry, prefix + ("    " if last else "│   "))

    walk(root, "")
    return lines


def example_project_section() -> str:
    readme = (REPO / "README.md").read_text()
    return readme[readme.index("\n### What you get\n") :].split("\n## ", 1)[0]


def test_template_readme_example_tree_is_what_its_command_makes(
    template: Path, tmp_path: Path
) -> None:
    """The README's example project: its copier command, run as printed (with the template's
    path and --defaults for the questions it leaves to the prompt), makes exactly the tree the
    README draws (comments after `#` aside)."""
    section = example_project_section()
    [command] = [line for line in fenced(section, "sh") if line.startswith("copier copy")]
    [tree] = fenced(section, "text")
    drawn = [line.split("  #")[0].rstrip() for line in tree.splitlines()]
    argv = shlex.split(command.replace("<path-or-git-url-of-this-template>", str(template)))
    subprocess.run(
        [sys.executable, "-m", *argv[:2], "--defaults", *argv[2:]],
        cwd=tmp_path,
        env=tool_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert file_tree(tmp_path / argv[-1]) == drawn


def fenced(markdown: str, language: str) -> list[str]:
    """The contents of the fenced code blocks in this language (each line of sh blocks)."""
    tokens = MarkdownIt("commonmark").parse(markdown)
    blocks = [token.content for token in tokens if token.type == "fence" and token.info == language]
    if language == "sh":
        return [line for block in blocks for line in block.splitlines()]
    return blocks
