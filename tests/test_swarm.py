"""The Docker Swarm target, deployed for real on this engine.

A project of the covering array with PostgreSQL and nginx in front (HTTPS, with a certificate
of the test CA) is deployed as a stack with three replicas, run as the stack declares them
(read-only root, its tmpfs and secrets, the image's user, capabilities dropped): the migration
runs once (the `migrate` job, the replicas waiting for it; with workers, the replicas'
entrypoints in turn), the secret reaches them as a file and is in no container's `docker
inspect`, `/metrics` answers inside a replica where metrics are on. A new image rolls out one
replica at a time, start-first, while a client keeps sending requests through the proxy: none
fails, and none reaches a stopping replica. An image whose health check fails rolls back by
itself, and the service answers all along. Besides it, the array's Swarm projects that with it
hold each process model with each metrics answer and each database are deployed as their stacks
declare, and their replicas run locked down and answer /ready (or /health) and /metrics where
on.
"""

import functools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.combinations import combination_id
from tests.covering import compose_proxies, lockable_here, run_for_real
from tests.docker import docker, require_engine, unique_name
from tests.project import render
from tests.swarm import (
    BROKEN_DOCKERFILE,
    RELEASE_DOCKERFILE,
    Client,
    Stack,
    derived_image,
    join_for_the_run,
    node_id,
    remove_images,
)
from tests.tls import TestCA, http_get_as

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("swarm")]

UPGRADE_LINE = "Running upgrade  -> 0001"

# The project deployed: of the array's Swarm projects with nginx (whose configuration a test
# edits), PostgreSQL and migrations (the migrate job, the secret, /items), the ones
# run_for_real picks for the process model and metrics answers; the first of them only, as a
# deploy costs a minute or two here.
DEPLOYED = lockable_here(
    run_for_real(
        "swarm",
        [("process_model", "metrics")],
        where={"reverse_proxy": "nginx", "database": "postgresql", "migrations": True},
    )[0]
)


@pytest.fixture(scope="module", params=[pytest.param(DEPLOYED, id=combination_id(DEPLOYED))])
def deployed(
    request: pytest.FixtureRequest, template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The stack of release 1, converged: three healthy replicas behind nginx, which reaches
    them."""
    require_engine()
    slug = unique_name("tt-swarm")
    project = tmp_path_factory.mktemp("swarm") / "project"
    answers = {**request.param, "project_slug": slug}
    render(template, project, answers, tasks=True)
    ca = TestCA()
    ca.issue(answers["domain"]).write(project / "certs")
    image = f"{slug}:1"
    docker("build", "-t", image, ".", cwd=project)
    node = join_for_the_run()
    for label in (f"{slug}.db=true", f"{slug}.proxy=true"):
        docker("node", "update", "--label-add", label, node)
    stack = Stack(project, slug.replace("-", ""), answers["domain"], ca.pem, project / "certs")
    try:
        stack.deploy(image)
        stack.wait_converged(image, timeout=900)  # a cold start on a loaded machine
        stack.wait_serving()
        yield stack
    finally:
        stack.remove()
        for label in (f"{slug}.db", f"{slug}.proxy"):
            docker("node", "update", "--label-rm", label, node, check=False)
        remove_images(slug)


def test_three_replicas_answer_through_the_proxy_after_one_migration(deployed: Stack) -> None:
    assert deployed.get("/ready") == 200, deployed.diagnose()
    if DEPLOYED["process_model"] == "workers":
        # Each replica's entrypoint migrates; PostgreSQL's advisory lock makes them take turns.
        assert deployed.logs("app").count(UPGRADE_LINE) == 1
        assert deployed.service("migrate") not in docker("service", "ls").stdout
    else:
        assert deployed.logs("migrate").count(UPGRADE_LINE) == 1
        assert UPGRADE_LINE not in deployed.logs("app"), "the replicas do not migrate"
        migrate = deployed.service("migrate")
        tasks = docker("service", "ps", "--format", "{{.CurrentState}}", migrate)
        assert tasks.stdout.strip().startswith("Complete"), tasks.stdout
        mode = docker("service", "inspect", "--format", "{{json .Spec.Mode}}", migrate)
        assert "ReplicatedJob" in mode.stdout, "a Swarm job: it runs to its end and stays complete"


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


# A path's status inside a replica, and its text.
INSIDE = """
import urllib.error, urllib.request
try:
    response = urllib.request.urlopen("http://127.0.0.1:8000{path}")
    print(response.status, response.read().decode())
except urllib.error.HTTPError as error:
    print(error.code)
"""


def test_replicas_run_locked_down_and_answer_metrics_where_on(deployed: Stack) -> None:
    assert_locked_down_and_serving(deployed, DEPLOYED)


def assert_locked_down_and_serving(stack: Stack, answers: dict[str, Any]) -> None:
    """As the stack runs them: root read-only, every capability dropped, the image's user; and
    from inside a replica (as the README says with a proxy in front) /ready answers (the
    database reached; /health without one) and /metrics too (every worker writing its samples
    to the stack's tmpfs), or is not there without metrics."""
    label = f"label=com.docker.swarm.service.name={stack.service('app')}"
    replicas = docker("ps", "-q", "--filter", label).stdout.split()
    for found in json.loads(docker("inspect", *replicas).stdout):
        assert found["HostConfig"]["ReadonlyRootfs"] is True
        assert found["HostConfig"]["CapDrop"] == ["ALL"]
        assert found["Config"]["User"].split(":")[0] == "10001"
    probe = "/health" if answers["database"] == "none" else "/ready"
    ready = docker("exec", replicas[0], "python", "-c", INSIDE.format(path=probe)).stdout
    assert ready.startswith("200 "), f"{ready}\n{stack.diagnose()}"
    answered = docker("exec", replicas[0], "python", "-c", INSIDE.format(path="/metrics")).stdout
    if answers["metrics"] == "prometheus":
        assert answered.startswith("200 ") and "http_requests_total" in answered, answered
    else:
        assert answered.strip() == "404", answered


# The others of the array's Swarm projects that, with the one deployed above, hold each process
# model with each metrics answer and each database (run_for_real). Their images are built with
# uv whatever the tool: the replicas run the same server on the same files (test_projects locks
# and runs every tool).
OTHERS = [
    {**answers, "dependency_tool": "uv", "package_index": ""}
    for answers in run_for_real(
        "swarm", [("process_model", "metrics"), ("database",)], besides=[DEPLOYED]
    )
]


@pytest.mark.parametrize("answers", OTHERS, ids=combination_id)
def test_the_stack_of_each_other_chosen_project_runs_locked_down(
    answers: dict[str, Any], template: Path, tmp_path: Path
) -> None:
    """Each is deployed as its stack declares (its database and migration job included; the
    proxy, tested above, left unplaced) and its three replicas run locked down and serve."""
    slug = unique_name("tt-swarm-array")
    project = render(template, tmp_path / "project", {**answers, "project_slug": slug}, tasks=True)
    image = f"{slug}:1"
    docker("build", "-t", image, ".", cwd=project)
    node = join_for_the_run()
    docker("node", "update", "--label-add", f"{slug}.db=true", node)
    stack = Stack(project, slug.replace("-", ""), without_published_app=True)
    try:
        stack.deploy(image)
        stack.wait_converged(image, timeout=600)
        assert_locked_down_and_serving(stack, answers)
    finally:
        stack.remove()
        docker("node", "update", "--label-rm", f"{slug}.db", node, check=False)
        remove_images(slug)


def upstream_errors(stack: Stack) -> set[str]:
    """nginx's lines for a request it could not pass to a replica (refused, reset)."""
    lines = stack.logs("proxy").splitlines()
    return {line for line in lines if "[error]" in line and "upstream" in line}


def test_rollout_of_a_new_image_fails_no_request(deployed: Stack) -> None:
    """No request fails, and none even reaches a stopping replica: nginx has dropped its
    address (Swarm takes it out of the DNS 2 s before the stop signal) before it closes its
    connections. A request sent on one as it closes is retried on another replica, unless
    nginx's list of addresses changed meanwhile: then it answers 502."""
    base = current_image(deployed)
    new = derived_image(base, RELEASE_DOCKERFILE.format(image=base, release=2))
    client = Client(lambda: deployed.get("/items"))
    errors_before = upstream_errors(deployed)
    with client.running():
        deployed.deploy(new)
        deployed.wait_until(lambda: deployed.update_state() == "completed", "rollout completed")
        deployed.wait_converged(new)
    assert client.served > 50, "requests went on during the rollout"
    assert client.failed == [], f"{client.failed[:10]}\n{deployed.diagnose()}"
    assert upstream_errors(deployed) - errors_before == set()


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


def test_networks_are_encrypted_and_the_proxy_stays_on_its_node(deployed: Stack) -> None:
    label = f"label=com.docker.stack.namespace={deployed.name}"
    networks = docker("network", "ls", "-q", "--filter", label).stdout.split()
    assert len(networks) == 2, "backend and edge"
    for found in json.loads(docker("network", "inspect", *networks).stdout):
        assert found["Options"].get("encrypted") == "true", found["Name"]
    spec = json.loads(docker("service", "inspect", deployed.service("proxy")).stdout)[0]["Spec"]
    answers = (deployed.project / ".copier-answers.yml").read_text()
    slug = next(
        line.split()[1] for line in answers.splitlines() if line.startswith("project_slug:")
    )
    constraints = spec["TaskTemplate"]["Placement"]["Constraints"]
    assert constraints == [f"node.labels.{slug}.proxy == true"]


def test_an_edited_proxy_configuration_deploys_as_a_new_config(deployed: Stack) -> None:
    """Swarm configs cannot change: before, editing nginx.conf and deploying again failed
    ("only updates to Labels are allowed"). Now the edit becomes a config of a new name, and
    the proxy serves with it."""
    image = current_image(deployed)
    before = deployed.configs_version()["CONFIGS_VERSION"]
    with (deployed.project / "nginx.conf").open("a") as file:
        file.write("# edited after the first deploy\n")
    after = deployed.configs_version()["CONFIGS_VERSION"]
    assert after != before
    updates = {service: update_status(deployed, service) for service in ("proxy", "app")}
    deployed.deploy(image)
    for service, previous in updates.items():
        deployed.wait_until(
            functools.partial(updated_since, deployed, service, previous),
            f"{service} updated to the new configs",
        )
    deployed.wait_converged(image)
    spec = json.loads(docker("service", "inspect", deployed.service("proxy")).stdout)[0]["Spec"]
    names = [config["ConfigName"] for config in spec["TaskTemplate"]["ContainerSpec"]["Configs"]]
    assert any(name.endswith(f"-nginx-{after}") for name in names), names
    deployed.wait_serving()
    assert deployed.get("/ready") == 200


def updated_since(stack: Stack, service: str, previous: object) -> bool:
    """A new update of the service (not the one before) has completed."""
    status = update_status(stack, service)
    return status not in (previous, None) and stack.update_state(service) == "completed"


def update_status(stack: Stack, service: str) -> object:
    found = docker(
        "service", "inspect", stack.service(service), "--format", "{{json .UpdateStatus}}"
    )
    return json.loads(found.stdout or "null")


def current_image(stack: Stack) -> str:
    images = set(stack.running_images())
    assert len(images) == 1, images
    return images.pop()


@pytest.mark.parametrize(
    "proxy", [proxy for proxy in compose_proxies() if proxy != DEPLOYED["reverse_proxy"]]
)
def test_traefik_and_caddy_serve_https_in_front_of_the_replicas(
    proxy: str, deployed: Stack, template: Path, tmp_path: Path
) -> None:
    """The other proxies' stack form, for localhost: HTTPS (Traefik with the certificate the
    copy writes, verified; Caddy with its local CA's), HTTP redirected, the replicas reached
    over the edge network. The app's image is the one above (the proxy answer does not change
    it)."""
    slug = unique_name(f"tt-swarm-{proxy}")
    # The deployed project's answers but the proxy (and, for a Linux server target, which
    # refuses Traefik, Swarm alone): the array's Swarm projects with these proxies have other
    # images, whose builds would cost more than this test.
    answers = {
        **{key: value for key, value in DEPLOYED.items() if key not in ("ingress_class", "domain")},
        "reverse_proxy": proxy,
        "deploy_targets": ["swarm"],
        "project_slug": slug,
    }
    project = render(template, tmp_path / "project", answers)
    # The copy's tasks but the lock (the image is the one above): .env, the secret.
    write_env = [sys.executable, str(REPO / "hooks" / "write_env.py")]
    write_secrets = [sys.executable, str(REPO / "hooks" / "write_secrets.py"), "postgres_password"]
    for task in (write_env, write_secrets):
        subprocess.run(task, cwd=project, check=True, capture_output=True)
    tls_dir = None
    if proxy == "traefik":
        write_certificate = [sys.executable, str(REPO / "hooks" / "write_certificate.py")]
        subprocess.run(write_certificate, cwd=project, check=True, capture_output=True)
        tls_dir = project / "certs"
    node = node_id()
    for label in (f"{slug}.db=true", f"{slug}.proxy=true"):
        docker("node", "update", "--label-add", label, node)
    trust = (tls_dir / "fullchain.pem").read_bytes() if tls_dir else None
    stack = Stack(project, slug.replace("-", ""), ca_pem=trust, tls_dir=tls_dir)
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
        for label in (f"{slug}.db", f"{slug}.proxy"):
            docker("node", "update", "--label-rm", label, node, check=False)


def assert_on_one_core(service: str) -> None:
    """The proxy's bound, as the cluster applies it: one CPU, and Go told so."""
    spec = json.loads(docker("service", "inspect", service).stdout)[0]["Spec"]["TaskTemplate"]
    assert spec["Resources"]["Limits"]["NanoCPUs"] == 10**9, spec["Resources"]
    assert "GOMAXPROCS=1" in spec["ContainerSpec"]["Env"], spec["ContainerSpec"]["Env"]
