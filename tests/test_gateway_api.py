"""The Kubernetes target's Gateway API component: an overlay that takes it serves through an
HTTPRoute instead of the Ingress, and the route is what a cluster with the Gateway API v1 CRDs
accepts (tests/gateway_api/check.mjs: the CRD's schema, and no unknown field)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_kubernetes import KUBERNETES_VERSION, _render_with_secrets, dump, kustomize

CHECKER = Path(__file__).resolve().parent / "gateway_api"

pytestmark = pytest.mark.xdist_group("kubernetes")


def check_routes(routes: list[dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("node") is None or not (CHECKER / "node_modules").is_dir():
        pytest.skip("no node, or no `npm ci --prefix tests/gateway_api`")
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(routes))
    command = ["node", str(CHECKER / "check.mjs"), str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def overlay_with_the_component(project: Path, overlay: str) -> Path:
    """The overlay as its README says to use the component: one `components:` entry added."""
    directory = project / "deploy" / "kubernetes" / "overlays" / overlay
    with (directory / "kustomization.yaml").open("a") as file:
        file.write("\ncomponents:\n  - ../../components/gateway-api\n")
    return directory


@pytest.mark.parametrize(
    "answers",
    [
        {"reverse_proxy": "none", "database": "postgresql", "migrations": True},
        {
            "reverse_proxy": "caddy",
            "database": "none",
            "domain": "api.example.com",
            "acme_email": "ops@example.com",
        },
    ],
    ids=["any-host", "public-domain"],
)
def test_an_overlay_with_the_component_routes_through_the_gateway(
    template: Path, tmp_path: Path, answers: dict[str, Any]
) -> None:
    project = tmp_path / "project"
    _render_with_secrets((template, project, {**answers, "deploy_targets": ["kubernetes"]}))
    for overlay in ("dev", "prod"):
        plain = kustomize(project / "deploy" / "kubernetes" / "overlays" / overlay)
        assert [obj["kind"] for obj in plain].count("Ingress") == 1, "the Ingress by default"

    objects = kustomize(overlay_with_the_component(project, "prod"))
    kinds = [obj["kind"] for obj in objects]
    assert "Ingress" not in kinds
    routes = [obj for obj in objects if obj["kind"] == "HTTPRoute"]
    assert len(routes) == 1
    route = routes[0]
    service = next(obj for obj in objects if obj["kind"] == "Service")
    assert route["metadata"]["namespace"] == service["metadata"]["namespace"]
    backend = route["spec"]["rules"][0]["backendRefs"][0]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"] == service["spec"]["ports"][0]["port"]
    assert route["spec"].get("hostnames") == ([answers["domain"]] if "domain" in answers else None)

    checked = check_routes(routes, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    others = dump([obj for obj in objects if obj["kind"] != "HTTPRoute"], tmp_path / "rest.yaml")
    validate = Path(sys.executable).parent / "kubernetes-validate"
    command = [str(validate), "--strict", "--quiet", "-k", KUBERNETES_VERSION, str(others)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_the_route_checker_refuses_an_unknown_field_and_a_bad_value(tmp_path: Path) -> None:
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "app"},
        "spec": {
            "parentRefs": [{"name": "gateway"}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}],
        },
    }
    assert check_routes([route], tmp_path).returncode == 0
    misspelt = json.loads(json.dumps(route).replace("parentRefs", "parentRef"))
    unknown = check_routes([misspelt], tmp_path)
    assert unknown.returncode != 0 and "parentRef" in unknown.stdout
    wrong = json.loads(json.dumps(route).replace('"PathPrefix"', '"Prefix"'))
    assert check_routes([wrong], tmp_path).returncode != 0
