"""Bad answers stop `copier copy` with a message naming the question, and write nothing.

The checks live in copier.yml (validators, choices, `when`), so they hold for every front end;
these tests go through the command line with `--data`, which skips the interactive prompt.
"""

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.project import render

BAD_ANSWERS = [
    ({"project_name": " "}, "project_name"),
    ({"project_name": "Two\nlines"}, "project_name"),
    ({"project_name": "Bell \a"}, "project_name"),
    ({"description": "Line\u2028separator"}, "description"),
    ({"description": "Next\x85line"}, "description"),
    ({"author": "Ada Lovelace"}, "author"),
    ({"author": "ada@example.com"}, "author"),
    ({"author": "Ada <ada>"}, "author"),
    ({"author": "Ada, Bob <ada@example.com>"}, "author"),
    ({"author": "Ada <ada@example.com> Bob"}, "author"),
    ({"author": "<ada@example.com>"}, "author"),
    ({"project_slug": "My_API"}, "project_slug"),
    ({"project_slug": "a" * 64}, "project_slug"),
    ({"project_identifier": "a" * 64}, "project_identifier"),
    ({"project_slug": "api--v2"}, "project_slug"),
    ({"project_identifier": "1api"}, "project_identifier"),
    ({"project_identifier": "my-api"}, "project_identifier"),
    ({"python_version": "3.10"}, "python_version"),
    ({"dependency_tool": "pipenv"}, "dependency_tool"),
    ({"layout": "src"}, "layout"),
    ({"process_model": "threads"}, "process_model"),
    ({"reverse_proxy": "haproxy"}, "reverse_proxy"),
    ({"reverse_proxy": "caddy", "domain": "not a domain"}, "domain"),
    ({"reverse_proxy": "traefik", "domain": "API.example.com"}, "domain"),
    ({"reverse_proxy": "nginx", "domain": "-api.example.com"}, "domain"),
    ({"reverse_proxy": "nginx", "domain": "api.example.com;"}, "domain"),
    ({"reverse_proxy": "caddy", "domain": "example"}, "domain"),
    ({"reverse_proxy": "traefik", "domain": "192.0.2.1"}, "domain"),
    ({"reverse_proxy": "traefik", "domain": f"{'a' * 64}.example.com"}, "domain"),
    ({"reverse_proxy": "traefik", "domain": "api.example.com"}, "acme_email"),
    ({"reverse_proxy": "caddy", "domain": "api.example.com", "acme_email": "ops"}, "acme_email"),
    (
        {"reverse_proxy": "traefik", "domain": "api.example.com", "acme_email": "a b@example.com"},
        "acme_email",
    ),
    ({"reverse_proxy": "external", "forwarded_allow_ips": "*"}, "forwarded_allow_ips"),
    ({"reverse_proxy": "external", "forwarded_allow_ips": "proxy.local"}, "forwarded_allow_ips"),
    ({"reverse_proxy": "external", "forwarded_allow_ips": "0.0.0.0/0"}, "trusts every address"),
    ({"reverse_proxy": "external", "forwarded_allow_ips": "::/0"}, "trusts every address"),
    (
        {"reverse_proxy": "external", "forwarded_allow_ips": "10.0.0.0/8, 0.0.0.0/0"},
        '"0.0.0.0/0" trusts every address',
    ),
    (
        {"reverse_proxy": "external", "forwarded_allow_ips": "999.1.1.1/99"},
        '"999.1.1.1/99" is not an IP address',
    ),
    ({"reverse_proxy": "external", "forwarded_allow_ips": "10.0.0.0/33"}, "prefix length"),
    ({"reverse_proxy": "external", "forwarded_allow_ips": "10.0.0.1/8"}, "host bits set"),
    ({"reverse_proxy": "external", "forwarded_allow_ips": "fd00::1/8"}, "host bits set"),
    ({"reverse_proxy": "external", "forwarded_allow_ips": "1::2::3"}, "forwarded_allow_ips"),
    ({"reverse_proxy": "external", "forwarded_allow_ips": "010.0.0.1"}, "forwarded_allow_ips"),
    ({"database": "mysql"}, "database"),
    ({"metrics": "statsd"}, "metrics"),
    ({"package_index": "https://user:secret@pypi.example.com/simple/"}, "package_index"),
    ({"package_index": "http://pypi.example.com/simple/"}, "package_index"),
    ({"package_index": "https://pypi.example.com/packages/"}, "package_index"),
    ({"deploy_targets": '["nomad"]'}, "deploy_targets"),
    # Swarm replicates and replaces the app start-first; SQLite is one file on one node.
    ({"database": "sqlite", "deploy_targets": '["kubernetes", "swarm"]'}, "deploy_targets"),
    ({"deploy_targets": '["kubernetes"]', "ingress_class": "Nginx_Ingress"}, "ingress_class"),
    # The server target fronts its socket with the machine's nginx or Caddy, never Traefik.
    ({"reverse_proxy": "traefik", "deploy_targets": '["server"]'}, "deploy_targets"),
]


def copier_copy(
    template: Path, dest: Path, answers: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    data = [arg for key, value in answers.items() for arg in ("--data", f"{key}={value}")]
    command = [sys.executable, "-m", "copier", "copy", "--trust", "--defaults", "--skip-tasks"]
    return subprocess.run(
        [*command, *data, str(template), str(dest)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("answers", "named"), BAD_ANSWERS, ids=[str(answers) for answers, _ in BAD_ANSWERS]
)
def test_bad_answer_is_refused_naming_the_question(
    template: Path, tmp_path: Path, answers: dict[str, str], named: str
) -> None:
    dest = tmp_path / "my-api"
    result = copier_copy(template, dest, answers)
    assert result.returncode != 0
    assert named in result.stderr.strip().splitlines()[-1]
    assert not dest.exists()


def test_bad_answer_leaves_an_existing_destination_untouched(
    template: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "my-api"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine\n")
    result = copier_copy(template, dest, {"project_slug": "Not A Slug"})
    assert result.returncode != 0
    assert [path.name for path in dest.iterdir()] == ["notes.txt"]
    assert (dest / "notes.txt").read_text() == "mine\n"


def test_answers_for_hidden_questions_leave_no_trace(template: Path, tmp_path: Path) -> None:
    """A combination that cannot work cannot be chosen: no database means no migrations."""
    project = render(
        template,
        tmp_path / "my-api",
        {"database": "none", "migrations": True, "process_model": "single"},
    )
    assert not (project / "alembic.ini").exists()
    assert not (project / "migrations").exists()
    recorded = (project / ".copier-answers.yml").read_text()
    assert "migrations" not in recorded


# Every value Python's ipaddress.ip_network() takes (as Uvicorn parses FORWARDED_ALLOW_IPS),
# except networks of every address, which the cases above refuse.
ACCEPTED_PROXY_ADDRESSES = [
    "192.168.1.10",
    "10.0.0.0/8, 192.168.1.10",
    "172.16.0.0/12,fd00::/8",
    "203.0.113.7/32",
    "0.0.0.0/1",
    "2001:db8::1",
    "2001:db8::/32",
    "1:2:3:4:5:6:7::",
    "::1",
]


@pytest.mark.parametrize("value", ACCEPTED_PROXY_ADDRESSES)
def test_proxy_addresses_python_accepts_are_accepted(
    template: Path, tmp_path: Path, value: str
) -> None:
    for entry in value.split(","):
        assert ipaddress.ip_network(entry.strip()).prefixlen > 0
    project = render(
        template, tmp_path / "p", {"reverse_proxy": "external", "forwarded_allow_ips": value}
    )
    assert f"FORWARDED_ALLOW_IPS={value.replace(' ', '')}" in (project / "Dockerfile").read_text()


def test_default_proxy_addresses_trust_one_host_only(template: Path, tmp_path: Path) -> None:
    """`--defaults` works, and trusts no network: the user names the load balancer."""
    dest = tmp_path / "my-api"
    result = copier_copy(template, dest, {"reverse_proxy": "external"})
    assert result.returncode == 0, result.stderr[-2000:]
    dockerfile = (dest / "Dockerfile").read_text()
    trusted = dockerfile.split("FORWARDED_ALLOW_IPS=", 1)[1].split()[0]
    assert [ipaddress.ip_network(entry).num_addresses for entry in trusted.split(",")] == [1]


def test_every_question_fits_an_80_column_terminal() -> None:
    """copier prints `🎤 ` (3 columns) before each help line, and about 4 before each choice;
    details belong in the README."""
    config = yaml.safe_load((Path(__file__).parent.parent / "copier.yml").read_text())
    too_wide = []
    for name, question in config.items():
        if name.startswith("_"):
            continue
        lines = [(3, line) for line in question.get("help", "").splitlines()]
        lines += [(4, title) for title in question.get("choices", {})]
        too_wide += [f"{name}: {text}" for indent, text in lines if indent + len(text) > 80]
    assert not too_wide, "\n".join(too_wide)


# The Python API refuses the same answers (pytest-copie's `copie` drives copier's run_copy, the
# answers given as user defaults, as a front end that pre-fills its form would).
FREE_TEXT_BAD_ANSWERS = [case for case in BAD_ANSWERS if case[1] in {"project_name", "author"}]


@pytest.mark.parametrize(
    ("answers", "named"),
    FREE_TEXT_BAD_ANSWERS,
    ids=[str(answers) for answers, _ in FREE_TEXT_BAD_ANSWERS],
)
def test_bad_free_text_is_refused_through_the_python_api(
    copie: Any, template: Path, answers: dict[str, str], named: str
) -> None:
    result = copie.copy(extra_answers=answers, template_dir=template)
    assert result.exit_code != 0
    assert named in str(result.exception)
    assert result.project_dir is None


@pytest.mark.parametrize(
    "answers",
    [
        {"reverse_proxy": "nginx", "domain": "api.example.com"},
        {"reverse_proxy": "caddy", "domain": "localhost"},
        {"reverse_proxy": "traefik", "domain": "x-1.a.example.co.uk", "acme_email": "o+p@ex.org"},
    ],
    ids=str,
)
def test_good_domain_answers_are_accepted(
    template: Path, tmp_path: Path, answers: dict[str, str]
) -> None:
    result = copier_copy(template, tmp_path / "my-api", answers)
    assert result.returncode == 0, result.stderr


def test_acme_email_is_asked_only_where_a_ca_needs_it(template: Path, tmp_path: Path) -> None:
    """nginx has no ACME client, and localhost gets a local certificate: no email either way."""
    for name, answers in {
        "nginx": {"reverse_proxy": "nginx", "domain": "api.example.com"},
        "local": {"reverse_proxy": "caddy", "domain": "localhost"},
    }.items():
        project = render(template, tmp_path / name, answers)
        assert "acme_email" not in (project / ".copier-answers.yml").read_text()
        assert "ACME_EMAIL" not in (project / ".env.example").read_text()
