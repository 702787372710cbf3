"""The link: a small TCP proxy on a lab host's path to a server, in the manner of Shopify's
toxiproxy, since `tc netem` is not in our kernel.

It runs inside the host's network namespace, listens on the host's loopback (LISTEN) and
forwards to the server on the bridge (UPSTREAM), one route per server. On command (a unix
socket, mqlab.lab.hosts.link_control) it delays every chunk by `delay + jitter` each way, cuts
every connection and refuses new ones (a partition), and heals.

Built on asyncio Protocols rather than streams: with no delay a chunk is written to the other
side from data_received itself, with no task switch and no timer, so the hop costs little.
Due times are read from time.monotonic(), not the loop's clock: uvloop's is libuv's, in whole
milliseconds and cached at the start of a loop turn, and with it a 1 ms delay was seen to
come out at 0.3 ms. A timer that fires early finds nothing due and waits again: never early.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import random
import socket
import time
from dataclasses import dataclass

log = logging.getLogger("mqlab.lab.hosts.link")

#: Bytes a direction may hold back (delayed, not yet written) before it stops reading its
#: source: a large stream through a slow link waits, instead of filling our memory.
HOLD_LIMIT = 4 * 1024 * 1024


class LinkError(RuntimeError):
    """A link cannot listen where it was told to, or does not answer its control socket."""


@dataclass(frozen=True)
class Address:
    """An IP address (loopback or private: no link reaches off the machine) and a port."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """'127.0.0.1:6380' or '[::1]:6380'; ValueError saying what is wrong."""
        host, colon, port = text.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:6380)")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IP address") from None
        if not (ip.is_loopback or ip.is_private):
            raise ValueError(
                f"{host} in {text!r} is neither a loopback nor a private address: "
                "the lab's links stay on this machine"
            )
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"port {port!r} in {text!r} is not a number from 1 to 65535")
        return cls(str(ip), int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Route:
    """Connections to `listen` go on to `upstream`."""

    listen: Address
    upstream: Address

    @classmethod
    def parse(cls, text: str) -> Route:
        """'LISTEN=UPSTREAM', e.g. '127.0.0.1:6380=10.200.0.1:40000'; ValueError if not."""
        listen, equals, upstream = text.partition("=")
        if not equals:
            raise ValueError(
                f"{text!r} is not LISTEN=UPSTREAM (e.g. 127.0.0.1:6380=10.200.0.1:40000)"
            )
        return cls(Address.parse(listen), Address.parse(upstream))

    def __str__(self) -> str:
        return f"{self.listen}={self.upstream}"


def check_delay(delay_ms: object, jitter_ms: object) -> tuple[float, float]:
    """A delay and a jitter in milliseconds: finite numbers from 0 to a minute."""
    for name, value in (("delay_ms", delay_ms), ("jitter_ms", jitter_ms)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number of milliseconds, not {value!r}")
        if not 0 <= value <= 60_000:  # also false for nan
            raise ValueError(f"{name} must be from 0 to 60000 (a minute), not {value!r}")
    return float(delay_ms), float(jitter_ms)  # type: ignore[arg-type]


class _Pipe:
    """One direction of a connection: chunks read from one end, written to the other, each
    `delay ± jitter` later and never before the chunk ahead of it (no reordering)."""

    def __init__(self, conn: _Connection, up: bool) -> None:
        self.conn, self.up = conn, up
        self.held: collections.deque[tuple[float, bytes]] = collections.deque()
        self.held_bytes = 0
        self.last_due = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.eof = False  # the source said EOF: write it after what is held
        self.done = False  # EOF written: this direction is over
        self.dst_full = False  # the destination's buffer is full (pause_writing)

    @property
    def src(self) -> _End:
        return self.conn.client if self.up else self.conn.server

    @property
    def dst(self) -> _End:
        return self.conn.server if self.up else self.conn.client

    def send(self, data: bytes) -> None:
        link = self.conn.link
        if not self.held and not link.delay and not link.jitter and self.dst.transport:
            self._write(data)  # the fast path: no timer, no task
            return
        now = time.monotonic()
        delay = max(0.0, link.delay + link.rng.uniform(-link.jitter, link.jitter))
        self.last_due = max(now + delay, self.last_due)
        self.held.append((self.last_due, data))
        self.held_bytes += len(data)
        self._pace()
        self.arm()

    def arm(self) -> None:
        """Wake up when the first held chunk is due (not before the destination is connected:
        a client may send before the link's connection to the server is made)."""
        if self.timer is None and self.held and self.dst.transport is not None:
            wait = max(0.0, self.held[0][0] - time.monotonic())
            self.timer = self.conn.link.loop.call_later(wait, self._flush)

    def _write(self, data: bytes) -> None:
        self.dst.transport.write(data)  # type: ignore[union-attr]
        self.conn.link.count(self.up, len(data))

    def _flush(self) -> None:
        """Write every held chunk that is due; wait for the next one."""
        self.timer = None
        now = time.monotonic()
        while self.held and self.held[0][0] <= now:
            _, data = self.held.popleft()
            self.held_bytes -= len(data)
            self._write(data)
        self.arm()
        self._pace()
        if not self.held and self.eof:
            self.finish()

    def finish(self) -> None:
        """The source is done and nothing is held: pass its EOF on."""
        self.eof = True
        if self.held or self.done:
            return
        self.done = True
        transport = self.dst.transport
        if self.src.lost or transport is None or not transport.can_write_eof():
            self.conn.close(abort=False)
        elif not transport.is_closing():
            transport.write_eof()
        if self.conn.up.done and self.conn.down.done:
            self.conn.close(abort=False)

    def drop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.held.clear()
        self.held_bytes = 0

    def _pace(self) -> None:
        """Read from the source only while the destination and our hold have room."""
        transport = self.src.transport
        if transport is None or transport.is_closing():
            return
        full = self.dst_full or self.held_bytes > HOLD_LIMIT
        if full and transport.is_reading():
            transport.pause_reading()
        elif not full and not transport.is_reading():
            transport.resume_reading()


class _End(asyncio.Protocol):
    """One socket of a proxied connection: the client's (accepted) or the server's (dialled)."""

    def __init__(self, conn: _Connection, client: bool) -> None:
        self.conn, self.client = conn, client
        self.transport: asyncio.Transport | None = None
        self.lost = False

    @property
    def out(self) -> _Pipe:
        return self.conn.up if self.client else self.conn.down

    @property
    def into(self) -> _Pipe:
        return self.conn.down if self.client else self.conn.up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:  # each chunk goes out when written: we add delay on purpose only
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn.made(self)

    def data_received(self, data: bytes) -> None:
        self.out.send(data)

    def eof_received(self) -> bool:
        self.out.finish()  # now, or once what is held is written
        return True  # keep the socket open: the other direction may still be talking

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.into.drop()  # nowhere to write it any more
        if not self.out.held:
            self.conn.close(abort=False)
        else:  # what this end sent before it went still reaches the other end, then it closes
            self.out.eof = True
        self.conn.gone()

    def pause_writing(self) -> None:
        self.into.dst_full = True
        self.into._pace()

    def resume_writing(self) -> None:
        self.into.dst_full = False
        self.into._pace()


class _Connection:
    """A client's connection and the one the link dialled for it to the route's upstream."""

    def __init__(self, link: Link, route: Route) -> None:
        self.link, self.route = link, route
        self.client, self.server = _End(self, client=True), _End(self, client=False)
        self.up, self.down = _Pipe(self, up=True), _Pipe(self, up=False)
        self.closed = False

    def made(self, end: _End) -> None:
        if self.closed:  # cut while the server's end was being dialled
            end.transport.abort()  # type: ignore[union-attr]
        elif end.client:
            self.link.accept(self)
        else:  # what the client sent meanwhile was held: it goes now
            self.up.arm()

    async def dial(self) -> None:
        """Connect the server's end; if the upstream does not answer, drop the client."""
        loop = self.link.loop
        upstream = self.route.upstream
        try:
            await loop.create_connection(lambda: self.server, upstream.host, upstream.port)
        except OSError as exc:
            log.warning("%s: cannot reach the upstream: %s", self.route, exc)
            self.server.lost = True
            self.close(abort=True)
            self.gone()

    def close(self, *, abort: bool) -> None:
        """Close both ends: at once (a cut), or after what their buffers hold."""
        self.closed = True
        for end in (self.client, self.server):
            if end.transport is not None and not end.transport.is_closing():
                end.transport.abort() if abort else end.transport.close()
        if abort:
            self.up.drop()
            self.down.drop()

    def gone(self) -> None:
        if self.client.lost and (self.server.lost or self.server.transport is None):
            self.link.connections.discard(self)


class Link:
    """The proxy: its routes' listeners, the connections through them, the delay, the cut."""

    def __init__(
        self,
        routes: list[Route],
        delay_ms: float = 0,
        jitter_ms: float = 0,
        seed: int | None = None,
    ) -> None:
        self.routes = routes
        self.rng = random.Random(seed)
        self.delay, self.jitter = 0.0, 0.0
        self.set_delay(delay_ms, jitter_ms)
        self.cut = False
        self.connections: set[_Connection] = set()
        self.accepted = self.refused = self.bytes_up = self.bytes_down = 0
        self.servers: list[asyncio.Server] = []
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def start(self) -> None:
        """Listen on every route; LinkError if one cannot (its port taken, say)."""
        for route in self.routes:
            try:
                server = await self.loop.create_server(
                    lambda route=route: _Connection(self, route).client,  # type: ignore[misc]
                    route.listen.host,
                    route.listen.port,
                    reuse_address=True,
                )
            except OSError as exc:
                raise LinkError(f"cannot listen on {route.listen}: {exc.strerror or exc}") from None
            self.servers.append(server)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        self.cut_all()
        for server in self.servers:
            await server.wait_closed()

    def set_delay(self, delay_ms: float, jitter_ms: float = 0) -> None:
        """Delay every chunk from now on by delay_ms ± jitter_ms (each way), ValueError if
        these are no sane milliseconds. Chunks already held keep their time."""
        delay_ms, jitter_ms = check_delay(delay_ms, jitter_ms)
        self.delay, self.jitter = delay_ms / 1000, jitter_ms / 1000

    def cut_all(self) -> None:
        for conn in self.connections:
            conn.close(abort=True)
        # Gone now (their sockets are): the counters say so at once, not a loop turn later.
        self.connections.clear()
        for task in self.tasks:
            task.cancel()  # a dial under way

    def set_cut(self, cut: bool) -> None:
        """Cut: close every connection at once and refuse new ones. Heal (False): accept again."""
        self.cut = cut
        if cut:
            self.cut_all()

    def accept(self, conn: _Connection) -> None:
        if self.cut:
            self.refused += 1
            conn.closed = True
            conn.client.transport.abort()  # type: ignore[union-attr]
            return
        self.accepted += 1
        self.connections.add(conn)
        task = self.loop.create_task(conn.dial())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def count(self, up: bool, size: int) -> None:
        if up:
            self.bytes_up += size
        else:
            self.bytes_down += size

    def stats(self) -> dict[str, object]:
        """The settings and the counters, as the control socket answers them."""
        return {
            "delay_ms": self.delay * 1000,
            "jitter_ms": self.jitter * 1000,
            "cut": self.cut,
            "open": len(self.connections),
            "accepted": self.accepted,
            "refused": self.refused,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }
