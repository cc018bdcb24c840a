"""The Kubernetes target: Kustomize overlays that render, validate and run as declared.

Without a cluster on this machine, the proof is in three parts: every overlay of every answer
that changes the manifests renders with `kubectl kustomize` and validates strictly against the
Kubernetes 1.32 schemas (no unknown field); checkov finds nothing that is not skipped with a
reason in the manifest itself; and the pod spec runs for real in Docker with exactly the
command, arguments, environment, user, read-only root filesystem, dropped capabilities and
secret files it declares: the migration first, then the server, probed as the kubelet would.
"""

import base64
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import venv
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.combinations import Answers, combination_id
from tests.covering import answers_of, covering_array, run_for_real
from tests.docker import docker, require_engine, unique_name
from tests.project import free_port, http_get, render, render_with_secrets

REPO = Path(__file__).resolve().parent.parent
KUBERNETES_VERSION = "1.32.0"
METRICS_PORT = 9100  # includes/server.jinja's metrics_port
OVERLAYS = ("dev", "prod")
# The covering array's projects with this target (tests/covering.py).
COMBINATIONS = [
    answers
    for answers in map(answers_of, covering_array().rows)
    if "kubernetes" in answers["deploy_targets"]
]

pytestmark = pytest.mark.xdist_group("kubernetes")


def kustomize(overlay: Path) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("no kubectl (with kustomize v5) on PATH")
    result = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclass(frozen=True)
class Rendered:
    answers: Answers
    project: Path
    objects: dict[str, list[dict[str, Any]]]  # per overlay

    def find(self, overlay: str, kind: str, name: str = "app") -> dict[str, Any] | None:
        for obj in self.objects[overlay]:
            if obj["kind"] == kind and obj["metadata"]["name"].startswith(name):
                return obj
        return None

    def get(self, overlay: str, kind: str, name: str = "app") -> dict[str, Any]:
        found = self.find(overlay, kind, name)
        assert found is not None, f"no {kind} {name} in {overlay}"
        return found


@pytest.fixture(scope="module")
def rendered(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    root = tmp_path_factory.mktemp("kubernetes")
    jobs = [(template, root / f"k{i:02d}", answers) for i, answers in enumerate(COMBINATIONS)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(render_with_secrets, *zip(*jobs, strict=True)))
    found = {}
    for _, dest, answers in jobs:
        overlays = dest / "deploy" / "kubernetes" / "overlays"
        objects = {name: kustomize(overlays / name) for name in OVERLAYS}
        found[combination_id(answers)] = Rendered(answers, dest, objects)
    return found


def dump(objects: list[dict[str, Any]], path: Path) -> Path:
    path.write_text(yaml.safe_dump_all(objects))
    return path


# --- Rendering and schemas ----------------------------------------------------------------


def test_every_overlay_validates_strictly_against_kubernetes_1_32(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    files = [
        str(dump(item.objects[overlay], tmp_path / f"{index}-{overlay}.yaml"))
        for index, item in enumerate(rendered.values())
        for overlay in OVERLAYS
    ]
    validate = Path(sys.executable).parent / "kubernetes-validate"
    command = [str(validate), "--strict", "--quiet", "-k", KUBERNETES_VERSION, *files]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def test_strict_validation_refuses_an_unknown_field(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    """The validation above can fail: a misspelt field is caught."""
    item = next(iter(rendered.values()))
    deployment = json.loads(json.dumps(item.get("prod", "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    validate = Path(sys.executable).parent / "kubernetes-validate"
    path = dump([deployment], tmp_path / "misspelt.yaml")
    command = [str(validate), "--strict", "--quiet", "-k", KUBERNETES_VERSION, str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


@pytest.mark.parametrize("answers", COMBINATIONS, ids=combination_id)
def test_manifests_follow_the_answers(answers: Answers, rendered: dict[str, Rendered]) -> None:
    item = rendered[combination_id(answers)]
    database = answers["database"]
    for overlay in OVERLAYS:
        deployment = item.get(overlay, "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        app = pod["containers"][0]
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        security = app["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert app["startupProbe"]["httpGet"]["path"] == "/health"
        assert app["livenessProbe"]["httpGet"]["path"] == "/health"
        ready = "/health" if database == "none" else "/ready"
        assert app["readinessProbe"]["httpGet"]["path"] == ready
        assert app["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
        assert (
            pod["terminationGracePeriodSeconds"] > app["lifecycle"]["preStop"]["sleep"]["seconds"]
        )
        mounts = {mount["mountPath"] for mount in app["volumeMounts"]}
        assert ("/run/secrets" in mounts) == (database == "postgresql")
        assert not any("PASSWORD" in env.get("name", "") for env in app.get("env", [])), (
            "no secret as a variable"
        )
        init = pod.get("initContainers", [])
        migrates_before = (
            database == "postgresql"
            and answers.get("migrations")
            and (answers["process_model"] == "single")
        )
        assert bool(init) == bool(migrates_before)
        if init:
            assert init[0]["image"] == app["image"], "the migration runs from the same image"
            assert init[0]["args"] == ["alembic", "upgrade", "head"]
        if database == "sqlite":
            assert deployment["spec"]["replicas"] == 1
            assert deployment["spec"]["strategy"] == {"type": "Recreate"}
            assert item.find(overlay, "PersistentVolumeClaim", "data")
            assert not item.find(overlay, "HorizontalPodAutoscaler")
            assert not item.find(overlay, "PodDisruptionBudget")
        else:
            assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
            assert item.find(overlay, "PodDisruptionBudget")
            hpa = item.find(overlay, "HorizontalPodAutoscaler")
            assert bool(hpa) == (answers["process_model"] == "single")
        statefulset = item.find(overlay, "StatefulSet", "postgres")
        assert bool(statefulset) == (database == "postgresql" and overlay == "dev")
        secret = item.find(overlay, "Secret", "app-secrets")
        assert bool(secret) == (database == "postgresql")
        ingress = item.get(overlay, "Ingress")
        # The answer, or by default the proxy the project already runs, likeliest the cluster's.
        default_class = "traefik" if answers["reverse_proxy"] == "traefik" else "nginx"
        expected_class = answers.get("ingress_class", default_class)
        assert ingress["spec"]["ingressClassName"] == expected_class
    if database != "sqlite" and answers["process_model"] == "workers":
        assert item.get("prod", "Deployment")["spec"]["replicas"] == 3


@pytest.mark.parametrize("answers", COMBINATIONS, ids=combination_id)
def test_deleting_an_overlay_leaves_its_namespace(
    answers: Answers, rendered: dict[str, Rendered]
) -> None:
    """`kubectl delete -k` deletes what the overlay emits: no Namespace among it, else the
    namespace would go with everything others keep in it. Its own file declares the namespace
    every object is in, to apply once."""
    item = rendered[combination_id(answers)]
    for overlay in OVERLAYS:
        directory = item.project / "deploy/kubernetes/overlays" / overlay
        declared = yaml.safe_load((directory / "namespace.yaml").read_text())
        assert declared["kind"] == "Namespace"
        assert not item.find(overlay, "Namespace", "")
        namespaces = {obj["metadata"].get("namespace") for obj in item.objects[overlay]}
        assert namespaces == {declared["metadata"]["name"]}
    readme = (item.project / "deploy/kubernetes/README.md").read_text()
    assert "kubectl apply -f deploy/kubernetes/overlays/dev/namespace.yaml" in readme


@pytest.mark.parametrize(
    "answers", [a for a in COMBINATIONS if a["database"] != "sqlite"], ids=combination_id
)
def test_replicas_spread_over_the_nodes(answers: Answers, rendered: dict[str, Rendered]) -> None:
    """Else three replicas may share a node, and its drain takes them all."""
    item = rendered[combination_id(answers)]
    for overlay in OVERLAYS:
        template = item.get(overlay, "Deployment")["spec"]["template"]
        (spread,) = template["spec"]["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert spread["maxSkew"] == 1
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway", "one node still runs them all"
        labels = template["metadata"]["labels"]
        assert spread["labelSelector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("answers", COMBINATIONS, ids=combination_id)
def test_no_deployment_an_autoscaler_scales_sets_replicas(
    answers: Answers, rendered: dict[str, Rendered]
) -> None:
    """Else every `kubectl apply -k` resets the count the HPA scaled the app out to."""
    item = rendered[combination_id(answers)]
    for overlay in OVERLAYS:
        for hpa in (
            obj for obj in item.objects[overlay] if obj["kind"] == "HorizontalPodAutoscaler"
        ):
            target = hpa["spec"]["scaleTargetRef"]
            deployment = item.get(overlay, target["kind"], target["name"])
            assert "replicas" not in deployment["spec"], f"{overlay}: {target['name']}"
        if answers["database"] != "sqlite" and answers["process_model"] == "single":
            hpa = item.get(overlay, "HorizontalPodAutoscaler")
            assert hpa["spec"]["minReplicas"] == (3 if overlay == "prod" else 2)


@pytest.mark.parametrize("answers", COMBINATIONS, ids=combination_id)
def test_the_ingress_controller_is_the_proxy_whatever_the_compose_answer(
    answers: Answers, rendered: dict[str, Rendered]
) -> None:
    """Every pod trusts the forwarded headers of the addresses its overlay sets; production
    serves HTTPS for the domain (or a placeholder host), development any host over HTTP."""
    item = rendered[combination_id(answers)]
    public = answers.get("domain", "localhost") != "localhost" and answers["reverse_proxy"] in (
        "traefik",
        "caddy",
        "nginx",
    )
    slug = yaml.safe_load((item.project / ".copier-answers.yml").read_text())["project_slug"]
    host = answers["domain"] if public else f"{slug}.example.com"
    for overlay in OVERLAYS:
        app = item.get(overlay, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        assert "--proxy-headers" in app["args"] and "--no-proxy-headers" not in app["args"]
        settings = item.get(overlay, "ConfigMap", "app-settings")["data"]
        assert settings["FORWARDED_ALLOW_IPS"] == "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"
        kustomization = item.project / "deploy/kubernetes/overlays" / overlay / "kustomization.yaml"
        assert "FORWARDED_ALLOW_IPS=" in kustomization.read_text(), "a setting of the overlay"
        ingress = item.get(overlay, "Ingress")["spec"]
        if overlay == "dev":
            assert "tls" not in ingress and "host" not in ingress["rules"][0]
            continue
        assert ingress["tls"] == [{"hosts": [host], "secretName": "app-tls"}]
        assert ingress["rules"][0]["host"] == host
        assert ingress["rules"][0]["http"] == item.get("dev", "Ingress")["spec"]["rules"][0]["http"]
        annotations = item.get(overlay, "Ingress")["metadata"]["annotations"]
        assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"


@pytest.mark.parametrize("answers", COMBINATIONS, ids=combination_id)
def test_the_dev_overlay_fits_a_small_local_cluster(
    answers: Answers, rendered: dict[str, Rendered]
) -> None:
    """kind or minikube on a laptop: one node of two CPUs, part of them its own system pods'.
    Production's CPU requests (a CPU per pod) would leave the dev pods Pending."""
    item = rendered[combination_id(answers)]
    requested = 0.0
    for obj in item.objects["dev"]:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        hpa = item.find("dev", "HorizontalPodAutoscaler", obj["metadata"]["name"])
        replicas = hpa["spec"]["minReplicas"] if hpa else obj["spec"]["replicas"]
        containers = obj["spec"]["template"]["spec"]["containers"]
        requested += replicas * sum(
            cpu_cores(c["resources"]["requests"]["cpu"]) for c in containers
        )
    assert requested <= 0.5, f"{requested} CPUs requested"
    prod = item.get("prod", "Deployment")["spec"]["template"]["spec"]["containers"][0]
    dev = item.get("dev", "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert dev["resources"]["limits"] == prod["resources"]["limits"], "the same workers"


# PostgreSQL's defaults: max_connections, less superuser_reserved_connections.
USABLE_CONNECTIONS = 100 - 3


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize(
    "answers", [a for a in COMBINATIONS if a["database"] == "postgresql"], ids=combination_id
)
def test_the_largest_deployment_fits_postgresqls_connections(
    answers: Answers, rendered: dict[str, Rendered]
) -> None:
    """Every process may hold pool + overflow connections: at the autoscaler's maximum (or the
    overlay's replicas) plus a rollout's surge, with the migration's, they fit PostgreSQL's
    default limit; the README shows the sum for production."""
    item = rendered[combination_id(answers)]
    for overlay in OVERLAYS:
        deployment = item.get(overlay, "Deployment")["spec"]
        settings = item.get(overlay, "ConfigMap", "app-settings")["data"]
        per_process = int(settings["DB_POOL_SIZE"]) + int(settings["DB_MAX_OVERFLOW"])
        hpa = item.find(overlay, "HorizontalPodAutoscaler")
        pods = hpa["spec"]["maxReplicas"] if hpa else deployment["replicas"]
        surge = deployment["strategy"]["rollingUpdate"]["maxSurge"]
        assert isinstance(surge, int)
        limits = deployment["template"]["spec"]["containers"][0]["resources"]["limits"]
        # In workers mode the entrypoint starts one worker per CPU of the limit, rounded up.
        workers = (
            math.ceil(cpu_cores(limits["cpu"])) if answers["process_model"] == "workers" else 1
        )
        migration = 1 if answers.get("migrations") else 0
        peak = (pods + surge) * workers * per_process + migration
        assert peak <= USABLE_CONNECTIONS, f"{overlay}: {peak} connections"
        if overlay == "prod":
            readme = (item.project / "deploy/kubernetes/README.md").read_text()
            assert f" = {peak} <= 100 - 3 = 97" in readme


@pytest.mark.parametrize("answers", COMBINATIONS, ids=combination_id)
def test_only_the_ingress_controller_reaches_the_app(
    answers: Answers, rendered: dict[str, Rendered]
) -> None:
    """The pods trust the forwarded headers of whoever reaches their port: the NetworkPolicy
    admits the controller's namespace only to it (and Prometheus' only to the metrics port),
    overlay settings."""
    item = rendered[combination_id(answers)]
    ingress_class = answers.get(
        "ingress_class", "traefik" if answers["reverse_proxy"] == "traefik" else "nginx"
    )
    expected = [([8000], "ingress-nginx" if ingress_class == "nginx" else ingress_class)]
    if answers["metrics"] == "prometheus":
        expected.append(([METRICS_PORT], "monitoring"))
    for overlay in OVERLAYS:
        rules = item.get(overlay, "NetworkPolicy")["spec"]["ingress"]
        assert [
            (
                [port["port"] for port in rule["ports"]],
                *(source["namespaceSelector"]["matchLabels"] for source in rule["from"]),
            )
            for rule in rules
        ] == [(ports, {"kubernetes.io/metadata.name": name}) for ports, name in expected]
        kustomization = item.project / "deploy/kubernetes/overlays" / overlay / "kustomization.yaml"
        for index in range(len(expected)):
            assert f"path: /spec/ingress/{index}/from" in kustomization.read_text()


@pytest.mark.parametrize(
    "answers", [a for a in COMBINATIONS if a["metrics"] == "prometheus"], ids=combination_id
)
def test_metrics_have_a_port_the_public_does_not_reach(
    answers: Answers, rendered: dict[str, Rendered]
) -> None:
    """The ingress sends every path to the Service's port, the app's: /metrics has a port of
    its own, which the annotations point Prometheus at and no Service exposes."""
    item = rendered[combination_id(answers)]
    for overlay in OVERLAYS:
        template = item.get(overlay, "Deployment")["spec"]["template"]
        (app,) = template["spec"]["containers"]
        ports = {port["name"]: port["containerPort"] for port in app["ports"]}
        assert ports == {"http": 8000, "metrics": METRICS_PORT}
        settings = item.get(overlay, "ConfigMap", "app-settings")["data"]
        assert settings["METRICS_PORT"] == str(METRICS_PORT)
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(METRICS_PORT)
        assert annotations["prometheus.io/path"] == "/metrics"
        service_ports = item.get(overlay, "Service")["spec"]["ports"]
        assert [port["targetPort"] for port in service_ports] == ["http"]


def test_nothing_is_emitted_for_a_target_not_chosen(template: Path, tmp_path: Path) -> None:
    none = render(template, tmp_path / "none", {"database": "postgresql"})
    assert not (none / "deploy").exists()
    swarm = render(
        template, tmp_path / "swarm", {"database": "postgresql", "deploy_targets": ["swarm"]}
    )
    assert [path.name for path in (swarm / "deploy").iterdir()] == ["swarm"]
    assert "Kubernetes" not in (swarm / "README.md").read_text()
    assert "ingress_class" not in (swarm / ".copier-answers.yml").read_text()


# --- checkov --------------------------------------------------------------------------------

CHECKOV_VENV = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    / "fastapi-template-tests"
    / "checkov"
)


@pytest.fixture(scope="session")
def checkov() -> Path:
    """checkov in a virtual environment of its own (it pins old dependencies), made once."""
    binary = CHECKOV_VENV / "bin" / "checkov"
    if not binary.exists():
        if CHECKOV_VENV.exists():
            shutil.rmtree(CHECKOV_VENV)
        venv.create(CHECKOV_VENV, with_pip=True)
        install = [str(CHECKOV_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "checkov"]
        result = subprocess.run(install, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.skip(f"checkov could not be installed: {result.stderr.strip()[-300:]}")
    return binary


def test_checkov_passes_with_every_skip_justified_in_the_manifest(
    rendered: dict[str, Rendered], checkov: Path, tmp_path: Path
) -> None:
    # The proxy answer changes one setting only: one proxy is enough for the scanner.
    for index, item in enumerate(rendered.values()):
        if item.answers["reverse_proxy"] == "external":
            for overlay in OVERLAYS:
                dump(item.objects[overlay], tmp_path / f"{index}-{overlay}.yaml")
    command = [str(checkov), "-d", str(tmp_path), "--framework", "kubernetes", "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    reports = json.loads(result.stdout)
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']})"
        for report in (reports if isinstance(reports, list) else [reports])
        for check in report["results"]["failed_checks"]
    ]
    assert failed == [], "\n".join(failed)
    for report in reports if isinstance(reports, list) else [reports]:
        for check in report["results"]["skipped_checks"]:
            assert len(check["check_result"].get("suppress_comment", "")) > 20, check["check_id"]


# --- The pod spec, run as declared -----------------------------------------------------------

RUN_ANSWERS: Answers = {
    "database": "postgresql",
    "migrations": True,
    "process_model": "single",
    # No proxy in compose: on the cluster the pods trust the ingress controller all the same.
    "reverse_proxy": "none",
    "deploy_targets": ["kubernetes"],
}
# A handful of the array's Kubernetes projects, chosen so that each process model meets each
# metrics answer and each database runs once. Their image is built with uv whatever the tool:
# the pod runs the same server on the same files (test_projects locks and runs every tool).
RUN_FOR_REAL = [
    {**answers, "dependency_tool": "uv", "package_index": ""}
    for answers in run_for_real("kubernetes", [("process_model", "metrics"), ("database",)])
]


def docker_run_args(
    pod: dict[str, Any], container: dict[str, Any], settings: dict[str, str], secrets: Path | None
) -> list[str]:
    """`docker run` arguments that give the container what its pod spec declares."""
    context = {**pod["securityContext"], **container["securityContext"]}
    args = ["--user", f"{context['runAsUser']}:{context['runAsGroup']}"]
    args += ["--group-add", str(pod["securityContext"]["fsGroup"])]
    if context["readOnlyRootFilesystem"]:
        args.append("--read-only")
    args += [f"--cap-drop={cap}" for cap in context["capabilities"]["drop"]]
    if not context["allowPrivilegeEscalation"]:
        args += ["--security-opt", "no-new-privileges"]
    for name, value in settings.items():
        args += ["-e", f"{name}={value}"]
    for mount in container["volumeMounts"]:
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        if "emptyDir" in volume:
            args += ["--tmpfs", f"{mount['mountPath']}:uid={context['runAsUser']}"]
        elif "secret" in volume:
            assert secrets is not None
            args += ["--mount", f"type=bind,source={secrets},target={mount['mountPath']},readonly"]
        elif "persistentVolumeClaim" in volume:
            args += ["--mount", f"type=volume,target={mount['mountPath']}"]
    if "command" in container:
        args += ["--entrypoint", container["command"][0]]
    return args


def container_argv(container: dict[str, Any]) -> list[str]:
    """What follows the image in `docker run`: the command's arguments (its first word is the
    entrypoint above), then the container's args."""
    return [*container.get("command", [])[1:], *container["args"]]


class Pod:
    """The dev overlay's Deployment of a rendered project, run in Docker as the kubelet would:
    its settings, Secret files, PostgreSQL (the overlay's StatefulSet, where it has one), init
    containers in turn, then the server, published on a loopback port."""

    def __init__(self, item: Rendered, tmp_path: Path) -> None:
        self.item = item
        self.spec = item.get("dev", "Deployment")["spec"]["template"]["spec"]
        self.settings = item.get("dev", "ConfigMap", "app-settings")["data"]
        self.secrets = self._secret_files(tmp_path / "secrets")
        self.tmp_path = tmp_path
        self.network = unique_name("tt-k8s-net")
        self.containers: list[str] = []
        # A loopback port for each port the app container declares, by its name.
        self.ports = {port["name"]: free_port() for port in self.spec["containers"][0]["ports"]}
        self.port = self.ports["http"]

    def _secret_files(self, directory: Path) -> Path | None:
        """The Secret volume: one file per key, mode as declared, group fsGroup."""
        secret = self.item.find("dev", "Secret", "app-secrets")
        if secret is None:
            return None
        directory.mkdir()
        volume = next(v for v in self.spec["volumes"] if v["name"] == "secrets")
        for key, encoded in secret["data"].items():
            path = directory / key
            path.write_bytes(base64.b64decode(encoded))
            os.chown(path, 0, self.spec["securityContext"]["fsGroup"])
            path.chmod(volume["secret"]["defaultMode"])
        return directory

    def __enter__(self) -> "Pod":
        docker("network", "create", self.network)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.containers:
            docker("rm", "-f", "-v", name, check=False)
        docker("network", "rm", self.network, check=False)

    def start_database(self) -> None:
        """The dev overlay's PostgreSQL, under its Service's name."""
        database = self.item.get("dev", "StatefulSet", "postgres")["spec"]["template"]["spec"]
        db = database["containers"][0]
        name = unique_name("tt-k8s-db")
        self.containers.append(name)
        run = ["run", "-d", "--name", name, "--network", self.network]
        run += ["--network-alias", "postgres"]
        for e in db["env"]:
            if "valueFrom" in e:
                run += [
                    "-e",
                    f"{e['name']}={self.settings[e['valueFrom']['configMapKeyRef']['key']]}",
                ]
            else:
                run += ["-e", f"{e['name']}={e['value']}"]
        # A helper here, not the pod under test: its own copy of the Secret, readable by all.
        assert self.secrets is not None
        db_secrets = self.tmp_path / "db-secrets"
        shutil.copytree(self.secrets, db_secrets)
        for path in db_secrets.iterdir():
            path.chmod(0o444)
        run += ["--mount", f"type=bind,source={db_secrets},target=/run/secrets,readonly"]
        docker(*run, db["image"])

    def run_init_containers(self) -> list[str]:
        """Each init container to its end, as the kubelet runs them; their output."""
        outputs = []
        for init in self.spec.get("initContainers", []):
            name = unique_name("tt-k8s-init")
            self.containers.append(name)
            args = docker_run_args(self.spec, init, self.settings, self.secrets)
            run = ["run", "--name", name, "--network", self.network, *args, init["image"]]
            result = docker(*run, *container_argv(init), check=False, timeout=300)
            assert result.returncode == 0, result.stdout + result.stderr
            outputs.append(result.stdout + result.stderr)
        return outputs

    def start_server(self) -> str:
        """The app container, published on a loopback port; its name."""
        app = self.spec["containers"][0]
        name = unique_name("tt-k8s-app")
        self.containers.append(name)
        args = docker_run_args(self.spec, app, self.settings, self.secrets)
        publish = [
            arg
            for port in app["ports"]
            for arg in ("-p", f"127.0.0.1:{self.ports[port['name']]}:{port['containerPort']}")
        ]
        run = ["run", "-d", "--name", name, "--network", self.network, *publish, *args]
        docker(*run, app["image"], *container_argv(app))
        return name

    def probe(self, name: str) -> str:
        """The startup, liveness and readiness probes, as the kubelet sends them; the base URL."""
        app = self.spec["containers"][0]
        base = f"http://127.0.0.1:{self.port}"
        startup = app["startupProbe"]
        deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
        while _status(base + startup["httpGet"]["path"]) != 200:
            running = docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
            if running != "true" or time.monotonic() > deadline:
                logs = docker("logs", name, check=False)
                raise AssertionError(
                    f"{name} never started\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
                )
            time.sleep(startup["periodSeconds"] / 4)
        assert http_get(base + app["livenessProbe"]["httpGet"]["path"])[0] == 200
        ready = base + app["readinessProbe"]["httpGet"]["path"]
        until = time.monotonic() + 30
        while http_get(ready)[0] != 200 and time.monotonic() < until:
            time.sleep(0.5)
        assert http_get(ready)[0] == 200
        return base


def _status(url: str) -> int:
    """The status of a GET, or 0 while nothing answers."""
    try:
        return http_get(url)[0]
    except OSError:
        return 0


def build_declared_image(item: Rendered) -> str:
    image = item.get("dev", "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    docker("build", "-t", image, ".", cwd=item.project)
    return image


@pytest.fixture(scope="module")
def declared(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rendered]:
    """The dev overlay of a PostgreSQL project, and its image built under the declared name."""
    require_engine()
    slug = unique_name("tt-k8s")
    project = render(
        template,
        tmp_path_factory.mktemp("k8s-run") / "p",
        {**RUN_ANSWERS, "project_slug": slug},
        tasks=True,
    )
    overlay = project / "deploy" / "kubernetes" / "overlays" / "dev"
    item = Rendered(RUN_ANSWERS, project, {"dev": kustomize(overlay)})
    image = build_declared_image(item)
    try:
        yield item
    finally:
        docker("rmi", "-f", image, check=False)


@pytest.mark.docker
def test_pod_spec_runs_as_declared_migration_then_probes(
    declared: Rendered, tmp_path: Path
) -> None:
    with Pod(declared, tmp_path) as pod:
        assert pod.secrets is not None
        password = (pod.secrets / "postgres_password").read_text().strip()
        pod.start_database()
        (migration,) = pod.run_init_containers()
        assert "Running upgrade" in migration
        server = pod.start_server()
        base = pod.probe(server)
        # The published port reaches the pod from the Docker network's gateway, a private
        # address like the ingress controller's: its X-Forwarded-For names the client.
        forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
        request = urllib.request.Request(base + "/health", headers=forwarded)
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        time.sleep(0.5)
        lines = docker("logs", server).stdout.splitlines()
        clients = [json.loads(line).get("client") for line in lines if line.startswith("{")]
        assert "203.0.113.7" in clients, lines[-5:]
        inspected = docker("inspect", server).stdout
        assert password not in inspected, "the secret is a file, not in the container's config"
        found = json.loads(inspected)[0]["HostConfig"]
        assert found["ReadonlyRootfs"] is True and found["CapDrop"] == ["ALL"]
        user = docker("exec", server, "id", "-u").stdout.strip()
        assert user == "10001"
        write = docker("exec", server, "touch", "/srv/x", check=False)
        assert write.returncode != 0, "the root filesystem is read-only"


@pytest.mark.docker
@pytest.mark.parametrize("answers", RUN_FOR_REAL, ids=combination_id)
def test_pod_of_each_chosen_project_serves_health_and_metrics(
    answers: Answers, template: Path, tmp_path: Path
) -> None:
    """The array's chosen projects run as their pod spec declares them (read-only root, the
    volumes and user declared, every capability dropped) and answer their probes, and
    /metrics where it is on."""
    require_engine()
    project = render(
        template, tmp_path / "p", {**answers, "project_slug": unique_name("tt-k8s")}, tasks=True
    )
    overlay = project / "deploy" / "kubernetes" / "overlays" / "dev"
    item = Rendered(answers, project, {"dev": kustomize(overlay)})
    image = build_declared_image(item)
    try:
        with Pod(item, tmp_path) as pod:
            if item.find("dev", "StatefulSet", "postgres"):
                pod.start_database()
            pod.run_init_containers()
            server = pod.start_server()
            base = pod.probe(server)
            if answers["metrics"] == "prometheus":
                for _ in range(3):
                    http_get(base + "/health")
                assert http_get(base + "/metrics")[0] == 404, "the public port"
                status, body = http_get(f"http://127.0.0.1:{pod.ports['metrics']}/metrics")
                assert status == 200
                assert b'http_requests_total{method="GET",route="/health",status="200"}' in body
    finally:
        docker("rmi", "-f", image, check=False)
