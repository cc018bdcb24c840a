"""What the covering array covers, beside the hand-made lists of a baseline revision, same run:
pairs of answers (any two questions) and triples of the interacting ones, out of those copier
accepts; projects to render; combinations copier.yml refuses; seconds to build and to render.

    uv run python -m benchmarks.combinations [--base REV]
"""

import argparse
import json
import subprocess
import tempfile
import time
import types
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tests.covering import (
    INTERACTING,
    answers_of,
    covering_array,
    factors,
    interacting,
    parameters,
    row_of,
)
from tests.project import render, snapshot

REPO = Path(__file__).resolve().parent.parent
# Before the array: the full product of some choice questions, then lists of their own.
BASELINE_LISTS = (
    "every_combination",
    "metrics_combinations",
    "tls_combinations",
    "deployment_combinations",
)


def baseline_answers(revision: str) -> list[dict[str, Any]]:
    """The hand-made lists that tests/test_render.py rendered at that revision."""
    source = subprocess.run(
        ["git", "show", f"{revision}:tests/combinations.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("baseline_combinations")
    exec(compile(source, "baseline_combinations", "exec"), module.__dict__)
    return [answers for name in BASELINE_LISTS for answers in getattr(module, name)()]


def as_row(answers: dict[str, Any]) -> dict[str, str]:
    return {name: json.dumps(value) for name, value in factors(row_of(answers)).items()}


def covered(rows: list[dict[str, str]]) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    names = [param.name for param in parameters()]
    crossed = set(interacting())
    pairs, triples = set(), set()
    for row in rows:
        for i, first in enumerate(names):
            for j in range(i + 1, len(names)):
                second = names[j]
                pairs.add((first, row[first], second, row[second]))
                for third in names[j + 1 :]:
                    if {first, second, third} <= crossed:
                        triples.add((first, row[first], second, row[second], third, row[third]))
    return pairs, triples


def render_seconds(answer_sets: list[dict[str, Any]]) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        template = snapshot(REPO, root / "template")
        jobs = [(template, root / f"p{i:03d}", a) for i, a in enumerate(answer_sets)]
        start = time.perf_counter()
        with ProcessPoolExecutor(max_workers=2) as pool:
            list(pool.map(_render, jobs, chunksize=8))
        return time.perf_counter() - start


def _render(job: tuple[Path, Path, dict[str, Any]]) -> None:
    render(*job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="289e831", help="revision of the hand-made lists")
    arguments = parser.parse_args()
    array = covering_array()
    array_answers = [answers_of(row) for row in array.rows]
    baseline = baseline_answers(arguments.base)
    pairs, triples = covered([as_row(a) for a in array_answers])
    base_pairs, base_triples = covered([as_row(a) for a in baseline])
    print(f"Covering array vs the hand-made lists of {arguments.base}")
    print(f"  projects:          {len(array_answers):5d} vs {len(baseline):5d}")
    print(f"  pairs covered:     {len(pairs):5d} vs {len(base_pairs & pairs):5d}  of {array.pairs}")
    print(
        f"  triples covered:   {len(triples):5d} vs {len(base_triples & triples):5d}"
        f"  of {array.triples} ({' x '.join(INTERACTING)})"
    )
    print(f"  accepted space:    {array.accepted} combinations of the questions' classes")
    for rejection in array.rejected:
        print(f"  refused by copier.yml: {rejection.count} ({rejection.message[:60]}...)")
    print(f"  array built in:    {array.seconds:.1f} s")
    print(
        f"  rendered in:       {render_seconds(array_answers):5.1f} s"
        f" vs {render_seconds(baseline):5.1f} s (2 processes, tasks skipped)"
    )


if __name__ == "__main__":
    main()
