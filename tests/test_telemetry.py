"""Traces and error reports of generated projects, received by real servers on 127.0.0.1.

An OTLP/HTTP receiver (tests/collectors.py, decoding `ExportTraceServiceRequest` as a collector
does) gets the spans of requests sent with a caller's W3C `traceparent`: from one Uvicorn process,
from each of the workers of a workers project, and from the workers project's container image;
the service name is the one OTEL_SERVICE_NAME gives, the trace is the caller's, the queries' spans
are inside the request's, and the request's access line carries the trace id beside its request
id. A Sentry-protocol endpoint gets the event of an unhandled error, with the request id and
release. A stopped server sends the spans still queued, and a stopped container exits within
Docker's 10 s grace while both endpoints accept connections and never answer. With the answers
off, nothing of either is installed (nor imported), and with the Sentry answer on but SENTRY_DSN
unset, `sentry_sdk` is never imported.
"""

import contextlib
import json
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest

from tests import docker
from tests.collectors import (
    CLIENT_SPAN,
    SERVER_SPAN,
    OtlpReceiver,
    SentryServer,
    Span,
    silent_endpoint,
)
from tests.combinations import Answers
from tests.postgres import PostgresServer
from tests.project import free_port, install, render, stop, tool_env, wait_for_http

pytestmark = pytest.mark.xdist_group("telemetry")

BASE: Answers = {
    "dependency_tool": "uv",
    "python_version": "3.13",
    "reverse_proxy": "none",
    "migrations": True,
    "tracing": "opentelemetry",
}
SINGLE: Answers = {
    **BASE,
    "layout": "package",
    "process_model": "single",
    "database": "sqlite",
    "error_reports": "sentry",
}
WORKERS: Answers = {
    **BASE,
    "layout": "single_file",
    "process_model": "workers",
    "database": "postgresql",
    "metrics": "prometheus",
    "error_reports": "sentry",
}
# Appended to the rendered app: a route whose unhandled error is to be reported.
CRASH_ROUTE = """

@app.get("/crash")
async def crash() -> None:
    raise RuntimeError("a bug to report")
"""


@dataclass
class Project:
    path: Path
    answers: Answers
    bin: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def single(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The package layout, one Uvicorn process, SQLite; traces and error reports on."""
    path = render(template, tmp_path_factory.mktemp("single"), SINGLE, tasks=True)
    (path / "app" / "main.py").write_text((path / "app" / "main.py").read_text() + CRASH_ROUTE)
    data = tmp_path_factory.mktemp("data")
    return Project(path, SINGLE, install(path, SINGLE), {"DATA_DIR": str(data)})


@pytest.fixture(scope="module")
def workers(
    template: Path, tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Project:
    """The single-file layout, Uvicorn workers, PostgreSQL and Prometheus metrics; traces and
    error reports on."""
    path = render(template, tmp_path_factory.mktemp("workers"), WORKERS, tasks=True)
    (path / "main.py").write_text((path / "main.py").read_text() + CRASH_ROUTE)
    env = {**postgres_server.create_database(), "WEB_CONCURRENCY": "2"}
    return Project(path, WORKERS, install(path, WORKERS), env)


def image_command(project: Path, port: int) -> list[str]:
    """The image's command (its Dockerfile's CMD), listening on 127.0.0.1 at `port`."""
    [cmd] = [
        line for line in (project / "Dockerfile").read_text().splitlines() if line[:4] == "CMD "
    ]
    command: list[str] = json.loads(cmd[4:])
    return [{"0.0.0.0": "127.0.0.1", "8000": str(port)}.get(word, word) for word in command]


class Served(NamedTuple):
    url: str
    log: Path  # the server's output
    process: subprocess.Popen[str]


@contextlib.contextmanager
def serving(project: Project, **env: str) -> Iterator[Served]:
    """The project started as its image starts it (prestart, then Uvicorn) on a free port of
    127.0.0.1: its base URL, the file its output goes to, and its process."""
    port = free_port()
    command = [str(project.bin / "python"), "prestart.py", *image_command(project.path, port)]
    path = f"{project.bin}{os.pathsep}{os.environ['PATH']}"
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as output:
        process = subprocess.Popen(
            command,
            cwd=project.path,
            env=tool_env(**project.env, **env, PATH=path),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{url}/health", timeout=180, process=process)
            yield Served(url, Path(output.name), process)
        except Exception as error:
            stop(process)
            error.add_note(f"--- server output\n{Path(output.name).read_text()[-6000:]}")
            raise
        finally:
            stop(process)


def exporting_to(receiver: OtlpReceiver, service: str) -> dict[str, str]:
    """The standard variables that send a process's spans to the receiver, in batches sent
    every 100 ms (instead of 5 s), each span naming its process (the `process` detector)."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel,process",
    }


def traceparent() -> tuple[str, str, str]:
    """A caller's trace id, span id, and the `traceparent` header that carries them (sampled)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def get(url: str, **headers: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10):
            return 200
    except urllib.error.HTTPError as error:
        return error.code


def access_line(log: Path, request_id: str) -> dict[str, object]:
    """The access line of the request with this id, once the server has written it."""
    deadline = time.monotonic() + 10
    while True:
        for line in log.read_text().splitlines():
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("request_id") == request_id and entry["logger"].endswith(".access"):
                return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"no access line for {request_id}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def assert_continued(spans: list[Span], trace_id: str, span_id: str, service: str) -> None:
    """The request's server span continues the caller's, and its queries' spans are inside it."""
    [server] = [span for span in spans if span.kind == SERVER_SPAN]
    assert (server.trace_id, server.parent_span_id) == (trace_id, span_id)
    assert server.name == "GET /items/{item_id}"
    assert {span.service for span in spans} == {service}
    queries = [span for span in spans if span.kind == CLIENT_SPAN and span.name != "connect"]
    assert queries, f"no query span in {spans}"
    assert all(span.trace_id == trace_id for span in queries)


def test_one_process_sends_the_spans_of_a_callers_request_and_logs_its_trace_id(
    single: Project,
) -> None:
    service = f"single-{secrets.token_hex(3)}"
    with OtlpReceiver() as receiver, serving(single, **exporting_to(receiver, service)) as served:
        url, log, _ = served
        trace_id, span_id, header = traceparent()
        status = get(f"{url}/items/987654321", traceparent=header, **{"X-Request-ID": "single-1"})
        assert status == 404
        spans = receiver.spans_of_trace(trace_id)
        assert_continued(spans, trace_id, span_id, service)
        line = access_line(log, "single-1")
        assert (line["trace_id"], line["route"], line["status"]) == (
            trace_id,
            "/items/{item_id}",
            404,
        )


def test_no_request_waits_for_a_collector_that_never_answers(single: Project) -> None:
    """Exports wait for their timeout while requests go on: answered at once, their spans beyond
    the (here tiny) queue dropped, and the SDK's warning for each dropped span logged once."""
    settings = {
        "OTEL_BSP_MAX_QUEUE_SIZE": "4",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "30",
    }
    with (
        silent_endpoint() as endpoint,
        serving(
            single, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="10", **settings
        ) as (url, log, _),
    ):
        started = time.monotonic()
        for number in range(60):
            assert get(f"{url}/items/987654321", **{"X-Request-ID": f"waits-{number}"}) == 404
        elapsed = time.monotonic() - started
        access_line(log, "waits-59")
        dropped = [line for line in log.read_text().splitlines() if "Queue full" in line]
    assert elapsed < 20, f"60 requests took {elapsed:.1f} s"
    assert len(dropped) == 1, dropped


def test_the_spans_queued_at_a_stop_still_reach_a_collector_that_answers(single: Project) -> None:
    """A request's spans, still queued for the next batch (5 s by default) when SIGTERM comes,
    are sent as the app stops (Uvicorn then ends the process by raising SIGTERM again, which
    skips the SDK's exit handler): the bound on that flush loses nothing where the collector
    answers."""
    service = f"stop-{secrets.token_hex(3)}"
    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": service}
        with serving(single, **env) as (url, log, process):
            trace_id, span_id, header = traceparent()
            assert get(f"{url}/items/987654321", traceparent=header) == 404
            assert not receiver.received
            process.terminate()
            code = process.wait(timeout=30)
            output = log.read_text()
        assert code in (0, -signal.SIGTERM), output[-3000:]
        spans = receiver.spans_of_trace(trace_id, timeout=1)
    assert_continued(spans, trace_id, span_id, service)


def calls_until_two_workers_answered(url: str, receiver: OtlpReceiver) -> list[tuple[str, str]]:
    """Requests with a caller's trace, eight connections at a time, until the spans received
    come from two processes (or 160 requests): the callers' trace and span ids."""
    callers: list[tuple[str, str]] = []
    lock = threading.Lock()

    def call() -> None:
        trace_id, span_id, header = traceparent()
        get(f"{url}/items/987654321", traceparent=header, **{"X-Request-ID": trace_id})
        with lock:
            callers.append((trace_id, span_id))

    for _ in range(20):
        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if len(senders(receiver, timeout=1)) >= 2:
            break
    return callers


def wait_for_workers(output: Callable[[], str], count: int = 2) -> None:
    """Until the server's output says that `count` workers have started their application."""
    deadline = time.monotonic() + 180
    while output().count("Application startup complete") < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} workers started:\n{output()[-3000:]}")
        time.sleep(0.2)


def senders(receiver: OtlpReceiver, timeout: float = 20.0) -> set[int | None]:
    """The processes (process.pid) whose spans the receiver has, once it has some."""
    return {span.pid for span in receiver.wait_for(lambda spans: spans, timeout)}


def test_each_worker_sends_its_spans(workers: Project) -> None:
    """Both workers' spans arrive, each worker having set up its own exporter; every request's
    trace is complete, and each access line has its trace id."""
    service = f"workers-{secrets.token_hex(3)}"
    with OtlpReceiver() as receiver, serving(workers, **exporting_to(receiver, service)) as served:
        url, log, _ = served
        wait_for_workers(log.read_text)
        callers = calls_until_two_workers_answered(url, receiver)
        for trace_id, span_id in callers:
            assert_continued(receiver.spans_of_trace(trace_id), trace_id, span_id, service)
            assert access_line(log, trace_id)["trace_id"] == trace_id
        pids = senders(receiver)
    assert len(pids) == 2 and None not in pids, f"spans came from {pids}"


def test_an_unhandled_error_is_reported_with_its_request_id_and_release(
    single: Project,
) -> None:
    with SentryServer() as sentry, serving(single, SENTRY_DSN=sentry.dsn) as (url, _, _):
        assert get(f"{url}/crash", **{"X-Request-ID": "crash-report-1"}) == 500
        [event] = sentry.wait_for(lambda events: events)
        time.sleep(1)  # a second event (a duplicate) would be here by now
        assert len(sentry.received) == 1
    assert event["tags"]["request_id"] == "crash-report-1"
    assert event["release"] == "my-api@0.1.0"
    [exception] = event["exception"]["values"]
    assert (exception["type"], exception["value"]) == ("RuntimeError", "a bug to report")
    assert exception["mechanism"]["handled"] is False


def imported(project: Project, cwd: Path, module: str) -> set[str]:
    """The modules that importing the app's module loads, in this project's environment."""
    check = f"import sys, {module}; print(' '.join(sys.modules))"
    result = subprocess.run(
        [str(project.bin / "python"), "-c", check],
        cwd=cwd,
        env=tool_env(**project.env, SENTRY_DSN=""),
        capture_output=True,
        text=True,
        check=True,
    )
    return set(result.stdout.split())


def test_without_a_dsn_the_sentry_sdk_is_not_imported(single: Project) -> None:
    loaded = imported(single, single.path, "app.main")
    assert "opentelemetry.sdk.trace" in loaded
    assert "sentry_sdk" not in loaded


@pytest.mark.parametrize("layout", ["package", "single_file"])
def test_with_the_answers_off_nothing_of_either_is_installed_or_imported(
    template: Path, tmp_path: Path, single: Project, layout: str
) -> None:
    """Neither SDK is in the lock or any file (FastAPI itself depends on the OpenTelemetry API,
    inert without an SDK), and the app imports neither even where both are installed (run in
    the environment of a project that has them)."""
    answers = {**SINGLE, "layout": layout, "tracing": "none", "error_reports": "none"}
    path = render(template, tmp_path / "off", answers, tasks=True)
    lock = (path / "uv.lock").read_text()
    for package in ("opentelemetry-sdk", "opentelemetry-exporter", "opentelemetry-instr", "sentry"):
        assert package not in lock
    for name in ["pyproject.toml", "Dockerfile", "compose.yaml", ".env.example", "README.md"]:
        text = (path / name).read_text().lower()
        assert "opentelemetry" not in text and "otel_" not in text, name
        assert "sentry" not in text, name
    loaded = imported(single, path, "app.main" if layout == "package" else "main")
    assert not {name for name in loaded if name.startswith(("opentelemetry.sdk", "sentry_sdk"))}


@pytest.fixture(scope="module")
def workers_image(workers: Project) -> Iterator[str]:
    """The workers project's image, built once for the tests that run it."""
    docker.require_engine()
    with docker.image(workers.path, "telemetry") as tag:
        yield tag


@contextlib.contextmanager
def running(workers: Project, tag: str, **env: str) -> Iterator[tuple[str, str]]:
    """A container of the image, locked down as compose runs it, on the host's network so that it
    reaches the receivers and PostgreSQL on 127.0.0.1 (and listens there only: the command gives
    the address and port): its name and base URL, once it answers."""
    port = free_port()
    settings = [f"--env={name}={value}" for name, value in {**workers.env, **env}.items()]
    locked = ["--read-only", "--tmpfs=/tmp", "--tmpfs=/run/metrics:uid=10001,gid=10001"]
    command = tuple(image_command(workers.path, port))
    with docker.container(tag, "--network=host", *locked, *settings, command=command) as name:
        try:
            wait_for_http(f"http://127.0.0.1:{port}/health", timeout=180)
            yield name, f"http://127.0.0.1:{port}"
        except Exception as error:
            error.add_note(f"--- container output\n{docker.logs(name)[-6000:]}")
            raise


@pytest.mark.docker
def test_the_image_sends_the_spans_of_each_worker(workers: Project, workers_image: str) -> None:
    """Each worker in the container sets up its own exporter, as on the host."""
    service = f"image-{secrets.token_hex(3)}"
    with (
        OtlpReceiver() as receiver,
        running(workers, workers_image, **exporting_to(receiver, service)) as (name, url),
    ):
        wait_for_workers(lambda: docker.logs(name))
        callers = calls_until_two_workers_answered(url, receiver)
        for trace_id, span_id in callers:
            assert_continued(receiver.spans_of_trace(trace_id), trace_id, span_id, service)
        pids = senders(receiver)
        assert len(pids) == 2 and None not in pids, f"spans came from {pids}"


@pytest.mark.docker
@pytest.mark.parametrize("processes", [1, 2])
def test_a_stopped_container_exits_within_dockers_grace_while_the_collectors_never_answer(
    workers: Project, workers_image: str, processes: int
) -> None:
    """Traced requests and an error report, whose exports hang on an endpoint that accepts
    connections and never answers, then `docker stop`: the container exits 0 well within its
    10 s, the spans and report still pending given up. One Uvicorn process (WEB_CONCURRENCY=1)
    is the container's first process, where the SDKs' exit handlers run: the OpenTelemetry SDK's
    would wait 30 s for the spans and Docker would kill it. Two are workers under Uvicorn's
    supervisor."""
    with silent_endpoint() as endpoint:
        settings = {
            "WEB_CONCURRENCY": str(processes),
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # the exporter stuck in an export, more queued
            "SENTRY_DSN": endpoint.replace("http://", "http://publickey@") + "/42",
        }
        with running(workers, workers_image, **settings) as (name, url):
            wait_for_workers(lambda: docker.logs(name), processes)
            for number in range(30):
                assert get(f"{url}/items/987654321", **{"X-Request-ID": f"stop-{number}"}) == 404
                time.sleep(0.02)
            assert get(f"{url}/crash") == 500
            since = time.time() - 1
            docker.docker("stop", "--time", "10", name)
            code = docker.docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout
            output = docker.logs(name)
            elapsed = seconds_from_stop_signal_to_exit(name, since)
    # Docker sends SIGKILL 10 s after SIGTERM: exit code 0 means it stopped before (137: killed).
    assert code.strip() == "0", f"exit code {code.strip()} (137: killed):\n{output[-3000:]}"
    print(f"{processes} process(es): stopped {elapsed:.1f} s after SIGTERM")


def seconds_from_stop_signal_to_exit(name: str, since: float) -> float:
    """From the engine's SIGTERM to the container's exit, as its events record them: the time
    its grace counts (not the client's own delays on a busy machine)."""
    events = docker.docker(
        "events",
        f"--since={since:.3f}",
        f"--until={time.time():.3f}",
        f"--filter=container={name}",
        "--filter=event=kill",
        "--filter=event=die",
        "--format={{.Action}} {{.TimeNano}}",
    ).stdout.split("\n")
    times = dict(reversed([line.split() for line in events if line]))  # the first of each
    print(f"SIGTERM at {int(times['kill']) / 1e9:.3f}, exit at {int(times['die']) / 1e9:.3f}")
    return (int(times["die"]) - int(times["kill"])) / 1e9
