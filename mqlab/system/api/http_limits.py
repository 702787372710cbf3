"""The API's HTTP connections, with the ends uvicorn does not give them.

uvicorn's httptools protocol closes a connection only when it is idle between requests
(`timeout_keep_alive`, which any byte resets) and never counts open connections. So a
client that opens a connection and sends nothing, sends half its headers, or a body shorter
than its Content-Length, held it forever; after an early answer (a 413) it read and dropped
the rest of the body for as long as the client sent it; and enough idle connections used up
the process's file descriptors, after which nothing else (a new POST, a PostgreSQL or Valkey
connection) could open one. This protocol adds:

- a deadline for a request's headers (from the connection's opening, or from the request's
  first byte on a kept-alive connection) and one for its body (from the end of its headers);
  a late request gets a 408 and the connection is closed, an idle new one is just closed;
- an end to a connection whose answer went out before its request body was read;
- a cap on open connections: one over it gets a 503 saying so and is closed.
"""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mqlab.system.api.backends import log_seldom

if TYPE_CHECKING:
    from uvicorn._types import ASGISendCallable, ASGISendEvent
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

#: File descriptors the API needs besides its HTTP connections: the listening socket, the
#: event loop's own, logs and standard streams, refused connections on their way out.
FD_RESERVE = 64
#: No more connections than this by default, however high the open-file limit.
DEFAULT_MAX_CONNECTIONS = 1000
#: How long a closing connection's late bytes are read and dropped: closing a socket with
#: unread bytes sends a reset, which can destroy the answer before the client reads it.
LINGER_SECONDS = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a request may take to arrive, and how many connections may be open."""

    header_seconds: float = 10.0
    body_seconds: float = 10.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        if self.header_seconds <= 0 or self.body_seconds <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


def fd_budget(pool_size: int) -> int:
    """How many HTTP connections fit under this process's open-file limit (RLIMIT_NOFILE),
    after the PostgreSQL pool (pool_size), the Valkey client (2 * pool_size) and FD_RESERVE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return soft - 3 * pool_size - FD_RESERVE


def _answer(status: int, reason: str, error: str, details: dict[str, Any]) -> bytes:
    """A whole HTTP response in the API's error shape, written before the app is involved."""
    body = orjson.dumps({"error": error, "details": [details]})
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    )
    if status == 503:
        head += "retry-after: 1\r\n"
    return head.encode() + b"\r\n" + body


def limited_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits` (pass it to uvicorn.run as `http=`)."""

    too_many = _answer(
        503,
        "Service Unavailable",
        "too many connections: close an idle one or try again",
        {"maxConnections": limits.max_connections},
    )

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """Times what has not arrived after each read: a request that arrives whole (the
        usual case, also on a kept-alive connection) costs no timer and no wrapper."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.deadline: asyncio.TimerHandle | None = None
            self.timing: str | None = None  # what the deadline waits for: headers or body
            self.phase: str | None = None  # the parser's place: in a request's headers or body
            self.heard = False  # a byte arrived
            self.lingering = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            over = len(self.connections) - limits.max_connections
            if over > 0:
                log_seldom(
                    "max-connections",
                    f"refused a connection: {limits.max_connections} open already "
                    "(--max-connections)",
                )
                self.transport.write(too_many)
                # Each refused one lingers on a descriptor of FD_RESERVE's: past half of them,
                # closed at once (a reset may then overtake the answer).
                self._end(linger=over <= FD_RESERVE // 2)
                return
            self._time("headers")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.lingering:
                return  # the answer is out and the connection ending: the rest is dropped
            self.heard = True
            super().data_received(data)  # cancels uvicorn's keep-alive timer
            if self.lingering or self.transport.is_closing():
                return
            if self.phase is not None:
                self._time(self.phase)
            elif self.cycle is None or self.cycle.response_complete:
                # Bytes that began no request (blank lines) on an idle connection.
                self._time("headers")
            else:
                self._time(None)  # a whole request, with the app: no deadline of ours

        def on_message_begin(self) -> None:
            self.phase = "headers"
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            previous = self.cycle
            super().on_headers_complete()
            if self.cycle is previous:
                self.phase = None  # an upgrade (WebSocket): not a request of ours to time
                return
            self.phase = "body"

        def on_message_complete(self) -> None:
            self.phase = None
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.cycle is not None and self.cycle.more_body:
                # Answered before its body was read (a 413, a 415): reading and dropping the
                # rest would go on for as long as the client sends it.
                self._end()

        def _time(self, part: str | None) -> None:
            """Deadline for `part` (None: none), from the first read that left it unfinished."""
            if part == self.timing:
                return
            self._disarm()
            self.timing = part
            if part == "headers":
                self.deadline = self.loop.call_later(limits.header_seconds, self._headers_late)
            elif part == "body":
                # Its answer may now start before the body is read: say it will close.
                self.cycle.send = self._closing_early(self.cycle)  # type: ignore[method-assign]
                self.deadline = self.loop.call_later(limits.body_seconds, self._body_late)

        def _closing_early(self, cycle: RequestResponseCycle) -> ASGISendCallable:
            """The cycle's send, saying `connection: close` on an answer that starts before
            the request's body was read. Why not uvicorn's own way (the app sends that header,
            uvicorn closes the socket after the answer): closing a socket with unread bytes
            sends a reset, and a client still uploading lost the answer to it.
            on_response_complete ends the connection instead, with a linger."""
            send = cycle.send

            async def closing_send(message: ASGISendEvent) -> None:
                if message["type"] != "http.response.start" or not cycle.more_body:
                    await send(message)
                    return
                keep_alive, cycle.keep_alive = cycle.keep_alive, False  # writes the header
                try:
                    await send(message)
                finally:
                    cycle.keep_alive = keep_alive  # not closed after the body: _end() does it

            return closing_send

        def _headers_late(self) -> None:
            if not self.heard:
                # Nothing of a request arrived: an idle connection, closed without a word.
                self._end()
                return
            self._late("headers", limits.header_seconds)

        def _body_late(self) -> None:
            cycle = self.cycle
            if cycle.response_started:
                self._end()  # answered already (and waiting for the rest of the body)
                return
            # The app waits in receive(): tell it the client is gone, and answer for it.
            cycle.disconnected = True
            cycle.message_event.set()
            self._late("body", limits.body_seconds)

        def _late(self, part: str, seconds: float) -> None:
            late = f"closed a connection: the request's {part} took over {seconds:g} s"
            log_seldom(f"{part}-timeout", late)
            error = f"request timeout: its {part} did not arrive within {seconds:g} s"
            details = {"waitingFor": part, "timeoutSeconds": seconds}
            self.transport.write(_answer(408, "Request Timeout", error, details))
            self._end()

        def _end(self, linger: bool = True) -> None:
            """Close: the answer first, then a FIN, and what the client still sends dropped
            for LINGER_SECONDS (or until it closes too), so that no reset can overtake it."""
            self._disarm()
            if self.transport.is_closing():
                return
            self.lingering = True
            if not linger or not self.transport.can_write_eof():
                self.transport.close()
                return
            self.transport.write_eof()
            # uvicorn's eof_received returns None: the client's FIN closes it sooner.
            self.deadline = self.loop.call_later(LINGER_SECONDS, self.transport.close)

        def _disarm(self) -> None:
            self.timing = None
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

    return LimitedHttpToolsProtocol
