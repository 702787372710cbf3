"""Every connection to the API ends: timeouts for a request's headers and body, no reading
past an early answer (a 413), and a cap on open connections with a clear answer beyond it.

On a real API process with short limits, over raw sockets (an HTTP client would not send
half a request)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from mqlab.lab.supervisor import Supervisor
from mqlab.settings import Settings
from tests.helpers import eventually

MAX_CONNECTIONS = 4
OPTIONS = [
    "--header-timeout", "1", "--body-timeout", "1", "--keep-alive", "1",
    "--max-connections", str(MAX_CONNECTIONS),
]  # fmt: skip
#: Generous: the limits above are 1 s; the old API held every one of these forever.
ENDED_WITHIN = 8.0
ORDER_HEAD = (
    b"POST /orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
)


@pytest.fixture(scope="module")
def address(settings: Settings) -> Iterator[tuple[str, int]]:
    """An API of its own, with short limits."""
    with Supervisor(settings) as sup:
        sup.start_api(options=OPTIONS)
        assert sup.api_url is not None
        host, port = sup.api_url.removeprefix("http://").split(":")
        yield host, int(port)


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=ENDED_WITHIN)
    return sock


def until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """What the API sent until it closed the connection, and how long that took; fails the
    test when the connection is still open after ENDED_WITHIN."""
    start, data = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"still open after {ENDED_WITHIN} s; got {data[:200]!r}")
    except ConnectionResetError:
        pass
    return data, time.monotonic() - start


def answer(data: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, orjson.loads(body)


@pytest.mark.slow
def test_an_idle_connection_is_closed(address: tuple[str, int]) -> None:
    with connect(address) as sock:
        data, seconds = until_closed(sock)
    assert data == b""  # nothing of a request arrived: nothing to answer
    assert seconds < ENDED_WITHIN


@pytest.mark.slow
def test_half_sent_headers_get_408_and_the_connection_closed(address: tuple[str, int]) -> None:
    with connect(address) as sock:
        sock.sendall(b"POST /orders HTTP/1.1\r\nHost: t\r\nContent-Ty")
        data, _ = until_closed(sock)
    status, headers, body = answer(data)
    assert status == 408
    assert headers["connection"] == "close"
    assert body["details"] == [{"waitingFor": "headers", "timeoutSeconds": 1.0}]


@pytest.mark.slow
def test_a_body_shorter_than_its_length_gets_408_and_the_connection_closed(
    address: tuple[str, int], clean: None
) -> None:
    with connect(address) as sock:
        sock.sendall(ORDER_HEAD % 100 + b'\r\n{"product": "Lap')
        data, _ = until_closed(sock)
    status, _, body = answer(data)
    assert status == 408
    assert body["details"] == [{"waitingFor": "body", "timeoutSeconds": 1.0}]


@pytest.mark.slow
def test_a_kept_alive_connection_gets_the_same_header_timeout(address: tuple[str, int]) -> None:
    with connect(address) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /hea")  # the next request, never finished
        data, _ = until_closed(sock)
    assert answer(data)[0] == 408


def test_a_413_ends_the_connection_however_long_the_upload(address: tuple[str, int]) -> None:
    """The old API answered 413 and then read and dropped whatever came, for ever."""
    with connect(address) as sock:
        sock.sendall(ORDER_HEAD % 10**12 + b"\r\n")
        sock.settimeout(0.2)
        chunk, data, start = b"x" * 65536, b"", time.monotonic()
        while time.monotonic() - start < ENDED_WITHIN:
            try:
                sock.sendall(chunk)
            except TimeoutError:
                pass  # the API stopped reading: the socket's buffers are full
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                received = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not received:
                break
            data += received
        else:
            pytest.fail(f"still uploading after {ENDED_WITHIN} s")
    status, headers, _ = answer(data)
    assert status == 413
    assert headers["connection"] == "close"


@pytest.mark.slow
def test_connections_beyond_the_cap_get_503_saying_why(
    address: tuple[str, int], clean: None
) -> None:
    held: list[socket.socket] = []
    try:
        # Until the API refuses one (a connection of an earlier test may still be ending).
        for _ in range(MAX_CONNECTIONS + 1):
            sock = connect(address)
            held.append(sock)
            sock.settimeout(0.3)
            try:
                refusal = sock.recv(65536)
            except TimeoutError:
                continue  # held, silent: under the cap
            break
        else:
            pytest.fail(f"{len(held)} connections open and none refused")
        assert len(held) > 1
        status, headers, body = answer(refusal + until_closed(held[-1])[0])
        assert status == 503
        assert headers["connection"] == "close"
        assert headers["retry-after"] == "1"
        assert body == {
            "error": "too many connections: close an idle one or try again",
            "details": [{"maxConnections": MAX_CONNECTIONS}],
        }
    finally:
        for sock in held:
            sock.close()
    # The held ones closed, an order goes through on the same API.
    host, port = address
    order = {"product": "Laptop", "quantity": 1, "price": 1200}

    def accepted() -> bool:
        res = httpx.post(f"http://{host}:{port}/orders", json=order, timeout=5)
        return res.status_code == 202

    eventually(accepted, timeout=5)
