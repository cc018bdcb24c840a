"""Print what tracing costs: req/s with it off, on with a collector, and on without one.

    uv run python -m benchmarks.telemetry [--rounds 3]

Renders the default project (package, SQLite with migrations, one Uvicorn process) twice,
installed with uv: with `tracing=none`, and with `tracing=opentelemetry`. The traced one runs
four times, configured only by OTEL_* variables: exporting to a collector that answers (the
tests' OTLP receiver, tests/collectors.py, decoding every batch in this process); with no
endpoint (spans made for the trace ids in the logs, none exported); exporting to a port where
nothing listens (connection refused); and to one that accepts connections and never answers (each
export waits for its timeout). Each server is started as the image starts it (`logging.json`,
LOG_LEVEL=INFO, stdout to /dev/null). Debian's `wrk` loads `/health` and `GET /items/{id}` on
127.0.0.1 in short bounded runs, the variants taking turns, --rounds times; the median req/s and
p99 of each are printed beside tracing off, with the spans the collector received.

No request may wait for the exporter: the unreachable collectors' rows must match the reachable
one's (the BatchSpanProcessor drops what its queue cannot hold instead). The load generator
shares the machine's cores with the servers: compare the rows of one run, not runs on different
machines.
"""

import argparse
import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.serving import PATHS, print_load, take_turns, uvicorn_server, warm_up
from tests.collectors import OtlpReceiver, silent_endpoint
from tests.project import free_port, install, render, snapshot

REPO = Path(__file__).resolve().parent.parent
OFF = "off"
NO_ENDPOINT = "on, no endpoint (nothing exported)"
REACHABLE = "on, collector answering"
REFUSED = "on, collector refusing connections"
SILENT = "on, collector never answering"


def project(template: Path, dest: Path, tracing: str) -> Path:
    render(template, dest, {"database": "sqlite", "tracing": tracing}, tasks=True)
    install(dest, {"dependency_tool": "uv", "python_version": "3.13"})
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per figure (median)")
    rounds = parser.parse_args().rounds
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing (apt-get install wrk)")
    with (
        tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp,
        OtlpReceiver() as receiver,
        silent_endpoint() as silent,
    ):
        workdir = Path(tmp)
        template = snapshot(REPO, workdir / "template")
        off = project(template, workdir / "off", "none")
        on = project(template, workdir / "on", "opentelemetry")
        service = {"OTEL_SERVICE_NAME": "benchmark"}
        variants = {
            OFF: (off, {}),
            NO_ENDPOINT: (on, service),
            REACHABLE: (on, {**service, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}),
            REFUSED: (
                on,
                {**service, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
            ),
            SILENT: (on, {**service, "OTEL_EXPORTER_OTLP_ENDPOINT": silent}),
        }
        received: dict[str, int] = {}
        with contextlib.ExitStack() as stack:
            urls = {
                name: stack.enter_context(uvicorn_server(root, workdir / f"data-{index}", otel))
                for index, (name, (root, otel)) in enumerate(variants.items())
            }
            warm_up(urls)
            time.sleep(6)  # the warm-up's last batch (sent every 5 s) is in
            before = len(receiver.received)
            results, load_before, load_after = take_turns(urls, rounds)
            time.sleep(6)
            received[REACHABLE] = len(receiver.received) - before

    print_load(rounds, load_before, load_after)
    print()
    print(
        f"| {'tracing':<36} | {'path':<9} | {'req/s':>8} | {'p99 ms':>7} | {'errors':>6} "
        "| cost vs off |"
    )
    print(f"| {'-' * 36} | {'-' * 9} | {'-' * 8} | {'-' * 7} | {'-' * 6} | ---: |")
    for path in PATHS:
        median_rps = {
            name: statistics.median(r[0] for r in results[(name, path)]) for name in variants
        }
        for name in variants:
            runs = results[(name, path)]
            p99 = statistics.median(r[1] for r in runs)
            errors = sum(r[3] for r in runs)
            cost = f"{(1 - median_rps[name] / median_rps[OFF]) * 100:.1f}%" if name != OFF else ""
            print(
                f"| {name:<36} | {path:<9} | {median_rps[name]:>8.0f} | {p99:>7.2f} | {errors:>6} "
                f"| {cost} |"
            )
    sent = sum(r[2] for path in PATHS for r in results[(REACHABLE, path)])
    print()
    print(
        f"The answering collector received {received[REACHABLE]} spans for the {sent} requests "
        "sent to its server (one per /health; for /items/1 the request's and its database "
        "spans; a full queue drops spans rather than delay a request)."
    )
    print(
        "cost: requests/s lost on the same path against tracing off; the unreachable collectors' "
        "rows show whether any request waited for the exporter (they must match the answering "
        "collector's)"
    )


if __name__ == "__main__":
    main()
