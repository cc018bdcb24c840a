"""A private package index on 127.0.0.1 for the tests: PyPI behind HTTP basic auth.

It serves PyPI's simple API with every file link pointing back at itself, and the JSON API
built from it (tests/pypi_json.py), and answers a file with a redirect to PyPI's file host; all
only with the right credentials. It records each request and whether it carried them, so a
test can tell that a tool used the index and authenticated, and nothing else could have served
the tool (PyPI's own URLs never appear).
"""

import base64
import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.pypi_json import PYPI, Page, cached, fetch, json_page, send

FILES = "https://files.pythonhosted.org/packages/"


@dataclass
class PrivateIndex:
    """The running index: its simple-API URL, the credentials it wants, what it was asked."""

    url: str
    username: str
    password: str
    requests: list[tuple[str, bool]] = field(default_factory=list)

    def authorized_paths(self) -> list[str]:
        return [path for path, authorized in self.requests if authorized]

    def authorized_since(self, start: int) -> bool:
        """Whether a request with the credentials came in after the first `start` ones."""
        return any(authorized for _, authorized in self.requests[start:])


def _handler(index: PrivateIndex, base: str) -> type[BaseHTTPRequestHandler]:
    token = base64.b64encode(f"{index.username}:{index.password}".encode()).decode()

    def moved(path: str, accept: str) -> Page:
        """PyPI's simple page with file links moved onto this index."""
        status, content_type, body = fetch(PYPI + path, accept)
        return status, content_type, body.replace(FILES.encode(), f"{base}/files/".encode())

    upstream_page = cached(moved)

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            authorized = self.headers.get("Authorization") == f"Basic {token}"
            index.requests.append((self.path, authorized))
            if not authorized:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="private"')
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path.startswith("/files/"):
                self.send_response(302)
                self.send_header("Location", FILES + self.path.removeprefix("/files/"))
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path.endswith("/json"):
                send(self, json_page(upstream_page, self.path))
            elif self.path.startswith("/simple/"):
                send(self, upstream_page(self.path, self.headers.get("Accept", "text/html")))
            else:
                self.send_error(404)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test reads `index.requests` instead."""

    return Handler


@contextlib.contextmanager
def private_index() -> Iterator[PrivateIndex]:
    """Serve a private index on a free loopback port for the duration of the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    index = PrivateIndex(
        url=f"{base}/simple/",
        username=f"ci-{uuid.uuid4().hex[:8]}",
        password=f"canary-{uuid.uuid4().hex}",
    )
    server.RequestHandlerClass = _handler(index, base)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield index
    finally:
        server.shutdown()
        server.server_close()
