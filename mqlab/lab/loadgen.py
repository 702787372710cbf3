"""A cheap async load generator for POST /orders: raw HTTP/1.1 over keep-alive connections.

The client shares two cores with the API, PostgreSQL and Redis, so every microsecond it burns
is taken from the system under test. Measured on the 2-core lab machine against a trivial
uvloop HTTP server, 5000 POSTs, client CPU per request at 1 / 10 connections: httpx
(AsyncClient) 1275 / 1890 us, aiohttp 230 / 143 us, this module 81 / 30 us (7,100 / 32,000
requests/s). So this is a small asyncio Protocol that writes pre-formatted request bytes and
parses only what it needs (status line, Content-Length, the JSON body): no new dependency.

Each of `concurrency` connections sends its next request when the previous answer arrived
(closed loop), so the offered load adapts to the server: the figures are sustained rates.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import cast
from urllib.parse import urlsplit

import orjson

from mqlab.figures.shot import Shot

#: A request that has not been answered within this long is recorded as an error.
REQUEST_TIMEOUT = 30.0
#: After a failed connect or a dropped connection, wait this long before the next try, so that
#: a dead server yields a bounded stream of error Shots rather than a busy loop.
RECONNECT_PAUSE = 0.01
#: A response head larger than this is a protocol error (ours are ~200 bytes).
MAX_HEAD = 64 * 1024


class ProtocolError(Exception):
    """A response we cannot parse."""


class _Response:
    """The parsed response head and body."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


def _parse_head(head: bytes) -> tuple[int, int]:
    """(status, content length) from the bytes before the blank line."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line: {lines[0][:80]!r}")
    status = int(parts[1])
    length = -1
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lowered = name.strip().lower()
        if lowered == b"content-length":
            length = int(value.strip())
        elif lowered == b"transfer-encoding":
            # The API always sends Content-Length; chunked answers are not worth the CPU here.
            raise ProtocolError("chunked responses are not supported")
    if length < 0:
        raise ProtocolError("response without Content-Length")
    return status, length


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[_Response] | None = None
        self.closed = False
        self.head: tuple[int, int] | None = None  # parsed head of the response being read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same API.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self._try_complete()
        except (ProtocolError, ValueError) as exc:
            self._fail(ProtocolError(str(exc)))
            if self.transport is not None:
                self.transport.close()

    def _try_complete(self) -> None:
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    raise ProtocolError("response head too large")
                return
            self.head = _parse_head(bytes(self.buffer[:end]))
            del self.buffer[: end + 4]
        status, length = self.head
        if len(self.buffer) < length:
            return
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        self.head = None
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(_Response(status, body))

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"connection closed by the server: {exc or 'EOF'}"))

    def request(self, data: bytes) -> asyncio.Future[_Response]:
        """Write one request; the future resolves with its response."""
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Requests:
    """Hands out request indexes and their bytes to the connections, until a stop."""

    def __init__(
        self, host: str, port: int, n: int, product: str, price: float, deadline: float | None
    ) -> None:
        self.counter: Iterator[int] = itertools.count()
        # Without a deadline n is the count; with one, n > 0 caps it and n <= 0 means no cap.
        self.cap: int | None = n if deadline is None or n > 0 else None
        self.deadline = deadline
        # Everything but the product name and Content-Length is formatted once.
        self.head = (
            f"POST /orders HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.body_start = b'{"product":"'
        self.body_end = f'","quantity":1,"price":{orjson.dumps(price).decode()}}}'.encode()
        self.product = orjson.dumps(product)[1:-1]  # JSON-escaped, without the quotes

    def next(self) -> tuple[int, bytes] | None:
        """The next (index, request bytes), or None when it is time to stop."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return None
        index = next(self.counter)
        if self.cap is not None and index >= self.cap:
            return None
        body = b"%b%b%d%b" % (self.body_start, self.product, index, self.body_end)
        return index, b"%b%d\r\n\r\n%b" % (self.head, len(body), body)


def _shot(index: int, sent_at: float, latency: float, res: _Response) -> Shot:
    order_id: int | None = None
    job_id: str | None = None
    if res.status == 202:
        data = orjson.loads(res.body)
        order_id, job_id = data.get("orderId"), data.get("jobId")
    return Shot(index, res.status, sent_at, latency, order_id, job_id, None)


async def _connect(host: str, port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Connection, host, port)
    return conn


class _Link:
    """A connection that reconnects on demand and turns each request into a Shot."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn: _Connection | None = None

    async def shoot(self, index: int, data: bytes) -> Shot:
        sent_at, started = time.time(), time.perf_counter()
        try:
            if self.conn is None or self.conn.closed:
                self.conn = await asyncio.wait_for(_connect(self.host, self.port), REQUEST_TIMEOUT)
                # Connect time is not request latency: restart the clock after it.
                sent_at, started = time.time(), time.perf_counter()
            res = await asyncio.wait_for(self.conn.request(data), REQUEST_TIMEOUT)
        except (OSError, ProtocolError, TimeoutError) as exc:
            latency = time.perf_counter() - started
            self.close()
            await asyncio.sleep(RECONNECT_PAUSE)
            return Shot(index, 0, sent_at, latency, None, None, _describe(exc))
        return _shot(index, sent_at, time.perf_counter() - started, res)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


async def _client(host: str, port: int, requests: _Requests, shots: list[Shot]) -> None:
    """One connection's closed loop: send, wait for the answer, send the next."""
    link = _Link(host, port)
    try:
        while (item := requests.next()) is not None:
            shots.append(await link.shoot(*item))
    finally:
        link.close()


def _address(base_url: str) -> tuple[str, int]:
    url = urlsplit(base_url)
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"expected an http://host:port URL, not {base_url!r}")
    return url.hostname, url.port or 80


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no response within {REQUEST_TIMEOUT:g} s"
    return f"{type(exc).__name__}: {exc}"


async def fire(
    base_url: str,
    n: int,
    concurrency: int,
    *,
    product: str = "Item",
    price: float = 10.0,
    duration: float | None = None,
) -> list[Shot]:
    """POST n orders over `concurrency` keep-alive connections; one Shot per request, by index.

    Products are f"{product}{index}" with index 0..n-1, quantity 1, the given price. Each
    connection sends its next request as soon as its previous answer arrived.

    With `duration` (seconds), connections keep firing until that much time has passed
    (requests in flight then are still awaited); n is then a cap on the total (n <= 0: no
    cap). Without it, exactly n requests are sent (n <= 0: none).

    A request that fails without an HTTP response (refused, reset, timed out) is a Shot with
    status 0 and `error` set; any HTTP answer, also a 4xx/5xx, has error None.
    """
    if duration is None and n <= 0:
        return []
    host, port = _address(base_url)
    deadline = time.monotonic() + duration if duration is not None else None
    requests = _Requests(host, port, n, product, price, deadline)
    shots: list[Shot] = []
    clients = [_client(host, port, requests, shots) for _ in range(max(1, concurrency))]
    await asyncio.gather(*clients)
    shots.sort(key=lambda s: s.index)
    return shots


async def pace(
    base_url: str, n: int, interval: float, *, product: str = "Item", price: float = 10.0
) -> list[Shot]:
    """POST n orders one at a time over one keep-alive connection, one every `interval` s.

    An open-loop trickle for latency measurements (e.g. dispatch latency to idle workers):
    the i-th request is sent at start + i * interval, or as soon as the previous answer
    arrived if that is later.
    """
    host, port = _address(base_url)
    requests = _Requests(host, port, n, product, price, None)
    link = _Link(host, port)
    shots: list[Shot] = []
    start = time.monotonic()
    try:
        while (item := requests.next()) is not None:
            delay = start + item[0] * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            shots.append(await link.shoot(*item))
    finally:
        link.close()
    return shots
