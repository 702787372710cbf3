"""The TUI's controls on the real stack: the same Stack, Supervisor and Runner as
`mqlab run-experiment`, nothing re-implemented. Blocking methods run in thread workers."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import psycopg

from mqlab import db
from mqlab.experiments import POISON_PRODUCT, Row, Suite
from mqlab.faces.tui.model import LineHandler, RowHandler
from mqlab.figures.progress import ProgressHandler
from mqlab.figures.results import RowResult, SuiteResult
from mqlab.lab.hosts.lab import HostsLab
from mqlab.lab.row_run import fire_products
from mqlab.lab.runner import Runner
from mqlab.lab.scenarios import owned_postgres
from mqlab.lab.stack import Stack
from mqlab.lab.supervisor import Child, Supervisor
from mqlab.settings import Settings
from mqlab.system import dead_letters
from mqlab.system.redis_clients import async_client, sync_client
from mqlab.system.resetting import reset_all
from mqlab.system.spec import WorkerSpec


class LabClosed(RuntimeError):
    """The lab is closing or closed: no new process may start."""


def split_batch(orders: int, poison_share: float) -> tuple[int, int]:
    """(plain, poison) orders of a batch: the poison ones rounded, at least one when the share
    is above 0 and the batch is not empty (a batch of 1 at 10 % still shows a poison)."""
    poison = round(orders * poison_share)
    if poison_share > 0 and orders > 0:
        poison = max(1, poison)
    poison = min(orders, poison)
    return orders - poison, poison


class LiveLab:
    """Owns a Stack (servers if none are configured, the API) and N workers on top of it."""

    def __init__(
        self,
        suite: Suite,
        workers: int = 1,
        job_seconds: float = 2.0,
        redis_url: str | None = None,
        database_url: str | None = None,
    ) -> None:
        self.suite = suite
        self.initial_workers = workers
        self.job_seconds = job_seconds
        self.state = "starting"
        self.error = ""
        self._handler: LineHandler = lambda _name, _line: None
        #: A suite with a [hosts] table runs on lab hosts (namespaces, links, an API on each
        #: API host); any other on this machine.
        self.stack: Stack | HostsLab = (
            HostsLab(suite.hosts, on_line=self._line)
            if suite.hosts is not None
            else Stack(redis_url, database_url, on_line=self._line)
        )
        # open() and close() may run at once (a person quits while the servers start).
        self._state_lock = threading.Lock()
        self._closing = False
        self.fail_rate = 0.0
        self.poison_share = 0.0

    # -- what the source reads --------------------------------------------------------------

    @property
    def settings(self) -> Settings | None:
        return self.stack.settings

    @property
    def sup(self) -> Supervisor | None:
        return self.stack.sup

    def children(self) -> list[Child]:
        """Every child the supervisor started, alive or not (a copy: threads add to it)."""
        sup = self.stack.sup
        return [] if sup is None else list(sup.children.values())

    def api_alive(self) -> bool | None:
        """Whether the API runs (every API, on lab hosts); None before one started."""
        sup = self.stack.sup
        apis = [] if sup is None else [c for c in sup.children.values() if c.kind == "api"]
        return all(a.alive() for a in apis) if apis else None

    # -- log lines ----------------------------------------------------------------------------

    def set_line_handler(self, handler: LineHandler) -> None:
        self._handler = handler

    def _line(self, name: str, line: str) -> None:
        self._handler(name, line)

    def say(self, line: str) -> None:
        """A line of the lab's own (what it did), shown among the children's lines."""
        self._handler("lab", line)

    # -- lifecycle ----------------------------------------------------------------------------

    def open(self) -> None:
        """Start what is missing (servers, API) and the initial workers; blocks for seconds.

        A close() meanwhile does not wait for it: it stops what exists at once, which makes
        the supervisor's waits here fail fast, and this sweeps again what it started after.
        """
        with self._state_lock:
            if self.state != "starting":
                return
        try:
            self.say("starting the stack (servers if none run, then the API) ...")
            self.stack.open()
            sup = self.stack.sup
            assert sup is not None
            if self.stack.started_services:
                self.say(f"started embedded {' and '.join(self.stack.started_services)}")
            self.say(f"API on {', '.join(sup.api_urls)}")
            if self.initial_workers and not self._closing:
                started = sup.start_workers(self.initial_workers, self.spec())
                self.say(f"workers {', '.join(c.name for c in started)} ready")
            with self._state_lock:
                if not self._closing:
                    self.state = "up"
        except Exception as exc:
            if self._closing:
                return  # quit while starting: not a failure
            with self._state_lock:
                self.state, self.error = "failed", str(exc) or type(exc).__name__
            self.say(f"could not start: {self.error}")
            raise
        finally:
            if self._closing:
                self.stack.close()

    def close(self) -> None:
        """Stop every child and the servers this lab started. Idempotent; safe from any thread.

        Called again after a first close, it still sweeps: a worker that a thread started
        while the first close ran is stopped by the second.
        """
        with self._state_lock:
            self._closing = True
            if self.state != "closed":
                self.state = "closing"
        self.stack.close()
        with self._state_lock:
            self.state = "closed"

    def _require_up(self) -> Supervisor:
        if self.state != "up" or self.stack.sup is None:
            raise LabClosed(f"the lab is {self.state}")
        return self.stack.sup

    # -- controls ----------------------------------------------------------------------------

    def spec(self, worker_id: str | None = None) -> WorkerSpec:
        """What the lab's workers are: its job time and the failure rate set by the keys
        (poison orders fail by the workers' default pattern, whatever the rate)."""
        return WorkerSpec(
            worker_id=worker_id, job_seconds=self.job_seconds, fail_rate=self.fail_rate
        )

    def add_worker(self) -> str:
        child = self._require_up().start_worker(self.spec())
        self.say(f"started {child.name} (pid {child.pid})")
        return child.name

    def stop_worker(self, worker_id: str) -> int | None:
        sup = self._require_up()
        self.say(f"SIGTERM {worker_id}: it finishes its current job, then exits")
        code = sup.stop(worker_id)
        self.say(f"{worker_id} exited with {code}")
        return code

    def kill_worker(self, worker_id: str) -> int | None:
        sup = self._require_up()
        self.say(f"SIGKILL {worker_id}: its job goes back to the queue when its heartbeat expires")
        code = sup.kill(worker_id)
        self.say(f"{worker_id} exited with {code}")
        return code

    def set_fail_rate(self, rate: float) -> None:
        """Restart the live workers of this lab with the new rate (a worker reads its faults
        at its start); each finishes its job first. Workers added later get it too."""
        sup = self._require_up()
        WorkerSpec(fail_rate=rate)  # raises SpecError on a rate out of 0..1
        self.fail_rate = rate
        live = [c.name for c in sup.workers()]
        self.say(f"failure rate {rate:.0%}: restarting {', '.join(live) or 'no worker'}")
        if live:
            sup.stop_many(live)
            # Their ids again: the lanes and the table keep their names.
            for name in live:
                sup.start_worker(self.spec(name), wait=False)
            sup.wait_workers_ready(live)
        self.say(f"workers run with a failure rate of {rate:.0%}")

    def set_poison_share(self, share: float) -> None:
        self.poison_share = share
        self.say(f"poison share of the next batches: {share:.0%}")

    def flush_redis(self) -> None:
        """FLUSHALL on the lab's Redis: the queue, the delayed retries, the processing lists,
        the dead letters and the heartbeats go; the reconciler queues the jobs again."""
        self._require_up()
        assert self.settings is not None
        client = sync_client(self.settings.redis_url)
        try:
            client.flushall()
        finally:
            client.close()
        self.say("FLUSHALL: Redis lost every key; the reconciler queues the jobs again")

    def postgres_stoppable(self) -> str | None:
        return self.stack.postgres_stoppable()

    def stop_postgres(self, seconds: float) -> None:
        self._require_up()
        if (why := self.stack.postgres_stoppable()) is not None:
            raise RuntimeError(why)
        self.say(f"stopping PostgreSQL for {seconds:g} s: the API answers 503 meanwhile")
        self.stack.stop_postgres(seconds, still_wanted=lambda: not self._closing)
        if not self._closing:
            self.say("PostgreSQL is back (same URL): the API and workers reconnect")

    async def replay_dead(self) -> int:
        """Queue every dead job again; replaying twice queues once."""
        self._require_up()
        assert self.settings is not None
        client = async_client(self.settings.redis_url)
        try:
            async with await psycopg.AsyncConnection.connect(
                self.settings.database_url,
                autocommit=True,
                **db.connect_options(),
                connect_timeout=5,
            ) as conn:
                replayed = await dead_letters.replay(client, conn, None)
        finally:
            await client.aclose()
        self.say(f"replayed {len(replayed)} dead jobs")
        return len(replayed)

    def reset(self) -> None:
        self._require_up()
        assert self.settings is not None
        reset_all(self.settings)
        self.say("reset: no orders, no jobs, nothing queued")

    async def fire(self, orders: int) -> dict[int, int]:
        """POST `orders` orders at once; returns how many got each HTTP status (0: no answer)."""
        sup = self._require_up()
        assert sup.api_url is not None
        plain, poison = split_batch(orders, self.poison_share)
        shots = await fire_products(sup.api_urls, [(plain, "tui #"), (poison, POISON_PRODUCT)])
        statuses = dict(Counter(s.status for s in shots))
        said = f" ({poison} poison)" if poison else ""
        self.say(f"fired {orders} orders{said}: {statuses}")
        return statuses

    async def run_rows(
        self, rows: Sequence[Row], on_progress: ProgressHandler, on_row: RowHandler
    ) -> SuiteResult:
        """Run rows of the suite with the shared Runner; each row's verdict is handed to
        on_row as soon as it is known, the API's verdict comes with the whole result.

        The workers added by hand would take the experiment's jobs and skew its figures, so
        every live worker is stopped first and the runner starts the pool each row needs; that
        pool stays up (and visible) afterwards.
        """
        sup = self._require_up()
        assert self.settings is not None
        # The embedded PostgreSQL this lab started, if it did: kata4's PostgreSQL row stops it
        # (skipped, with its reason, when the servers are someone else's).
        hosts = self.stack if isinstance(self.stack, HostsLab) else None
        pg = None if hosts is not None else owned_postgres(self.stack.servers)
        # Order ids keep counting from row to row: a lane spans rows, and would show #1 twice.
        runner = Runner(self.settings, sup, on_progress=on_progress, pg=pg, restart_ids=False,
                        hosts=hosts)  # fmt: skip
        # Before our own workers are touched: a refusal leaves them as they were.
        client = async_client(self.settings.redis_url, decode_responses=True)
        try:
            await runner.check_no_foreign_workers(client)
        finally:
            await client.aclose()
        live = [c.name for c in sup.workers()]
        if live:
            self.say(f"stopping {', '.join(live)}: the runner starts the workers each row needs")
            await asyncio.to_thread(sup.stop_many, live)
        self.say(f"running {self.suite.name}: {', '.join(r.name for r in rows)}")

        def row_done(done: RowResult) -> None:
            self.say(f"{done.row.name}: {done.makespan:.3f} s, {done.verdict} ({done.reason})")
            on_row(done)

        try:
            return await runner.run_suite(replace(self.suite, rows=tuple(rows)), on_row=row_done)
        except asyncio.CancelledError:
            self.say("experiment cancelled")
            raise

    def __repr__(self) -> str:
        return f"<LiveLab {self.state} children={[c.name for c in self.children()]}>"
