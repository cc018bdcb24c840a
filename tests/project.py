"""Render generated projects and drive them with their own tools."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import copier
import jinja2
import yaml

REPO = Path(__file__).resolve().parent.parent

# uv must not download Pythons, and every pyenv Python must stay visible to child processes
# (a pyenv shim otherwise narrows PYENV_VERSION to its own version).
TOOL_ENV = {
    "PYENV_VERSION": "3.11.7:3.12.1:3.13.0",
    "UV_PYTHON_DOWNLOADS": "never",
    "POETRY_VIRTUALENVS_IN_PROJECT": "true",
    "POETRY_NO_INTERACTION": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}


# Commits made by tests (and by copier in the repositories they make) need an identity.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Template Tests",
    "GIT_AUTHOR_EMAIL": "tests@example.com",
    "GIT_COMMITTER_NAME": "Template Tests",
    "GIT_COMMITTER_EMAIL": "tests@example.com",
}


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for a generated project's tools: no inherited virtualenv."""
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    return {**env, **TOOL_ENV, **extra}


def reuse_compiled_templates() -> None:
    """Compile each Jinja source once per test process instead of once per render.

    Copier makes a new Jinja environment for every copy, and compiling the template's files and
    path names is most of a render's time; the suite renders the same sources hundreds of
    times. The compiled code depends only on the source and the environment's syntax settings,
    which are part of the key, so a render is the same with or without the cache.
    """
    compile_source: Any = jinja2.Environment.compile
    if getattr(compile_source, "reuses_code", False):
        return
    compiled: dict[tuple[Any, ...], Any] = {}

    def compile_once(
        self: jinja2.Environment,
        source: Any,
        name: str | None = None,
        filename: str | None = None,
        raw: bool = False,
        defer_init: bool = False,
    ) -> Any:
        if not isinstance(source, str):
            return compile_source(self, source, name, filename, raw, defer_init)
        syntax = (
            type(self),
            self.block_start_string,
            self.block_end_string,
            self.variable_start_string,
            self.variable_end_string,
            self.comment_start_string,
            self.comment_end_string,
            self.line_statement_prefix,
            self.line_comment_prefix,
            self.trim_blocks,
            self.lstrip_blocks,
            self.newline_sequence,
            self.keep_trailing_newline,
            self.optimized,
            self.is_async,
            repr(self.autoescape),
            tuple(self.extensions),
        )
        key = (syntax, source, name, filename, raw, defer_init)
        if key not in compiled:
            compiled[key] = compile_source(self, source, name, filename, raw, defer_init)
        return compiled[key]

    compile_once.reuses_code = True  # type: ignore[attr-defined]
    jinja2.Environment.compile = compile_once  # type: ignore[assignment,method-assign]


# The package index a project may name to be locked against PyPI itself.
PYPI_SIMPLE = "https://pypi.org/simple/"


def render(template: Path, dest: Path, answers: dict[str, Any], *, tasks: bool = False) -> Path:
    """Copy the template with these answers (defaults for the rest), and with `tasks` run the
    copy's tasks (.env, secrets, certificate, the lock)."""
    if tasks:
        seed_pip_lock(template, dest, answers)
    copier.run_copy(
        str(template),
        str(dest),
        data=answers,
        defaults=True,
        unsafe=True,
        skip_tasks=not tasks,
        quiet=True,
    )
    return dest


def seed_pip_lock(template: Path, dest: Path, answers: dict[str, Any]) -> None:
    """Where a pip project names PyPI's index, put the lock its task will make in place first,
    made through the tests' stand-in for PyPI (tests/pypi_json.py, PIP_INDEX_URL).

    pip-compile takes each release's hashes from the index's JSON API. The mirror these machines
    reach as pypi.org answers it with file URLs other than the simple API's, so pip-compile
    downloads and hashes every file of every release it pins (about a thousand per lock). A
    project that leaves the index to pip is locked through the stand-in, which answers with the
    simple API's own hashes; one that names PyPI still locks against it, as its task does, and
    pip-compile, as with any lock already there, keeps its pins and reuses their hashes
    (--reuse-hashes): the same lock, without those downloads.
    """
    named = answers.get("dependency_tool") == "pip" and answers.get("package_index") == PYPI_SIMPLE
    if not named or "python_version" not in answers or "PIP_INDEX_URL" not in os.environ:
        return
    with tempfile.TemporaryDirectory() as scratch:
        project = render(template, Path(scratch) / "project", answers)
        hook = str(template / "hooks" / "lock.py")
        run([sys.executable, hook, "pip", answers["python_version"]], project)  # the stand-in's
        dest.mkdir(parents=True, exist_ok=True)
        for lock in project.glob("requirements*.txt"):
            shutil.copy(lock, dest / lock.name)


def render_with_secrets(template: Path, dest: Path, answers: dict[str, Any]) -> Path:
    """Render (tasks skipped: no lock needed) and write the secret files as the copy task
    does, so that Kubernetes' secret generators find them."""
    render(template, dest, answers)
    names = "postgres_password" if answers.get("database") == "postgresql" else ""
    hook = [sys.executable, str(REPO / "hooks" / "write_secrets.py"), names]
    subprocess.run(hook, cwd=dest, check=True, capture_output=True)
    return dest


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command of the generated project; fail the test with its output if it fails."""
    result = subprocess.run(
        command, cwd=cwd, env=tool_env(**env), capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode} in {cwd}\n"
            f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def git(cwd: Path, *args: str) -> str:
    """Run git in a repository the test made; return what it printed."""
    return run(["git", *args], cwd, **GIT_IDENTITY).stdout


def install(project: Path, answers: dict[str, Any], **env: str) -> Path:
    """Install the project's locked dependencies with its own tool; return its venv's bin/."""
    tool = answers["dependency_tool"]
    python = f"python{answers['python_version']}"
    if tool == "uv":
        run(["uv", "sync", "--locked", "--python", python], project, **env)
    elif tool == "poetry":
        run(["poetry", "env", "use", python], project, **env)
        run(["poetry", "install"], project, **env)
        # Poetry may pick an environment it already made for this path outside the project.
        venv = run(["poetry", "env", "info", "--path"], project, **env).stdout.strip()
        return Path(venv) / "bin"
    else:
        run([python, "-m", "venv", ".venv"], project, **env)
        pip = [".venv/bin/pip", "install", "--require-hashes", "-r", "requirements-dev.txt"]
        run(pip, project, **env)
    return project / ".venv" / "bin"


def ci_job(project: Path, name: str) -> dict[str, Any]:
    """A job of the generated CI workflow."""
    workflow = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    job: dict[str, Any] = workflow["jobs"][name]
    return job


def ci_check_steps(project: Path) -> list[dict[str, Any]]:
    """The shell steps of the generated CI workflow's check job, in order."""
    return [step for step in ci_job(project, "check")["steps"] if "run" in step]


def readme_block(readme: str, section: str) -> list[str]:
    """The commands of the first sh block under a `## ` heading of a README, one per item (a
    command continued with a trailing backslash joined into one line)."""
    text = readme[readme.index(f"\n## {section}\n") :]
    block = text[text.index("```sh\n") + len("```sh\n") :]
    return _commands(block[: block.index("```")])


def readme_blocks(readme: str, section: str) -> list[list[str]]:
    """The commands of each sh block of a `## ` section of a README, in order (as
    readme_block)."""
    text = readme[readme.index(f"\n## {section}\n") + 1 :]
    text = text.split("\n## ", 1)[0]
    blocks = []
    while "```sh\n" in text:
        text = text[text.index("```sh\n") + len("```sh\n") :]
        blocks.append(_commands(text[: text.index("```")]))
        text = text[text.index("```") + len("```") :]
    return blocks


def _commands(block: str) -> list[str]:
    commands: list[str] = []
    continued = False
    for line in block.splitlines():
        if continued:
            commands[-1] += " " + line.strip()
        else:
            commands.append(line)
        continued = commands[-1].endswith("\\")
        if continued:
            commands[-1] = commands[-1][:-1].rstrip()
    return commands


# Python for scripts a generated project's interpreter runs (the database benchmark's in-process
# calls, the pool test's): the ASGI scope of one HTTP request to the app, as Uvicorn passes it.
ASGI_HTTP_SCOPE = """
def http_scope(method, path, headers=()):
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
    }
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def status_of(url: str) -> int:
    """The status of one GET of the URL."""
    return http_get(url)[0]


def wait_for_http(
    url: str,
    timeout: float = 30.0,
    process: subprocess.Popen[str] | None = None,
    ask: Callable[[str], int] = status_of,
) -> int:
    """Poll a URL until it answers (asking with `ask`, a plain GET by default); its status."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ask(url)
        except (OSError, urllib.error.URLError):
            if process is not None and process.poll() is not None:
                raise AssertionError(f"server exited {process.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def serve(command: list[str], cwd: Path, **env: str) -> Iterator[subprocess.Popen[str]]:
    """Start a server process; stop it with SIGTERM when done.

    Its output goes to a file, shown when the test fails: a pipe that nobody reads fills up
    after 64 KiB of log lines, and the server then hangs in its next write.
    """
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=tool_env(**env),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            yield process
        except Exception as error:
            stop(process)
            output.seek(0)
            error.add_note(f"--- server output (last 6000 characters)\n{output.read()[-6000:]}")
            raise
        finally:
            stop(process)


def stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, as a container stop sends; SIGKILL if it is still running 15 s later."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def snapshot(source: Path, dest: Path) -> Path:
    """Copy the files git knows of (tracked or not ignored): the template as committed."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=source,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        if (source / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
    return dest
