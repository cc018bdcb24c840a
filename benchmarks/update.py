"""Median wall time of `copier update` from the previous release tag to the current one, on a
project with the default answers (tasks skipped: no .env, no relock; the merge is what is timed).

    uv run python -m benchmarks.update [--runs N]

With two or more PEP 440 tags in this repository it updates between the last two. Before that,
it stands the working tree in for both: tagged 0.1.0, then 0.1.1 with a Dockerfile fix.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from packaging.version import InvalidVersion, Version

from tests.project import git, snapshot

REPO = Path(__file__).resolve().parent.parent


def release_tags(repo: Path) -> list[str]:
    """The repository's PEP 440 tags, oldest first."""
    versions: list[tuple[Version, str]] = []
    for tag in git(repo, "tag").split():
        try:
            versions.append((Version(tag), tag))
        except InvalidVersion:
            continue
    return [tag for _, tag in sorted(versions)]


def stand_in_releases(root: Path) -> tuple[Path, str, str]:
    """The working tree as 0.1.0, and 0.1.1 with one more Dockerfile line."""
    template = snapshot(REPO, root / "template")
    git(template, "init", "--quiet")
    git(template, "add", "--all")
    git(template, "commit", "--quiet", "--message", "0.1.0")
    git(template, "tag", "0.1.0")
    dockerfile = template / "template" / "Dockerfile.jinja"
    dockerfile.write_text(
        dockerfile.read_text().replace("\nUSER ", "\nENV PYTHONFAULTHANDLER=1\nUSER ", 1)
    )
    git(template, "commit", "--quiet", "--all", "--message", "0.1.1")
    git(template, "tag", "0.1.1")
    return template, "0.1.0", "0.1.1"


def copier(cwd: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "copier", *args], cwd=cwd, check=True, capture_output=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tags = release_tags(REPO)
        if len(tags) >= 2:
            template, previous, current = REPO, tags[-2], tags[-1]
            source = "this repository's tags"
        else:
            template, previous, current = stand_in_releases(root)
            source = "stand-in tags: this repository has fewer than two"
        origin = root / "origin"
        copier(
            root,
            "copy",
            "--trust",
            "--defaults",
            "--skip-tasks",
            "--vcs-ref",
            previous,
            str(template),
            str(origin),
        )
        git(origin, "init", "--quiet")
        git(origin, "add", "--all")
        git(origin, "commit", "--quiet", "--message", "Generated")
        seconds: list[float] = []
        for run in range(args.runs):
            project = root / f"run-{run}"
            shutil.copytree(origin, project)
            start = time.perf_counter()
            copier(project, "update", "--trust", "--defaults", "--skip-tasks", "--vcs-ref", current)
            seconds.append(time.perf_counter() - start)
    median, fastest, slowest = statistics.median(seconds), min(seconds), max(seconds)
    print(f"copier update {previous} -> {current}, default answers, tasks skipped; {source}")
    print(f"{'runs':>5} {'median s':>9} {'min s':>7} {'max s':>7}")
    print(f"{args.runs:>5} {median:>9.3f} {fastest:>7.3f} {slowest:>7.3f}")


if __name__ == "__main__":
    main()
