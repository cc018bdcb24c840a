"""Print how a Swarm stack of a generated project rolls out and rolls back, per process model.

    uv run python -m benchmarks.rollout

Renders a PostgreSQL project with nginx in front (HTTPS, a certificate of a throwaway CA) and
the Swarm target, per process model
(single, workers), builds its image, and deploys its stack with three replicas on this engine
(joining a swarm only if the engine is in none, and leaving it then). Measured, while a bounded
client sends GET /items over HTTPS through the proxy from two threads:

- rollout of a new image across the three replicas: seconds from `docker stack deploy` until
  every replica runs the new image and is healthy, requests served and failed meanwhile;
- automatic rollback of a broken image (its server never starts, so /health fails): seconds
  from the deploy until the service is back on the previous image, requests served and failed.

Baseline, same run: the stack as rendered but with Swarm's default `order: stop-first`, the old
replica stopped before the new one starts. Figures on this shared machine compare the two
orders and the process models with each other, not with other machines.
"""

import tempfile
import time
from pathlib import Path

from tests.docker import docker, unique_name
from tests.edge import DOMAIN
from tests.project import render, snapshot
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
from tests.tls import TestCA

REPO = Path(__file__).resolve().parent.parent
MODELS = ("single", "workers")
ORDERS = ("start-first", "stop-first")


def timed_update(
    stack: Stack, image: str, state: str, back_on: str, timeout: float
) -> tuple[float, int, int]:
    """Deploy `image` while the client runs, until the update reaches `state` and every replica
    runs `back_on`: the seconds it took, and the requests served and failed meanwhile."""
    client = Client(lambda: stack.get("/items"))
    with client.running():
        started = time.monotonic()
        stack.deploy(image)
        stack.wait_until(lambda: stack.update_state() == state, state, timeout)
        stack.wait_converged(back_on, timeout=600)
        seconds = time.monotonic() - started
    return seconds, client.served, len(client.failed)


def measure(project: Path, slug: str, order: str, ca: TestCA) -> dict[str, str]:
    if order != "start-first":
        stack_file = project / "deploy" / "swarm" / "compose.yaml"
        stack_file.write_text(
            stack_file.read_text().replace("order: start-first", f"order: {order}")
        )
    stack = Stack(project, unique_name(slug).replace("-", ""), DOMAIN, ca.pem, project / "certs")
    good = f"{slug}:1"
    try:
        stack.deploy(good)
        stack.wait_converged(good, timeout=600)
        new = derived_image(good, RELEASE_DOCKERFILE.format(image=good, release=2))
        rollout = timed_update(stack, new, "completed", back_on=new, timeout=600)
        broken = derived_image(new, BROKEN_DOCKERFILE.format(image=new))
        rollback = timed_update(stack, broken, "rollback_completed", back_on=new, timeout=900)
        return {
            "rollout s": f"{rollout[0]:.1f}",
            "served": str(rollout[1]),
            "failed": str(rollout[2]),
            "rollback s": f"{rollback[0]:.1f}",
            "served ": str(rollback[1]),
            "failed ": str(rollback[2]),
        }
    finally:
        stack.remove()


def main() -> None:
    rows: list[tuple[str, str, dict[str, str]]] = []
    ca = TestCA()
    with tempfile.TemporaryDirectory() as tmp, swarm_node() as node:
        template = snapshot(REPO, Path(tmp) / "template")
        for model in MODELS:
            slug = unique_name(f"bench-rollout-{model}")
            project = Path(tmp) / model
            answers = {**ANSWERS, "process_model": model, "project_slug": slug}
            render(template, project, answers, tasks=True)
            ca.issue(DOMAIN).write(project / "certs")
            docker("build", "-t", f"{slug}:1", ".", cwd=project)
            for label in (f"{slug}.db=true", f"{slug}.proxy=true"):
                docker("node", "update", "--label-add", label, node)
            try:
                for order in ORDERS:
                    rows.append((model, order, measure(project, slug, order, ca)))
            finally:
                for label in (f"{slug}.db", f"{slug}.proxy"):
                    docker("node", "update", "--label-rm", label, node, check=False)
                remove_images(slug)
    print("Swarm, 3 replicas, PostgreSQL, nginx in front (HTTPS); client: 2 threads of GET /items")
    print("(served/failed: during the rollout, then during the automatic rollback)")
    header = ["process model", "update order", *rows[0][2]] if rows else []
    print(" | ".join(header))
    for model, order, figures in rows:
        label = order + (" (baseline)" if order == "stop-first" else "")
        print(" | ".join([model, label, *figures.values()]))


if __name__ == "__main__":
    main()
