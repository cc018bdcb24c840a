"""Count the round trips a PostgreSQL client makes, with a relay that reads its side of the wire.

A client waits for the server once per simple Query message and once per Sync (which ends an
extended-protocol exchange: Parse, Bind, Execute ...); those are its round trips. The relay
forwards every byte unchanged in both directions and records each round trip with the SQL it
carried: the query, or the statements executed (or only prepared) before the Sync. Connecting
(start-up and authentication) is not counted. It speaks the plain protocol only: a server
without TLS, as the tests' own (a client's TLS request is forwarded, and refused by it).
"""

import asyncio
import contextlib
import struct
import threading
from collections.abc import Iterator

# Start-up packets without a type byte, after which the client may send another one.
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


class _ClientSide:
    """Parses what one client sends; appends a label per round trip to `trips`."""

    def __init__(self, trips: list[str], lock: threading.Lock) -> None:
        self.trips = trips
        self.lock = lock
        self.buffer = b""
        self.typed = False  # after the start-up message, every message has a type byte
        self.statements: dict[bytes, str] = {}  # prepared statement name -> its SQL
        self.bound = ""
        self.executed: list[str] = []
        self.prepared: list[str] = []

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            header = 5 if self.typed else 4
            if len(self.buffer) < header:
                return
            kind = self.buffer[:1] if self.typed else b""
            (length,) = struct.unpack("!I", self.buffer[header - 4 : header])
            end = header - 4 + length
            if len(self.buffer) < end:
                return
            payload, self.buffer = self.buffer[header:end], self.buffer[end:]
            if self.typed:
                self.message(kind, payload)
            elif struct.unpack("!I", payload[:4])[0] not in (_SSL_REQUEST, _GSSENC_REQUEST):
                self.typed = True

    def message(self, kind: bytes, payload: bytes) -> None:
        if kind == b"Q":
            self.record(payload.rstrip(b"\0").decode())
        elif kind == b"P":
            name, query = payload.split(b"\0")[:2]
            self.statements[name] = query.decode()
            self.prepared.append(f"prepare {query.decode()}")
        elif kind == b"B":
            self.bound = self.statements.get(payload.split(b"\0")[1], "?")
        elif kind == b"E":
            self.executed.append(self.bound)
        elif kind == b"S":
            self.record("; ".join(self.executed or self.prepared))
            self.executed, self.prepared = [], []

    def record(self, label: str) -> None:
        with self.lock:
            self.trips.append(label)


class RoundTrips:
    """A relay on a free loopback port to a PostgreSQL server; `trips` lists the round trips
    made through it since the last `reset`."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = 0
        self._trips: list[str] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()

    @property
    def trips(self) -> list[str]:
        with self._lock:
            return list(self._trips)

    def reset(self) -> None:
        with self._lock:
            self._trips.clear()

    async def _relay(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        client: _ClientSide | None,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if client is not None:
                    client.feed(data)
                sink.write(data)
                await sink.drain()
        sink.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        client = _ClientSide(self._trips, self._lock)
        await asyncio.gather(
            self._relay(reader, server_writer, client),
            self._relay(server_reader, writer, None),
        )

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    @contextlib.contextmanager
    def running(self) -> Iterator["RoundTrips"]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        self._ready.wait(10)
        try:
            yield self
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            thread.join(10)
