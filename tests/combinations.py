"""Answer sets the tests share: a hand-made covering set installed and run for real, and the
ids of answer sets. The covering array over every question is tests/covering.py."""

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


# Every value of every question at least once, and every dependency tool x layout pair.
COVERING_SET: list[Answers] = [
    {
        "dependency_tool": "uv",
        "layout": "package",
        "python_version": "3.13",
        "process_model": "single",
        "reverse_proxy": "none",
        "database": "sqlite",
        "migrations": True,
    },
    {
        "dependency_tool": "uv",
        "layout": "single_file",
        "python_version": "3.12",
        "process_model": "workers",
        "reverse_proxy": "traefik",
        "database": "postgresql",
        "migrations": True,
        "metrics": "prometheus",
        "tracing": "opentelemetry",
        "error_reports": "sentry",
    },
    {
        "dependency_tool": "poetry",
        "layout": "package",
        "python_version": "3.11",
        "process_model": "workers",
        "reverse_proxy": "nginx",
        "database": "none",
        "metrics": "prometheus",
        "tracing": "opentelemetry",
    },
    {
        "dependency_tool": "poetry",
        "layout": "single_file",
        "python_version": "3.13",
        "process_model": "single",
        "reverse_proxy": "external",
        "forwarded_allow_ips": "10.0.0.0/8, 192.168.1.10",
        "database": "postgresql",
        "migrations": False,
    },
    {
        "dependency_tool": "pip",
        "layout": "package",
        "python_version": "3.12",
        "process_model": "single",
        "reverse_proxy": "external",
        "database": "postgresql",
        "migrations": False,
        "tracing": "opentelemetry",
        "error_reports": "sentry",
    },
    {
        "dependency_tool": "pip",
        "layout": "single_file",
        "python_version": "3.11",
        "process_model": "workers",
        "reverse_proxy": "caddy",
        "database": "sqlite",
        "migrations": False,
    },
]
for answers in COVERING_SET:
    if answers["dependency_tool"] == "poetry":
        answers["package_index"] = SIMPLE_INDEX
