"""The interactive prompt, answered in a terminal as a user does, with the newest copier on PyPI
and with the oldest the template accepts (`_min_copier_version`).

Each walk types its answers into copier's real prompt through a pseudo-terminal: the
questions come in order, each one `when` reveals is asked (a proxy with HTTPS: its domain, and for
a public domain on Traefik or Caddy the ACME e-mail; an external proxy: its addresses; Kubernetes:
the ingress class) and no other, a bad answer is refused with the validator's message and asked
again, and the answers file holds what was typed. A walk left half-way writes nothing.

Each copier is installed once per session in its own virtual environment; every walk runs its
command line. Tasks are skipped: what is tested here is the questions.
"""

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect
import pytest
import yaml

from tests.project import GIT_IDENTITY, git, tool_env

REPO = Path(__file__).resolve().parent.parent
QUESTIONS: dict[str, Any] = {
    name: spec
    for name, spec in yaml.safe_load((REPO / "copier.yml").read_text()).items()
    if not name.startswith("_") and spec.get("when") is not False
}
MINIMUM = str(yaml.safe_load((REPO / "copier.yml").read_text())["_min_copier_version"])
# What each copier is installed with: the newest release, and the minimum the template declares.
COPIERS = {"newest": "copier", "minimum": f"copier=={MINIMUM}"}

pytestmark = pytest.mark.xdist_group("prompt")

DOWN, SPACE, ENTER, CLEAR_LINE, INTERRUPT = "\x1b[B", " ", "\r", "\x15", "\x03"
# What the terminal may receive between two characters of a text the prompt draws: escape
# sequences, and line breaks where a text wraps. (The terminal is wide: the prompt shows a refusal
# on one line of the bottom bar, cut at the terminal's width.)
LAYOUT = r"(?:\x1b\[[0-9;?]*[A-Za-z]|[\r\n ])*"


def on_screen(text: str) -> "re.Pattern[str]":
    """A pattern for the text as the prompt draws it, however it wraps."""
    return re.compile(LAYOUT.join(re.escape(char) for char in text if char != " "))


@pytest.fixture(scope="session")
def copier_bin(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The copier command installed with a requirement (once per session and requirement)."""
    installed: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("copiers")

    def get(requirement: str) -> Path:
        if requirement not in installed:
            venv = root / re.sub(r"\W+", "-", requirement)
            env = tool_env(VIRTUAL_ENV=str(venv))
            subprocess.run(
                ["uv", "venv", "--quiet", "--python", sys.executable, str(venv)],
                check=True,
                env=env,
            )
            subprocess.run(["uv", "pip", "install", "--quiet", requirement], check=True, env=env)
            installed[requirement] = venv / "bin" / "copier"
        return installed[requirement]

    return get


@pytest.fixture(params=list(COPIERS), ids=list(COPIERS))
def copier(request: pytest.FixtureRequest, copier_bin: Callable[[str], Path]) -> Path:
    return copier_bin(COPIERS[request.param])


def test_each_copier_is_the_version_it_stands_for(copier_bin: Callable[[str], Path]) -> None:
    minimum = subprocess.run(
        [copier_bin(COPIERS["minimum"]), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert minimum.split()[-1] in (MINIMUM, f"{MINIMUM}.0")
    newest = subprocess.run(
        [copier_bin(COPIERS["newest"]), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert tuple(map(int, newest.split()[-1].split(".")[:2])) >= (9, 19)


class Prompt:
    """Copier's prompt in a terminal, driven one question at a time."""

    def __init__(self, copier: Path, args: list[str], cwd: Path) -> None:
        self.child = pexpect.spawn(
            str(copier),
            args,
            cwd=str(cwd),
            env=tool_env(
                **GIT_IDENTITY, TERM="xterm", COLUMNS="250", LINES="40", PROMPT_TOOLKIT_NO_CPR="1"
            ),
            encoding="utf-8",
            dimensions=(40, 250),
            timeout=30,
        )
        self.asked: list[str] = []

    def ask(self, name: str) -> None:
        """Wait for the question (its help text as the prompt shows it)."""
        help_text = str(QUESTIONS[name]["help"])[:28]
        try:
            self.child.expect(on_screen(help_text))
        except pexpect.TIMEOUT:
            raise AssertionError(
                f"{name} was not asked after {self.asked}; the screen shows:\n"
                f"{(self.child.before or '')[-1500:]}"
            ) from None
        self.asked.append(name)

    def type(self, name: str, text: str) -> None:
        """Answer a text question, replacing the default shown."""
        self.ask(name)
        self.child.send(CLEAR_LINE + text + ENTER)

    def refused(self, message: str, answer: str) -> None:
        """The last answer is refused with this message; answer again."""
        self.child.expect(on_screen(message))
        self.child.send(CLEAR_LINE + answer + ENTER)

    def choose(self, name: str, value: Any) -> None:
        """Answer a choice question by moving to the choice, as arrow keys do."""
        self.ask(name)
        values = list(QUESTIONS[name]["choices"].values())
        self.press(DOWN * values.index(value) + ENTER)

    def confirm(self, name: str, yes: bool) -> None:
        self.ask(name)
        self.child.send("y" if yes else "n")

    def tick(self, name: str, values: list[str]) -> None:
        """Answer a multiple-choice question: tick these, then enter."""
        self.ask(name)
        self.press(self._ticks(name, values) + ENTER)

    def retick(self, name: str, untick: list[str], tick: list[str]) -> None:
        """The ticked choices were refused (the prompt stays); change them and enter.

        (The checkbox keeps its validator's message off the screen, so only the outcome shows
        that it refused: the answers file holds the second choice.)"""
        self.press(self._ticks(name, untick) + self._ticks(name, tick) + ENTER)

    def _ticks(self, name: str, values: list[str]) -> str:
        """From the first choice, to each value (toggling it), and back to the first."""
        choices = list(QUESTIONS[name]["choices"].values())
        keys, at = "", 0
        for value in sorted(values, key=choices.index):
            keys += DOWN * (choices.index(value) - at) + SPACE
            at = choices.index(value)
        return keys + DOWN * ((len(choices) - at) % len(choices))

    def press(self, keys: str) -> None:
        """Send keys one at a time, as a user types them (the prompt reads a key per event)."""
        for key in re.findall(r"\x1b\[[A-Z]|.", keys, re.DOTALL):
            self.child.send(key)

    def finish(self) -> int:
        self.child.expect(pexpect.EOF, timeout=120)
        self.child.close()
        return int(self.child.exitstatus or 0)


def common_start(prompt: Prompt) -> None:
    """The first questions, answered with their defaults (a slug typed wrong first)."""
    prompt.type("project_name", "Front Desk")
    prompt.type("project_slug", "Front Desk")
    prompt.refused("is not a slug", "front-desk")
    for name in ["project_identifier", "description"]:
        prompt.ask(name)
        prompt.child.send(ENTER)
    prompt.type("author", "Ada")
    prompt.refused('is not "Name', "")
    for name in ["python_version", "dependency_tool", "package_index", "layout", "process_model"]:
        prompt.ask(name)
        prompt.child.send(ENTER)


def recorded(project: Path) -> dict[str, Any]:
    answers: dict[str, Any] = yaml.safe_load((project / ".copier-answers.yml").read_text())
    return {name: value for name, value in answers.items() if not name.startswith("_")}


DEFAULTS = {
    "project_name": "Front Desk",
    "project_slug": "front-desk",
    "project_identifier": "front_desk",
    "description": "A FastAPI service",
    "author": "",
    "python_version": "3.13",
    "dependency_tool": "uv",
    "package_index": "",
    "layout": "package",
    "process_model": "single",
}


def copy(copier: Path, template: Path, dest: Path) -> Prompt:
    return Prompt(copier, ["copy", "--skip-tasks", str(template), str(dest)], dest.parent)


def test_public_domain_on_traefik_asks_the_acme_email(
    copier: Path, template: Path, tmp_path: Path
) -> None:
    prompt = copy(copier, template, tmp_path / "project")
    common_start(prompt)
    prompt.choose("reverse_proxy", "traefik")
    prompt.type("domain", "API.example.com")
    prompt.refused("is not a domain name", "api.example.com")
    # The question copier 9.19 crashed on: asked, an empty answer refused like a bad one.
    prompt.ask("acme_email")
    prompt.child.send(ENTER)
    prompt.refused("is not an email address", "ops@example")
    prompt.refused("is not an email address", "ops@example.org")
    prompt.choose("database", "postgresql")
    prompt.confirm("migrations", False)
    prompt.choose("metrics", "prometheus")
    prompt.choose("tracing", "opentelemetry")
    prompt.choose("error_reports", "sentry")
    prompt.tick("deploy_targets", ["kubernetes"])
    prompt.type("ingress_class", "Traefik")
    prompt.refused("is not a Kubernetes name", "traefik")
    assert prompt.finish() == 0

    assert recorded(tmp_path / "project") == {
        **DEFAULTS,
        "reverse_proxy": "traefik",
        "domain": "api.example.com",
        "acme_email": "ops@example.org",
        "database": "postgresql",
        "migrations": False,
        "metrics": "prometheus",
        "tracing": "opentelemetry",
        "error_reports": "sentry",
        "deploy_targets": ["kubernetes"],
        "ingress_class": "traefik",
    }


def test_localhost_on_caddy_asks_no_email_and_no_database_no_migrations(
    copier: Path, template: Path, tmp_path: Path
) -> None:
    prompt = copy(copier, template, tmp_path / "project")
    common_start(prompt)
    prompt.choose("reverse_proxy", "caddy")
    prompt.ask("domain")
    prompt.child.send(ENTER)  # localhost, the default
    prompt.choose("database", "none")
    prompt.choose("metrics", "none")
    prompt.choose("tracing", "none")
    prompt.choose("error_reports", "none")
    prompt.tick("deploy_targets", ["swarm"])
    assert prompt.finish() == 0

    assert recorded(tmp_path / "project") == {
        **DEFAULTS,
        "reverse_proxy": "caddy",
        "domain": "localhost",
        "database": "none",
        "metrics": "none",
        "tracing": "none",
        "error_reports": "none",
        "deploy_targets": ["swarm"],
    }


def test_external_proxy_asks_its_addresses_and_kubernetes_its_ingress_class(
    copier: Path, template: Path, tmp_path: Path
) -> None:
    prompt = copy(copier, template, tmp_path / "project")
    common_start(prompt)
    prompt.choose("reverse_proxy", "external")
    prompt.type("forwarded_allow_ips", "10.0.0.300")
    prompt.refused("is not an IP address or CIDR network", "10.0.0.0/8, 192.168.1.7")
    prompt.choose("database", "sqlite")
    prompt.confirm("migrations", True)
    prompt.choose("metrics", "none")
    prompt.choose("tracing", "none")
    prompt.choose("error_reports", "none")
    # Swarm with SQLite is refused; Kubernetes instead.
    prompt.tick("deploy_targets", ["swarm"])
    prompt.retick("deploy_targets", ["swarm"], ["kubernetes"])
    prompt.ask("ingress_class")
    prompt.child.send(ENTER)  # nginx, the default without Traefik
    assert prompt.finish() == 0

    assert recorded(tmp_path / "project") == {
        **DEFAULTS,
        "reverse_proxy": "external",
        "forwarded_allow_ips": "10.0.0.0/8, 192.168.1.7",
        "database": "sqlite",
        "migrations": True,
        "metrics": "none",
        "tracing": "none",
        "error_reports": "none",
        "deploy_targets": ["kubernetes"],
        "ingress_class": "nginx",
    }


def test_a_walk_left_half_way_writes_nothing(copier: Path, template: Path, tmp_path: Path) -> None:
    prompt = copy(copier, template, tmp_path / "project")
    common_start(prompt)
    prompt.choose("reverse_proxy", "caddy")
    prompt.type("domain", "api.example.com")
    prompt.ask("acme_email")
    prompt.child.send("not-an-address" + ENTER)
    prompt.child.expect(on_screen("is not an email address"))
    prompt.child.send(INTERRUPT)
    assert prompt.finish() != 0
    assert not (tmp_path / "project").exists()


def test_defaults_without_the_acme_email_stop_with_a_message_writing_nothing(
    copier: Path, template: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    data = ["--data", "reverse_proxy=caddy", "--data", "domain=api.example.com"]
    result = subprocess.run(
        [copier, "copy", "--defaults", "--skip-tasks", *data, str(template), str(project)],
        capture_output=True,
        text=True,
        env=tool_env(),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "parameter 'acme_email' was not provided" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not project.exists()

    given = [*data, "--data", "acme_email=ops@example.org"]
    subprocess.run(
        [copier, "copy", "--defaults", "--skip-tasks", *given, str(template), str(project)],
        capture_output=True,
        text=True,
        env=tool_env(),
        cwd=tmp_path,
        check=True,
    )
    assert recorded(project)["acme_email"] == "ops@example.org"


# --- copier update --data domain=... ----------------------------------------------------------


@pytest.fixture(scope="module")
def template_repo(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template as a git repository with one commit and no tag (updates use HEAD)."""
    repo = tmp_path_factory.mktemp("prompt-template") / "template"
    shutil.copytree(template, repo)
    git(repo, "init", "--quiet")
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--message", "The template")
    return repo


def project_on_localhost(copier: Path, template_repo: Path, dest: Path) -> Path:
    """A project behind Traefik on localhost (no e-mail asked), committed."""
    subprocess.run(
        [
            copier,
            "copy",
            "--defaults",
            "--skip-tasks",
            "--vcs-ref",
            "HEAD",
            "--data",
            "reverse_proxy=traefik",
            str(template_repo),
            str(dest),
        ],
        capture_output=True,
        text=True,
        env=tool_env(**GIT_IDENTITY),
        cwd=dest.parent,
        check=True,
    )
    git(dest, "init", "--quiet")
    git(dest, "add", "--all")
    git(dest, "commit", "--quiet", "--message", "Generated")
    return dest


UPDATE = ["update", "--trust", "--skip-tasks", "--skip-answered", "--vcs-ref", "HEAD"]


def test_update_to_a_public_domain_asks_the_acme_email(
    copier: Path, template_repo: Path, tmp_path: Path
) -> None:
    project = project_on_localhost(copier, template_repo, tmp_path / "project")

    prompt = Prompt(copier, [*UPDATE, "--data", "domain=api.example.com"], project)
    prompt.ask("acme_email")
    prompt.child.send(ENTER)
    prompt.refused("is not an email address", "ops@example.org")
    assert prompt.finish() == 0

    answers = recorded(project)
    assert (answers["domain"], answers["acme_email"]) == ("api.example.com", "ops@example.org")
    assert "ACME_EMAIL=ops@example.org\n" in (project / ".env.example").read_text()


def test_update_with_defaults_and_no_acme_email_stops_leaving_the_project_as_it_was(
    copier: Path, template_repo: Path, tmp_path: Path
) -> None:
    project = project_on_localhost(copier, template_repo, tmp_path / "project")

    result = subprocess.run(
        [copier, *UPDATE, "--defaults", "--data", "domain=api.example.com"],
        capture_output=True,
        text=True,
        env=tool_env(**GIT_IDENTITY),
        cwd=project,
    )
    assert result.returncode == 1
    assert "parameter 'acme_email' was not provided" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert git(project, "status", "--porcelain") == ""
    assert recorded(project)["domain"] == "localhost"
