"""Carry the project's own edits of a file the template moved over to the file's new path.

When a release moves OLD to NEW, `copier update` writes NEW fresh from the template and deletes
OLD, so edits the project made to OLD would stay behind in git history only. A `_migrations`
entry for that release runs this at the "after" stage, in the project:

    move_file.py ANSWERS_FILE OLD NEW

It merges the project's changes to OLD (from the commit that last recorded an update, where
OLD was as the template rendered it, to HEAD) into NEW with `git merge-file`. Where both sides
changed the same lines, NEW gets conflict markers, as copier's own conflicts do.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

USAGE = "usage: move_file.py ANSWERS_FILE OLD NEW"


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], capture_output=True, text=True)


def committed(revision: str, path: str) -> str | None:
    """The file as committed in `revision`, or None where it did not exist."""
    shown = git("show", f"{revision}:./{path}")
    return shown.stdout if shown.returncode == 0 else None


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(USAGE, file=sys.stderr)
        return 2
    answers_file, old, new = argv
    last_update = git("log", "-1", "--format=%H", "HEAD", "--", answers_file).stdout.strip()
    rendered = committed(last_update, old) if last_update else None
    edited = committed("HEAD", old)
    if rendered is None or edited is None or rendered == edited or not Path(new).exists():
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        base, ours = Path(scratch, "base"), Path(scratch, "ours")
        base.write_text(rendered)
        ours.write_text(edited)
        merge = git(
            "merge-file",
            *("-L", "after updating", "-L", "last update", "-L", "before updating"),
            new,
            str(base),
            str(ours),
        )
    if merge.returncode < 0 or merge.returncode > 127:
        print(f"Could not merge your edits of {old} into {new}: {merge.stderr}", file=sys.stderr)
        return 1
    Path(old).unlink(missing_ok=True)
    if merge.returncode:
        print(f"{new}: your edits of {old} conflict with the template's; resolve the markers.")
    else:
        print(f"{new}: carried over your edits of {old}.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
