"""Create or refresh the lock file of the generated project with its own tool.

Runs as a copier task after copy, and as a migration after every update. Every tool keeps the
versions already locked and only resolves what changed, so running it after an update is safe;
where the update left conflict markers in the dependency files it locks nothing and says so.
Skip it with `--skip-tasks`, then run the command it prints yourself.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

INPUTS = {
    "uv": ["pyproject.toml"],
    "poetry": ["pyproject.toml"],
    "pip": ["requirements.in", "requirements-dev.in"],
}
COMMANDS = {
    "uv": [["uv", "lock"]],
    "poetry": [["poetry", "lock"]],
    "pip": [
        [
            "pip-compile",
            "--quiet",
            "--generate-hashes",
            "--strip-extras",
            "requirements.in",
        ],
        [
            "pip-compile",
            "--quiet",
            "--generate-hashes",
            "--strip-extras",
            "requirements-dev.in",
        ],
    ],
}


def pip_compile() -> str:
    """Find pip-compile, or install pip-tools into a throwaway environment for this run."""
    found = shutil.which("pip-compile")
    if found:
        return found
    venv = Path(tempfile.mkdtemp(prefix="pip-tools-"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "pip-tools"], check=True)
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


def main(tool: str) -> int:
    commands = COMMANDS[tool]
    printable = " && ".join(" ".join(command) for command in commands)
    unresolved = ", ".join(conflicted(INPUTS[tool]))
    if unresolved:
        print(f"Not locking: resolve the conflicts in {unresolved}, then run `{printable}`.")
        return 0
    if tool == "pip":
        executable = pip_compile()
        commands = [[executable, *command[1:]] for command in commands]
    elif shutil.which(tool) is None:
        print(
            f"{tool} is not installed: install it, then run `{printable}`.",
            file=sys.stderr,
        )
        return 1
    # The project is locked for its own Python, not for a virtualenv copier happens to run in.
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    for command in commands:
        print("Locking:", " ".join(command[1:]), flush=True)
        result = subprocess.run(command, env=env)
        if result.returncode != 0:
            return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
