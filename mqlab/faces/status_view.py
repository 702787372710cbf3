"""`mqlab status [--watch]`: the queue, the workers and the orders, as rich tables."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import redis.asyncio as aioredis
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mqlab.protocol import keys
from mqlab.protocol.events import WorkerState
from mqlab.protocol.messages import DeadLetter
from mqlab.settings import Settings
from mqlab.system.connections import both
from mqlab.system.observe import (
    GONE,
    THROUGHPUT_SECONDS,
    Snapshot,
    latest_dead_letters,
    snapshot,
)
from mqlab.system.reconciler_record import LastRun, read_run

#: How many of the latest dead letters `mqlab status` lists.
DEAD_LETTERS_SHOWN = 5
STATE_STYLES: dict[str, str] = {
    WorkerState.BUSY: "yellow",
    WorkerState.IDLE: "green",
    WorkerState.STOPPING: "magenta",
}


def age(at: float | None, now: float | None = None) -> str:
    """How long ago, in one short unit: 5s, 3m, 2h, 4d."""
    if at is None:
        return "?"
    seconds = max(0.0, (time.time() if now is None else now) - at)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def dead_letters_table(letters: list[DeadLetter], total: int, now: float, width: int) -> Table:
    """The latest dead letters within `width` columns: the worker id and the reason whole,
    on as many lines as they need; the message, a preview of whatever bytes were pushed (up
    to thousands), on one line ending in an ellipsis (`mqlab dead show JOB` has its job).

    The reason and the message share what the fixed columns leave (Rich, left to itself,
    would shrink every column alike, "when" too, once the table is too wide).
    """
    title = f"latest dead letters ({len(letters)} of {total}, newest first; {keys.DEAD})"
    table = Table(title=title, title_justify="left")
    table.add_column("when", no_wrap=True)
    table.add_column("worker", overflow="fold", max_width=12)
    # 13 columns of borders and padding, 8 for "when", 12 for "worker".
    rest = max(20, width - 13 - 8 - 12)
    table.add_column("reason", overflow="fold", max_width=rest * 3 // 5)
    table.add_column("message", no_wrap=True, overflow="ellipsis", max_width=rest - rest * 3 // 5)
    for letter in letters:
        # Text, not markup: a reason or a message may hold "[...]" of any kind.
        table.add_row(
            age(letter.at, now), Text(letter.worker), Text(letter.reason), Text(letter.message)
        )
    return table


def due_in(seconds: float | None) -> str:
    """When the next retry is due, for a person: `in 3s`, `in 2m`, `now`."""
    if seconds is None:
        return ""
    if seconds < 1:
        return "now"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"in {int(seconds // size)}{unit}"
    return f"in {int(seconds)}s"


def retries_line(snap: Snapshot) -> Text:
    """Jobs retrying (PostgreSQL), their messages waiting in the delayed set (Redis) with the
    next one's due time, and dead jobs: `retrying 2, delayed 2 (next due in 3s), dead 1`."""
    due = f" (next due {due_in(snap.next_retry_in)})" if snap.next_retry_in is not None else ""
    return Text(
        f"jobs: retrying {snap.jobs.get('retrying', 0)}, delayed {snap.delayed}{due}, "
        f"dead {snap.jobs.get('dead', 0)}"
    )


def reconciler_line(run: LastRun | None, now: float) -> Text:
    """One line on the reconciler's last run: when, by whom, what it requeued."""
    if run is None:
        return Text("reconciler: never ran")
    last = "never" if run.last_requeue_at is None else age(run.last_requeue_at, now)
    return Text(
        f"reconciler: last ran {age(run.at, now)} by {run.by}, requeued {run.requeued} "
        f"(last requeue: {last})"
    )


def live_hosts(snap: Snapshot) -> list[str]:
    """The hosts of the live workers, by name (the snapshot's hosts but GONE)."""
    return [h.host for h in snap.hosts if h.host != GONE]


def hosts_table(snap: Snapshot) -> Table:
    """Per host: live workers, busy ones, their jobs done, and jobs completed per second
    over the last THROUGHPUT_SECONDS (PostgreSQL's count)."""
    table = Table(title=f"hosts (jobs/s: the last {THROUGHPUT_SECONDS:g} s)", title_justify="left")
    table.add_column("host", overflow="fold")
    for column in ("workers", "busy", "jobs done", "jobs/s"):
        table.add_column(column, justify="right")
    for h in snap.hosts:
        table.add_row(
            Text(h.host, style="dim" if h.host == GONE else ""),
            str(h.workers),
            str(h.busy),
            str(h.jobs_done),
            f"{h.per_second:.1f}",
        )
    return table


def render(
    snap: Snapshot,
    dead: list[DeadLetter] | None = None,
    width: int = 80,
    reconciler: LastRun | None = None,
) -> Group:
    queue = Table(title="queue", title_justify="left")
    for column in (f"waiting ({keys.QUEUE})", "in flight", "dead letters", "workers"):
        queue.add_column(column, justify="right")
    queue.add_row(
        str(snap.queue_depth), str(snap.processing), str(snap.dead), str(len(snap.workers))
    )

    workers = Table(title="workers", title_justify="left")
    # Ids are never cut: a job id keeps its whole width, a long worker id folds onto a second
    # line; the short headers leave them the room at 80 columns.
    workers.add_column("id", overflow="fold")
    workers.add_column("pid")
    workers.add_column("state")
    longest = max((len(w.job) for w in snap.workers), default=3)
    workers.add_column("current job", no_wrap=True, min_width=longest)
    for column in ("for", "done", "last beat"):
        workers.add_column(column, overflow="fold")
    # Several hosts: the workers grouped by host, a line naming each; one host: as before.
    several = len(live_hosts(snap)) > 1
    groups = [[w for w in snap.workers if w.host == host] for host in live_hosts(snap)]
    for group in groups if several else [snap.workers]:
        if several and group:
            workers.add_row(Text(group[0].host, style="bold"), "", "", "", "", "", "")
        for i, w in enumerate(group):
            running = f"{snap.taken_at - w.job_started:.1f}s" if w.job_started else ""
            style = STATE_STYLES.get(w.state, "")
            workers.add_row(
                Text(w.id),
                str(w.pid),
                f"[{style}]{w.state}[/]" if style else w.state,
                Text(w.job or "-"),
                running,
                str(w.jobs_done),
                f"{snap.taken_at - w.last_beat:.1f}s ago",
                end_section=several and i == len(group) - 1,
            )
    if not snap.workers:
        workers.add_row("[dim](no live worker)[/]", "", "", "", "", "", "")

    orders = Table(title="orders by status", title_justify="left")
    for name in snap.orders:
        orders.add_column(name, justify="right")
    orders.add_row(*(str(n) for n in snap.orders.values()))
    parts: list[Table | Text] = [queue, workers]
    if several:
        parts.append(hosts_table(snap))
    parts += [orders, retries_line(snap)]
    if dead:
        parts.append(dead_letters_table(dead, snap.dead, snap.taken_at, width))
    parts.append(reconciler_line(reconciler, snap.taken_at))
    stamp = time.strftime("%H:%M:%S", time.localtime(snap.taken_at))
    return Group(*parts, f"[dim]at {stamp}[/]")


async def _view(client: aioredis.Redis, conn: psycopg.AsyncConnection[Any], width: int) -> Group:
    snap = await snapshot(client, conn)
    dead = await latest_dead_letters(client, DEAD_LETTERS_SHOWN) if snap.dead else []
    return render(snap, dead, width, await read_run(client))


async def show(settings: Settings, console: Console, *, watch: bool, interval: float) -> None:
    """Print one snapshot, or refresh one in place until Ctrl-C; ConnectionError naming the
    server that does not answer."""
    async with both(settings) as (client, conn):
        view = await _view(client, conn, console.width)
        if not watch:
            console.print(view)
            return
        with Live(view, console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(interval)
                live.update(await _view(client, conn, console.width), refresh=True)
