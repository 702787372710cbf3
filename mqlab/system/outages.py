"""The worker's calls to Redis and PostgreSQL through outages: retried, backing off, until the
backend answers, and given up at once on a stop request (Stopped).

PostgreSQL's refusals are told apart: one that every statement would meet alike (a missing
table, a revoked grant: NotReady) is waited out as an outage, one about the message at hand
(its data, or its row's: Rejected) makes the worker dead-letter that message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import redis.exceptions

from mqlab import db
from mqlab.backend_errors import BACKEND_DOWN
from mqlab.protocol import keys

# The worker's logger: these lines are the worker's, under one name wherever they are written.
log = logging.getLogger("mqlab.system.worker")

T = TypeVar("T")

#: Reconnect backoff: doubles from the first to the last, with jitter.
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0

#: SQLSTATE classes that say the database is not what the worker's statements need (0A not
#: supported, 28 authorization, 3D/3F no such database or schema, 42 no such table or column,
#: no privilege). A claim's parameters cannot cause them, and every claim would fail alike:
#: the worker waits, as for an outage, rather than dead-letter the whole queue.
SETUP_SQLSTATE_CLASSES = ("0A", "28", "3D", "3F", "42")


class Stopped(Exception):
    """A stop request ended a wait on a backend (raised by Outages.retry, caught by run)."""


class NotReady(Exception):
    """PostgreSQL refuses every statement alike (a missing table, a revoked grant)."""


class Rejected(Exception):
    """PostgreSQL refused a statement about one message (its data, or its row's)."""


#: What Outages.retry waits out: a backend away, not ready, or Valkey full (out of memory
#: under maxmemory with noeviction: it refuses even BLMOVE and LMOVE until memory is freed, so
#: a worker says so and waits, and a stop meanwhile is a clean one; docs/production.md saw a
#: worker take nothing and say nothing, then die on SIGTERM with OutOfMemoryError).
RETRYABLE: tuple[type[BaseException], ...] = (
    *BACKEND_DOWN,
    NotReady,
    redis.exceptions.OutOfMemoryError,
)


def refusal(exc: psycopg.Error, what: str) -> NotReady | Rejected:
    """What a psycopg error that is not a connection problem means for the message at hand."""
    state = exc.sqlstate or ""
    if state[:2] in SETUP_SQLSTATE_CLASSES or (
        not state and isinstance(exc, psycopg.ProgrammingError)  # our statement, not the data
    ):
        return NotReady(f"PostgreSQL refused the {what}: {exc}")
    code = f" ({state})" if state else ""
    return Rejected(f"PostgreSQL refused the {what}: {exc}{code}")


def forget(task: asyncio.Task[Any]) -> None:
    """Done-callback of an abandoned task: its outcome is of no interest (and is retrieved,
    so that asyncio does not log it as never retrieved)."""
    if not task.cancelled():
        task.exception()


class Outages:
    """One worker's calls through outages. `stop_for_now` is the stop request that ends a
    wait (the worker's: which one depends on whether a job is in hand)."""

    def __init__(
        self, worker_id: str, pg: db.LazyConnection, stop_for_now: Callable[[], asyncio.Event]
    ) -> None:
        self.worker_id = worker_id
        self.pg = pg
        self.stop_for_now = stop_for_now
        #: time.monotonic() when this worker last lost sight of Redis (a call failed, or a
        #: heartbeat pass came late). The reaper judges no one for a heartbeat TTL after it:
        #: whatever kept us from Redis kept the others from beating too.
        self.lost_sight = -float(keys.HEARTBEAT_TTL)

    async def retry(self, what: str, op: Callable[[], Awaitable[T]], *, race: bool = False) -> T:
        """Run `op()` until the backends answer, backing off; Stopped on a stop request.

        The first attempt runs op() as it is: on the hot path, no task and no waiter per call.
        Later attempts, and the first with race=True, are dropped the moment the stop comes
        (a connection attempt to a server that is away can take seconds), and so is the wait
        between them.
        """
        delay = BACKOFF_FIRST
        while True:
            try:
                return await (self.unless_stopped(op) if race else op())
            except RETRYABLE as exc:
                if isinstance(exc, psycopg.Error):
                    await self.pg.drop()
                elif not isinstance(exc, NotReady):
                    self.lost_sight = time.monotonic()
                log.warning(
                    "%s: %s failed (%s); retrying in %.1fs", self.worker_id, what, exc, delay
                )
                await self.pause(delay * (0.5 + random.random()))
                delay = min(delay * 2, BACKOFF_MAX)
                race = True

    async def unless_stopped(self, op: Callable[[], Awaitable[T]]) -> T:
        """op(), unless a stop request (see stop_for_now) comes first: then Stopped."""
        stop = self.stop_for_now()
        if stop.is_set():
            raise Stopped
        task = asyncio.ensure_future(op())
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            abandoned = not task.done()
            if abandoned:  # the stop came first (or our caller was cancelled)
                task.cancel()
                task.add_done_callback(forget)
        if abandoned:
            raise Stopped
        return task.result()

    async def pause(self, seconds: float) -> None:
        """Wait between two attempts; Stopped as soon as a stop request ends the wait."""
        stop = self.stop_for_now()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        if stop.is_set():
            raise Stopped

    async def sql(self, sql: str, params: Any, what: str) -> tuple[Any, ...] | None:
        """One statement's row (or None), retried through outages.

        Rejected when PostgreSQL refuses this statement for its data: the caller dead-letters
        the message rather than retry it for ever (or, as before, crash on it).
        """
        found = await self._run(sql, params, what, every=False)
        return found[0] if found else None

    async def rows(self, sql: str, params: Any, what: str) -> list[tuple[Any, ...]]:
        """One statement's rows, as sql() runs it (a batch's claim or completion)."""
        return await self._run(sql, params, what, every=True)

    async def _run(self, sql: str, params: Any, what: str, *, every: bool) -> list[tuple[Any, ...]]:
        async def op() -> list[tuple[Any, ...]]:
            async with self.pg.use() as conn:
                try:
                    cursor = await conn.execute(sql, params)
                    if every:
                        return await cursor.fetchall()
                    row = await cursor.fetchone()
                    return [] if row is None else [row]
                except BACKEND_DOWN:
                    raise
                except psycopg.Error as exc:
                    raise refusal(exc, what) from exc

        return await self.retry("PostgreSQL", op)
