"""The answers the tests render: every combination of the choice questions, and a covering set."""

import itertools
from typing import Any

Answers = dict[str, Any]

PYTHON_VERSIONS = ["3.11", "3.12", "3.13"]
DEPENDENCY_TOOLS = ["uv", "poetry", "pip"]
LAYOUTS = ["package", "single_file"]
PROCESS_MODELS = ["single", "workers"]
REVERSE_PROXIES = ["none", "traefik", "nginx", "external"]
DATABASES: list[Answers] = [
    {"database": "none"},
    {"database": "sqlite", "migrations": True},
    {"database": "sqlite", "migrations": False},
    {"database": "postgresql", "migrations": True},
    {"database": "postgresql", "migrations": False},
]

# Poetry's built-in PyPI source needs PyPI's JSON API, which this machine cannot reach; the
# simple index works for every tool, so projects that are locked here use it.
SIMPLE_INDEX = "https://pypi.org/simple/"


def every_combination() -> list[Answers]:
    """The full product of the choice questions."""
    return [
        {
            "python_version": python,
            "dependency_tool": tool,
            "layout": layout,
            "process_model": process,
            "reverse_proxy": proxy,
            **database,
        }
        for python, tool, layout, process, proxy, database in itertools.product(
            PYTHON_VERSIONS, DEPENDENCY_TOOLS, LAYOUTS, PROCESS_MODELS, REVERSE_PROXIES, DATABASES
        )
    ]


def metrics_combinations() -> list[Answers]:
    """Prometheus metrics with every layout, process model and database, the proxies in turn.

    The metrics code depends on those three; crossing it with the whole product would double
    the render test.
    """
    return [
        {
            "layout": layout,
            "process_model": process,
            "reverse_proxy": REVERSE_PROXIES[index % len(REVERSE_PROXIES)],
            **database,
            "metrics": "prometheus",
        }
        for index, (layout, process, database) in enumerate(
            itertools.product(LAYOUTS, PROCESS_MODELS, DATABASES)
        )
    ]


def tls_combinations() -> list[Answers]:
    """Each proxy that terminates TLS, for localhost and for a public domain, across the
    families that change its files (layout; with or without a database): a list of its own,
    so the full product above does not grow with these answers."""
    return [
        {
            "python_version": "3.13",
            "dependency_tool": "uv",
            "layout": layout,
            "process_model": "single",
            "reverse_proxy": proxy,
            "domain": domain,
            **(
                {"acme_email": "ops@example.com"}
                if proxy != "nginx" and domain != "localhost"
                else {}
            ),
            **database,
        }
        for proxy in ("traefik", "caddy", "nginx")
        for domain in ("localhost", "api.example.com")
        for layout in LAYOUTS
        for database in (DATABASES[0], DATABASES[3])
    ]


def deployment_combinations() -> list[Answers]:
    """Every answer that changes what the deployment targets render (database, process model,
    proxy), with both targets where both can be chosen; layouts alternate, and so do the HTTPS
    answers of the proxies that terminate TLS (localhost, or a public domain)."""
    combinations: list[Answers] = []
    proxies = [*REVERSE_PROXIES, "caddy"]
    for process, proxy, database in itertools.product(PROCESS_MODELS, proxies, DATABASES):
        targets = ["kubernetes"] if database["database"] == "sqlite" else ["kubernetes", "swarm"]
        https: Answers = {}
        if proxy in ("traefik", "caddy", "nginx") and len(combinations) // 2 % 2:
            https = {"domain": "api.example.com"}
            if proxy != "nginx":
                https["acme_email"] = "ops@example.com"
        combinations.append(
            {
                "layout": LAYOUTS[len(combinations) % 2],
                "process_model": process,
                "reverse_proxy": proxy,
                **https,
                **database,
                "deploy_targets": targets,
            }
        )
    return combinations


def combination_id(answers: Answers) -> str:
    parts = [
        "+".join(value) if isinstance(value, list) else str(value)
        for key, value in answers.items()
        if key != "package_index"
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
    },
    {
        "dependency_tool": "poetry",
        "layout": "package",
        "python_version": "3.11",
        "process_model": "workers",
        "reverse_proxy": "nginx",
        "database": "none",
        "metrics": "prometheus",
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
