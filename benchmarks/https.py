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

Each proxy is also run with its stock configuration beside ours, in the same stack and run:
the same image with its defaults, plus only TLS (the certificate ours serves, copied out of it)
and a route to the app; then the two take turns under the same load, and the CPU time a
request costs the proxy's container with our configuration is printed against the stock one's
(target: ours <= 1.05x stock, with HSTS, the redirect, forwarded-header hygiene, the body limit
and keep-alive to the app on), the app's beside it.

    uv run python -m benchmarks.https [--seconds 5] [--connections 16] [--rounds 3]
"""

import argparse
import base64
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.covering import compose_proxies
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
from tests.tls import TestCA, https_get, verifying_context

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.70
STOCK_TARGET = 1.05  # our configuration's proxy CPU per request, x the stock configuration's
STOCK_SERVICE = "stock"
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
    ours: Load  # HTTPS through our configuration, taking turns with the stock one
    stock: Load
    pinned_https: Load
    pinned_direct: Load
    load_average: float  # the machine's, after the runs


# The stock setups: the image's defaults, plus TLS with the certificate in /certs and a route to
# the app. Per proxy: the files it reads (path in the container: content), and its command.
STOCK_NGINX = """server {
    listen 443 ssl;
    server_name DOMAIN;
    ssl_certificate /certs/cert.pem;
    ssl_certificate_key /certs/key.pem;
    location / {
        proxy_pass http://app:8000;
    }
}
"""
STOCK_CADDY = """DOMAIN {
    tls /certs/cert.pem /certs/key.pem
    reverse_proxy app:8000
}
"""
STOCK_TRAEFIK = """http:
  routers:
    app:
      rule: Host(`DOMAIN`)
      entryPoints: [websecure]
      tls: {}
      service: app
  services:
    app:
      loadBalancer:
        servers:
          - url: http://app:8000
tls:
  certificates:
    - certFile: /certs/cert.pem
      keyFile: /certs/key.pem
"""
STOCK: dict[str, tuple[dict[str, str], list[str] | None]] = {
    "nginx": ({"/etc/nginx/conf.d/default.conf": STOCK_NGINX}, None),
    "caddy": ({"/etc/caddy/Caddyfile": STOCK_CADDY}, None),
    "traefik": (
        {"/etc/traefik/dynamic.yaml": STOCK_TRAEFIK},
        [
            "--entrypoints.websecure.address=:443",
            "--providers.file.filename=/etc/traefik/dynamic.yaml",
        ],
    ),
}


def served_certificate(stack: Stack, proxy: str) -> tuple[bytes, bytes]:
    """The certificate chain and key our proxy serves: the files given to nginx, the one Caddy
    or Traefik obtained (from its storage in the container)."""
    if proxy == "nginx":
        certs = stack.project / "certs"
        return (certs / "fullchain.pem").read_bytes(), (certs / "privkey.pem").read_bytes()
    container = stack.container("proxy")
    if proxy == "traefik":
        storage = json.loads(docker("exec", container, "cat", "/acme/acme.json").stdout)
        entry = storage["acme"]["Certificates"][0]
        return base64.b64decode(entry["certificate"]), base64.b64decode(entry["key"])
    found = docker("exec", container, "find", "/data/caddy/certificates", "-name", "*.crt")
    crt = next(line for line in found.stdout.split() if stack.domain in line)
    key = crt.removesuffix(".crt") + ".key"
    read = [docker("exec", container, "cat", path).stdout.encode() for path in (crt, key)]
    return read[0], read[1]


def start_stock(stack: Stack, proxy: str) -> None:
    """The stock setup as a service of the stack beside ours, on the edge network, published on
    a loopback port only to see it answer."""
    directory = stack.project / "stock"
    (directory / "certs").mkdir(parents=True)
    cert, key = served_certificate(stack, proxy)
    (directory / "certs" / "cert.pem").write_bytes(cert)
    (directory / "certs" / "key.pem").write_bytes(key)
    files, command = STOCK[proxy]
    volumes = ["./stock/certs:/certs:ro"]
    for number, (path, content) in enumerate(files.items()):
        (directory / f"config{number}").write_text(content.replace("DOMAIN", stack.domain))
        volumes.append(f"./stock/config{number}:{path}:ro")
    rendered = json.loads(stack.compose("config", "--format", "json").stdout)
    service: dict[str, object] = {
        "image": rendered["services"]["proxy"]["image"],
        "volumes": volumes,
        "ports": ["127.0.0.1::443"],
        "networks": ["edge"],
    }
    if command:
        service["command"] = command
    (stack.project / "compose.stock.yaml").write_text(
        yaml.safe_dump({"services": {STOCK_SERVICE: service}})
    )
    stack.files.append("compose.stock.yaml")
    stack.compose("up", "--detach", STOCK_SERVICE)
    port = int(stack.compose("port", STOCK_SERVICE, "443").stdout.strip().rpartition(":")[2])
    deadline = time.monotonic() + 60
    while True:
        try:
            if https_get(port, stack.domain, stack.trust, "/health").status == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.2)


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


def wrk(
    stack: Stack,
    tools: str,
    url: str,
    seconds: int,
    connections: int,
    *run_args: str,
    proxy: str = "proxy",
) -> Load:
    """wrk in a container on the edge network; the domain resolves to the proxy there (the
    service `proxy`, ours, unless another is named)."""
    containers = [stack.container(service) for service in ("app", proxy)]
    cpu_before = [cpu_seconds(name) for name in containers]
    output = docker(
        "run", "--rm", "--network", f"{stack.name}_edge", *run_args,
        "--add-host", f"{stack.domain}:{edge_address(stack, proxy)}",
        tools, "wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", url,
    ).stdout  # fmt: skip
    app_cpu, proxy_cpu = (cpu_seconds(n) - b for n, b in zip(containers, cpu_before, strict=True))
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    if not requests:
        raise RuntimeError(f"no request answered through {proxy}:\n{output}")
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


def against_stock(
    stack: Stack, tools: str, seconds: int, connections: int, rounds: int
) -> tuple[Load, Load]:
    """The median HTTPS loads through our proxy and the stock one, taking turns `rounds` times."""
    url = f"https://{stack.domain}/health"
    loads: dict[str, list[Load]] = {"proxy": [], STOCK_SERVICE: []}
    for _ in range(rounds):
        for service, measured in loads.items():
            measured.append(wrk(stack, tools, url, seconds, connections, proxy=service))
    return median(loads["proxy"]), median(loads[STOCK_SERVICE])


def measure(
    stack: Stack,
    proxy: str,
    ca: TestCA | None,
    tools: str,
    seconds: int,
    connections: int,
    rounds: int,
) -> Figures:
    try:
        stack.compose("build", "--quiet")
        if ca is not None:
            # Pebble first: a proxy that asks before it listens asks again only minutes later.
            # Its root, which the certificate chains to, is new at each start.
            stack.compose("up", "--detach", "pebble", "challtestsrv")
            stack.trust = pebble_root(stack, ca)
        started = time.monotonic()
        stack.compose("up", "--detach")
        wait_for_https(stack, "/health", timeout=180, interval=0.05)
        up = time.monotonic() - started
        handshake = median_handshake_ms(stack)
        shared = taking_turns(stack, tools, seconds, connections, rounds)
        start_stock(stack, proxy)
        stock = against_stock(stack, tools, seconds, connections, rounds)
        stack.compose("stop", STOCK_SERVICE)
        docker("update", "--cpuset-cpus", APP_CPU, stack.container("app"))
        docker("update", "--cpuset-cpus", EDGE_CPU, stack.container("proxy"))
        pinned = taking_turns(stack, tools, seconds, connections, rounds, "--cpuset-cpus", EDGE_CPU)
        return Figures(up, handshake, *shared, *stock, *pinned, os.getloadavg()[0])
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)
        docker("rmi", "-f", f"{stack.slug}:latest", check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per figure (median)")
    parser.add_argument(
        "--proxies", nargs="+", default=compose_proxies(), help="the proxies to measure"
    )
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
        for proxy in args.proxies:
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
                stack, proxy, issuer, tools, args.seconds, args.connections, args.rounds
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
    table(rows)
    print(
        f"\nOur configuration against the stock one (the image's defaults, TLS with the same"
        f" certificate, a route to the app), HTTPS through each taking turns, median of {rounds}."
        f" Target: the proxy's CPU per request with ours <= {STOCK_TARGET:.2f}x stock's.\n"
    )
    stock_rows = [
        (
            "proxy",
            "ours req/s",
            "stock req/s",
            "CPU us/request: proxy, ours",
            "stock",
            "ours / stock",
            "target",
            "app, ours",
            "app, stock",
            "proxy + app, ours / stock",
        )
    ]
    for proxy, f in figures.items():
        ratio = f.ours.proxy_us / f.stock.proxy_us
        total = (f.ours.proxy_us + f.ours.app_us) / (f.stock.proxy_us + f.stock.app_us)
        stock_rows.append(
            (
                proxy,
                f"{f.ours.requests_per_second:.0f}",
                f"{f.stock.requests_per_second:.0f}",
                f"{f.ours.proxy_us:.0f}",
                f"{f.stock.proxy_us:.0f}",
                f"{ratio:.2f}x",
                "met" if ratio <= STOCK_TARGET else "MISSED",
                f"{f.ours.app_us:.0f}",
                f"{f.stock.app_us:.0f}",
                f"{total:.2f}x",
            )
        )
    table(stock_rows)


def table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
