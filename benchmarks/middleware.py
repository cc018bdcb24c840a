"""Print what the request-id/access-log middleware and the metrics cost, next to the app without.

    uv run python -m benchmarks.middleware [--rounds 3]

Renders the default project (SQLite, migrations), installed with uv, as three variants: with the
middleware and Prometheus metrics (`metrics=prometheus`, the template as generated); without
them (the `metrics=none` render with the middleware line taken out of `create_app`), so with no
access line at all; and that same app writing Uvicorn's own plain access line instead (its
`configure_logging()` call taken out too, Uvicorn's default logging), which is what the
middleware replaces. Each runs as one Uvicorn process, as the image starts it (`logging.json`,
LOG_LEVEL=INFO, stdout to /dev/null). Debian's `wrk` loads `/health` and `GET /items/{id}` on
127.0.0.1 in short bounded runs, the variants taking turns, --rounds times; the median
requests/s and p99 of each are printed with the costs, wrk's command line and the machine's
load average around the runs.

The load generator shares the machine's cores with the server (and with whatever else runs):
compare the rows of one run, not runs on different machines.
"""

import argparse
import contextlib
import shutil
import statistics
import tempfile
from pathlib import Path

from benchmarks.serving import PATHS, print_load, take_turns, uvicorn_server, warm_up
from tests.project import install, render, snapshot

REPO = Path(__file__).resolve().parent.parent
OFF = "off (no middleware, no metrics)"
UVICORN = "off, with Uvicorn's plain access line"
ON = "on (request id, access line, metrics)"
MIDDLEWARE_LINE = "    app.add_middleware(RequestContextMiddleware)\n"
LOGGING_LINE = "    configure_logging()\n"


def project(template: Path, dest: Path, metrics: str, *taken_out: str) -> Path:
    """The default project with `metrics`, installed, less the lines of `create_app` named."""
    render(template, dest, {"database": "sqlite", "metrics": metrics}, tasks=True)
    install(dest, {"dependency_tool": "uv", "python_version": "3.13"})
    main = dest / "app" / "main.py"
    for line in taken_out:
        assert line in main.read_text()
        main.write_text(main.read_text().replace(line, ""))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per figure (median)")
    rounds = parser.parse_args().rounds
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing (apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="bench-middleware-") as tmp:
        workdir = Path(tmp)
        template = snapshot(REPO, workdir / "template")
        variants = {
            OFF: project(template, workdir / "off", "none", MIDDLEWARE_LINE),
            UVICORN: project(template, workdir / "uvicorn", "none", MIDDLEWARE_LINE, LOGGING_LINE),
            ON: project(template, workdir / "on", "prometheus"),
        }
        with contextlib.ExitStack() as stack:
            urls = {
                name: stack.enter_context(
                    uvicorn_server(root, workdir / f"data-{index}", image_logging=name != UVICORN)
                )
                for index, (name, root) in enumerate(variants.items())
            }
            warm_up(urls)
            results, load_before, load_after = take_turns(urls, rounds)

    print_load(rounds, load_before, load_after)
    print()
    print(
        f"| {'variant':<38} | {'path':<9} | {'req/s':>8} | {'p99 ms':>7} | {'errors':>6} "
        "| cost vs off | cost vs Uvicorn's line |"
    )
    print(f"| {'-' * 38} | {'-' * 9} | {'-' * 8} | {'-' * 7} | {'-' * 6} | ---: | ---: |")
    for path in PATHS:
        median_rps = {
            name: statistics.median(r[0] for r in results[(name, path)]) for name in variants
        }
        for name in variants:
            runs = results[(name, path)]
            p99 = statistics.median(r[1] for r in runs)
            errors = sum(r[3] for r in runs)
            costs = [
                f"{(1 - median_rps[name] / median_rps[base]) * 100:.1f}%" if name != base else ""
                for base in (OFF, UVICORN)
            ]
            print(
                f"| {name:<38} | {path:<9} | {median_rps[name]:>8.0f} | {p99:>7.2f} | {errors:>6} "
                f"| {costs[0]} | {costs[1]} |"
            )
    print()
    print(
        "cost: requests/s lost on the same path against the app with no access line at all, and "
        "against the same app writing Uvicorn's own access line, which the middleware replaces "
        "(target: at most 10%)"
    )


if __name__ == "__main__":
    main()
