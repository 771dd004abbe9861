"""Prometheus metrics and health checks on an optional HTTP listener (`metrics_listen`).

The listener is off by default and should stay on a private address: it serves
`/metrics` (Prometheus text, from prometheus-client), `/health` (the process is up) and
`/ready` (accepting SSH connections: 503 while starting or draining).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from .logs import log_event

log = logging.getLogger("gateway.metrics")

CONNECTIONS = Gauge("gateway_connections_in_flight", "SSH connections open now")
UNAUTHENTICATED = Gauge(
    "gateway_connections_unauthenticated",
    "SSH connections open now that have not authenticated yet",
)
CONNECTIONS_TOTAL = Counter(
    "gateway_connections", "SSH connections by what became of them at accept time", ["result"]
)
AUTH = Counter("gateway_auth", "Public-key authentication results", ["result"])
SESSIONS = Gauge("gateway_sessions_in_flight", "SSH sessions (commands) running now")
COMMANDS = Counter("gateway_commands", "Commands by verb and outcome", ["verb", "outcome"])
DURATION = Histogram(
    "gateway_command_duration_seconds",
    "Command duration by verb",
    ["verb"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
BYTES = Counter("gateway_session_bytes", "Bytes through sessions' standard streams", ["direction"])
GIT_WORKERS_RUNNING = Gauge(
    "gateway_git_workers_running", "Git requests holding a worker slot now (max_git_workers)"
)
GIT_REQUESTS_QUEUED = Gauge(
    "gateway_git_requests_queued", "Git requests waiting for a worker slot now"
)
GIT_REQUESTS_REFUSED = Counter(
    "gateway_git_requests_refused",
    "Git requests refused or cut: busy, per_account, request_timeout, access_changed",
    ["reason"],
)

MAX_REQUEST = 8192


class CountingWriter:
    """A session's output stream, counting the bytes that leave."""

    def __init__(self, inner, counter) -> None:
        self._inner = inner
        self._counter = counter

    def write(self, data: bytes) -> None:
        self._counter.inc(len(data))
        self._inner.write(data)

    async def drain(self) -> None:
        await self._inner.drain()

    def __getattr__(self, name):
        return getattr(self._inner, name)


class CountingReader:
    def __init__(self, inner, counter) -> None:
        self._inner = inner
        self._counter = counter

    async def read(self, n: int = -1) -> bytes:
        data = await self._inner.read(n)
        self._counter.inc(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self._inner, name)


async def serve_http(sock, ready: Callable[[], bool]) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ") + [""]
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path == "/metrics":
                status, body, kind = "200 OK", generate_latest(), CONTENT_TYPE_LATEST
            elif path == "/health":
                status, body, kind = "200 OK", b"ok\n", "text/plain"
            elif path == "/ready":
                status, body, kind = (
                    ("200 OK", b"ready\n", "text/plain")
                    if ready()
                    else ("503 Service Unavailable", b"not ready\n", "text/plain")
                )
            else:
                status, body, kind = "404 Not Found", b"not found\n", "text/plain"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, sock=sock, limit=MAX_REQUEST)
    host, port = sock.getsockname()[:2]
    log_event(log, "metrics.listening", address=f"{host}:{port}")
    return server
