"""The live data source: frames from Redis, PostgreSQL, the event stream and the supervisor.

Everything here is awaited on the UI's loop (redis.asyncio and async psycopg), with short
socket timeouts so that a server that stops answering marks itself down rather than stalls
the screen.
"""

from __future__ import annotations

import collections
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import psycopg
import redis.asyncio as aioredis

from mqlab import db
from mqlab.backend_errors import REDIS_FAILURE
from mqlab.faces.tui.lab import LiveLab
from mqlab.faces.tui.model import DeadLetterRow, Frame, JobBar, Kill, Service, WorkerRow
from mqlab.protocol import keys
from mqlab.protocol.events import JOB_ENDS, EventKind, WorkerState
from mqlab.protocol.ids import short_job_id, worker_sort_key
from mqlab.system.observe import (
    HostInfo,
    WorkerInfo,
    delayed_snapshot,
    host_snapshot,
    latest_dead_letters,
    queue_snapshot,
)
from mqlab.system.redis_clients import async_client, redact

#: The depth sparkline covers this many seconds, in bins of HISTORY_BIN seconds.
HISTORY_SECONDS, HISTORY_BIN = 60.0, 0.5
#: The trend cue shows the depth's last move within this many seconds (several job times of
#: the kata's 2 s would hide a stop; one second showed "steady" between two waves).
TREND_SECONDS = 5.0
#: jobs/s is the number of jobs finished over this many seconds, divided by it.
RATE_WINDOW = 5.0
#: A dead worker's row stays this long, then leaves the table.
DEAD_ROW_SECONDS = 120.0
#: Seconds between reconnection attempts to a server that is down.
RECONNECT_EVERY = 1.0
#: How many of the newest dead letters the panel shows.
DEAD_LETTERS_SHOWN = 5


def depth_bins(history: collections.deque[tuple[float, int]], now: float) -> tuple[float, ...]:
    """The depth over the last minute in fixed bins (max per bin; 0 where nothing was seen)."""
    count = int(HISTORY_SECONDS / HISTORY_BIN)
    start = now - HISTORY_SECONDS
    bins = [0.0] * count
    for at, depth in history:
        index = int((at - start) / HISTORY_BIN)
        if 0 <= index < count:
            bins[index] = max(bins[index], float(depth))
    return tuple(bins)


def trend(history: collections.deque[tuple[float, int]], now: float) -> int:
    """Which way the depth last moved within TREND_SECONDS: +1 up, -1 down, 0 no move.

    The last move, not now against a moment ago: a queue drained by waves of workers moves
    in steps a job time apart, and between two steps it is still falling.
    """
    current = history[-1][1] if history else 0
    for at, depth in reversed(history):
        if at < now - TREND_SECONDS:
            break
        if depth != current:
            return 1 if current > depth else -1
    return 0


@dataclass
class _Bar:
    worker: str
    pid: int
    job: str
    order: int
    start: float
    end: float | None = None
    cut: bool = False
    attempt: int = 1
    ending: str = ""  # "", "failed" or "dead" (see JobBar)
    retry_in: float = 0.0

    def close(self, at: float, cut: bool, ending: str = "", retry_in: float = 0.0) -> None:
        self.end, self.cut, self.ending, self.retry_in = at, cut, ending, retry_in


class LiveSource:
    """Samples the stack of a LiveLab; one sample() per refresh."""

    def __init__(self, lab: LiveLab, timeline_seconds: float = 30.0) -> None:
        self.lab = lab
        self.timeline_seconds = timeline_seconds
        self._redis: aioredis.Redis | None = None
        self._pg: psycopg.AsyncConnection[Any] | None = None
        self._pg_retry_at = 0.0
        self._redis_up: bool | None = None
        self._pg_up: bool | None = None
        self._history: collections.deque[tuple[float, int]] = collections.deque()
        self._queue: tuple[int, int, int] = (0, 0, 0)  # depth, in flight, dead letters
        self._infos: dict[str, WorkerInfo] = {}  # live heartbeats
        self._seen: dict[str, WorkerInfo] = {}  # the last heartbeat of every worker seen
        self._counts: dict[str, int] = {}
        self._attempts: dict[str, int] = {}
        self._events_from: str | None = None
        self._bars: list[_Bar] = []
        self._finished: collections.deque[float] = collections.deque()
        self._dead_since: dict[str, float] = {}
        #: worker id -> the pid of its process now, from its worker_up event (exact, in the
        #: stream's order) or else its heartbeat: the lane of each bar is its process's.
        self._pids: dict[str, int] = {}
        self._jobs: dict[str, int] = {}
        self._delayed: tuple[int, float | None] = (0, None)
        self._dead: tuple[DeadLetterRow, ...] = ()
        self._hosts: tuple[HostInfo, ...] = ()

    async def sample(self) -> Frame:
        now = time.time()
        settings = self.lab.settings
        if settings is None or self.lab.sup is None:
            return Frame(at=now, services=self._services(), timeline_seconds=self.timeline_seconds)
        if self._redis is None:
            self._redis = async_client(
                settings.redis_url,
                decode_responses=True,
                socket_timeout=1,
                socket_connect_timeout=1,
            )
        await self._sample_redis(self._redis, now)
        await self._sample_pg(settings.database_url, now)
        self._history.append((now, self._queue[0]))
        while self._history and self._history[0][0] < now - HISTORY_SECONDS:
            self._history.popleft()
        workers = self._workers(now)
        return Frame(
            at=now,
            services=self._services(),
            depth=self._queue[0],
            trend=trend(self._history, now),
            depth_history=depth_bins(self._history, now),
            processing=self._queue[1],
            dead_letters=self._queue[2],
            jobs_per_second=len(self._finished) / RATE_WINDOW,
            orders=dict(self._counts),
            attempts=dict(self._attempts),
            workers=workers,
            bars=self._timeline(workers, now),
            timeline_seconds=self.timeline_seconds,
            jobs=dict(self._jobs),
            delayed=self._delayed[0],
            next_retry_in=self._delayed[1],
            dead=self._dead,
            kills=self._kills(now),
            hosts=self._hosts,
        )

    def _services(self) -> tuple[Service, ...]:
        settings, sup = self.lab.settings, self.lab.sup
        return (
            Service("Redis", redact(settings.redis_url) if settings else "", self._redis_up),
            Service("PostgreSQL", redact(settings.database_url) if settings else "", self._pg_up),
            Service("API", (sup.api_url if sup else None) or "", self.lab.api_alive()),
        )

    async def _sample_redis(self, client: aioredis.Redis, now: float) -> None:
        try:
            depth, in_flight, dead, infos = await queue_snapshot(client)
            delayed, _due, due_in = await delayed_snapshot(client)
            letters = await latest_dead_letters(client, DEAD_LETTERS_SHOWN) if dead else []
            await self._read_events(client, now)
        except REDIS_FAILURE:
            # An error reply shows Redis as down too, not only an outage (NOAUTH once the
            # servers were made again with a new password, LOADING while Valkey reads its
            # data): the screen has nothing to show from it either way, and sampling goes on.
            self._redis_up = False
            return
        self._redis_up = True
        self._queue = (depth, in_flight, dead)
        self._delayed = (delayed, due_in)
        self._dead = tuple(
            DeadLetterRow(short_job_id(d.job_id) if d.job_id else "", d.reason, d.worker, d.at)
            for d in letters
        )
        self._infos = {w.id: w for w in infos}
        self._seen.update(self._infos)

    async def _sample_pg(self, url: str, now: float) -> None:
        if self._pg is not None and not self._pg.closed and db.closed_by_server(self._pg):
            await self._pg.close()  # PostgreSQL restarted: a new one, not a failed sample
        if self._pg is None or self._pg.closed:
            if now < self._pg_retry_at:
                return
            self._pg_retry_at = now + RECONNECT_EVERY
            try:
                self._pg = await psycopg.AsyncConnection.connect(
                    url, autocommit=True, **db.connect_options(), connect_timeout=2
                )
            except psycopg.Error:
                self._pg_up = False
                return
        try:
            rows = await (await self._pg.execute(db.COUNT_BY_STATUS)).fetchall()
            attempts = await db.attempt_outcomes(self._pg)
            hosts = await host_snapshot(self._pg, list(self._infos.values()))
        except psycopg.Error:
            self._pg_up = False
            with contextlib.suppress(psycopg.Error):
                await self._pg.close()
            return
        self._pg_up = True
        counts = db.counts_by_status(rows)
        self._counts, self._jobs = counts["orders"], counts["jobs"]
        self._attempts = attempts
        self._hosts = tuple(hosts)

    async def _read_events(self, client: aioredis.Redis, now: float) -> None:
        """Fold new entries of mqlab:events into the timeline bars and the finish times."""
        if self._events_from is None:
            # From now on: the timeline shows this run's workers, not the lanes of earlier ones.
            self._events_from = f"{int(now * 1000)}-0"
        reply = await client.xread({keys.EVENTS: self._events_from}, count=5000)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self._events_from = entry_id
                self._apply(fields)
        while self._finished and self._finished[0] < now - RATE_WINDOW:
            self._finished.popleft()

    def _apply(self, fields: dict[str, str]) -> None:
        kind, worker, job = fields.get("type"), fields.get("worker", ""), fields.get("job", "")
        try:
            at = float(fields.get("at", 0))
            order = int(fields.get("order", 0))
            pid = int(fields.get("pid", 0))
            attempt = int(fields.get("attempt", 1) or 1)
            delay = float(fields.get("delay", 0) or 0)
        except ValueError:
            return
        if kind == EventKind.WORKER_UP and pid:
            # A new process of that id: what the old one had open, it never finished.
            for bar in self._bars:
                if bar.worker == worker and bar.end is None:
                    bar.close(at, cut=True)
            self._pids[worker] = pid
        elif kind == EventKind.JOB_STARTED:
            # A worker runs one job at a time: a bar still open ended by now, cut short (its
            # finish event can be lost, when a reset deletes the stream before we read it).
            for bar in self._bars:
                if bar.worker == worker and bar.end is None:
                    bar.close(at, cut=True)
            self._bars.append(_Bar(worker, self._pid_of(worker), job, order, at, attempt=attempt))
        elif kind in JOB_ENDS:
            # A failed attempt and a dead end are endings of their own, not cuts: each has
            # its mark, and a failed one the backoff it waits before its retry.
            ending = {EventKind.JOB_FAILED: "failed", EventKind.JOB_DEAD: "dead"}.get(kind, "")
            for bar in reversed(self._bars):
                if bar.worker == worker and bar.job == job and bar.end is None:
                    cut = kind != EventKind.JOB_FINISHED and not ending
                    bar.close(at, cut=cut, ending=ending, retry_in=delay)
                    break
            if kind == EventKind.JOB_FINISHED:
                self._finished.append(at)
        elif kind == EventKind.WORKER_DOWN:
            for bar in self._bars:
                if bar.worker == worker and bar.end is None:
                    bar.close(at, cut=True)

    def _pid_of(self, worker: str) -> int:
        """The pid of the process that runs `worker` now (0 if not known): its worker_up
        event, its heartbeat, else the lab's child of that name. A worker that takes a job
        before its first beat is sampled (an experiment's row starts it and fires at once)
        had pid 0 here: its bar got a lane of its own once the process was gone, and the lane
        showed its id twice."""
        if worker in self._pids:
            return self._pids[worker]
        info = self._infos.get(worker)
        if info is not None:
            return info.pid
        child = next((c for c in self.lab.children() if c.name == worker), None)
        return child.pid if child is not None and child.kind == "worker" else 0

    def _workers(self, now: float) -> tuple[WorkerRow, ...]:
        children = {c.name: c for c in self.lab.children() if c.kind == "worker"}
        rows = []
        for wid in sorted(set(children) | set(self._infos), key=worker_sort_key):
            child, info = children.get(wid), self._infos.get(wid)
            if child is not None and not child.alive():
                died = self._dead_since.setdefault(wid, now)
                if now - died > DEAD_ROW_SECONDS:
                    continue
                code = child.proc.returncode
                why = "SIGKILL" if code == -9 else f"exit {code}"
                # Its heartbeat key is gone (or soon will be): its last one has the count.
                last = self._seen.get(wid)
                done, host = (last.jobs_done, last.host) if last else (0, "")
                rows.append(WorkerRow(wid, child.pid, WorkerState.DEAD, why, None, done, host=host))
                continue
            self._dead_since.pop(wid, None)  # a name used again by a new worker
            if info is not None:
                age = now - info.job_started if info.job_started else None
                rows.append(
                    WorkerRow(
                        wid,
                        info.pid,
                        info.state,
                        short_job_id(info.job),
                        age,
                        info.jobs_done,
                        ours=child is not None,
                        host=info.host,
                    )
                )
            elif child is not None:
                rows.append(WorkerRow(wid, child.pid, WorkerState.STARTING, "", None, 0))
        return tuple(rows)

    def _timeline(self, workers: tuple[WorkerRow, ...], now: float) -> tuple[JobBar, ...]:
        running = {(w.id, w.pid) for w in workers if w.state != WorkerState.DEAD}
        # Idle by its heartbeat, so a bar it still has open lost its finish event; the grace
        # covers a job that started after the heartbeat was read.
        idle = {(w.id, w.pid) for w in workers if w.state == WorkerState.IDLE}
        horizon = now - self.timeline_seconds
        kept = []
        running_ids = {wid for wid, _pid in running}
        for bar in self._bars:
            process = (bar.worker, bar.pid)
            # A bar whose pid was not known (0) goes by its worker id alone.
            alive = process in running if bar.pid else bar.worker in running_ids
            gone = not alive or (process in idle and bar.start < now - 1.0)
            if bar.end is None and gone:
                bar.close(now, cut=True)  # killed, or its job deleted: it stops where we noticed
            if bar.end is None or bar.end >= horizon:
                kept.append(bar)
        self._bars = kept
        return tuple(
            JobBar(
                b.worker, short_job_id(b.job), b.order, b.start, b.end, b.pid, b.cut,
                b.attempt, b.ending, b.retry_in,
            )
            for b in kept
        )  # fmt: skip

    def _kills(self, now: float) -> tuple[Kill, ...]:
        """The lab's workers that died of SIGKILL within the timeline, when the lab saw it."""
        horizon = now - self.timeline_seconds
        kills = []
        for child in self.lab.children():
            died = self._dead_since.get(child.name)
            killed = child.kind == "worker" and child.proc.returncode == -9
            if killed and died is not None and died >= horizon:
                kills.append(Kill(child.name, child.pid, died))
        return tuple(kills)

    async def close(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(*REDIS_FAILURE):
                await self._redis.aclose()
        if self._pg is not None:
            with contextlib.suppress(psycopg.Error):
                await self._pg.close()
