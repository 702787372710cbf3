"""`mqlab status [--watch]`: the queue, the workers and the orders, as rich tables."""

from __future__ import annotations

import asyncio
import time

import psycopg
import redis.asyncio as aioredis
import redis.exceptions
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from mqlab.observe import Snapshot, snapshot
from mqlab.settings import Settings


def render(snap: Snapshot) -> Group:
    queue = Table(title="queue", title_justify="left")
    for column in ("waiting (orders:queue)", "in flight", "dead letters", "workers"):
        queue.add_column(column, justify="right")
    queue.add_row(
        str(snap.queue_depth), str(snap.processing), str(snap.dead), str(len(snap.workers))
    )

    workers = Table(title="workers", title_justify="left")
    for column in ("id", "pid", "state", "current job", "for", "jobs done", "last beat"):
        workers.add_column(column)
    for w in snap.workers:
        running = f"{snap.taken_at - w.job_started:.1f}s" if w.job_started else ""
        style = {"busy": "yellow", "idle": "green", "stopping": "magenta"}.get(w.state, "")
        workers.add_row(
            w.id,
            str(w.pid),
            f"[{style}]{w.state}[/]" if style else w.state,
            w.job or "-",
            running,
            str(w.jobs_done),
            f"{snap.taken_at - w.last_beat:.1f}s ago",
        )
    if not snap.workers:
        workers.add_row("[dim](no live worker)[/]", "", "", "", "", "", "")

    orders = Table(title="orders by status", title_justify="left")
    for name in snap.orders:
        orders.add_column(name, justify="right")
    orders.add_row(*(str(n) for n in snap.orders.values()))
    stamp = time.strftime("%H:%M:%S", time.localtime(snap.taken_at))
    return Group(queue, workers, orders, f"[dim]at {stamp}[/]")


async def show(settings: Settings, console: Console, *, watch: bool, interval: float) -> None:
    """Print one snapshot, or refresh one in place until Ctrl-C."""
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=3)
    try:
        try:
            conn = await psycopg.AsyncConnection.connect(
                settings.database_url, autocommit=True, connect_timeout=3
            )
        except psycopg.OperationalError as exc:
            raise ConnectionError(f"PostgreSQL does not answer: {exc}") from None
        async with conn:
            try:
                snap = await snapshot(client, conn)
            except (redis.exceptions.ConnectionError, OSError) as exc:
                raise ConnectionError(f"Redis does not answer: {exc}") from None
            if not watch:
                console.print(render(snap))
                return
            with Live(render(snap), console=console, auto_refresh=False) as live:
                while True:
                    await asyncio.sleep(interval)
                    live.update(render(await snapshot(client, conn)), refresh=True)
    finally:
        await client.aclose()
