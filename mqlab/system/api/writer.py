"""Accepting orders: each stored with its job, committed, then enqueued; in groups."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import orjson
import psycopg
import psycopg_pool
import redis.asyncio as aioredis

from mqlab import db
from mqlab.backend_errors import REDIS_FAILURE
from mqlab.protocol import keys
from mqlab.protocol.messages import encode_message
from mqlab.system.api.validation import OrderIn

ACCEPTED_MESSAGE = "Orden recibida y en proceso"


class RedisDown(Exception):
    """The job could not be enqueued (its rows were taken back); __cause__ says why."""


Accepted = tuple[int, str]  # (orderId, jobId)


class Connections(Protocol):
    """What a writer writes with (the API's Backends): named by shape, so that this module
    and backends.py, which makes the writer, do not import each other."""

    pool: psycopg_pool.AsyncConnectionPool
    redis: aioredis.Redis


class OrderWriter:
    """Writes accepted orders in groups: one INSERT (one commit) and one LPUSH per group.

    Why: on this kind of machine a round trip to PostgreSQL or Redis costs far more CPU
    (system calls, wake-ups) than the statement itself. An order that arrives while a group
    is being written waits for the next group; with one client a group is one order and
    nothing waits. Each order is still stored with its job in one transaction before its
    job is enqueued, and a group whose LPUSH fails is deleted again, so the contract holds.
    """

    #: Orders per group at most.
    MAX_GROUP = 100
    #: Groups written at once: a second one overlaps the first one's commit (its fsync).
    MAX_WRITERS = 2

    def __init__(self, backends: Connections) -> None:
        self.backends = backends
        self.pending: list[tuple[OrderIn, asyncio.Future[Accepted]]] = []
        self.writers = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def submit(self, order: OrderIn) -> Accepted:
        """(orderId, jobId) once the order is committed and its job enqueued.

        Raises RedisDown when the LPUSH failed (the rows are deleted again), psycopg errors
        (PoolTimeout among them) when PostgreSQL is away or refuses the order.
        """
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self.pending.append((order, future))
        self._maybe_start()
        return await future

    def _maybe_start(self) -> None:
        if self.pending and self.writers < self.MAX_WRITERS:
            self.writers += 1
            # A task of its own, so that a cancelled request never strands the others.
            task = asyncio.get_running_loop().create_task(self._write_next())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _write_next(self) -> None:
        group = self.pending[: self.MAX_GROUP]
        del self.pending[: self.MAX_GROUP]
        try:
            # Empty when the writer started just before took every pending order (orders that
            # arrived in one go): without this check it sent an INSERT of nothing, an LPUSH
            # of nothing (refused by Redis) and a DELETE of nothing, in the middle of a burst.
            if group:
                await self._write(group)
        except Exception as exc:
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
        finally:
            # Cancelled (shutdown): whoever still waits must not wait forever.
            for _, future in group:
                future.cancel()
            self.writers -= 1
            self._maybe_start()

    async def _write(self, group: list[tuple[OrderIn, asyncio.Future[Accepted]]]) -> None:
        orders = [order for order, _ in group]
        try:
            rows = await self._insert(orders)
        except (psycopg.DataError, psycopg.IntegrityError):
            if len(group) == 1:
                raise
            # One order PostgreSQL refuses must not sink the others: write them one by one.
            for item in group:
                try:
                    await self._write([item])
                except Exception as exc:
                    if not item[1].done():
                        item[1].set_exception(exc)
            return
        # Commit first, then enqueue: a worker must never pop a job whose row is not there yet.
        messages = [encode_message(job_id, order_id, at) for order_id, job_id, at in rows]
        try:
            # One LPUSH of many values pushes them in order: FIFO is kept within the group.
            await self.backends.redis.lpush(keys.QUEUE, *messages)
        except REDIS_FAILURE as exc:
            # Not enqueued, so not accepted, whether Redis is away or refused the push (the
            # queue's key holds no list): take the rows back so that nothing is left behind.
            async with self.backends.pool.connection() as conn:
                await conn.execute(db.DELETE_ORDERS, [[order_id for order_id, _, _ in rows]])
            raise RedisDown(str(exc)) from exc
        for (_, future), (order_id, job_id, _) in zip(group, rows, strict=True):
            if not future.done():
                future.set_result((order_id, job_id))

    async def _insert(self, orders: list[OrderIn]) -> list[tuple[int, str, str]]:
        """The rows (orderId, jobId, enqueuedAt as ISO text) of the orders, in their order."""
        async with self.backends.pool.connection() as conn:
            cur = await conn.execute(db.INSERT_ORDERS, _insert_params(orders))
            found = await cur.fetchall()
        by_position = {n: (order_id, job_id, at) for n, order_id, job_id, at in found}
        return [by_position[n] for n in range(1, len(orders) + 1)]


def _insert_params(orders: list[OrderIn]) -> dict[str, object]:
    return {
        "products": [o.product for o in orders],
        "quantities": [o.quantity for o in orders],
        "prices": [o.price for o in orders],
        "ms": int(time.time() * 1000),
    }


async def prepare_insert(conn: psycopg.AsyncConnection[object]) -> None:
    """Get a new pool connection ready for the INSERT: prepared, on a warm backend.

    Why: a new connection's first orders paid a second round trip (psycopg prepares the
    statement, then runs it) and a cold backend (catalog caches, indexes, the foreign-key
    check's plan). With the pool handing out its connections in turn, the first orders after
    the API started paid that, one per connection: 5-7 ms instead of ~3 ms for one order.
    It leaves nothing behind: the INSERT runs for no orders (no sequence value taken), and
    the warm-up row is rolled back.
    """
    prepare = db.prepare_threshold() is not None  # none behind a pooler that cannot keep them
    await conn.execute(db.INSERT_ORDERS, _insert_params([]), prepare=prepare)
    async with conn.transaction(force_rollback=True):
        await conn.execute(db.WARM_UP_INSERT)


def accepted_body(order_id: int, job_id: str) -> bytes:
    return orjson.dumps(
        {"message": ACCEPTED_MESSAGE, "orderId": order_id, "jobId": job_id, "status": "pending"}
    )
