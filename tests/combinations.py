"""What the tests share about answer sets: their ids, and the package index Poetry can use here.
The covering array over every question, and the projects of it run for real, are
tests/covering.py."""

from typing import Any

Answers = dict[str, Any]

# Poetry's built-in PyPI source needs PyPI's JSON API, which this machine cannot reach; the
# simple index works for every tool, so projects that are locked here use it.
SIMPLE_INDEX = "https://pypi.org/simple/"


def combination_id(answers: Answers) -> str:
    """A test id: the answers' values in order (an index URL shortened to `index`)."""
    parts = [
        "index"
        if key == "package_index"
        else "+".join(value)
        if isinstance(value, list)
        else str(value)
        for key, value in answers.items()
        if key != "package_index" or value
    ]
    return "-".join(parts)
