"""The generated repository's automation: linter findings per family, and the update script.

    uv run python -m benchmarks.ci [--runs N]

1. zizmor (offline, medium severity or above) and schema findings (GitHub workflows with a
   timeout on every job, Dependabot) per family of the answers that change .github/
   (tests/github.py), next to the same family rendered from the template before issue 16
   (BASELINE). Target: zero.
2. Wall time of `scripts/template_update.py` bringing release 0.2.0 (tests/test_update.py's
   release) into a default project with a team's edits (update, relock, install, checks,
   branch and pull-request body), next to `copier update` alone on the same project.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import copier

from tests.github import FAMILIES, schema_findings, zizmor_findings
from tests.project import GIT_IDENTITY, snapshot, tool_env
from tests.test_update import NEW, OLD, commit_all, copy_project, make_user_edits, tag_releases

REPO = Path(__file__).resolve().parent.parent
# The last commit before the hardened workflows: one CI workflow, no Dependabot.
BASELINE = "24e8de297208629b38132145eb47bf6e0b5091b3"


def render(job: tuple[str, Path, dict[str, str], str | None]) -> None:
    source, dest, answers, ref = job
    copier.run_copy(
        source, str(dest), data=answers, defaults=True, skip_tasks=True, quiet=True, vcs_ref=ref
    )


def findings(root: Path) -> None:
    current = snapshot(REPO, root / "template")
    jobs: list[tuple[str, Path, dict[str, Any], str | None]] = [
        (str(current), root / "now" / name, answers, None) for name, answers in FAMILIES.items()
    ]
    jobs += [
        (str(REPO), root / "base" / name, answers, BASELINE) for name, answers in FAMILIES.items()
    ]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(render, jobs))
    counts = {}
    for side in ("now", "base"):
        projects = [root / side / name for name in FAMILIES]
        zizmor, schemas = zizmor_findings(projects), schema_findings(projects)
        counts[side] = {p.name: (len(zizmor[p]), len(schemas[p])) for p in projects}
    print(f"{'family':34} {'zizmor':>7} {'schema':>7}   {'baseline zizmor':>15} {'schema':>7}")
    for name in FAMILIES:
        (z, s), (bz, bs) = counts["now"][name], counts["base"][name]
        print(f"{name:34} {z:7d} {s:7d}   {bz:15d} {bs:7d}")
    total = [sum(c[i] for c in counts[side].values()) for side in ("now", "base") for i in (0, 1)]
    print(f"{'total':34} {total[0]:7d} {total[1]:7d}   {total[2]:15d} {total[3]:7d}")


def releases(root: Path) -> Path:
    """The working tree tagged 0.1.0, and 0.2.0 with tests/test_update.py's release edits."""
    return tag_releases(snapshot(REPO, root / "releases"))


def timed(command: list[str], cwd: Path) -> float:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    start = time.perf_counter()
    subprocess.run(
        command, cwd=cwd, env=tool_env(PATH=path, **GIT_IDENTITY), check=True, capture_output=True
    )
    return time.perf_counter() - start


def update_times(root: Path, runs: int) -> None:
    source = releases(root)
    script: list[float] = []
    alone: list[float] = []
    for run in range(runs):
        for kind, command, times in (
            ("script", ["python3", "scripts/template_update.py"], script),
            (
                "copier",
                [
                    sys.executable,
                    "-m",
                    "copier",
                    "update",
                    "--trust",
                    "--skip-answered",
                    "--defaults",
                ],
                alone,
            ),
        ):
            (root / f"{kind}-{run}").mkdir(parents=True)
            project = copy_project(source, root / f"{kind}-{run}" / "service")
            make_user_edits(project)
            commit_all(project, "Greet people")
            times.append(timed(command, project))
    print(f"\nupdate {OLD} -> {NEW} of an edited default project, median of {runs}:")
    print(
        f"  scripts/template_update.py (update, relock, install, checks): "
        f"{statistics.median(script):6.1f} s"
    )
    print(
        f"  baseline: copier update alone:                               "
        f"{statistics.median(alone):6.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        findings(Path(tmp) / "findings")
        update_times(Path(tmp) / "update", args.runs)


if __name__ == "__main__":
    main()
