"""The worker (consumer): reliable fetch, guarded claims, retries, heartbeats, crash recovery.

Loop: BLMOVE a message from the queue into this worker's own processing list (the keys and
messages are mqlab.protocol's), claim the job in PostgreSQL (a guarded UPDATE that also
counts the attempt), do the work, record the outcome, and only then remove the message from
the processing list (the ack). A worker that dies keeps its message in its processing list;
when its heartbeat key expires, any other worker moves it back to the queue.

An attempt that fails is recorded first in PostgreSQL and then moved in Redis: a transient
failure makes the job `retrying` and moves its message to the delayed set, due after the
retry policy's backoff (every worker promotes due jobs back to the queue); a permanent one
(poison), or a failure with no attempts left, makes it `dead` and its message a dead letter.
A job whose worker dies on it every time ends dead too: its claims count its attempts.

No queue entry stops a worker: one that is not a job (see mqlab.protocol.messages) or whose
claim PostgreSQL refuses is dead-lettered, and the worker goes on. A stop request is obeyed
at once when no job is in hand, also while a backend is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mqlab import db
from mqlab.backend_errors import BACKEND_DOWN
from mqlab.faults import Fault, FaultKind, Faults, JobFailed
from mqlab.protocol import dead, delayed, events, keys
from mqlab.protocol.events import EventKind, WorkerState
from mqlab.protocol.messages import (
    REASON_CHARS,
    InvalidMessage,
    dead_letter,
    one_line,
    parse_message,
)
from mqlab.protocol.messages import preview as message_preview
from mqlab.protocol.scans import heartbeat_of, processing_lists, worker_of
from mqlab.reconciler import ReconcileConfig, Reconciler
from mqlab.retry_policy import RetryPolicy
from mqlab.settings import Settings
from mqlab.work import do_work

log = logging.getLogger("mqlab.worker")

T = TypeVar("T")

#: BLMOVE blocks at most this long, so that a stop request is seen within it when idle.
POP_TIMEOUT = 1.0
#: A job this short (seconds) is announced when it ends: its "started" beat and event go out
#: with its ack, in the same round trip as the "finished" ones, and it logs one line, not two.
#: Nobody could have watched it busy anyway (the lab refreshes about once a second).
SHORT_JOB = 0.05
#: Reconnect backoff: doubles from the first to the last, with jitter.
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
#: At a stop, each clean-up step (a held job marked pending in PostgreSQL; messages handed
#: back and the heartbeat removed on Redis) gets this long, so that a backend that is away
#: does not hold the exit. What Redis did not take back stays in our processing list and goes
#: back to the queue once our heartbeat has expired.
STOP_STEP_SECONDS = 0.75

#: SQLSTATE classes that say the database is not what the worker's statements need (0A not
#: supported, 28 authorization, 3D/3F no such database or schema, 42 no such table or column,
#: no privilege). A claim's parameters cannot cause them, and every claim would fail alike:
#: the worker waits, as for an outage, rather than dead-letter the whole queue.
SETUP_SQLSTATE_CLASSES = ("0A", "28", "3D", "3F", "42")
#: The exit status of a worker that crashes on purpose (--crash-rate): what a supervisor sees.
CRASH_EXIT = 70
#: How a worker takes a message. `reliable`: BLMOVE into its own processing list, acked only
#: once PostgreSQL has the outcome, and recovered by the reaper and the reconciler if it dies.
#: `blpop`: the kata's way, for comparison (Kata 4's lab): the pop removes the message, and a
#: worker that dies with it in hand loses it (its job stays `processing` for good). A blpop
#: worker reaps no one and does not reconcile: it is the lab's lesson, not a mode to run.
FETCH_KINDS = ("reliable", "blpop")


#: A happening for the event stream: (type, fields).
Event = tuple[EventKind, dict[str, str | int | float]]


class Stopped(Exception):
    """A stop request ended a wait on a backend (raised by Worker._retry, caught by run)."""


class NotReady(Exception):
    """PostgreSQL refuses every statement alike (a missing table, a revoked grant)."""


class Rejected(Exception):
    """PostgreSQL refused a statement about one message (its data, or its row's)."""


#: What _retry waits out.
RETRYABLE: tuple[type[BaseException], ...] = (*BACKEND_DOWN, NotReady)


def refusal(exc: psycopg.Error, what: str) -> NotReady | Rejected:
    """What a psycopg error that is not a connection problem means for the message at hand."""
    state = exc.sqlstate or ""
    if state[:2] in SETUP_SQLSTATE_CLASSES or (
        not state and isinstance(exc, psycopg.ProgrammingError)  # our statement, not the data
    ):
        return NotReady(f"PostgreSQL refused the {what}: {exc}")
    code = f" ({state})" if state else ""
    return Rejected(f"PostgreSQL refused the {what}: {exc}{code}")


def _forget(task: asyncio.Task[Any]) -> None:
    """Done-callback of an abandoned task: its outcome is of no interest (and is retrieved,
    so that asyncio does not log it as never retrieved)."""
    if not task.cancelled():
        task.exception()


class Worker:
    """One consumer process. `run()` until stopped; `request_stop()` from a signal handler."""

    def __init__(
        self,
        settings: Settings,
        worker_id: str | None = None,
        job_seconds: float = 2.0,
        work: str = "sleep",
        policy: RetryPolicy | None = None,
        faults: Faults | None = None,
        fetch: str = "reliable",
    ) -> None:
        if fetch not in FETCH_KINDS:
            raise ValueError(f"fetch must be one of {', '.join(FETCH_KINDS)}, not {fetch!r}")
        self.settings = settings
        self.reliable = fetch == "reliable"
        # Looked up once: they are in every beat, and a beat goes out with every job.
        self.pid, self.host = os.getpid(), socket.gethostname()
        self.id = worker_id or f"{self.host}-{self.pid}"
        self.job_seconds = job_seconds
        self.work = work
        self.policy = policy or RetryPolicy()
        self.faults = faults or Faults()
        self.dice = self.faults.dice(self.id)
        # The backoff's jitter: seeded apart from the dice, so that the delays drawn do not
        # change which attempts fail.
        seed = self.faults.seed
        self.jitter = random.Random(f"{seed}:{self.id}:jitter") if seed is not None else None
        self.processing = keys.processing_key(self.id)
        self.jobs_done = 0
        self.jobs_failed = 0
        self.state = WorkerState.STARTING
        self.current_job = ""
        self.job_started = 0.0
        self.started = time.time()
        self.last_beat_sent = 0.0  # time.monotonic() of the last beat queued
        #: (job, attempt) of the job claimed and not yet acked: what a stop hands back.
        self.claim: tuple[str, int] | None = None
        self._stop = asyncio.Event()
        self._cold_stop = asyncio.Event()
        #: Cleared when the consuming ends: the heartbeat loop checks it as well as being
        #: cancelled, because redis-py's asyncio client can swallow a cancellation that comes
        #: mid-command (seen with redis 8.1: about one in three), which kept the loop, and so
        #: the process, alive after a SIGTERM.
        self._consuming = True
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url,
            # Bytes, not str: a queue entry need not be UTF-8 (decoding it made BLMOVE itself
            # fail), and its ack, LREM, must name its exact bytes.
            decode_responses=False,
            socket_timeout=POP_TIMEOUT + 5,
            socket_connect_timeout=2,
            # No retries inside redis-py: _retry does them, watching for stop requests and
            # knowing what a lost reply means (redis-py re-sends a whole pipeline, whose
            # BLMOVE may then move a second message unseen); redis-py's own 10, backing off
            # up to 1 s, also held each call for seconds while Redis was away.
            retry=Retry(NoBackoff(), 0),
        )
        # Prepared from the first use: a worker runs the same three statements all its life,
        # and planning them unprepared costs PostgreSQL CPU the API needs in a burst.
        self.pg = db.LazyConnection(settings.database_url, connect_timeout=3, prepare_threshold=0)
        config = ReconcileConfig.from_env()
        self.reconciler = Reconciler(
            self.redis, settings.database_url, self.id, config.grace, config.interval
        )

    def __repr__(self) -> str:
        return (
            f"<Worker {self.id} state={self.state} j_done={self.jobs_done} "
            f"j_failed={self.jobs_failed}>"
        )

    def request_stop(self) -> None:
        """First call: finish the current job, then exit. Second call: hand it back now."""
        if self._stop.is_set():
            log.warning("%s: second stop request: handing the current job back", self.id)
            self._cold_stop.set()
        else:
            log.info("%s: stopping after the current job (again to stop at once)", self.id)
            self.state = WorkerState.STOPPING
            self._stop.set()

    # -- connections ---------------------------------------------------------------------

    async def _db(self) -> psycopg.AsyncConnection[Any]:
        return await self.pg.get()

    async def _drop_pg(self) -> None:
        await self.pg.drop()

    def _stop_for_now(self) -> asyncio.Event:
        """The stop request that ends a wait on a backend: the first one when no job is in
        hand (there is nothing to finish), the second one when a job is (it is finished first,
        which needs the backends)."""
        return self._cold_stop if self.claim is not None else self._stop

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]], *, race: bool = False) -> T:
        """Run `op()` until the backends answer, backing off; Stopped on a stop request.

        The first attempt runs op() as it is: on the hot path, no task and no waiter per call.
        Later attempts, and the first with race=True, are dropped the moment the stop comes
        (a connection attempt to a server that is away can take seconds), and so is the wait
        between them.
        """
        delay = BACKOFF_FIRST
        while True:
            try:
                return await (self._unless_stopped(op) if race else op())
            except RETRYABLE as exc:
                if isinstance(exc, psycopg.Error):
                    await self._drop_pg()
                log.warning("%s: %s failed (%s); retrying in %.1fs", self.id, what, exc, delay)
                await self._pause(delay * (0.5 + random.random()))
                delay = min(delay * 2, BACKOFF_MAX)
                race = True

    async def _unless_stopped(self, op: Callable[[], Awaitable[T]]) -> T:
        """op(), unless a stop request (see _stop_for_now) comes first: then Stopped."""
        stop = self._stop_for_now()
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
                task.add_done_callback(_forget)
        if abandoned:
            raise Stopped
        return task.result()

    async def _pause(self, seconds: float) -> None:
        """Wait between two attempts; Stopped as soon as a stop request ends the wait."""
        stop = self._stop_for_now()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        if stop.is_set():
            raise Stopped

    async def _sql(self, sql: str, params: Any, what: str) -> tuple[Any, ...] | None:
        """One statement's row (or None), retried through outages.

        Rejected when PostgreSQL refuses this statement for its data: the caller dead-letters
        the message rather than retry it for ever (or, as before, crash on it).
        """

        async def op() -> tuple[Any, ...] | None:
            conn = await self._db()
            try:
                return await (await conn.execute(sql, params)).fetchone()
            except BACKEND_DOWN:
                raise
            except psycopg.Error as exc:
                raise refusal(exc, what) from exc

        return await self._retry("PostgreSQL", op)

    # -- heartbeat and recovery ------------------------------------------------------------

    def _beat_fields(self) -> dict[str, str | int | float]:
        return {
            "pid": self.pid,
            "host": self.host,
            "state": self.state,
            "job": self.current_job,
            "job_started": self.job_started,
            "jobs_done": self.jobs_done,
            "jobs_failed": self.jobs_failed,
            "started": self.started,
            "last_beat": time.time(),
            "job_seconds": self.job_seconds,
        }

    def _queue_beat(self, pipe: Any) -> None:
        self.last_beat_sent = time.monotonic()
        pipe.hset(keys.worker_key(self.id), mapping=self._beat_fields())
        pipe.expire(keys.worker_key(self.id), keys.HEARTBEAT_TTL)

    async def beat(self) -> None:
        """Write the liveness hash with its TTL."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self._queue_beat(pipe)
            await pipe.execute()

    async def _publish(
        self, kind: EventKind, ack: bytes | None = None, **fields: str | int | float
    ) -> None:
        """One round trip: the ack (if any), our new state, and the event for the lab."""
        move = None if ack is None else (lambda pipe: pipe.lrem(self.processing, 1, ack))
        await self._announce([(kind, fields)], move)

    async def _announce(
        self, happened: list[Event], move: Callable[[Any], object] | None = None
    ) -> None:
        """One round trip: `move` our message (queued on the pipeline: the ack, or its way to
        the delayed set or the dead letters), our new state, and the events for the lab.
        Retried through outages when it moves the message, which must happen; a beat or an
        event alone is let go when Redis is away."""

        async def op() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                if move is not None:
                    move(pipe)
                self._queue_beat(pipe)
                for kind, fields in happened:
                    events.queue(pipe, kind, worker=self.id, **fields)
                await pipe.execute()

        if move is not None:
            await self._retry("Redis", op)
        else:
            with contextlib.suppress(*BACKEND_DOWN):
                await op()

    async def _heartbeat_loop(self) -> None:
        # Sleep first: run() has just beaten. A beat sent now would race the first job's
        # "busy" beat on a second, still connecting, connection and could land after it,
        # showing the worker idle for a second while it works.
        while self._consuming:
            await asyncio.sleep(keys.HEARTBEAT_INTERVAL)
            with contextlib.suppress(*BACKEND_DOWN):
                # Jobs beat as they start and finish: no need to add one when they did lately.
                if time.monotonic() - self.last_beat_sent >= keys.HEARTBEAT_INTERVAL / 2:
                    await self.beat()
                if self.reliable:
                    await requeue_orphans(self.redis, exclude=self.id)

    async def _reconcile_loop(self) -> None:
        """Offer to run the reconciler once a second (it runs when its interval has passed
        and no other worker holds its lock). A task of its own, not a step of the heartbeat
        loop: a long run (a queue of 100,000 to scan) must not delay our beats past their
        TTL, or the job in our hands would be taken for a dead worker's."""
        while self._consuming:
            await asyncio.sleep(keys.HEARTBEAT_INTERVAL)
            await self.reconciler.tick()  # raises nothing for a backend that is away

    async def _promote_loop(self) -> None:
        """Move due retries from the delayed set to the queue, every PROMOTE_INTERVAL (every
        live worker does: the script runs alone on the server, so none is moved twice)."""
        while self._consuming:
            await asyncio.sleep(delayed.PROMOTE_INTERVAL)
            with contextlib.suppress(*BACKEND_DOWN):
                moved, _ = await delayed.promote(self.redis)
                if moved:
                    log.info("%s: %d retr%s due: back on the queue", self.id, moved,
                             "y" if moved == 1 else "ies")  # fmt: skip

    async def _hand_back_own(self) -> int:
        """Move whatever sits in our own processing list back to the queue's front."""
        moved = 0
        while await self.redis.lmove(self.processing, keys.QUEUE, "RIGHT", "RIGHT") is not None:
            moved += 1
        return moved

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> int:
        """Consume until stopped. Returns the exit code: 0 on a requested stop, also when it
        came while a backend was away."""
        # One waiter for the whole run, not one per job: jobs can be thousands a second.
        cold = asyncio.create_task(self._cold_stop.wait())
        heart: asyncio.Task[None] | None = None
        promoter: asyncio.Task[None] | None = None
        reconciling: asyncio.Task[None] | None = None
        try:
            await self._start()
            heart = asyncio.create_task(self._heartbeat_loop())
            promoter = asyncio.create_task(self._promote_loop())
            if self.reliable:
                reconciling = asyncio.create_task(self._reconcile_loop())
            await self._consume(cold)
        except Stopped:
            log.info("%s: stopping without waiting further for Redis or PostgreSQL", self.id)
        finally:
            self._consuming = False
            helpers = [t for t in (cold, heart, promoter, reconciling) if t is not None]
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._shutdown()
        log.info("%s: stopped after %d job(s)", self.id, self.jobs_done)
        return 0

    async def _start(self) -> None:
        """Say we are here, take back what a previous life of this id left, connect."""
        # race=True throughout: a stop while a backend is still away must not wait for it.
        await self._retry("Redis", self.beat, race=True)
        moved = await self._retry("Redis", self._hand_back_own, race=True)
        if moved:
            log.info("%s: handed %d job(s) of a previous run back to the queue", self.id, moved)
        await self._retry("PostgreSQL", self._db, race=True)
        self.state = WorkerState.IDLE
        await self._retry("Redis", self.beat, race=True)
        await events.emit(self.redis, EventKind.WORKER_UP, worker=self.id, pid=self.pid)
        fetch = "" if self.reliable else "; fetch blpop: no processing list, no recovery"
        log.info("%s: ready (pid %d, job %.3gs %s; %s%s%s)", self.id, self.pid,
                 self.job_seconds, self.work, self.policy, self._faults_said(), fetch)  # fmt: skip

    def _faults_said(self) -> str:
        f = self.faults
        said = [f"fail-rate {f.fail_rate:g}"] if f.fail_rate else []
        said += [f"crash-rate {f.crash_rate:g}"] if f.crash_rate else []
        said += [f"poison /{f.poison}/"] if f.poison else []
        said += [f"crash on /{f.crash_on}/"] if f.crash_on else []
        said += [f"seed {f.seed}"] if f.seed is not None else []
        return "; " + ", ".join(said) if said else ""

    async def _consume(self, cold: asyncio.Task[Any]) -> None:
        raw: bytes | None = None
        while not self._stop.is_set():
            if raw is None:
                # Not raced: BLMOVE returns within POP_TIMEOUT by itself, and a stop is seen
                # then; _retry races the attempts that follow a failure.
                raw = await self._retry("Redis", self._pop)
                if raw is None:
                    continue
            job = asyncio.create_task(self.handle(raw))
            await asyncio.wait({job, cold}, return_when=asyncio.FIRST_COMPLETED)
            if not job.done():
                # A second stop: leave the job where it is; _shutdown hands it back. A query
                # cancelled mid-flight is cancelled in PostgreSQL too, which can take a while
                # when PostgreSQL is away: not waited for beyond a step.
                job.cancel()
                job.add_done_callback(_forget)
                await asyncio.wait({job}, timeout=STOP_STEP_SECONDS)
                return
            # The next message, when it came with this one's ack (see _finish).
            raw = job.result()

    async def _shutdown(self) -> None:
        """Leave nothing behind: a job in hand pending again in PostgreSQL and, like a message
        taken but not worked, back on the queue; our heartbeat gone. Each step is bounded
        (STOP_STEP_SECONDS), so that a backend that is away does not hold the exit."""
        self.state = WorkerState.STOPPING
        if self.claim is not None:
            job_id, attempt = self.claim
            # Before the message is back on the queue: a job there is never shown as ours.
            try:
                async with asyncio.timeout(STOP_STEP_SECONDS):
                    conn = await self._db()
                    await conn.execute(
                        db.RELEASE_JOB,
                        {"job": job_id, "status": "processing", "worker": self.id,
                         "attempt": attempt},
                    )  # fmt: skip
            except (TimeoutError, psycopg.Error) as exc:
                log.warning("%s: could not mark %s pending again (%s); the next worker to "
                            "take it claims it all the same", self.id, job_id, exc)  # fmt: skip
        try:
            async with asyncio.timeout(STOP_STEP_SECONDS):
                moved = await self._hand_back_own()
                if moved:
                    log.info("%s: handed %d unfinished job(s) back to the queue", self.id, moved)
                await events.emit(self.redis, EventKind.WORKER_DOWN, worker=self.id)
                await self.redis.delete(keys.worker_key(self.id))
        except (TimeoutError, *BACKEND_DOWN) as exc:
            log.warning("%s: Redis did not answer at the stop (%s): what %s holds goes back "
                        "to the queue once our heartbeat has expired", self.id, exc,
                        self.processing)  # fmt: skip
        await self.reconciler.aclose()
        with contextlib.suppress(*BACKEND_DOWN):
            await self.redis.aclose()
        await self.pg.drop()

    async def _pop(self) -> bytes | None:
        if not self.reliable:
            # The kata's BLPOP; our API LPUSHes, so the oldest message is at the other end.
            popped = await self.redis.brpop([keys.QUEUE], POP_TIMEOUT)
            return None if popped is None else popped[1]  # type: ignore[no-any-return]
        raw: bytes | None = await self.redis.blmove(
            keys.QUEUE, self.processing, POP_TIMEOUT, "RIGHT", "LEFT"
        )
        return raw

    def _bury_message(self, pipe: Any, raw: bytes, entry: bytes) -> Any:
        """The message onto the dead letters: out of our processing list, or (blpop: it is in
        no list any more) pushed as it is."""
        if self.reliable:
            return dead.bury(pipe, self.processing, raw, entry)
        return pipe.lpush(keys.DEAD, entry)

    async def _ack(self, raw: bytes) -> None:
        await self._retry("Redis", lambda: self.redis.lrem(self.processing, 1, raw))

    async def _dead_letter(self, raw: bytes, reason: str) -> None:
        """Move a message that cannot be worked to `orders:dead`, with the reason (both cut
        to a size: see mqlab.protocol.messages), and say so in the log and the event stream."""
        reason = one_line(reason, REASON_CHARS)
        entry = dead_letter(raw, reason, self.id, time.time())

        await self._retry("Redis", lambda: self._bury_message(self.redis, raw, entry))
        self.jobs_failed += 1
        log.error("%s: dead-lettered a message (%s): %s", self.id, reason,
                  message_preview(raw))  # fmt: skip
        await events.emit(self.redis, EventKind.JOB_DEAD, worker=self.id, reason=reason)

    def _end_job(self) -> None:
        self.current_job, self.job_started = "", 0.0
        self.state = WorkerState.STOPPING if self._stop.is_set() else WorkerState.IDLE

    async def handle(self, raw: bytes) -> bytes | None:
        """One delivery: claim, work, record, ack; or dead-letter it, whatever its bytes.

        Returns the next message when it was taken in the same round trip as the ack.
        """
        try:
            job_id, order_id = parse_message(raw)
        except InvalidMessage as exc:
            await self._dead_letter(raw, str(exc))
            return None
        try:
            return await self._handle_job(raw, job_id, order_id)
        except Rejected as exc:
            # This message, or its row, is what PostgreSQL refuses (a value out of range, a
            # trigger's veto): it would be refused again on every delivery.
            self.claim = None
            self._end_job()
            await self._dead_letter(raw, str(exc))
            return None

    async def _handle_job(self, raw: bytes, job_id: str, order_id: int) -> bytes | None:
        claim = await self._sql(db.CLAIM_JOB, {"worker": self.id, "job": job_id}, "claim")
        if claim is None:
            claim = await self._not_claimed(raw, job_id, order_id)
            if claim is None:
                return None
        _, _, attempt, tries, product = claim
        self.claim = (job_id, attempt)
        self.state, self.current_job, self.job_started = WorkerState.BUSY, job_id, time.time()
        fields = {"job": job_id, "order": order_id, "attempt": attempt, "at": self.job_started}
        started: Event = (EventKind.JOB_STARTED, fields)
        again = f" ({self.policy.attempt(attempt, tries)})" if attempt > 1 else ""
        short = self.job_seconds < SHORT_JOB
        if not short:
            await self._publish(started[0], **started[1])
            log.info("%s: started %s (order %d)%s", self.id, job_id, order_id, again)
        try:
            await self._work(product)
        except JobFailed as exc:
            await self._failed(raw, job_id, order_id, (attempt, tries), exc, [started] * short)
            return None
        done = await self._sql(
            db.COMPLETE_JOB, {"job": job_id, "worker": self.id, "attempt": attempt}, "completion"
        )
        self._end_job()
        if done is None:
            await self._not_completed(raw, job_id, order_id, attempt)
            self.claim = None
            return None
        self.jobs_done += 1
        took = float(done[1])
        # Logged before the ack: _finish may then wait up to POP_TIMEOUT for the next message.
        log.info("%s: completed %s (order %d) in %.3fs%s", self.id, job_id, order_id, took,
                 again if short else "")  # fmt: skip
        finished: Event = (EventKind.JOB_FINISHED, {"job": job_id, "order": order_id})
        following = await self._finish(raw, job_id, [started, finished] if short else [finished])
        self.claim = None
        return following

    async def _not_claimed(self, raw: bytes, job_id: str, order_id: int) -> tuple[Any, ...] | None:
        """The claim matched nothing. A job processing by a worker that died on it (the reaper
        put it back): taken over (the claim returned), or dead when its attempts are spent.
        No such job: the message is dead-lettered. Otherwise a duplicate delivery (completed,
        dead, or claimed by another worker meanwhile): dropped unworked."""
        found = await self._sql(db.JOB_STATUS, [job_id], "lookup")
        if found is None:
            await self._dead_letter(raw, f"no job {job_id} in PostgreSQL")
            return None
        status, owner, attempts, tries, started = found
        if status == "processing":
            if self.policy.exhausted(tries):
                # Its last claim never ended: its worker died on it, as on every one before.
                reason = f"its worker died during each of its {tries} attempts"
                bury = {"job": job_id, "worker": owner, "attempt": attempts, "outcome": "crashed"}
                await self._bury(raw, job_id, order_id, reason, bury, [])
                return None
            claim = await self._sql(
                db.TAKE_OVER_JOB,
                {"worker": self.id, "job": job_id, "was_worker": owner,
                 "was_attempt": attempts, "was_started": started},
                "claim",
            )  # fmt: skip
            if claim is not None:
                log.warning("%s: took over %s from %s (attempt %d never ended)", self.id,
                            job_id, owner, attempts)  # fmt: skip
                return claim
            status = "claimed by another worker meanwhile"
        log.info("%s: %s is already %s (by %s, attempt %s): dropping this delivery",
                 self.id, job_id, status, owner, attempts)  # fmt: skip
        await self._ack(raw)
        return None

    async def _work(self, product: str) -> None:
        """The job's work, with the faults this worker injects (mqlab.faults)."""
        if self.dice.poisoned(product):
            raise JobFailed(
                f"poison order: product {one_line(product, 60)!r} matches /{self.faults.poison}/",
                permanent=True,
            )
        fault = self.dice.roll()
        if self.dice.crashes_on(product):
            fault = Fault(FaultKind.CRASH, fault.at if fault else 0.5)
        if fault is None:
            await do_work(self.work, self.job_seconds)
            return
        await do_work(self.work, self.job_seconds * fault.at)
        if fault.kind is FaultKind.CRASH:
            log.critical("%s: crashing on purpose at %.0f%% of %s (--crash-rate/--crash-on)",
                         self.id, fault.at * 100, self.current_job)  # fmt: skip
            logging.shutdown()  # flush the line above: os._exit skips it
            os._exit(CRASH_EXIT)
        raise JobFailed(
            f"injected transient failure at {fault.at:.0%} of the work (--fail-rate)",
            permanent=False,
        )

    async def _failed(
        self,
        raw: bytes,
        job_id: str,
        order_id: int,
        claim: tuple[int, int],
        exc: JobFailed,
        happened: list[Event],
    ) -> None:
        """Record a failed attempt: retrying after a backoff, or dead (permanent, or no
        attempts left). PostgreSQL first, then Redis: a crash between the two leaves the
        message in our processing list, and the job is redelivered (early) when we are gone."""
        attempt, tries = claim
        error = one_line(str(exc), REASON_CHARS)
        self.jobs_failed += 1
        guard = {"job": job_id, "worker": self.id, "attempt": attempt}
        if exc.permanent or self.policy.exhausted(tries):
            reason = error if exc.permanent else (
                f"{error}; attempt {tries} of {self.policy.max_attempts}: no attempts left"
            )  # fmt: skip
            bury = {**guard, "outcome": "failed"}
            await self._bury(raw, job_id, order_id, reason, bury, happened)
            return
        delay = self.policy.delay(tries, self.jitter)
        row = await self._sql(db.RETRY_JOB, {**guard, "error": error, "delay": delay}, "retry")
        self._end_job()
        if row is None:
            self.claim = None
            await self._not_completed(raw, job_id, order_id, attempt)
            return
        log.warning("%s: %s (order %d) failed on %s: %s; retrying in %.2fs", self.id,
                    job_id, order_id, self.policy.attempt(attempt, tries), error,
                    delay)  # fmt: skip
        failed: Event = (
            EventKind.JOB_FAILED,
            {"job": job_id, "order": order_id, "attempt": attempt, "error": error,
             "delay": round(delay, 3)},
        )  # fmt: skip

        await self._announce(
            [*happened, failed], lambda pipe: delayed.defer(pipe, self.processing, raw, delay)
        )
        self.claim = None

    async def _bury(
        self,
        raw: bytes,
        job_id: str,
        order_id: int,
        reason: str,
        bury: dict[str, str | int | None],
        happened: list[Event],
    ) -> None:
        """The job dead in PostgreSQL (its order failed), then its message a dead letter."""
        reason = one_line(reason, REASON_CHARS)
        row = await self._sql(db.BURY_JOB, {**bury, "error": reason}, "dead end")
        self._end_job()
        self.claim = None
        if row is None:  # someone else's claim came between: theirs owns the outcome
            log.warning("%s: %s changed hands before it could be marked dead; dropping this "
                        "delivery", self.id, job_id)  # fmt: skip
            await self._ack(raw)
            return
        log.error("%s: %s (order %d) is dead: %s", self.id, job_id, order_id, reason)
        entry = dead_letter(raw, reason, self.id, time.time(), job_id=job_id)
        died: Event = (
            EventKind.JOB_DEAD,
            {"job": job_id, "order": order_id, "attempt": int(bury["attempt"] or 0),
             "reason": reason},
        )  # fmt: skip

        await self._announce([*happened, died], lambda pipe: self._bury_message(pipe, raw, entry))

    async def _finish(self, raw: bytes, job_id: str, happened: list[Event]) -> bytes | None:
        """Ack, beat and events in one round trip, which also takes the next message (BLMOVE
        queued behind them) unless a stop was asked for: one round trip less per job.

        Returns that next message (None when the queue stayed empty for POP_TIMEOUT).
        """
        pop = not self._stop.is_set()
        try:
            return await self._finish_once(raw, happened, pop)
        except BACKEND_DOWN as exc:
            log.warning("%s: ack of %s failed (%s); retrying", self.id, job_id, exc)
        # The reply was lost: the ack may or may not have happened, and a message may have
        # been moved into our processing list that we never saw. Ack again (LREM of a message
        # no longer there is a no-op), then hand back whatever else the list holds.
        await self._retry("Redis", lambda: self._finish_once(raw, happened, pop=False), race=True)
        await self._retry("Redis", self._hand_back_own, race=True)
        return None

    async def _finish_once(self, raw: bytes, happened: list[Event], pop: bool) -> bytes | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrem(self.processing, 1, raw)
            self._queue_beat(pipe)
            for kind, fields in happened:
                events.queue(pipe, kind, worker=self.id, **fields)
            if pop:
                if self.reliable:
                    pipe.blmove(keys.QUEUE, self.processing, POP_TIMEOUT, "RIGHT", "LEFT")
                else:
                    pipe.brpop([keys.QUEUE], POP_TIMEOUT)
            results = await pipe.execute()
        if not pop:
            return None
        if self.reliable:
            return results[-1]  # type: ignore[no-any-return]
        return None if results[-1] is None else results[-1][1]  # type: ignore[no-any-return]

    async def _not_completed(self, raw: bytes, job_id: str, order_id: int, attempt: int) -> None:
        """Our completion matched no claim: our claim was lost, or the job was taken over."""
        found = await self._sql(db.JOB_STATUS, [job_id], "lookup")
        if found is not None and (
            found[0] == "pending" or (found[0] == "processing" and found[2] < attempt)
        ):
            # The claim commits asynchronously: a PostgreSQL crash can lose it, leaving the
            # row as it was before it: pending, or the claim of an earlier delivery (fewer
            # attempts) whose worker is gone. Only our processing list holds the message: hand
            # it back, so that it is redelivered (and worked again) rather than lost, with the
            # job pending again first (guarded on the row as we just saw it).
            status, owner, attempts = found[:3]
            log.warning("%s: the claim of %s was lost (PostgreSQL restarted?); handing it back",
                        self.id, job_id)  # fmt: skip
            if status != "pending" or owner is not None:
                await self._sql(
                    db.RELEASE_JOB,
                    {"job": job_id, "status": status, "worker": owner, "attempt": attempts},
                    "release",
                )
            # Only `raw` is there (the next message is taken with the ack): move it back. LMOVE,
            # unlike LREM + RPUSH, cannot queue it twice when a retry follows a lost reply.
            await self._retry("Redis", self._hand_back_own)
            await self._publish(EventKind.JOB_REQUEUED, job=job_id, order=order_id)
            return
        if found is None:
            # Its row is gone: a reset (`mqlab reset`, the lab's X) deleted it while it ran.
            log.warning("%s: %s was deleted while it ran (a reset?); dropping it", self.id, job_id)
            await self._publish(EventKind.JOB_LOST, ack=raw, job=job_id, order=order_id)
            return
        # Presumed dead and taken over (or done by another): that delivery owns the outcome.
        log.warning("%s: %s was taken over by another worker; not completing it",
                    self.id, job_id)  # fmt: skip
        await self._publish(EventKind.JOB_LOST, ack=raw, job=job_id, order=order_id)


async def requeue_orphans(client: aioredis.Redis, exclude: str | None = None) -> int:
    """Move the jobs of workers whose heartbeat expired back to the queue. Returns how many.

    `client` answers bytes (no decode_responses): a key is handled whatever its name.
    LMOVE moves one element atomically, so two workers reaping at once never duplicate one.
    """
    mine = keys.processing_key(exclude).encode() if exclude is not None else None
    moved = 0
    for key in await processing_lists(client):
        if key == mine or await client.exists(heartbeat_of(key)):
            continue
        while await client.lmove(key, keys.QUEUE, "RIGHT", "RIGHT") is not None:
            moved += 1
            owner = worker_of(key)
            if isinstance(owner, bytes):
                owner = owner.decode(errors="backslashreplace")
            log.warning("requeued a job of dead worker %s", one_line(owner, 80))
    return moved


async def serve(
    settings: Settings,
    worker_id: str | None,
    job_seconds: float,
    work: str,
    policy: RetryPolicy | None = None,
    faults: Faults | None = None,
    fetch: str = "reliable",
) -> int:
    """Run one worker with SIGTERM / SIGINT wired to its graceful stop."""
    worker = Worker(settings, worker_id, job_seconds, work, policy, faults, fetch)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    return await worker.run()
