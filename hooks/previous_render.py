"""The project as the template version it was last updated to renders it: the merge base.

Shared by the "after" migrations (they run from hooks/, so this module is importable). The
answers committed at HEAD record that version (`_commit`), its source (`_src_path`) and the
answers; copier's own Python, which runs the migrations, renders it again into a scratch
directory.
"""

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def committed(revision: str, path: str) -> str | None:
    """The file as committed in `revision`, or None where it did not exist."""
    shown = subprocess.run(["git", "show", f"{revision}:./{path}"], capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else None


@contextlib.contextmanager
def previous_render(answers_file: str) -> Iterator[Path | None]:
    """A scratch render of the version recorded at HEAD, or None if it cannot be made."""
    import copier
    import yaml

    recorded = yaml.safe_load(committed("HEAD", answers_file) or "") or {}
    source, version = recorded.get("_src_path"), recorded.get("_commit")
    if not source or not version:
        yield None
        return
    answers = {key: value for key, value in recorded.items() if not key.startswith("_")}
    with tempfile.TemporaryDirectory() as scratch:
        try:
            copier.run_copy(
                source,
                scratch,
                data=answers,
                vcs_ref=version,
                defaults=True,
                skip_tasks=True,
                quiet=True,
            )
        except Exception as error:  # offline, template gone: the caller says what it lacks
            print(f"Could not render {version} of the template again: {error}", file=sys.stderr)
            yield None
            return
        yield Path(scratch)
