"""After `copier update`: list the files the update left in conflict, so none goes unnoticed.

Runs as the last unversioned migration, in the project, after the merge (also with
`--skip-tasks`: it only reads). A conflict is either a file holding conflict markers
(`copier update`'s default, `--conflict inline`) or a `.rej` file of hunks that did not apply
(`--conflict rej`). It prints what to do with each and exits 1 if there is any, so that
`copier update` exits non-zero as `git merge` does: a script (`copier update && git commit -a`)
stops before committing conflict markers. It must stay the last step: copier stops at it.
"""

import subprocess
import sys
from pathlib import Path

MARKERS = ("<<<<<<< ", ">>>>>>> ")


def project_files() -> list[str]:
    """Files git tracks or would track (ignored ones, such as .venv, are skipped)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        capture_output=True,
        text=True,
    )
    return sorted({name for name in listed.stdout.split("\0") if name and Path(name).is_file()})


def has_markers(path: str) -> bool:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return False
    return any(line.startswith(MARKERS) for line in lines)


def main() -> int:
    files = project_files()
    rejected = [name for name in files if name.endswith(".rej")]
    marked = [name for name in files if not name.endswith(".rej") and has_markers(name)]
    if not rejected and not marked:
        print("Update merged without conflicts.")
        return 0
    print(
        f"\nThe update left {len(rejected) + len(marked)} conflict(s) to resolve:", file=sys.stderr
    )
    for name in marked:
        print(
            f"  {name}: keep what you want between the <<<<<<< and >>>>>>> markers", file=sys.stderr
        )
    for name in rejected:
        target = name.removesuffix(".rej")
        print(f"  {name}: apply its hunks to {target} by hand, then delete it", file=sys.stderr)
    print(
        "Then review `git diff` and commit. (Every other step of the update ran; copier reports"
        " this step as failed so that its exit status tells the conflicts.)\n",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
