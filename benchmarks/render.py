"""Median wall time of `copier copy` (tasks skipped): default answers, the heaviest combination,
and a trivial one-question template on the same run as the floor.

    uv run python -m benchmarks.render [--runs N]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.project import snapshot

REPO = Path(__file__).resolve().parent.parent

HEAVIEST = {
    "layout": "package",
    "process_model": "workers",
    "reverse_proxy": "traefik",
    "database": "postgresql",
    "migrations": "true",
    "package_index": "https://pypi.org/simple/",
}


def trivial_template(root: Path) -> Path:
    root.mkdir()
    (root / "copier.yml").write_text("name:\n  type: str\n  default: world\n")
    (root / "hello.txt.jinja").write_text("Hello {{ name }}\n")
    return root


def copy_seconds(template: Path, dest: Path, answers: dict[str, str]) -> float:
    data = [arg for key, value in answers.items() for arg in ("--data", f"{key}={value}")]
    command = [sys.executable, "-m", "copier", "copy", "--trust", "--defaults", "--skip-tasks"]
    start = time.perf_counter()
    subprocess.run([*command, "--quiet", *data, str(template), str(dest)], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        template = snapshot(REPO, root / "template")
        cases = {
            "trivial one-question template (floor)": (trivial_template(root / "trivial"), {}),
            "this template, default answers": (template, {}),
            "this template, heaviest combination": (template, HEAVIEST),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for run in range(args.runs):  # interleaved, so drift hits every case alike
            for index, (name, (source, answers)) in enumerate(cases.items()):
                dest = root / "out" / f"{index}-{run}"
                times[name].append(copy_seconds(source, dest, answers))
    floor = statistics.median(times["trivial one-question template (floor)"])
    print(f"copier copy, median of {args.runs} runs (tasks skipped)")
    print(f"{'case':<40} {'median s':>9} {'x floor':>8}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<40} {median:>9.3f} {median / floor:>8.2f}")
    default = statistics.median(times["this template, default answers"])
    verdict = "met" if default <= 1.5 * floor else "missed"
    print(f"target: default within 1.5x the floor -> {verdict} ({default / floor:.2f}x)")


if __name__ == "__main__":
    main()
