"""The API's backends: a PostgreSQL pool and a Redis client, and the 503s when one is away."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
import psycopg_pool
import redis.asyncio as aioredis
import redis.exceptions
from fastapi.responses import JSONResponse

from mqlab.api.validation import error_response
from mqlab.api.writer import OrderWriter, prepare_insert
from mqlab.settings import Settings

log = logging.getLogger("mqlab.api")

#: How long a request waits for a pooled connection before answering 503.
POOL_TIMEOUT = 2.0

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
PG_ERRORS = (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg.InterfaceError)


class Backends:
    """The connections one API process holds: a PostgreSQL pool and a Redis client."""

    def __init__(self, settings: Settings, pool_size: int) -> None:
        self.pool = psycopg_pool.AsyncConnectionPool(
            settings.database_url,
            min_size=min(4, pool_size),
            max_size=pool_size,
            # Prepared on first use: the pool hands out its connections in turn, so with the
            # default threshold (5 runs per connection) a lab's few orders were never prepared
            # and each paid for planning the statement (single-order p50 3.2 -> 2.8 ms).
            kwargs={"autocommit": True, "prepare_threshold": 0},
            configure=prepare_insert,
            timeout=POOL_TIMEOUT,
            open=False,
        )
        self.redis = aioredis.Redis.from_url(
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
        with contextlib.suppress(*REDIS_ERRORS):
            await asyncio.gather(*(self.redis.ping() for _ in range(OrderWriter.MAX_WRITERS)))

    async def close(self) -> None:
        await self.pool.close()
        await self.redis.aclose()


def unavailable(backend: str, exc: BaseException) -> JSONResponse:
    return error_response(
        503,
        f"{backend} is unavailable",
        [{"backend": backend, "message": str(exc) or type(exc).__name__}],
        headers={"Retry-After": "1"},
    )


def pg_failure(exc: BaseException) -> JSONResponse:
    """503 when PostgreSQL is away (or the pool has no connection for us), else 500."""
    if isinstance(exc, PG_ERRORS):
        return unavailable("PostgreSQL", exc)
    log.error("database error: %s", exc)
    return error_response(500, "database error", [{"message": str(exc)}])
