"""Create `.env` from `.env.example` with fresh random secrets, or add what it lacks.

Runs as a copier task after copy, and as a migration after every update. `.env` is git-ignored
and listed in `_skip_if_exists`, so copier never touches it and secrets never reach the answers
file. Lines already in `.env` keep their values: after an update (say, to PostgreSQL) the
variables `.env.example` gained are appended, with the same fresh secrets, and those it dropped
(SQLite's DATA_DIR) are commented out, saying so. A variable `.env.example` never had is the
project's own and stays.
"""

import secrets
import subprocess
from pathlib import Path

PLACEHOLDER = "change-me"


def with_secrets(text: str) -> str:
    while PLACEHOLDER in text:
        text = text.replace(PLACEHOLDER, secrets.token_urlsafe(24), 1)
    return text


def variable(line: str) -> str | None:
    name, equals, _ = line.partition("=")
    return name.strip() if equals and not line.lstrip().startswith("#") else None


def missing_lines(example: str, env: str) -> list[str]:
    """Lines of `.env.example` setting a variable `.env` lacks, each with its comments."""
    present = {variable(line) for line in env.splitlines()}
    added: list[str] = []
    comments: list[str] = []
    for line in example.splitlines():
        name = variable(line)
        if name is None:
            comments.append(line)
            continue
        if name not in present:
            added += [*comments, line]
        comments = []
    return added


def without_dropped(before: str, example: str, env: str) -> tuple[str, list[str]]:
    """`.env` with the variables `.env.example` had before the update and no longer has
    commented out, and their names."""
    gone = {variable(line) for line in before.splitlines()} - {
        variable(line) for line in example.splitlines()
    }
    lines = env.splitlines(keepends=True)
    dropped = [line for line in lines if variable(line) in gone - {None}]
    text = "".join(
        f"# {line.rstrip()}   # no longer used: gone from .env.example\n"
        if line in dropped
        else line
        for line in lines
    )
    return text, [str(variable(line)) for line in dropped]


def example_before_update() -> str:
    """`.env.example` as committed before the update (empty on copy: no commit yet)."""
    shown = subprocess.run(["git", "show", "HEAD:./.env.example"], capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else ""


def main() -> None:
    example = Path(".env.example")
    env = Path(".env")
    if not example.exists():
        return
    if not env.exists():
        env.write_text(with_secrets(example.read_text()))
        env.chmod(0o600)
        print("Wrote .env from .env.example (git-ignored), with fresh secrets.")
        return
    current = env.read_text()
    current, dropped = without_dropped(example_before_update(), example.read_text(), current)
    if dropped:
        env.write_text(current)
        print(f"Commented out in .env what .env.example dropped: {', '.join(dropped)}.")
    added = missing_lines(example.read_text(), current)
    if added:
        separator = "" if current.endswith("\n") or not current else "\n"
        env.write_text(current + separator + with_secrets("\n".join(added) + "\n"))
        names = ", ".join(filter(None, map(variable, added)))
        print(f"Added to .env what .env.example gained: {names}.")


if __name__ == "__main__":
    main()
