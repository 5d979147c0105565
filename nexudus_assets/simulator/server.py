"""The simulator's HTTP server: standard library, HTTP/1.1 keep-alive, one thread per connection."""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from nexudus_assets.simulator.api import Request, handle
from nexudus_assets.simulator.core import Simulator

# Short, so that stopping the server does not wait long for the accept loop to notice.
_POLL_INTERVAL = 0.05


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # every answer carries Content-Length, so connections stay open
    # Headers and body go out in separate writes; with Nagle on, keep-alive requests stall ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        reply = handle(self.server.simulator, Request(self.command, url.path, query, self.headers, body))
        if reply.drop:
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if reply.trickle_seconds > 0:
            self._trickle(reply.body, reply.trickle_seconds)
        else:
            self.wfile.write(reply.body)

    def _trickle(self, body: bytes, interval: float) -> None:
        """One byte every `interval` seconds, until the body is sent, the client leaves or the server stops."""
        self.close_connection = True
        for offset in range(len(body)):
            if self.server.stopping.wait(interval):
                return
            try:
                self.wfile.write(body[offset : offset + 1])
            except OSError:  # the client gave up waiting
                return

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the simulator keeps its own request log


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        #: Set on stop, so that answers sent slowly on purpose end at once.
        self.stopping = threading.Event()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End kept-alive connections, whose threads would otherwise wait for the client."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the other side
                connection.shutdown(socket.SHUT_RDWR)


class SimulatorServer:
    """Serves `simulator` over HTTP from a background thread; leaving the `with` block (or `stop()`) shuts it down."""

    def __init__(self, simulator: Simulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = simulator
        self._server = _Server((host, port), simulator)
        bound_host, bound_port = self._server.server_address[:2]
        self.host, self.port = str(bound_host), int(bound_port)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"nexudus-simulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/api"

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.stopping.set()
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> SimulatorServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
