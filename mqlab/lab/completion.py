"""Waiting until every job of a batch is completed: the runner's rows and the bench's phases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from mqlab import db

#: How often PostgreSQL is asked while a batch runs.
POLL_SECONDS = 0.05

CountHandler = Callable[[int], Awaitable[None]]


async def wait_completed(
    conn: psycopg.AsyncConnection[Any],
    jobs: int,
    timeout: float,
    on_count: CountHandler | None = None,
) -> bool:
    """Poll until at least `jobs` jobs are completed (True) or `timeout` seconds pass (False).

    One connection for every poll: a new one each time would cost PostgreSQL a fork.
    on_count gets each count as it is read (the runner's progress line).
    """
    deadline = time.monotonic() + timeout
    while True:
        done = await db.count_completed(conn)
        if on_count is not None:
            await on_count(done)
        if done >= jobs:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_SECONDS)


async def wait_completed_at(url: str, jobs: int, timeout: float) -> bool:
    """wait_completed on a connection of its own to the PostgreSQL at `url`."""
    async with await psycopg.AsyncConnection.connect(
        url, autocommit=True, **db.connect_options()
    ) as conn:
        return await wait_completed(conn, jobs, timeout)
