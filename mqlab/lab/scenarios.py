"""What the lab does to the system while a Kata 4 row runs: SIGKILL workers and replace them,
restart the ones that crashed, FLUSHALL Redis, stop PostgreSQL and start it again.

Each action is marked with the time it happened (epoch seconds, the clock PostgreSQL's
timestamps are compared with), so that the ledger can say how long recovery took.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mqlab.experiments import Row
from mqlab.figures.ledger import Marks
from mqlab.lab import services
from mqlab.lab.environment import Servers
from mqlab.lab.services import postgres_server
from mqlab.lab.supervisor import Supervisor
from mqlab.system.redis_clients import async_client

log = logging.getLogger("mqlab.lab.scenarios")

#: How often the lab looks for workers that died on their own (to restart them).
WATCH_SECONDS = 0.2


class EmbeddedPostgres:
    """The embedded PostgreSQL a run started: stopped as `mqlab services down` stops it (SIGINT,
    its fast shutdown) and started again on the same port, so the API and the workers find it
    at the same URL and reconnect by themselves."""

    def __init__(self, base: Path | None) -> None:
        self.base = base

    def stop(self) -> None:
        services.down(base=self.base, only=[postgres_server.NAME])

    def start(self) -> None:
        services.up(owned=True, base=self.base)


def owned_postgres(servers: Servers) -> EmbeddedPostgres | None:
    """Control of PostgreSQL when this run started it; None when it is the person's (a row
    that needs to stop it is then skipped: the lab does not stop servers it does not own)."""
    if postgres_server.NAME not in servers.started:
        return None
    return EmbeddedPostgres(servers.base)


def skip_reason(row: Row, pg: EmbeddedPostgres | None, hosts: LabHosts | None = None) -> str:
    """Why `row` cannot run on these servers ('' when it can)."""
    if row.pg_stop_after is not None and pg is None:
        return (
            "skipped: PostgreSQL is not one this run started (a URL was given or the embedded "
            "one was already running), and the lab stops only servers it owns"
        )
    if row.partition_after is not None and hosts is None:
        return "skipped: a partition cuts a lab host's link; this lab runs on one machine"
    if row.failover_after is not None and not (hosts is not None and hosts.replicated):
        return (
            "skipped: a failover needs a replicated Valkey (a primary, a replica, Sentinels), "
            "which `mqlab run-experiment` starts for this row on lab hosts"
        )
    return ""


class LabHosts(Protocol):
    """What a row on several hosts does to them (mqlab.lab.hosts.lab.HostsLab)."""

    #: Whether Valkey runs replicated behind Sentinels (a failover row needs it).
    replicated: bool

    def set_links(self, delay_ms: float, jitter_ms: float = 0.0) -> None: ...

    def round_trip_ms(self) -> float: ...

    def cut(self, host: str) -> None: ...

    def heal(self, host: str) -> None: ...

    def kill_primary(self, lag_seconds: float = 0.0) -> float: ...

    def wait_promoted(self) -> None: ...


class Scenario:
    """The row's actions, run as one task beside the firing and the wait; cancel() ends it."""

    def __init__(
        self,
        row: Row,
        sup: Supervisor,
        worker_ids: list[str],
        start_worker: Callable[[], str],
        redis_url: str,
        pg: EmbeddedPostgres | None,
        seed: int | None = None,
        hosts: LabHosts | None = None,
    ) -> None:
        self.row = row
        self.sup = sup
        #: The row's workers; replacements are added, the dead ones stay until the end.
        self.ids = worker_ids
        self.start_worker = start_worker
        self.redis_url = redis_url
        self.pg = pg
        self.hosts = hosts
        self.marks = Marks()
        self._killed: set[str] = set()
        self._rng = random.Random(seed)

    def live_ids(self) -> list[str]:
        return [w for w in self.ids if self.sup.children[w].alive()]

    def died_on_their_own(self) -> list[str]:
        """Workers of the row that exited without the lab killing them (crashes)."""
        return [w for w in self.ids if not self.sup.children[w].alive() and w not in self._killed]

    async def run(self, first_sent: float) -> None:
        """Every action the row asks for, timed from `first_sent` (epoch seconds)."""
        row = self.row
        actions = []
        if row.kill_every:
            actions.append(self._kills(row.kill_every))
        if row.restart_crashed or row.kill_every or row.spec.crash_rate:
            actions.append(self._restarts())
        if row.flushall_after is not None:
            actions.append(self._flushall(first_sent + row.flushall_after))
        if row.pg_stop_after is not None and self.pg is not None:
            actions.append(self._pg_outage(first_sent + row.pg_stop_after, row.pg_stop_seconds))
        if row.partition_after is not None and self.hosts is not None:
            at = first_sent + row.partition_after
            actions.append(self._partition(at, row.partition_host, row.partition_seconds))
        if row.failover_after is not None and self.hosts is not None:
            actions.append(self._failover(first_sent + row.failover_after))
        await asyncio.gather(*actions)

    @staticmethod
    async def _until(epoch: float) -> None:
        await asyncio.sleep(max(0.0, epoch - time.time()))

    async def _kills(self, every: float) -> None:
        """SIGKILL a random live worker of the row every `every` s, and start its replacement."""
        while True:
            await asyncio.sleep(every)
            live = self.live_ids()
            if not live:
                continue
            victim = self._rng.choice(live)
            self._killed.add(victim)
            at = time.time()
            await asyncio.to_thread(self.sup.kill, victim)
            self.marks.kills.append((at, victim))
            await self._replace()

    async def _restarts(self) -> None:
        """Start a worker in place of each that died on its own (a crash on purpose)."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            for wid in self.died_on_their_own():
                self._killed.add(wid)  # handled: not restarted twice
                self.marks.restarts.append((time.time(), wid))
                await self._replace()

    async def _replace(self) -> None:
        """Start a worker for the row. Its id is recorded even when the row ends (this task is
        cancelled) while it starts: the thread starts it all the same, and a worker the row
        does not know of would outlive it with the row's faults."""
        start = asyncio.ensure_future(asyncio.to_thread(self.start_worker))
        start.add_done_callback(self._record)
        await asyncio.shield(start)

    def _record(self, start: asyncio.Future[str]) -> None:
        if not start.cancelled() and start.exception() is None:
            self.ids.append(start.result())

    async def _flushall(self, at: float) -> None:
        await self._until(at)
        client = async_client(self.redis_url)
        try:
            await client.flushall()
            self.marks.flushall_at = time.time()
        finally:
            await client.aclose()

    async def _pg_outage(self, at: float, seconds: float) -> None:
        assert self.pg is not None
        await self._until(at)
        self.marks.pg_stopped_at = time.time()
        try:
            await asyncio.to_thread(self.pg.stop)
            await asyncio.sleep(seconds)
        finally:
            # Also when cancelled: a row never leaves PostgreSQL down behind it.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.to_thread(self.pg.start))
            self.marks.pg_started_at = time.time()

    async def _partition(self, at: float, host: str, seconds: float) -> None:
        """Cut `host` off from Valkey and PostgreSQL (its link) for `seconds`, then heal it."""
        assert self.hosts is not None
        await self._until(at)
        self.marks.cut_host = host
        self.marks.cut_at = time.time()
        try:
            await asyncio.to_thread(self.hosts.cut, host)
            await asyncio.sleep(seconds)
        finally:
            # Also when cancelled: a row never leaves a host cut off behind it.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.to_thread(self.hosts.heal, host))
            self.marks.healed_at = time.time()

    async def _failover(self, at: float) -> None:
        """SIGKILL the Valkey primary (the replica held back the row's failover_lag_seconds
        first): Sentinel promotes the replica, the clients follow."""
        assert self.hosts is not None
        await self._until(at)
        self.marks.primary_killed_at = time.time()  # corrected below, once it is known
        try:
            lag = self.row.failover_lag_seconds
            self.marks.primary_killed_at = await asyncio.to_thread(self.hosts.kill_primary, lag)
        finally:
            # Also when cancelled (the row's orders all settled first): the row ends with a
            # primary to read its results from.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.to_thread(self.hosts.wait_promoted))
            self.marks.promoted_at = time.time()
