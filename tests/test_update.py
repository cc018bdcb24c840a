"""`copier update` brings a template release into a project without losing the project's edits.

Every test works on a temporary template repository with two release tags: 0.1.0 is the
template as in the working tree, 0.2.0 adds the kind of changes a release makes (a Dockerfile
fix, a new setting, a renamed question with its migration). Projects are git repositories, as
`copier update` requires, and are updated with copier's command line as a user runs it.
"""

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import docker
from tests.combinations import SIMPLE_INDEX
from tests.project import (
    GIT_IDENTITY,
    git,
    http_get,
    install,
    readme_block,
    render,
    run,
    tool_env,
    wait_for_http,
)

REPO = Path(__file__).resolve().parent.parent

OLD, NEW = "0.1.0", "0.2.0"
AUTHOR = "Ada Lovelace <ada@example.com>"
CONFLICT_MARKER = re.compile(r"^(<{7}|>{7}) ", re.MULTILINE)

# What release 0.2.0 changes, as (file of the template, text there, text instead).
DOCKERFILE_FIX = "ENV PYTHONFAULTHANDLER=1\n"
NEW_SETTING = "docs_enabled: bool = True"
LOG_LEVEL_SETTING = '    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"\n'
RELEASE_EDITS = [
    ("template/Dockerfile.jinja", "\nUSER ", f"\n{DOCKERFILE_FIX}USER "),
    (
        "includes/py/settings.py.jinja",
        LOG_LEVEL_SETTING,
        f"{LOG_LEVEL_SETTING}    {NEW_SETTING}\n",
    ),
    (
        "template/.env.example.jinja",
        "LOG_LEVEL=INFO\n",
        "LOG_LEVEL=INFO\n# Serve the interactive API docs at /docs.\nDOCS_ENABLED=true\n",
    ),
    (
        "includes/readme/settings.md.jinja",
        "| `LOG_LEVEL` | `INFO` | Level of the JSON logs on stdout, Uvicorn's included |\n",
        "| `LOG_LEVEL` | `INFO` | Level of the JSON logs on stdout, Uvicorn's included |\n"
        "| `DOCS_ENABLED` | `true` | Serve the interactive API docs at `/docs` |\n",
    ),
    # The renamed question: `author` becomes `maintainer`, and a migration carries the answer.
    ("copier.yml", "\nauthor:\n", "\nmaintainer:\n"),
    (
        "copier.yml",
        "\n_migrations:\n",
        "\n_migrations:\n"
        '  - version: "0.2.0"\n'
        "    when: \"{{ _stage == 'before' }}\"\n"
        '    command: ["{{ _copier_python }}", "{{ _copier_conf.src_path }}'
        '/hooks/migrate_answers.py", "{{ _copier_conf.answers_file }}", "rename", "author",'
        ' "maintainer"]\n',
    ),
]
RENAMED_IN = "template/pyproject.toml.jinja"
# A dependency the release adds, so every tool's lock must be refreshed by the update.
RELEASE_DEPENDENCY = "tenacity"
RELEASE_EDITS.append(
    (
        "includes/dependencies.jinja",
        "'pydantic-settings>=2.7']",
        f"'pydantic-settings>=2.7', '{RELEASE_DEPENDENCY}>=8']",
    )
)


def copier(cwd: Path, *args: str) -> str:
    """Run copier's command line as a user does; return what it printed."""
    result = run([sys.executable, "-m", "copier", *args], cwd, **GIT_IDENTITY)
    return result.stdout + result.stderr


def copier_leaving_conflicts(cwd: Path, *args: str) -> str:
    """Run `copier update` where it leaves conflicts: it exits 1 (as `git merge` does), its last
    step saying why; return what it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "copier", *args],
        cwd=cwd,
        env=tool_env(**GIT_IDENTITY),
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-6000:]
    assert (
        "copier reports this step as failed so that its exit status tells the conflicts" in output
    )
    return output


def edit(path: Path, old: str, new: str) -> None:
    """Replace text that must be there exactly once (else the template moved on)."""
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: expected {old!r} once; update the test"
    path.write_text(text.replace(old, new))


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--message", message)


def release(template: Path) -> None:
    """Turn a copy of the template into release 0.2.0."""
    for name, old, new in RELEASE_EDITS:
        edit(template / name, old, new)
    renamed = template / RENAMED_IN
    text = renamed.read_text()
    assert re.search(r"\bauthor\b", text), f"{RENAMED_IN} no longer uses `author`; update the test"
    renamed.write_text(re.sub(r"\bauthor\b", "maintainer", text))


@pytest.fixture(scope="module")
def releases(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template as a git repository tagged 0.1.0 (the working tree) and 0.2.0 (later)."""
    repo = tmp_path_factory.mktemp("releases") / "template"
    shutil.copytree(template, repo)
    return tag_releases(repo)


def tag_releases(repo: Path) -> Path:
    """Make the template copy in `repo` a git repository: its tree tagged 0.1.0, then 0.2.0 with
    the release's edits."""
    git(repo, "init", "--quiet")
    commit_all(repo, "Release 0.1.0")
    git(repo, "tag", OLD)
    release(repo)
    commit_all(repo, "Release 0.2.0")
    git(repo, "tag", NEW)
    return repo


def copy_project(releases: Path, dest: Path, *args: str) -> Path:
    """Copy release 0.1.0 into a new git repository and commit it, as a user starts."""
    options = ["--trust", "--defaults", "--vcs-ref", OLD, *args]
    copier(dest.parent, "copy", *options, str(releases), str(dest))
    git(dest, "init", "--quiet")
    commit_all(dest, "Generated from the template")
    return dest


def answers(project: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((project / ".copier-answers.yml").read_text())
    return loaded


def project_files(project: Path) -> list[Path]:
    skipped = {".git", ".venv", ".pytest_cache", "__pycache__"}
    return [
        path
        for path in project.rglob("*")
        if path.is_file() and not skipped & set(path.relative_to(project).parts)
    ]


def relative_files(project: Path) -> set[str]:
    return {path.relative_to(project).as_posix() for path in project_files(project)}


def conflicts(project: Path) -> list[str]:
    """Files holding conflict markers, and copier's .rej leftovers."""
    found = [
        path.relative_to(project).as_posix()
        for path in project_files(project)
        if path.suffix == ".rej" or CONFLICT_MARKER.search(path.read_text(errors="replace"))
    ]
    return sorted(found)


# --- What a project is given ----------------------------------------------------------------

STRAY_FILES = ["__pycache__/main.cpython-313.pyc", "app.pyc", ".DS_Store", "~lock", "a.py.orig"]


def test_project_gets_nothing_of_the_templates_own(template: Path, tmp_path: Path) -> None:
    source = shutil.copytree(template, tmp_path / "template")
    for name in STRAY_FILES:
        (source / "template" / name).parent.mkdir(parents=True, exist_ok=True)
        (source / "template" / name).write_bytes(b"stray")
    project = render(source, tmp_path / "service", {})
    names = relative_files(project)
    shared_names = {"__init__.py", "conftest.py"}
    own_tests = {path.name for path in (source / "tests").iterdir()} - shared_names
    assert not names & {*STRAY_FILES, "copier.yml", "CHANGELOG.md", "uv.lock"}
    assert not {name.split("/")[0] for name in names} & {"hooks", "benchmarks", "includes"}
    assert not {f"tests/{name}" for name in own_tests} & names
    assert ".copier-answers.yml" in names


# --- A project with its own edits takes release 0.2.0 ------------------------------------------

HELLO_ROUTE = '''"""Greetings by name."""

import humanize
from fastapi import APIRouter

router = APIRouter()


@router.get("/hello/{name}")
async def hello(name: str, times: int = 1) -> dict[str, str]:
    return {"message": f"Hello, {name} ({humanize.intcomma(times)} times)"}
'''
HELLO_TEST = """from fastapi.testclient import TestClient


def test_hello_greets_by_name(client: TestClient) -> None:
    response = client.get("/hello/ada", params={"times": 1000})
    assert response.json() == {"message": "Hello, ada (1,000 times)"}
"""
USER_PARAGRAPH = "Greets people by name, for the front desk team.\n"


def make_user_edits(project: Path) -> None:
    """What a team does to its project: a route and its test, README prose, a dependency."""
    (project / "app/routes/hello.py").write_text(HELLO_ROUTE)
    (project / "tests/test_hello.py").write_text(HELLO_TEST)
    main = project / "app/main.py"
    edit(
        main, "from app.routes import health, items", "from app.routes import health, hello, items"
    )
    edit(
        main,
        '    app.include_router(items.router, tags=["items"])\n',
        '    app.include_router(items.router, tags=["items"])\n'
        '    app.include_router(hello.router, tags=["hello"])\n',
    )
    edit(project / "README.md", "\nA FastAPI service\n", f"\n{USER_PARAGRAPH}")
    run(["uv", "add", "--quiet", "--no-sync", "humanize>=4"], project)


@pytest.fixture(scope="module")
def updated(releases: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copied from 0.1.0 (author answered), edited, committed, updated to 0.2.0."""
    project = copy_project(
        releases, tmp_path_factory.mktemp("updated") / "service", "--data", f"author={AUTHOR}"
    )
    make_user_edits(project)
    commit_all(project, "Greet people")
    copier(project, "update", "--trust", "--defaults")
    return project


# The tests of one shared project run in one worker, so it is built once.
on_updated_project = pytest.mark.xdist_group("update-release")


@on_updated_project
def test_update_reaches_the_new_release(updated: Path) -> None:
    assert answers(updated)["_commit"] == NEW


@on_updated_project
def test_update_keeps_the_projects_edits(updated: Path) -> None:
    assert (updated / "app/routes/hello.py").read_text() == HELLO_ROUTE
    assert (updated / "tests/test_hello.py").read_text() == HELLO_TEST
    assert "app.include_router(hello.router" in (updated / "app/main.py").read_text()
    assert USER_PARAGRAPH in (updated / "README.md").read_text()
    assert '"humanize>=4"' in (updated / "pyproject.toml").read_text()
    assert 'name = "humanize"' in (updated / "uv.lock").read_text()


@on_updated_project
def test_update_brings_the_releases_changes(updated: Path) -> None:
    assert DOCKERFILE_FIX in (updated / "Dockerfile").read_text()
    assert NEW_SETTING in (updated / "app/config.py").read_text()
    assert "DOCS_ENABLED=true" in (updated / ".env.example").read_text()
    assert "| `DOCS_ENABLED` |" in (updated / "README.md").read_text()
    assert f'name = "{RELEASE_DEPENDENCY}"' in (updated / "uv.lock").read_text()


@on_updated_project
def test_update_adds_new_settings_to_the_users_env_file(updated: Path) -> None:
    env = (updated / ".env").read_text()
    assert env.count("LOG_LEVEL=") == 1
    assert "DOCS_ENABLED=true" in env


@on_updated_project
def test_renamed_question_keeps_its_answer_through_the_migration(updated: Path) -> None:
    recorded = answers(updated)
    assert "author" not in recorded
    assert recorded["maintainer"] == AUTHOR
    assert (
        'authors = [{ name = "Ada Lovelace", email = "ada@example.com" }]'
        in (updated / "pyproject.toml").read_text()
    )


@on_updated_project
def test_update_leaves_no_conflict_in_files_only_one_side_changed(updated: Path) -> None:
    assert conflicts(updated) == []


@on_updated_project
def test_updated_project_passes_its_own_tests(updated: Path) -> None:
    install(updated, answers(updated))
    run(["uv", "run", "--locked", "pytest", "-q", "-p", "no:cacheprovider"], updated)


@on_updated_project
@pytest.mark.docker
def test_updated_project_image_serves_the_projects_route(updated: Path) -> None:
    docker.require_engine()
    with (
        docker.image(updated, "template-update") as tag,
        docker.container(tag, "-p", "127.0.0.1::8000") as name,
    ):
        address = docker.docker("port", name, "8000").stdout.split()[0]
        assert wait_for_http(f"http://{address}/health", timeout=60) == 200
        status, body = http_get(f"http://{address}/hello/ada?times=3")
        assert (status, body) == (200, b'{"message":"Hello, ada (3 times)"}')


# --- Poetry and pip projects ------------------------------------------------------------------

LOCKS = {"poetry": "poetry.lock", "pip": "requirements.txt"}


def add_dependency(project: Path, tool: str, requirement: str) -> None:
    """Add a runtime dependency and lock it, as the project's README says for its tool."""
    if tool == "poetry":
        run(["poetry", "add", "--lock", requirement], project)
    else:
        (project / "requirements.in").write_text(
            (project / "requirements.in").read_text() + f"{requirement}\n"
        )
        python = f"python{answers(project)['python_version']}"
        run([python, "-m", "venv", ".venv"], project)
        commands = readme_block((project / "README.md").read_text(), "Dependencies")
        script = "\n".join([". .venv/bin/activate", *commands])
        run(["bash", "-ec", script], project)


@pytest.mark.parametrize(
    "tool", [pytest.param(tool, marks=pytest.mark.xdist_group(f"update-{tool}")) for tool in LOCKS]
)
def test_update_refreshes_the_lock_of_poetry_and_pip_projects_keeping_their_own(
    tool: str, releases: Path, tmp_path: Path
) -> None:
    project = copy_project(
        releases,
        tmp_path / "service",
        *("--data", f"dependency_tool={tool}"),
        *(("--data", f"package_index={SIMPLE_INDEX}") if tool == "poetry" else ()),
    )
    add_dependency(project, tool, "humanize>=4")
    commit_all(project, "Humanize numbers")

    copier(project, "update", "--trust", "--defaults")

    assert conflicts(project) == []
    lock = (project / LOCKS[tool]).read_text().lower()
    for name in ("humanize", RELEASE_DEPENDENCY):
        assert re.search(rf'^(name = "{name}"|{name}==)', lock, re.MULTILINE), name
    if tool == "poetry":
        run(["poetry", "check", "--lock"], project)
    else:
        assert "--hash=sha256:" in lock
    bin_dir = install(project, answers(project))
    run([str(bin_dir / "pytest"), "-q", "-p", "no:cacheprovider"], project)


# --- Both sides changed the same lines -------------------------------------------------------

USER_DOCKERFILE_LINE = "ENV TZ=UTC\n"


@pytest.mark.parametrize("mode", ["inline", "rej"])
def test_conflicting_edit_is_reported_not_lost(mode: str, releases: Path, tmp_path: Path) -> None:
    project = copy_project(releases, tmp_path / "service", "--skip-tasks")
    edit(project / "Dockerfile", "\nUSER ", f"\n{USER_DOCKERFILE_LINE}USER ")
    commit_all(project, "Set the time zone")

    output = copier_leaving_conflicts(
        project, "update", "--trust", "--defaults", "--skip-tasks", "--conflict", mode
    )

    dockerfile = (project / "Dockerfile").read_text()
    assert "The update left 1 conflict(s) to resolve:" in output
    assert f"  {conflicts(project)[0]}: " in output
    if mode == "inline":
        assert conflicts(project) == ["Dockerfile"]
        assert "<<<<<<< before updating" in dockerfile
        assert ">>>>>>> after updating" in dockerfile
        assert USER_DOCKERFILE_LINE in dockerfile and DOCKERFILE_FIX in dockerfile
        # git status lists it as unmerged ("both modified") until it is resolved.
        assert git(project, "ls-files", "--unmerged", "--", "Dockerfile")
    else:
        assert conflicts(project) == ["Dockerfile.rej"]
        assert DOCKERFILE_FIX in dockerfile
        assert USER_DOCKERFILE_LINE.strip() in (project / "Dockerfile.rej").read_text()


# --- Changing an answer on update ------------------------------------------------------------

# Each change builds its project once, in one worker; the three may run in parallel.
ANSWER_CHANGES = [
    pytest.param(change, marks=pytest.mark.xdist_group(f"update-{change}"))
    for change in ["database=postgresql", "process_model=workers", "reverse_proxy=traefik"]
]


@pytest.fixture(scope="module")
def changed(
    releases: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], tuple[Path, Path]]:
    """Per answer change (built once per worker): a default project updated with that change,
    and a fresh copy given it."""
    built: dict[str, tuple[Path, Path]] = {}

    def build(change: str) -> tuple[Path, Path]:
        root = tmp_path_factory.mktemp("changed")
        project = copy_project(releases, root / "service")
        copier(project, "update", "--trust", "--defaults", "--vcs-ref", OLD, "--data", change)
        fresh = root / "fresh"
        copier(
            root,
            "copy",
            "--defaults",
            "--skip-tasks",
            "--vcs-ref",
            OLD,
            "--data",
            change,
            str(releases),
            str(fresh),
        )
        return project, fresh

    def get(change: str) -> tuple[Path, Path]:
        if change not in built:
            built[change] = build(change)
        return built[change]

    return get


@pytest.mark.parametrize("change", ANSWER_CHANGES)
def test_changed_answer_leaves_the_project_a_fresh_copy_would_be(
    change: str, changed: Callable[[str], tuple[Path, Path]]
) -> None:
    project, fresh = changed(change)
    made_by_tasks = {".env", "uv.lock", "secrets/postgres_password"}
    made_by_tasks |= {"certs/fullchain.pem", "certs/privkey.pem"}  # localhost's certificate
    assert relative_files(project) - made_by_tasks == relative_files(fresh)
    for name in sorted(relative_files(fresh)):
        assert (project / name).read_text() == (fresh / name).read_text(), name


@pytest.mark.parametrize("change", ANSWER_CHANGES)
def test_changed_answer_leaves_a_project_that_passes_its_own_tests(
    change: str, changed: Callable[[str], tuple[Path, Path]], request: pytest.FixtureRequest
) -> None:
    project, _ = changed(change)
    recorded = answers(project)
    database: dict[str, str] = {}
    if recorded["database"] == "postgresql":
        database = request.getfixturevalue("postgres")
    install(project, recorded)
    run(["uv", "run", "--locked", "pytest", "-q", "-p", "no:cacheprovider"], project, **database)


def variables(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if "=" in line and not line.startswith("#")]
    return {name: value for name, value in pairs}


@pytest.mark.parametrize("change", ANSWER_CHANGES)
def test_changed_answer_completes_env_and_keeps_secrets_out_of_answers(
    change: str, changed: Callable[[str], tuple[Path, Path]]
) -> None:
    project, _ = changed(change)
    example, env = variables(project / ".env.example"), variables(project / ".env")
    assert example.keys() <= env.keys()
    secrets = [env[name] for name, value in example.items() if value == "change-me"]
    secret_files = sorted(project.glob("**/secrets/postgres_password"))
    secrets += [path.read_text().strip() for path in secret_files]
    assert secrets or answers(project)["database"] != "postgresql"
    recorded = (project / ".copier-answers.yml").read_text()
    assert all(secret != "change-me" and secret not in recorded for secret in secrets)
    git(project, "check-ignore", "--quiet", ".env")


@pytest.mark.docker
@pytest.mark.parametrize("change", ANSWER_CHANGES)
def test_changed_answer_leaves_a_project_whose_image_builds(
    change: str, changed: Callable[[str], tuple[Path, Path]]
) -> None:
    docker.require_engine()
    project, _ = changed(change)
    with docker.image(project, "template-update"):
        pass


# --- Migrations for a changed choice and a moved file -----------------------------------------

NOTES = [f"line {number}\n" for number in range(1, 11)]
MIGRATIONS = """
_migrations:
  - version: "2.0.0"
    when: "{{ _stage == 'before' }}"
    command: ["{{ _copier_python }}", "{{ _copier_conf.src_path }}/hooks/migrate_answers.py",
              "{{ _copier_conf.answers_file }}", "choice", "color", "red", "crimson"]
  - version: "2.0.0"
    command: ["{{ _copier_python }}", "{{ _copier_conf.src_path }}/hooks/move_file.py",
              "{{ _copier_conf.answers_file }}", "notes.txt", "docs/notes.txt"]
"""


def small_template(root: Path) -> Path:
    """A template using this repository's migration scripts: 1.0.0; 1.1.0, which changes a line
    of notes.txt; 2.0.0, which renames the choice `red` and moves notes.txt to docs/, changing
    another of its lines."""
    shutil.copytree(REPO / "hooks", root / "hooks")
    (root / "template").mkdir()
    (root / "template/{{_copier_conf.answers_file}}.jinja").write_text(
        "{{ _copier_answers | to_nice_yaml }}"
    )
    (root / "template/color.txt.jinja").write_text("{{ color }}\n")
    (root / "template/notes.txt").write_text("".join(NOTES))
    config = "_subdirectory: template\ncolor:\n  type: str\n  default: red\n  choices: [{}]\n"
    (root / "copier.yml").write_text(config.format("red, blue"))
    git(root, "init", "--quiet")
    commit_all(root, "Release 1.0.0")
    git(root, "tag", "1.0.0")
    edit(root / "template/notes.txt", "line 5\n", "line 5, from 1.1\n")
    commit_all(root, "Release 1.1.0")
    git(root, "tag", "1.1.0")
    (root / "copier.yml").write_text(config.format("crimson, blue") + MIGRATIONS)
    (root / "template/docs").mkdir()
    git(root, "mv", "template/notes.txt", "template/docs/notes.txt")
    edit(root / "template/docs/notes.txt", "line 9\n", "line 9, from the template\n")
    commit_all(root, "Release 2.0.0")
    git(root, "tag", "2.0.0")
    return root


def test_migrations_carry_a_changed_choice_and_the_edits_of_a_moved_file(tmp_path: Path) -> None:
    source = small_template(tmp_path / "template")
    project = tmp_path / "project"
    copier(tmp_path, "copy", "--defaults", "--vcs-ref", "1.0.0", str(source), str(project))
    git(project, "init", "--quiet")
    commit_all(project, "Generated")
    edit(project / "notes.txt", "line 2\n", "line 2, from the project\n")
    commit_all(project, "Annotate")

    copier(project, "update", "--trust", "--defaults")

    assert answers(project)["color"] == "crimson"
    assert (project / "color.txt").read_text() == "crimson\n"
    assert not (project / "notes.txt").exists()
    moved = (project / "docs/notes.txt").read_text()
    assert "line 2, from the project\n" in moved and "line 9, from the template\n" in moved
    assert conflicts(project) == []


def test_package_name_answer_moves_to_project_identifier(template: Path, tmp_path: Path) -> None:
    """Releases before 0.2.0 called the question `package_name`; updating keeps its answer."""
    repo = shutil.copytree(template, tmp_path / "template")
    for path in [
        repo / "copier.yml",
        *project_files(repo / "template"),
        *(repo / "includes").rglob("*.jinja"),
    ]:
        text = path.read_text()
        path.write_text(text.replace("project_identifier", "package_name"))
    git(repo, "init", "--quiet")
    commit_all(repo, "Release 0.1.0, with `package_name`")
    git(repo, "tag", OLD)
    shutil.copytree(template, repo, dirs_exist_ok=True)
    commit_all(repo, "Release 0.2.0")
    git(repo, "tag", NEW)
    project = copy_project(
        repo,
        tmp_path / "service",
        "--skip-tasks",
        *("--data", "database=postgresql"),
        *("--data", "package_name=billing"),
    )
    assert answers(project)["package_name"] == "billing"

    copier(project, "update", "--trust", "--defaults", "--skip-tasks")

    recorded = answers(project)
    assert "package_name" not in recorded
    assert recorded["project_identifier"] == "billing"
    assert "POSTGRES_DB=billing\n" in (project / ".env.example").read_text()
    assert conflicts(project) == []


def test_moved_file_keeps_edits_made_before_an_earlier_update(tmp_path: Path) -> None:
    """copy 1.0.0, edit, update to 1.1.0 and commit, edit again, update to 2.0.0 (the move):
    every edit reaches the moved file, though the first one was committed with an update."""
    source = small_template(tmp_path / "template")
    project = tmp_path / "project"
    copier(tmp_path, "copy", "--defaults", "--vcs-ref", "1.0.0", str(source), str(project))
    git(project, "init", "--quiet")
    commit_all(project, "Generated")
    edit(project / "notes.txt", "line 2\n", "line 2, from the project\n")
    commit_all(project, "Annotate")
    copier(project, "update", "--trust", "--defaults", "--vcs-ref", "1.1.0")
    commit_all(project, "Update to 1.1.0")
    edit(project / "notes.txt", "line 7\n", "line 7, from the project later\n")
    commit_all(project, "Annotate again")

    output = copier(project, "update", "--trust", "--defaults")

    moved = (project / "docs/notes.txt").read_text()
    for line in ["line 2, from the project", "line 5, from 1.1", "line 7, from the project later"]:
        assert f"{line}\n" in moved, line
    assert "line 9, from the template\n" in moved
    assert not (project / "notes.txt").exists()
    assert "carried over your edits of notes.txt" in output
    assert conflicts(project) == []  # neither markers nor .rej files


def test_changed_answer_never_deletes_a_file_the_project_edited(
    releases: Path, tmp_path: Path
) -> None:
    """Without a database the project has a greetings test; the user extends it, then gives the
    project PostgreSQL, whose render has no such file: it stays, as a conflict to resolve."""
    project = copy_project(
        releases, tmp_path / "service", "--skip-tasks", "--data", "database=none"
    )
    test_file = project / "tests/test_greetings.py"
    own_test = "\n\ndef test_the_front_desk_case() -> None:\n    assert True\n"
    test_file.write_text(test_file.read_text() + own_test)
    commit_all(project, "A test of our own")

    output = copier_leaving_conflicts(
        project,
        "update",
        "--trust",
        "--defaults",
        "--skip-tasks",
        "--vcs-ref",
        OLD,
        *("--data", "database=postgresql"),
    )

    kept = test_file.read_text()
    assert kept.startswith("<<<<<<< before updating\n") and own_test in kept
    assert "tests/test_greetings.py" in conflicts(project)
    assert "tests/test_greetings.py: the update deletes it, but you had edited it" in output
    assert "  tests/test_greetings.py: keep what you want" in output
    # Files the project never touched go as the new answer says.
    assert not (project / "app/routes/greetings.py").exists()


# Each answer change that removes files, meeting an edit in what it removes: (answers the project
# starts with, the file it edits, the change). Some take the file's directory with it.
REMOVING_CHANGES = {
    "migrations-off": ({}, "migrations/env.py", "migrations=false"),
    "database-none": ({}, "app/db.py", "database=none"),
    "layout-single-file": ({}, "app/routes/items.py", "layout=single_file"),
    "proxy-none": ({"reverse_proxy": "caddy"}, "Caddyfile", "reverse_proxy=none"),
    "deploy-target-removed": (
        {"database": "none", "deploy_targets": '["kubernetes", "swarm"]'},
        "deploy/swarm/compose.yaml",
        'deploy_targets=["kubernetes"]',
    ),
}
OWN_LINE = "# The project's own line, which the update must not lose.\n"


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, marks=pytest.mark.xdist_group(f"removing-{case}"))
        for case in REMOVING_CHANGES
    ],
)
def test_answer_change_that_removes_an_edited_file_keeps_it_and_runs_every_later_step(
    case: str, releases: Path, tmp_path: Path
) -> None:
    """The edit survives as a conflict (its directory made again where the update dropped it),
    and every step after it runs: .env completed, the lock refreshed, the conflicts listed."""
    start, edited, change = REMOVING_CHANGES[case]
    data = [arg for name, value in start.items() for arg in ("--data", f"{name}={value}")]
    project = copy_project(releases, tmp_path / "service", *data)
    path = project / edited
    path.write_text(path.read_text() + OWN_LINE)
    commit_all(project, "An edit of our own")

    output = copier_leaving_conflicts(
        project, "update", "--trust", "--defaults", "--vcs-ref", OLD, "--data", change
    )

    kept = path.read_text()
    assert kept.startswith("<<<<<<< before updating\n") and OWN_LINE in kept
    assert f"{edited}: the update deletes it, but you had edited it" in output
    assert f"  {edited}: keep what you want" in output
    assert conflicts(project) == [edited]
    example, env = variables(project / ".env.example"), variables(project / ".env")
    assert example.keys() <= env.keys()
    run(["uv", "lock", "--locked"], project)


def test_switch_from_sqlite_keeps_its_database_file_ignored_and_retires_data_dir(
    releases: Path, tmp_path: Path
) -> None:
    """The SQLite file a local run made stays out of `git add -A` after a switch to PostgreSQL,
    and `.env` keeps DATA_DIR only as a comment saying it is no longer used."""
    project = copy_project(releases, tmp_path / "service")
    database = project / "data" / "my_api.db"
    database.parent.mkdir()
    database.write_bytes(b"SQLite format 3\0")
    assert "DATA_DIR" in variables(project / ".env")

    output = copier(
        project,
        "update",
        "--trust",
        "--defaults",
        "--vcs-ref",
        OLD,
        "--data",
        "database=postgresql",
    )

    assert "data/" not in git(project, "status", "--porcelain", "--untracked-files=all")
    assert ".gitignore still ignores data/" in output
    assert "DATA_DIR" not in variables(project / ".env")
    assert (
        "# DATA_DIR=data   # no longer used: gone from .env.example\n"
        in (project / ".env").read_text()
    )
    assert "Commented out in .env what .env.example dropped: DATA_DIR." in output
    assert "POSTGRES_HOST" in variables(project / ".env")
