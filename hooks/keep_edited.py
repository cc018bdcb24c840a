"""After `copier update`: bring back, as a conflict, any file the update deleted that the
project had edited.

An update deletes the files the new render no longer has: a file the template dropped, or one
an answer no longer selects (`--data database=postgresql` drops the no-database example and its
test). Where the project had changed such a file, that would lose its work silently. This puts
the file back with the project's version between conflict markers, as git shows a
modify/delete conflict: delete the file, or keep its content and remove the markers.

    keep_edited.py ANSWERS_FILE

Runs as an unversioned "after" migration, before any move_file.py entry (which carries the
edits of a moved file to its new path, and so removes the old path again).
"""

import subprocess
import sys
from pathlib import Path

from previous_render import committed, previous_render


def deleted_by_update() -> list[str]:
    listed = subprocess.run(
        ["git", "diff", "--name-only", "--diff-filter=D", "-z", "HEAD"],
        capture_output=True,
        text=True,
    )
    return [name for name in listed.stdout.split("\0") if name and not Path(name).exists()]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: keep_edited.py ANSWERS_FILE", file=sys.stderr)
        return 2
    deleted = deleted_by_update()
    if not deleted:
        return 0
    with previous_render(argv[0]) as scratch:
        for name in deleted:
            ours = committed("HEAD", name)
            rendered = scratch / name if scratch else None
            if ours is None or (rendered and rendered.is_file() and rendered.read_text() == ours):
                continue  # the template's own version: deleting it loses nothing
            body = ours if ours.endswith("\n") or not ours else ours + "\n"
            kept = Path(name)
            kept.parent.mkdir(parents=True, exist_ok=True)  # the update may drop its directory
            kept.write_text(
                f"<<<<<<< before updating\n{body}=======\n>>>>>>> after updating (deleted)\n"
            )
            print(f"{name}: the update deletes it, but you had edited it; kept as a conflict.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
