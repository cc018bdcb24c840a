"""After `copier update`: keep git-ignoring what the project's `.gitignore` ignored before the
update and is still in the working tree.

A changed answer can drop a line of `.gitignore` while what it ignored stays: SQLite's `data/`
(the database file) after a switch to PostgreSQL, nginx's `certs/` (a private key) after a
switch to another proxy. `git add -A` would then commit it. Each such pattern is appended again
with a comment: delete what it matches, then the lines.

Runs as an unversioned "after" migration (also with `--skip-tasks`: it protects what is there).
"""

import subprocess
from pathlib import Path

from previous_render import committed

NOTE = (
    "# Kept by `copier update`: the answers no longer use it, but it is still here. Delete it,"
    " then these lines."
)


def still_here(pattern: str) -> bool:
    """Untracked files or directories the pattern matches."""
    listed = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--directory", f"--exclude={pattern}"],
        capture_output=True,
        text=True,
    )
    return bool(listed.stdout.strip())


def main() -> None:
    gitignore = Path(".gitignore")
    before = committed("HEAD", ".gitignore")
    if before is None or not gitignore.is_file():
        return
    now = gitignore.read_text()
    patterns = {line.strip() for line in now.splitlines()}
    dropped = [
        line.strip()
        for line in before.splitlines()
        if line.strip() and not line.startswith("#") and line.strip() not in patterns
    ]
    kept = [pattern for pattern in dropped if still_here(pattern)]
    if kept:
        separator = "" if now.endswith("\n") or not now else "\n"
        gitignore.write_text(now + separator + "\n".join([NOTE, *kept]) + "\n")
        print(f".gitignore still ignores {', '.join(kept)}: no answer uses it, but it is here.")


if __name__ == "__main__":
    main()
