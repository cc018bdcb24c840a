"""What the covering array's projects emit, against a baseline revision of the template: every
project rendered from both (tasks skipped), and per file the projects in which it differs, so a
restructuring can show that it changed nothing but what it meant to.

    uv run python -m benchmarks.emitted [--base REV] [--diff PATH]
"""

import argparse
import difflib
import subprocess
import tempfile
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tests.covering import answers_of, covering_array
from tests.project import render_with_secrets, snapshot

REPO = Path(__file__).resolve().parent.parent


def template_at(revision: str, dest: Path) -> Path:
    """The template's files at a git revision."""
    archive = subprocess.run(
        ["git", "archive", revision], cwd=REPO, check=True, capture_output=True
    ).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def files(project: Path) -> dict[str, str]:
    """The project's files, less what differs by render: fresh secrets and certificates, and
    the answers file's line naming the template's (temporary) path."""
    found = {
        path.relative_to(project).as_posix(): path.read_text(errors="replace")
        for path in sorted(project.rglob("*"))
        if path.is_file() and "secrets" not in path.parts and path.suffix != ".pem"
    }
    answers = found[".copier-answers.yml"].splitlines(keepends=True)
    found[".copier-answers.yml"] = "".join(a for a in answers if not a.startswith("_src_path:"))
    return found


def _render(job: tuple[Path, Path, dict[str, object]]) -> None:
    render_with_secrets(*job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="baseline revision (default: HEAD)")
    parser.add_argument("--diff", help="print the diff of this file in its first project")
    arguments = parser.parse_args()
    rows = covering_array().rows
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        templates = {
            "now": snapshot(REPO, root / "template-now"),
            "base": template_at(arguments.base, root / "template-base"),
        }
        jobs = [
            (template, root / side / f"p{index:02d}", answers_of(row))
            for side, template in templates.items()
            for index, row in enumerate(rows)
        ]
        with ProcessPoolExecutor(max_workers=2) as pool:
            list(pool.map(_render, jobs, chunksize=4))
        differing: dict[str, list[int]] = defaultdict(list)
        shown = False
        for index in range(len(rows)):
            now = files(root / "now" / f"p{index:02d}")
            base = files(root / "base" / f"p{index:02d}")
            for name in sorted(now.keys() | base.keys()):
                if now.get(name) != base.get(name):
                    differing[name].append(index)
                    if name == arguments.diff and not shown:
                        shown = True
                        print(
                            "".join(
                                difflib.unified_diff(
                                    base.get(name, "").splitlines(keepends=True),
                                    now.get(name, "").splitlines(keepends=True),
                                    f"{arguments.base}/p{index:02d}/{name}",
                                    f"now/p{index:02d}/{name}",
                                )
                            )
                        )
    print(f"{len(rows)} projects of the covering array, working tree vs {arguments.base}:")
    if not differing:
        print("  every file identical")
    for name, indexes in sorted(differing.items()):
        print(f"  {name}: differs in {len(indexes)} of {len(rows)} projects")


if __name__ == "__main__":
    main()
