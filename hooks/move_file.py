"""Carry the project's own edits of a file the template moved over to the file's new path.

When a release moves OLD to NEW, `copier update` writes NEW fresh from the template and deletes
OLD, so edits the project made to OLD would stay behind in git history only. A `_migrations`
entry for that release runs this at the "after" stage, in the project:

    move_file.py ANSWERS_FILE OLD NEW

It merges the project's changes to OLD into NEW with `git merge-file`. The merge base is OLD as
the template version the project was on renders it (copier's own Python renders it again, from
the answers committed at HEAD), so edits made before an earlier update count as the project's
too. Where both sides changed the same lines, NEW gets conflict markers, as copier's own
conflicts do, and the summary copier prints names it.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

from previous_render import committed, previous_render

USAGE = "usage: move_file.py ANSWERS_FILE OLD NEW"


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], capture_output=True, text=True)


def template_render(answers_file: str, path: str) -> str | None:
    """`path` as rendered by the template version recorded in the committed answers file."""
    with previous_render(answers_file) as scratch:
        if scratch is None or not (scratch / path).is_file():
            return None
        return (scratch / path).read_text()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(USAGE, file=sys.stderr)
        return 2
    answers_file, old, new = argv
    edited = committed("HEAD", old)
    if edited is None or not Path(new).exists():
        return 0
    rendered = template_render(answers_file, old)
    if rendered is None:
        print(
            f"{new}: could not tell your edits of {old} from the template's; compare them with"
            f" `git show HEAD:{old}`.",
            file=sys.stderr,
        )
        return 0
    if rendered == edited:
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        base, ours = Path(scratch, "base"), Path(scratch, "ours")
        base.write_text(rendered)
        ours.write_text(edited)
        merge = git(
            "merge-file",
            *("-L", "after updating", "-L", "template before", "-L", "before updating"),
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
