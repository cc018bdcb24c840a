"""How branching the template's sources are, against a baseline revision, on the same run: the
Jinja conditionals per file (the most branching files), and how many files name each proxy and
each deployment target (what adding one touches).

    uv run python -m benchmarks.sources [--base REV] [--most N]
"""

import argparse
import re
import subprocess
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("copier.yml", "template/", "includes/")
CONDITIONAL = re.compile(r"{%-?\s*(?:if|elif)\b")


def files_at(revision: str | None) -> dict[str, str]:
    """The template's source files (path -> text), at a git revision or in the working tree."""
    if revision is None:
        paths = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", *SOURCES],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        return {path: (REPO / path).read_text(errors="replace") for path in paths}
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", revision, "--", *SOURCES],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    return {
        path: subprocess.run(
            ["git", "show", f"{revision}:{path}"], cwd=REPO, check=True, capture_output=True
        ).stdout.decode(errors="replace")
        for path in listing
    }


def choices(question: str) -> list[str]:
    """The values of a choice question, as copier.yml lists them."""
    config = yaml.safe_load((REPO / "copier.yml").read_text())
    return [str(value) for value in config[question]["choices"].values()]


def conditionals(files: dict[str, str]) -> Counter[str]:
    return Counter({path: len(CONDITIONAL.findall(text)) for path, text in files.items()})


def files_naming(files: dict[str, str], word: str) -> int:
    """Files whose path or text names the word (as a whole word: `swarm`, not `swarming`)."""
    pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
    return sum(1 for path, text in files.items() if pattern.search(path) or pattern.search(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="baseline revision (default: HEAD)")
    parser.add_argument("--most", type=int, default=10, help="how many files to list")
    arguments = parser.parse_args()
    now, base = files_at(None), files_at(arguments.base)
    now_counts, base_counts = conditionals(now), conditionals(base)
    print(f"Jinja conditionals (if/elif): working tree vs {arguments.base}")
    print(
        f"  in all: {sum(now_counts.values())} in {len(now)} files"
        f" vs {sum(base_counts.values())} in {len(base)} files"
    )
    print(f"  the {arguments.most} most branching files:")
    for path, count in now_counts.most_common(arguments.most):
        print(f"    {count:4d} vs {base_counts.get(path, 0):4d}  {path}")
    print(f"  the {arguments.most} most branching files of {arguments.base}:")
    for path, count in base_counts.most_common(arguments.most):
        print(f"    {now_counts.get(path, 0):4d} vs {count:4d}  {path}")
    for question in ("reverse_proxy", "deploy_targets"):
        print(f"Files naming each {question} choice: working tree vs {arguments.base}")
        for value in choices(question):
            if value == "none":
                continue
            print(f"    {files_naming(now, value):4d} vs {files_naming(base, value):4d}  {value}")


if __name__ == "__main__":
    main()
