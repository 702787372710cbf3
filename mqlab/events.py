"""Live events for the lab: a capped Redis stream of job and worker happenings."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from mqlab import keys


def queue(pipe: Any, kind: str, **fields: str | int | float) -> None:
    """Add the XADD of one event to a pipeline (the worker sends it with its ack)."""
    entry: dict[str, str | int | float] = {"type": kind, "at": time.time(), **fields}
    pipe.xadd(keys.EVENTS, entry, maxlen=keys.EVENTS_MAXLEN, approximate=True)


async def emit(client: aioredis.Redis, kind: str, **fields: str | int | float) -> None:
    """XADD one event; losing one (Redis away) never stops the work."""
    with contextlib.suppress(redis.exceptions.RedisError, OSError):
        async with client.pipeline(transaction=False) as pipe:
            queue(pipe, kind, **fields)
            await pipe.execute()
