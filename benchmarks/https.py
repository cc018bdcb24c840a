"""Print what HTTPS at the edge costs, per proxy, next to plain HTTP straight to the app.

For Traefik and Caddy (their certificate from pebble, a local ACME CA, through a real challenge)
and nginx (a certificate made here), each in front of the same generated app (no database, one
Uvicorn process), in one run: seconds from `docker compose up` (images built) to the first
verified HTTPS 200 on /health; the median TLS handshake of new connections from this machine;
requests/s and p99 latency on /health under a bounded wrk load over HTTPS through the proxy and
over plain HTTP to the app directly, both from a container on the stack's edge network, the
two taking turns --rounds times (the medians are printed), and the CPU time a request costs the
app's and the proxy's containers (their cgroups' counters). Target: HTTPS through the proxy
keeps >= 70% of the direct requests/s.

The load runs twice: with every container free to use every core, and pinned, the app alone on
CPU 0 and the proxy with wrk on CPU 1. One Uvicorn process uses one core; on a shared machine
the first layout also measures the load generator taking CPU from the app, the second what
the proxy costs the app when the host has a core for it (the load generator still shares the
proxy's core, so it is a lower bound).

    uv run python -m benchmarks.https [--seconds 5] [--connections 16] [--rounds 3]
"""

import argparse
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.docker import cpu_seconds, docker, engine_problem
from tests.edge import (
    Stack,
    acme_stack,
    build_tools_image,
    nginx_stack,
    pebble_root,
    wait_for_https,
)
from tests.project import snapshot
from tests.tls import TestCA, verifying_context

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.70
HANDSHAKES = 30


@dataclass
class Load:
    requests_per_second: float
    p99_ms: float
    app_us: float  # CPU time per request, in the app's container
    proxy_us: float  # and in the proxy's


@dataclass
class Figures:
    up_to_https_200: float
    handshake_ms: float
    https: Load
    direct: Load
    pinned_https: Load
    pinned_direct: Load
    load_average: float  # the machine's, after the runs


# The pinned layout: the app on its own core; the proxy and the load generator on the other.
APP_CPU, EDGE_CPU = "0", "1"


def median_handshake_ms(stack: Stack) -> float:
    context = verifying_context(stack.trust)
    times = []
    for _ in range(HANDSHAKES):
        with socket.create_connection(("127.0.0.1", stack.https_port), timeout=10) as raw:
            started = time.perf_counter()
            with context.wrap_socket(raw, server_hostname=stack.domain):
                times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def edge_address(stack: Stack, service: str) -> str:
    network = f"{stack.name}_edge"
    template = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
    return str(docker("inspect", "-f", template, stack.container(service)).stdout.strip())


def wrk(stack: Stack, tools: str, url: str, seconds: int, connections: int, *run_args: str) -> Load:
    """wrk in a container on the edge network; the domain resolves to the proxy there."""
    containers = [stack.container(service) for service in ("app", "proxy")]
    cpu_before = [cpu_seconds(name) for name in containers]
    output = docker(
        "run", "--rm", "--network", f"{stack.name}_edge", *run_args,
        "--add-host", f"{stack.domain}:{edge_address(stack, 'proxy')}",
        tools, "wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", url,
    ).stdout  # fmt: skip
    app_cpu, proxy_cpu = (cpu_seconds(n) - b for n, b in zip(containers, cpu_before, strict=True))
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return Load(rate, p99, app_cpu / requests * 1e6, proxy_cpu / requests * 1e6)


def median(loads: list[Load]) -> Load:
    return Load(
        statistics.median(load.requests_per_second for load in loads),
        statistics.median(load.p99_ms for load in loads),
        statistics.median(load.app_us for load in loads),
        statistics.median(load.proxy_us for load in loads),
    )


def taking_turns(
    stack: Stack, tools: str, seconds: int, connections: int, rounds: int, *run_args: str
) -> tuple[Load, Load]:
    """The median HTTPS (through the proxy) and direct loads, the two alternating `rounds` times;
    `run_args` go to the wrk container."""
    urls = (f"https://{stack.domain}/health", "http://app:8000/health")
    loads: dict[str, list[Load]] = {url: [] for url in urls}
    for _ in range(rounds):
        for url in urls:
            loads[url].append(wrk(stack, tools, url, seconds, connections, *run_args))
    return median(loads[urls[0]]), median(loads[urls[1]])


def measure(
    stack: Stack, ca: TestCA | None, tools: str, seconds: int, connections: int, rounds: int
) -> Figures:
    try:
        stack.compose("build", "--quiet")
        started = time.monotonic()
        stack.compose("up", "--detach")
        if ca is not None:  # the certificate comes from pebble, whose root is new at each start
            stack.trust = pebble_root(stack, ca)
        wait_for_https(stack, "/health", timeout=180, interval=0.05)
        up = time.monotonic() - started
        handshake = median_handshake_ms(stack)
        shared = taking_turns(stack, tools, seconds, connections, rounds)
        docker("update", "--cpuset-cpus", APP_CPU, stack.container("app"))
        docker("update", "--cpuset-cpus", EDGE_CPU, stack.container("proxy"))
        pinned = taking_turns(stack, tools, seconds, connections, rounds, "--cpuset-cpus", EDGE_CPU)
        return Figures(up, handshake, *shared, *pinned, os.getloadavg()[0])
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)
        docker("rmi", "-f", f"{stack.slug}:latest", check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per figure (median)")
    args = parser.parse_args()
    problem = engine_problem()
    if problem:
        sys.exit(f"Docker unavailable: {problem}")
    root = Path(tempfile.mkdtemp(prefix="bench-https-"))
    template = snapshot(REPO, root / "template")
    ca = TestCA()
    (root / "tools").mkdir()
    tools = build_tools_image(root / "tools")
    figures: dict[str, Figures] = {}
    try:
        for proxy in ("traefik", "caddy", "nginx"):
            print(f"measuring {proxy} ...", file=sys.stderr, flush=True)
            dest = root / proxy
            if proxy == "nginx":
                stack, issuer = nginx_stack(template, dest, ca), None
            else:
                # Certificates for 90 days, as Let's Encrypt's: no renewal during the run.
                stack = acme_stack(
                    template, dest, proxy, tools, ca, cert_seconds=90 * 86400, database="none"
                )
                issuer = ca
            figures[proxy] = measure(
                stack, issuer, tools, args.seconds, args.connections, args.rounds
            )
    finally:
        docker("rmi", "-f", tools, check=False)
    report(figures, args.seconds, args.connections, args.rounds)


def report(figures: dict[str, Figures], seconds: int, connections: int, rounds: int) -> None:
    print(
        f"\nGET /health on one Uvicorn process; "
        f"wrk -t 2 -c {connections} -d {seconds}s --latency URL from a container on the edge "
        f"network, HTTPS and direct taking turns, median of {rounds}; on {os.cpu_count()} cores. "
        f"Target: HTTPS via the proxy >= {TARGET:.0%} of direct req/s. Pinned: the app alone "
        f"on CPU {APP_CPU}, the proxy and wrk on CPU {EDGE_CPU}.\n"
    )
    header = (
        "proxy",
        "up to HTTPS 200 s",
        "TLS handshake ms",
        "HTTPS req/s",
        "HTTPS p99 ms",
        "direct HTTP req/s",
        "direct p99 ms",
        "HTTPS / direct",
        "target",
        "CPU us/request: app via proxy",
        "app direct",
        "proxy",
        "pinned: HTTPS req/s",
        "direct req/s",
        "HTTPS / direct",
        "target",
        "load average",
    )
    rows = [header]
    for proxy, f in figures.items():
        ratio = f.https.requests_per_second / f.direct.requests_per_second
        pinned = f.pinned_https.requests_per_second / f.pinned_direct.requests_per_second
        rows.append(
            (
                proxy,
                f"{f.up_to_https_200:.1f}",
                f"{f.handshake_ms:.1f}",
                f"{f.https.requests_per_second:.0f}",
                f"{f.https.p99_ms:.1f}",
                f"{f.direct.requests_per_second:.0f}",
                f"{f.direct.p99_ms:.1f}",
                f"{ratio:.0%}",
                "met" if ratio >= TARGET else "MISSED",
                f"{f.https.app_us:.0f}",
                f"{f.direct.app_us:.0f}",
                f"{f.https.proxy_us:.0f}",
                f"{f.pinned_https.requests_per_second:.0f}",
                f"{f.pinned_direct.requests_per_second:.0f}",
                f"{pinned:.0%}",
                "met" if pinned >= TARGET else "MISSED",
                f"{f.load_average:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
