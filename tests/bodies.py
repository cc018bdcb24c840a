"""Large request bodies sent to a running server, and the memory of the process that gets them."""

import re
import socket
from pathlib import Path

MIB = 1024 * 1024


def post_body(port: int, path: str, size: int, *, chunked: bool, host: str = "127.0.0.1") -> int:
    """POST `size` bytes of JSON-ish filler to `path`, with a Content-Length or chunked; return
    the response's status. The body is sent in 64 KiB pieces while the answer may already be
    there: a server that refuses early may stop reading (the rest is then not sent)."""
    piece = b"x" * (64 * 1024)
    framing = b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}".encode()
    head = b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n%s\r\n\r\n"
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head % (path.encode(), host.encode(), framing))
        sent = 0
        try:
            while sent < size:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed before taking it all
            pass
        answer = b""
        while b"\r\n" not in answer:
            received = sock.recv(4096)
            if not received:
                break
            answer += received
    found = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    assert found, f"no HTTP answer: {answer[:200]!r}"
    return int(found.group(1))


def rss_mib(pid: int) -> float:
    """Resident memory of a process of this host, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert found, status
    return int(found.group(1)) / 1024
