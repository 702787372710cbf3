"""The API's backends: a PostgreSQL pool and a Redis client, and the 503s when one is away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

import psycopg
import psycopg_pool
import redis.exceptions
from fastapi.responses import JSONResponse

from mqlab import db
from mqlab.backend_errors import POSTGRES_DOWN, REDIS_DOWN
from mqlab.settings import Settings
from mqlab.system.api.validation import error_response
from mqlab.system.api.writer import OrderWriter, prepare_insert
from mqlab.system.redis_clients import async_client

log = logging.getLogger("mqlab.system.api")

#: How long a request waits for a pooled connection before answering 503.
POOL_TIMEOUT = 2.0
#: How long the pool retries a connection that failed before giving it up; a request that
#: waits starts a new one. Why short: psycopg_pool doubles the wait between retries (1, 2,
#: 4, 8 s ...) for up to 5 minutes by default, so after a 15 s outage the next try came
#: seconds after PostgreSQL was back, and every order until then got a 503.
RECONNECT_TIMEOUT = 1.0

RETRY_AFTER = {"Retry-After": "1"}


class LivePool(psycopg_pool.AsyncConnectionPool):
    """A pool that never hands out a connection that its server has closed.

    Why: after PostgreSQL restarted (`kill -INT`, `mqlab services up`), the pool's idle
    connections were all dead, and it handed them out one by one: each failed its order with
    a 503 until every one had been tried. Here a dead one is dropped at checkout, found with
    no round trip (db.closed_by_server), and the next is taken, so all the dead ones go at
    the first request, which gets a fresh connection. A failure during a statement is not
    retried: an INSERT whose answer was lost may have committed, and an order must never be
    written twice (the client gets a 503 and decides).
    """

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            conn = await super().getconn(max(deadline - time.monotonic(), 0.0))
            if not db.closed_by_server(conn):
                return conn
            await conn.close()  # closed: the pool discards it and opens another
            await self.putconn(conn)


class Backends:
    """The connections one API process holds: a PostgreSQL pool and a Redis client."""

    def __init__(self, settings: Settings, pool_size: int) -> None:
        self.pool = LivePool(
            settings.database_url,
            min_size=min(4, pool_size),
            max_size=pool_size,
            # Prepared on first use: the pool hands out its connections in turn, so with the
            # default threshold (5 runs per connection) a lab's few orders were never prepared
            # and each paid for planning the statement (single-order p50 3.2 -> 2.8 ms).
            # (Or never, behind a pooler that cannot keep them: db.prepare_threshold.)
            kwargs={"autocommit": True, "prepare_threshold": db.prepare_threshold()},
            configure=prepare_insert,
            timeout=POOL_TIMEOUT,
            reconnect_timeout=RECONNECT_TIMEOUT,
            open=False,
        )
        self.redis = async_client(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=2,
            socket_connect_timeout=1,
            max_connections=pool_size * 2,
        )
        self.writer = OrderWriter(self)

    async def open(self) -> None:
        # wait=False: the API starts (and answers 503) even while PostgreSQL is away.
        await self.pool.open(wait=False)
        # Connect to Redis now, one connection per group writer, rather than on the first
        # orders (a connect is a round trip more on each).
        with contextlib.suppress(*REDIS_DOWN):
            await asyncio.gather(*(self.redis.ping() for _ in range(OrderWriter.MAX_WRITERS)))

    async def close(self) -> None:
        await self.pool.close()
        await self.redis.aclose()


#: During an outage (or a flood) every request fails the same way: say so at most this often.
DOWN_LOG_INTERVAL = 1.0
_logged: dict[str, tuple[float, int]] = {}  # what -> (last logged, lines skipped since)


def log_seldom(what: str, message: str) -> None:
    """Log a warning about `what` at most once a DOWN_LOG_INTERVAL, saying how many were not."""
    now = time.monotonic()
    last, since = _logged.get(what, (-math.inf, 0))
    if now - last < DOWN_LOG_INTERVAL:
        _logged[what] = (last, since + 1)
        return
    _logged[what] = (now, 0)
    more = f" ({since} more since the last line)" if since else ""
    log.warning("%s%s", message, more)


def log_down(backend: str, exc: BaseException) -> None:
    """Log why a backend is unavailable: the driver's words go here, not to the client."""
    log_seldom(backend, f"{backend} is unavailable: {str(exc) or type(exc).__name__}")


def unavailable(backend: str, exc: BaseException) -> JSONResponse:
    """503 naming the backend. Not its socket path nor the driver's message: the log has those."""
    log_down(backend, exc)
    return error_response(
        503, f"{backend} is unavailable", [{"backend": backend}], headers=RETRY_AFTER
    )


def internal_error(where: str, exc: BaseException) -> JSONResponse:
    """500 for a failure of ours: logged here, once, with its traceback; none in the body."""
    log.error("%s failed", where, exc_info=exc)
    return error_response(500, "internal error")


def redis_failure(where: str, exc: BaseException) -> JSONResponse:
    """503 when Redis is away, or full (out of memory under `maxmemory` with noeviction: it
    refuses writes until the workers drain it, see docs/production.md), else 500."""
    if isinstance(exc, REDIS_DOWN):
        return unavailable("Redis", exc)
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        log_seldom("Redis", f"Redis refuses writes: {exc}")
        return error_response(
            503, "Redis is full (out of memory): it refuses new jobs until the queue drains",
            [{"backend": "Redis"}], headers=RETRY_AFTER,
        )  # fmt: skip
    return internal_error(where, exc)


def pg_failure(where: str, exc: BaseException) -> JSONResponse:
    """503 when PostgreSQL is away (or the pool has no connection for us), else 500."""
    if isinstance(exc, POSTGRES_DOWN):
        return unavailable("PostgreSQL", exc)
    return internal_error(where, exc)
