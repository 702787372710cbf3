"""A command's two connections, opened together: `async with both(settings) as (client,
conn)`. A backend that does not answer, when connecting or during the work, is a
ConnectionError saying which one ("Redis does not answer: ..."), for the command to print."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import redis.asyncio as aioredis

from mqlab import db
from mqlab.backend_errors import REDIS_DOWN
from mqlab.settings import Settings
from mqlab.system.redis_clients import async_client

#: Seconds a command waits for either server before saying it does not answer.
TIMEOUT = 3


@contextlib.asynccontextmanager
async def both(
    settings: Settings,
) -> AsyncIterator[tuple[aioredis.Redis, psycopg.AsyncConnection[Any]]]:
    client = async_client(settings.redis_url, decode_responses=True, socket_timeout=TIMEOUT)
    try:
        try:
            conn = await psycopg.AsyncConnection.connect(
                settings.database_url,
                autocommit=True,
                **db.connect_options(),
                connect_timeout=TIMEOUT,
            )
        except psycopg.OperationalError as exc:
            raise ConnectionError(f"PostgreSQL does not answer: {exc}") from None
        async with conn:
            try:
                yield client, conn
            except REDIS_DOWN as exc:
                raise ConnectionError(f"Redis does not answer: {exc}") from None
    finally:
        await client.aclose()
