"""Bad answers stop `copier copy` with a message naming the question, and write nothing.

The checks live in copier.yml (validators, choices, `when`), so they hold for every front end;
these tests go through the command line with `--data`, which skips the interactive prompt.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.project import render

BAD_ANSWERS = [
    ({"project_name": " "}, "project_name"),
    ({"project_slug": "My_API"}, "project_slug"),
    ({"project_slug": "api--v2"}, "project_slug"),
    ({"package_name": "1api"}, "package_name"),
    ({"package_name": "my-api"}, "package_name"),
    ({"python_version": "3.10"}, "python_version"),
    ({"dependency_tool": "pipenv"}, "dependency_tool"),
    ({"layout": "src"}, "layout"),
    ({"process_model": "threads"}, "process_model"),
    ({"process_model": "workers", "workers": "0"}, "workers"),
    ({"process_model": "workers", "workers": "65"}, "workers"),
    ({"process_model": "workers", "workers": "many"}, "'many'"),
    ({"reverse_proxy": "caddy"}, "reverse_proxy"),
    ({"reverse_proxy": "external", "forwarded_allow_ips": "*"}, "forwarded_allow_ips"),
    ({"reverse_proxy": "external", "forwarded_allow_ips": "proxy.local"}, "forwarded_allow_ips"),
    ({"database": "mysql"}, "database"),
    ({"package_index": "https://user:secret@pypi.example.com/simple/"}, "package_index"),
    ({"package_index": "http://pypi.example.com/simple/"}, "package_index"),
    ({"package_index": "https://pypi.example.com/packages/"}, "package_index"),
    ({"deploy_targets": '["nomad"]'}, "deploy_targets"),
    # Swarm replicates and replaces the app start-first; SQLite is one file on one node.
    ({"database": "sqlite", "deploy_targets": '["kubernetes", "swarm"]'}, "deploy_targets"),
    ({"deploy_targets": '["kubernetes"]', "ingress_class": "Nginx_Ingress"}, "ingress_class"),
]


def copier_copy(
    template: Path, dest: Path, answers: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    data = [arg for key, value in answers.items() for arg in ("--data", f"{key}={value}")]
    command = [sys.executable, "-m", "copier", "copy", "--trust", "--defaults", "--skip-tasks"]
    return subprocess.run(
        [*command, *data, str(template), str(dest)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("answers", "named"), BAD_ANSWERS, ids=[str(answers) for answers, _ in BAD_ANSWERS]
)
def test_bad_answer_is_refused_naming_the_question(
    template: Path, tmp_path: Path, answers: dict[str, str], named: str
) -> None:
    dest = tmp_path / "my-api"
    result = copier_copy(template, dest, answers)
    assert result.returncode != 0
    assert named in result.stderr.strip().splitlines()[-1]
    assert not dest.exists()


def test_bad_answer_leaves_an_existing_destination_untouched(
    template: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "my-api"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine\n")
    result = copier_copy(template, dest, {"project_slug": "Not A Slug"})
    assert result.returncode != 0
    assert [path.name for path in dest.iterdir()] == ["notes.txt"]
    assert (dest / "notes.txt").read_text() == "mine\n"


def test_answers_for_hidden_questions_leave_no_trace(template: Path, tmp_path: Path) -> None:
    """A combination that cannot work cannot be chosen: no database means no migrations."""
    project = render(
        template,
        tmp_path / "my-api",
        {"database": "none", "migrations": True, "process_model": "single", "workers": 2},
    )
    assert not (project / "alembic.ini").exists()
    assert not (project / "migrations").exists()
    recorded = (project / ".copier-answers.yml").read_text()
    assert "migrations" not in recorded
    assert "workers" not in recorded
    assert "WEB_CONCURRENCY" not in (project / "Dockerfile").read_text()
