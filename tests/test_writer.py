"""The API's grouped writer, driven directly against the real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio

import psycopg
import redis

from mqlab.protocol import keys
from mqlab.settings import Settings
from mqlab.system.api.backends import Backends
from mqlab.system.api.validation import OrderIn
from mqlab.system.api.writer import OrderWriter
from mqlab.system.resetting import reset_all


class CountingWriter(OrderWriter):
    """Records the size of every group it writes."""

    def __init__(self, backends: Backends) -> None:
        super().__init__(backends)
        self.groups: list[int] = []

    async def _write(self, group: list) -> None:  # type: ignore[type-arg]
        self.groups.append(len(group))
        await super()._write(group)


async def test_orders_that_arrive_together_are_one_group_and_no_empty_write(
    settings: Settings, rds: redis.Redis, pg: psycopg.Connection
) -> None:
    reset_all(settings)
    backends = Backends(settings, pool_size=4)
    await backends.open()
    try:
        writer = CountingWriter(backends)
        orders = [OrderIn(product=f"Item {n}", quantity=1, price=1.0) for n in range(10)]
        # Submitted in one go, as a burst read in one loop iteration: the first writer
        # takes them all, and the second one, started beside it, finds nothing to write.
        accepted = await asyncio.gather(*(writer.submit(o) for o in orders))
    finally:
        await backends.close()

    assert writer.groups == [10]
    assert [order_id for order_id, _ in accepted] == list(range(1, 11))
    assert rds.llen(keys.QUEUE) == 10
    row = pg.execute("SELECT count(*) FROM jobs WHERE status = 'pending'").fetchone()
    assert row is not None and row[0] == 10
