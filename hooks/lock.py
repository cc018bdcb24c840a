"""Create or refresh the lock file of the generated project with its own tool.

Runs as a copier task after copy, and as a migration after every update:
`lock.py TOOL PYTHON_VERSION [PACKAGE_INDEX]`. Every tool keeps the versions already locked
and only resolves what changed, so running it after an update is safe; where the update left
conflict markers in the dependency files it locks nothing and says so. Skip it with
`--skip-tasks`, then run the command it prints yourself.

A lock that cannot be made (the tool is missing, the index does not answer) never fails the
copy or the update: copier would delete the project it just rendered. It says what failed and
the command to run once that is fixed, and exits 0.

uv and Poetry find the package index in pyproject.toml. pip-compile gets it as PIP_INDEX_URL,
never written into the requirements files, so credentials the user keeps in PIP_INDEX_URL for
that index are used and never end up in a file. pip-compile runs in a throwaway virtualenv of
the project's Python (its header and its markers say that version), removed afterwards, and
writes nothing of this machine's pip configuration (find-links, index or trusted-host options).
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

INPUTS = {
    "uv": ["pyproject.toml"],
    "poetry": ["pyproject.toml"],
    "pip": ["requirements.in", "requirements-dev.in"],
}
PIP_COMPILE = [
    "pip-compile",
    "--quiet",
    "--generate-hashes",
    "--no-emit-index-url",
    "--no-emit-find-links",
    "--no-emit-trusted-host",
]
COMMANDS = {
    "uv": [["uv", "lock"]],
    "poetry": [["poetry", "lock"]],
    "pip": [
        [*PIP_COMPILE, "--strip-extras", "requirements.in"],
        [*PIP_COMPILE, "--strip-extras", "requirements-dev.in"],
    ],
}


# One line before each lock command, so that a quiet minute does not look like a hang.
SAYS = {
    "uv": "Locking the dependencies with uv (uv.lock)...",
    "poetry": "Locking the dependencies with Poetry (poetry.lock)...",
    "pip": "Locking {file} with pip-compile, with hashes (this takes a minute)...",
}


class LockFailed(Exception):
    """What kept the lock from being made, in words for the user."""


def pip_compile(python: str, scratch: Path) -> str:
    """pip-compile installed into a virtualenv of `python` in `scratch`."""
    venv = scratch / "pip-tools"
    print("Installing pip-tools into a throwaway virtualenv...", flush=True)
    for command in (
        [python, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "--quiet", "pip-tools"],
    ):
        if subprocess.run(command).returncode != 0:
            raise LockFailed(f"`{' '.join(command)}` failed (see above)")
    return str(venv / "bin" / "pip-compile")


def conflicted(paths: list[str]) -> list[str]:
    """The files among `paths` that still hold merge conflict markers."""
    return [
        path
        for path in paths
        if Path(path).exists()
        and any(
            line.startswith(("<<<<<<< ", ">>>>>>> "))
            for line in Path(path).read_text().splitlines()
        )
    ]


def without_credentials(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")


def python_directory(version: str) -> str | None:
    """The directory of the real `pythonX.Y` executable (not a pyenv shim), if it is installed."""
    python = shutil.which(f"python{version}")
    if python is None:
        return None
    where = subprocess.run(
        [python, "-c", "import os, sys; print(os.path.dirname(sys.executable))"],
        capture_output=True,
        text=True,
    )
    return where.stdout.strip() or None


def tool_environment(python_version: str, package_index: str) -> dict[str, str]:
    """The environment of the lock commands.

    The project is locked for its own Python, not for the virtualenv copier runs in: Poetry
    locks with an active virtualenv, or else the first `python3` on PATH, so the project's
    Python goes first there. pip gets the project's index, unless PIP_INDEX_URL already names
    it, maybe with credentials.
    """
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    directory = python_directory(python_version)
    if directory:
        env["PATH"] = f"{directory}{os.pathsep}{env.get('PATH', '')}"
    current = env.get("PIP_INDEX_URL", "")
    if package_index and without_credentials(current) != without_credentials(package_index):
        env["PIP_INDEX_URL"] = package_index
    return env


def lock(tool: str, python_version: str, package_index: str) -> None:
    """Run the tool's lock commands; raise LockFailed if one cannot run or fails."""
    env = tool_environment(python_version, package_index)
    with tempfile.TemporaryDirectory(prefix="lock-") as scratch:
        commands = COMMANDS[tool]
        if tool == "pip":
            python = shutil.which(f"python{python_version}")
            if python is None:
                raise LockFailed(f"Python {python_version} (python{python_version}) is not found")
            executable = pip_compile(python, Path(scratch))
            commands = [[executable, *command[1:]] for command in commands]
        elif shutil.which(tool) is None:
            raise LockFailed(f"{tool} is not installed")
        for command in commands:
            print(SAYS[tool].format(file=command[-1]), flush=True)
            result = subprocess.run(command, env=env)
            if result.returncode != 0:
                shown = " ".join([Path(command[0]).name, *command[1:]])
                raise LockFailed(f"`{shown}` exited {result.returncode} (its output is above)")


def main(tool: str, python_version: str, package_index: str = "") -> int:
    printable = " && ".join(" ".join(command) for command in COMMANDS[tool])
    if tool == "pip":
        printable = f"pip install pip-tools && {printable}  (in the project's virtualenv)"
    unresolved = ", ".join(conflicted(INPUTS[tool]))
    if unresolved:
        print(f"Not locking: resolve the conflicts in {unresolved}, then run `{printable}`.")
        return 0
    try:
        lock(tool, python_version, package_index)
    except LockFailed as failure:
        print(
            f"\nThe dependencies are NOT locked: {failure}.\n"
            f"The project itself is complete. Once that is fixed, run in it:\n    {printable}\n",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
