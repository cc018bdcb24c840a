"""The Docker Swarm target, deployed for real on this engine.

A PostgreSQL project with nginx in front (HTTPS, with a certificate of the test CA) is
deployed as a stack with three replicas: the migration runs once (the `migrate` service), the
replicas wait for it, the secret reaches them as a file and is in no container's `docker
inspect`. A new image rolls out one replica at a time, start-first, while a client keeps
sending requests through the proxy: none fails. An image whose health check fails rolls back by
itself, and the service answers all along.
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker import docker, require_engine, unique_name
from tests.edge import DOMAIN
from tests.project import render
from tests.swarm import (
    ANSWERS,
    BROKEN_DOCKERFILE,
    RELEASE_DOCKERFILE,
    Client,
    Stack,
    derived_image,
    remove_images,
    swarm_node,
)
from tests.tls import TestCA, http_get_as

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("swarm")]

UPGRADE_LINE = "Running upgrade  -> 0001"


@pytest.fixture(scope="module")
def deployed(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack of release 1, converged: three healthy replicas behind nginx, which reaches
    them."""
    require_engine()
    slug = unique_name("tt-swarm")
    project = tmp_path_factory.mktemp("swarm") / "project"
    render(template, project, {**ANSWERS, "project_slug": slug}, tasks=True)
    ca = TestCA()
    ca.issue(DOMAIN).write(project / "certs")
    image = f"{slug}:1"
    docker("build", "-t", image, ".", cwd=project)
    with swarm_node() as node:
        label = f"{slug}.db=true"
        docker("node", "update", "--label-add", label, node)
        stack = Stack(project, slug.replace("-", ""), DOMAIN, ca.pem, project / "certs")
        try:
            stack.deploy(image)
            stack.wait_converged(image, timeout=900)  # a cold start on a loaded machine
            stack.wait_serving()
            yield stack
        finally:
            stack.remove()
            docker("node", "update", "--label-rm", f"{slug}.db", node, check=False)
            remove_images(slug)


def test_three_replicas_answer_through_the_proxy_after_one_migration(deployed: Stack) -> None:
    assert deployed.get("/ready") == 200, deployed.diagnose()
    assert deployed.logs("migrate").count(UPGRADE_LINE) == 1
    assert UPGRADE_LINE not in deployed.logs("app"), "the replicas do not migrate"
    tasks = docker("service", "ps", "--format", "{{.CurrentState}}", deployed.service("migrate"))
    assert tasks.stdout.strip().startswith("Complete"), tasks.stdout


def test_secret_is_a_file_of_the_app_user_and_in_no_inspect(deployed: Stack) -> None:
    password = (deployed.project / "secrets" / "postgres_password").read_text().strip()
    inspected = docker("inspect", *deployed.containers()).stdout
    assert password not in inspected
    for found in json.loads(inspected):
        env = found["Config"]["Env"] or []
        assert not any(line.startswith("POSTGRES_PASSWORD=") for line in env)
    label = f"label=com.docker.swarm.service.name={deployed.service('app')}"
    app = docker("ps", "-q", "--filter", label).stdout.split()[0]
    mode = docker("exec", app, "stat", "-c", "%a %u", "/run/secrets/postgres_password").stdout
    assert mode.split() == ["400", "10001"]


def test_rollout_of_a_new_image_fails_no_request(deployed: Stack) -> None:
    base = current_image(deployed)
    new = derived_image(base, RELEASE_DOCKERFILE.format(image=base, release=2))
    client = Client(lambda: deployed.get("/items"))
    with client.running():
        deployed.deploy(new)
        deployed.wait_until(lambda: deployed.update_state() == "completed", "rollout completed")
        deployed.wait_converged(new)
    assert client.served > 50, "requests went on during the rollout"
    assert client.failed == [], f"{client.failed[:10]}\n{deployed.diagnose()}"


def test_broken_image_rolls_back_by_itself_and_the_service_keeps_answering(
    deployed: Stack,
) -> None:
    good = current_image(deployed)
    broken = derived_image(good, BROKEN_DOCKERFILE.format(image=good))
    client = Client(lambda: deployed.get("/items"))
    with client.running():
        deployed.deploy(broken)
        deployed.wait_until(
            lambda: deployed.update_state() == "rollback_completed", "automatic rollback"
        )
        deployed.wait_converged(good)
    assert client.served > 50
    assert client.failed == [], f"{client.failed[:10]}\n{deployed.diagnose()}"
    assert deployed.get("/ready") == 200


def current_image(stack: Stack) -> str:
    images = set(stack.running_images())
    assert len(images) == 1, images
    return images.pop()


@pytest.mark.parametrize("proxy", ["traefik", "caddy"])
def test_traefik_and_caddy_serve_https_in_front_of_the_replicas(
    proxy: str, deployed: Stack, template: Path, tmp_path: Path
) -> None:
    """The other proxies' stack form, for localhost: HTTPS with their own certificate, HTTP
    redirected, the replicas reached over the edge network. The app's image is the one above
    (the proxy answer does not change it)."""
    slug = unique_name(f"tt-swarm-{proxy}")
    answers = {**ANSWERS, "reverse_proxy": proxy, "project_slug": slug}
    del answers["domain"]
    project = render(template, tmp_path / "project", answers)
    write_secrets = [sys.executable, str(REPO / "hooks" / "write_secrets.py"), "postgres_password"]
    subprocess.run(write_secrets, cwd=project, check=True, capture_output=True)
    node = docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    docker("node", "update", "--label-add", f"{slug}.db=true", node)
    stack = Stack(project, slug.replace("-", ""))
    image = current_image(deployed)
    try:
        stack.deploy(image)
        stack.wait_converged(image, timeout=600)
        stack.wait_serving()
        status, headers = http_get_as(stack.http_port, "localhost", "/health")
        assert status in (301, 308) and headers["Location"].startswith("https://localhost")
        assert_on_one_core(stack.service("proxy"))
    finally:
        stack.remove()
        docker("node", "update", "--label-rm", f"{slug}.db", node, check=False)


def assert_on_one_core(service: str) -> None:
    """The proxy's bound, as the cluster applies it: one CPU, and Go told so."""
    spec = json.loads(docker("service", "inspect", service).stdout)[0]["Spec"]["TaskTemplate"]
    assert spec["Resources"]["Limits"]["NanoCPUs"] == 10**9, spec["Resources"]
    assert "GOMAXPROCS=1" in spec["ContainerSpec"]["Env"], spec["ContainerSpec"]["Env"]
