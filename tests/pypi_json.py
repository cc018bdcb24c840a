"""PyPI's JSON API beside the simple API, so that pip-compile in the tests downloads no file to
hash it.

`pip-compile --generate-hashes` takes the hashes of each pinned release from the index's JSON
API (`/pypi/NAME/json`), and downloads and hashes every file of the release where that API
does not answer. The package mirror these machines reach as pypi.org serves the simple API
but not that JSON API, so every pip lock downloaded about a thousand files again (3.5 min).

`pypi_json` serves PyPI's simple API as it is and the JSON API built from the simple API's own
hashes (PEP 691), on 127.0.0.1; the tests give it to pip as PIP_INDEX_URL, where a project
leaves the index to pip. A lock made through it has the same pins and hashes as one made
against PyPI. The tests' private index answers its JSON API with `json_page` too.
"""

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)

PYPI = "https://pypi.org"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"

# A page as served: status, content type, body.
Page = tuple[int, str, bytes]


def json_api(name: str, simple: dict[str, Any]) -> dict[str, Any]:
    """The JSON API's project answer from a PEP 691 simple page: each release's files, with
    the URLs the simple page gives (pip-compile matches them) and their sha256."""
    releases: dict[str, list[dict[str, Any]]] = {}
    for file in simple["files"]:
        filename, sha256 = file["filename"], file["hashes"].get("sha256")
        try:
            if filename.endswith(".whl"):
                version, kind = parse_wheel_filename(filename)[1], "bdist_wheel"
            else:
                version, kind = parse_sdist_filename(filename)[1], "sdist"
        except (InvalidSdistFilename, InvalidWheelFilename):
            continue
        if sha256:
            releases.setdefault(str(version), []).append(
                {"url": file["url"], "packagetype": kind, "digests": {"sha256": sha256}}
            )
    return {"info": {"name": name}, "releases": releases}


def fetch(url: str, accept: str) -> Page:
    request = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, "text/plain", b""


def cached(get: Callable[[str, str], Page]) -> Callable[[str, str], Page]:
    """`get`, remembering its answers for the run; a passing upstream failure is not kept."""
    pages: dict[tuple[str, str], Page] = {}
    lock = threading.Lock()

    def page(path: str, accept: str) -> Page:
        with lock:
            if (path, accept) in pages:
                return pages[(path, accept)]
        answer = get(path, accept)
        if answer[0] in (200, 404):
            with lock:
                pages[(path, accept)] = answer
        return answer

    return page


def json_page(simple_page: Callable[[str, str], Page], path: str) -> Page:
    """The JSON API's answer for `/pypi/NAME/json` or `/NAME/json` (where pip-compile asks
    an index whose URL ends in /simple/), from the simple page of NAME."""
    name = path.split("/")[-2]
    status, _, body = simple_page(f"/simple/{name}/", SIMPLE_JSON)
    if status != 200:
        return status, "text/plain", b""
    return 200, "application/json", json.dumps(json_api(name, json.loads(body))).encode()


def send(handler: BaseHTTPRequestHandler, page: Page) -> None:
    """Answer the handler's request with `page` (its headers only, to a HEAD)."""
    status, content_type, body = page
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def _handler(simple_page: Callable[[str, str], Page]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path.endswith("/json"):
                send(self, json_page(simple_page, path))
            elif path.startswith("/simple/"):
                send(self, simple_page(path, self.headers.get("Accept", "")))
            else:
                send(self, (404, "text/plain", b""))

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def pypi_json() -> Iterator[str]:
    """Serve PyPI with its JSON API on 127.0.0.1; yield the simple-API URL for PIP_INDEX_URL."""
    simple_page = cached(lambda path, accept: fetch(PYPI + path, accept))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(simple_page))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()
