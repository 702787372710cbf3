"""PostgreSQL: the schema, and every statement the API and the workers run, in one place.

Each state change is one statement (CTEs touch `jobs` and `orders` together), so it is one
round trip and one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import select
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from mqlab.protocol.ids import job_id_sql

#: Statuses, in flow order, as sql/schema.sql's CHECKs have them: a job that runs out of
#: attempts (or fails permanently) is `dead`, and its order `failed`.
ORDER_STATUSES = ("pending", "processing", "retrying", "completed", "failed")
JOB_STATUSES = ("pending", "processing", "retrying", "completed", "dead")
#: Where a job may be claimed from (a redelivery after its worker died finds it processing).
CLAIMABLE = ("pending", "processing", "retrying")
#: How an attempt ended (job_history.outcome; job_attempts holds all but `completed`, which
#: the job's own row records). A history also shows the attempt under way, as `running`.
OUTCOMES = ("completed", "failed", "crashed", "handed_back", "reclaimed")
HISTORY_OUTCOMES = ("running", *OUTCOMES)


def schema_path() -> Path:
    """sql/schema.sql in a checkout, or the copy packed into the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "sql" / "schema.sql", here / "sql" / "schema.sql"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError("sql/schema.sql not found beside the mqlab package")


#: "off" for a PostgreSQL behind a pooler that cannot keep prepared statements (PgBouncer
#: before 1.21 in transaction pooling, or without max_prepared_statements): the API and the
#: workers then send every statement unprepared (docs/production.md measured what it costs).
ENV_PREPARE = "MQLAB_PG_PREPARE"


def prepare_threshold(environ: Mapping[str, str] | None = None) -> int | None:
    """psycopg's prepare_threshold for the API's and the workers' connections: 0 (prepared
    from the first use: they run the same few statements all their lives), or None (never)
    when MQLAB_PG_PREPARE is off. ValueError, saying what it takes, for any other value."""
    value = (os.environ if environ is None else environ).get(ENV_PREPARE, "on").strip().lower()
    if value in ("on", "1", "yes", "true", ""):
        return 0
    if value in ("off", "0", "no", "false"):
        return None
    raise ValueError(f"{ENV_PREPARE} must be on or off, not {value!r}")


def connect_options() -> dict[str, Any]:
    """What every connection of mqlab's adds to psycopg's connect: nothing, or, when
    MQLAB_PG_PREPARE is off, never to prepare (psycopg prepares a statement run 5 times)."""
    return {} if prepare_threshold() is not None else {"prepare_threshold": None}


def apply_schema(url: str) -> None:
    """Create the tables if they are missing (idempotent; safe with concurrent starters)."""
    with psycopg.connect(url, **connect_options()) as conn, conn.transaction():
        # An advisory lock, so two processes starting at once do not race on CREATE. Held by
        # the transaction, not the session: behind a pooler in transaction mode (PgBouncer) a
        # session lock and its unlock could go to two server connections, leaving the lock
        # held for good and every later start waiting (docs/production.md saw it).
        conn.execute("SELECT pg_advisory_xact_lock(727274)")
        conn.execute(schema_path().read_text())  # type: ignore[arg-type]


def closed_by_server(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection was ended by its server (a restart, a kill), found without
    a round trip.

    Why: psycopg learns it only when the next statement fails, so a pool handed out, and a
    worker used, one dead connection after another after PostgreSQL came back (each failing
    an order with a 503). A server that ends a connection sends its reason and closes it;
    an idle connection (autocommit, nothing pending) that has bytes or an EOF to read is such
    a one. One poll() of its socket, no wait.
    """
    if conn.closed or conn.broken:
        return True
    poller = select.poll()  # not select.select(): a descriptor may be above 1023
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class LazyConnection:
    """One autocommit connection, opened at its first use and again after it was dropped (an
    outage) or closed by the server while idle (closed_by_server): the worker's, its
    reconciler's, a faulty experiment row's. `options` go to psycopg's connect
    (connect_timeout, prepare_threshold).

    Tasks that share it (a worker's --concurrency slots) take turns through use(): the
    check that the server closed it reads its socket, which a query in flight of another
    task makes readable, and a connection dropped under a query fails that query (seen:
    a claim failed with "got no result from the query", its message dead-lettered)."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url, self.options = url, {**connect_options(), **options}
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The connection, for this task alone until the block ends."""
        async with self.lock:
            yield await self.get()

    async def get(self) -> psycopg.AsyncConnection[Any]:
        """The connection, for a holder that has it alone (use() when tasks share it)."""
        if self.conn is not None and closed_by_server(self.conn):
            await self._close()
        if self.conn is None:
            self.conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, **self.options
            )
        return self.conn

    async def drop(self) -> None:
        """Close it (whatever state it is in); the next get() opens a new one."""
        async with self.lock:
            await self._close()

    async def _close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn = None


# Orders, each with its job, in one statement and so one commit, before the API enqueues
# them. Usually one order; under load, the orders that arrived while the previous group was
# being written (the API's group commit, see api.app.OrderWriter). Each input row
# takes its id up front, so that the result rows can be matched to the inputs by `n` (their
# 1-based position) whatever order RETURNING yields them in. enqueued_at comes back as the
# message's ISO-8601 text (what iso() makes, without a datetime round trip in Python).
INSERT_ORDERS = f"""
WITH input AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('orders', 'id')) AS id, t.*
    FROM unnest(%(products)s::text[], %(quantities)s::int8[], %(prices)s::float8[])
         WITH ORDINALITY AS t(product, quantity, price, n)
), o AS (
    INSERT INTO orders (id, product, quantity, price)
    SELECT id, product, quantity, price FROM input ORDER BY n
    RETURNING id, created_at
), j AS (
    INSERT INTO jobs (id, order_id, enqueued_at)
    SELECT {job_id_sql("o.id", "%(ms)s")}, o.id, o.created_at FROM o
    RETURNING order_id, id, enqueued_at
)
SELECT input.n, j.order_id, j.id,
       to_char(j.enqueued_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
FROM j JOIN input ON input.id = j.order_id
"""

# A new API connection's warm-up, run in a transaction that is rolled back: the first insert
# in a backend plans the foreign-key check and loads the tables' indexes and constraints. An
# id of its own, not nextval(): a sequence value, once taken, is not given back by a rollback.
WARM_UP_INSERT = """
WITH o AS (
    INSERT INTO orders (id, product, quantity, price) VALUES (-1, 'warm-up', 1, 0)
    RETURNING id, created_at
)
INSERT INTO jobs (id, order_id, enqueued_at) SELECT 'warm-up', id, created_at FROM o
"""

# Undo orders whose jobs could not be enqueued (Redis down): a rejected request leaves nothing.
DELETE_ORDERS = "DELETE FROM orders WHERE id = ANY(%s)"

# A worker claims a job: from pending, or from retrying (its backoff is over). attempts counts
# claims. The RETURNING row is the proof that the claim happened, with the attempt's number
# (attempts: among all of the job's attempts; since_replay: among those since its last replay,
# what the retry policy counts) and the order's product (what the poison pattern is matched
# against). A job found processing (its worker died on it, and the reaper put it back on the
# queue) is not claimed here but taken over (TAKE_OVER_JOB), after a look at it: the hot path
# stays the one statement it was before Kata 4. %(instance)s names this run of the worker (its
# heartbeat's `instance`), so that a duplicate delivery can tell a claim whose worker still
# runs from one a dead run left. Nothing is claimed for a message whose order id is not its
# job's, nor for a job whose order row is gone (its foreign key bypassed): the worker looks at
# those and dead-letters them, counting no attempt.
#
# The claim commits asynchronously (synchronous_commit off for this one transaction, set from
# inside the statement so that it stays one round trip): it does not wait for its WAL flush,
# which halves the fsync waits per job. Safe because the completion commits synchronously,
# and flushing its commit record flushes the claim's (WAL is sequential); a claim lost in a
# PostgreSQL crash leaves the job as it was, and the worker hands it back to the queue when
# its completion finds it so (Worker._not_completed): it is redelivered, never lost.
CLAIM_JOB = """
WITH j AS (
    UPDATE jobs SET status = 'processing', worker_id = %(worker)s, attempts = attempts + 1,
                    worker_instance = %(instance)s,
                    started_at = clock_timestamp(), finished_at = NULL, next_attempt_at = NULL
    WHERE id = %(job)s AND order_id = %(order)s AND status IN ('pending', 'retrying')
      AND EXISTS (SELECT FROM orders WHERE orders.id = jobs.order_id)
    RETURNING id, order_id, attempts, attempts - replay_base AS since_replay, started_at
), o AS (
    UPDATE orders SET status = 'processing', updated_at = j.started_at FROM j
    WHERE orders.id = j.order_id
    RETURNING orders.product
)
SELECT j.id, j.order_id, j.attempts, j.since_replay, o.product
FROM j, o, (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
"""

# CLAIM_JOB for a batch: each (job, order) of the arrays that is claimable is claimed, as by
# CLAIM_JOB, in one statement; rows come back for those claimed (in no set order). A job named
# twice in the arrays (a duplicate delivery in one batch) is claimed once.
CLAIM_JOBS = """
WITH want AS (
    SELECT DISTINCT ON (job) job, ord
    FROM unnest(%(jobs)s::text[], %(orders)s::int8[]) AS w(job, ord)
), j AS (
    UPDATE jobs SET status = 'processing', worker_id = %(worker)s, attempts = attempts + 1,
                    worker_instance = %(instance)s,
                    started_at = clock_timestamp(), finished_at = NULL, next_attempt_at = NULL
    FROM want
    WHERE jobs.id = want.job AND jobs.order_id = want.ord
      AND jobs.status IN ('pending', 'retrying')
      AND EXISTS (SELECT FROM orders WHERE orders.id = jobs.order_id)
    RETURNING jobs.id, jobs.order_id, jobs.attempts,
              jobs.attempts - jobs.replay_base AS since_replay, jobs.started_at
), o AS (
    UPDATE orders SET status = 'processing', updated_at = j.started_at FROM j
    WHERE orders.id = j.order_id
    RETURNING orders.id, orders.product
)
SELECT j.id, j.order_id, j.attempts, j.since_replay, o.product
FROM j JOIN o ON o.id = j.order_id, (SELECT set_config('synchronous_commit', 'off', true)) AS c
"""

# A redelivery of a job that is processing by a run of a worker that is gone (its heartbeat
# expired, or names another run: the caller looks first; a delivery of a job whose worker is
# alive is dropped). The claim it never ended is recorded as crashed, and the job is this
# worker's. Guarded on that claim as JOB_STATUS showed it (%(was_worker)s, %(was_instance)s,
# %(was_attempt)s, %(was_started)s): if it changed since, nothing happens. The caller checks
# first that the job has attempts left (else BURY_JOB, outcome crashed).
TAKE_OVER_JOB = """
WITH j AS (
    UPDATE jobs SET status = 'processing', worker_id = %(worker)s, attempts = attempts + 1,
                    worker_instance = %(instance)s,
                    started_at = clock_timestamp(), finished_at = NULL, next_attempt_at = NULL
    WHERE id = %(job)s AND status = 'processing' AND attempts = %(was_attempt)s
      AND worker_id IS NOT DISTINCT FROM %(was_worker)s
      AND worker_instance IS NOT DISTINCT FROM %(was_instance)s
      AND EXISTS (SELECT FROM orders WHERE orders.id = jobs.order_id)
    RETURNING id, order_id, attempts, attempts - replay_base AS since_replay, started_at
), crashed AS (
    INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome)
    SELECT id, %(was_attempt)s, %(was_worker)s, %(was_started)s, started_at, 'crashed' FROM j
    WHERE %(was_worker)s::text IS NOT NULL AND %(was_started)s::timestamptz IS NOT NULL
      AND %(was_attempt)s::int4 >= 1
    ON CONFLICT (job_id, attempt) DO NOTHING
), o AS (
    UPDATE orders SET status = 'processing', updated_at = j.started_at FROM j
    WHERE orders.id = j.order_id
    RETURNING orders.product
)
SELECT j.id, j.order_id, j.attempts, j.since_replay, o.product FROM j, o
"""

# The row an attempt leaves in job_attempts when it ends (%(outcome)s, %(error)s; `j` is the
# job's row as the ending statement returned it: id, started_at, finished_at, next_attempt_at).
# A row for that number can exist only if attempts was rewound by hand, or a claim lost in a
# PostgreSQL crash left the number to be used again: the later attempt's record wins.
_RECORD_ATTEMPT = """
    INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome,
                              error, next_attempt_at)
    SELECT j.id, %(attempt)s, %(worker)s, j.started_at, j.finished_at, {outcome}, {error},
           {next_attempt_at}
    FROM j
    WHERE %(worker)s::text IS NOT NULL AND j.started_at IS NOT NULL
    ON CONFLICT (job_id, attempt) DO UPDATE
    SET worker_id = excluded.worker_id, started_at = excluded.started_at,
        finished_at = excluded.finished_at, outcome = excluded.outcome, error = excluded.error,
        next_attempt_at = excluded.next_attempt_at
"""

# Completion is guarded by the claim (worker and attempt): a worker whose job was handed to
# another after it was presumed dead cannot complete it a second time. It returns how long the
# job took (seconds, for the log line) rather than timestamps the worker would have to parse.
# The completed attempt is recorded by the job's own row (worker, attempts, started and
# finished): job_attempts holds the attempts that did not complete, so that the hot path
# writes nothing more than it did before Kata 4 (measured: a row per attempt there cost the
# drain about 10 %). The view job_history shows both.
COMPLETE_JOB = """
WITH j AS (
    UPDATE jobs SET status = 'completed', finished_at = clock_timestamp()
    WHERE id = %(job)s AND status = 'processing' AND worker_id = %(worker)s
      AND attempts = %(attempt)s
    RETURNING order_id, started_at, finished_at
), o AS (
    UPDATE orders SET status = 'completed', completed_at = j.finished_at,
                      updated_at = j.finished_at
    FROM j WHERE orders.id = j.order_id
)
SELECT order_id, extract(epoch FROM finished_at - started_at)::float8 AS took FROM j
"""

# COMPLETE_JOB for a batch: each (job, attempt) of the arrays, guarded as COMPLETE_JOB is, in
# one statement (one commit for the batch); rows come back for those completed.
COMPLETE_JOBS = """
WITH j AS (
    UPDATE jobs SET status = 'completed', finished_at = clock_timestamp()
    FROM unnest(%(jobs)s::text[], %(attempts)s::int4[]) AS w(job, attempt)
    WHERE jobs.id = w.job AND jobs.status = 'processing' AND jobs.worker_id = %(worker)s
      AND jobs.attempts = w.attempt
    RETURNING jobs.id, jobs.order_id, jobs.started_at, jobs.finished_at
), o AS (
    UPDATE orders SET status = 'completed', completed_at = j.finished_at,
                      updated_at = j.finished_at
    FROM j WHERE orders.id = j.order_id
)
SELECT id, extract(epoch FROM finished_at - started_at)::float8 AS took FROM j
"""

# A failed attempt that will be tried again: the job is retrying until %(delay)s seconds from
# now (PostgreSQL's clock; the delayed set in Redis is scored by Redis's, see
# mqlab.protocol.delayed), guarded by the claim as the completion is. Returns the due time.
RETRY_JOB = f"""
WITH j AS (
    UPDATE jobs SET status = 'retrying', last_error = %(error)s,
                    finished_at = clock_timestamp(),
                    next_attempt_at = clock_timestamp() + make_interval(secs => %(delay)s)
    WHERE id = %(job)s AND status = 'processing' AND worker_id = %(worker)s
      AND attempts = %(attempt)s
    RETURNING id, order_id, started_at, finished_at, next_attempt_at
), a AS ({
    _RECORD_ATTEMPT.format(
        outcome="'failed'", error="%(error)s", next_attempt_at="j.next_attempt_at"
    )
}
), o AS (
    UPDATE orders SET status = 'retrying', updated_at = j.finished_at FROM j
    WHERE orders.id = j.order_id
)
SELECT order_id, next_attempt_at FROM j
"""

# A job that may not be tried again: dead, with its last error, and its order failed. Guarded
# on the claim it ends (status processing, worker and attempt as the caller saw them): the
# worker's own failed attempt (outcome 'failed'), or, at a claim refused because the attempts
# are spent, the attempt its dead worker never ended (outcome 'crashed', worker = that one).
BURY_JOB = f"""
WITH j AS (
    UPDATE jobs SET status = 'dead', last_error = %(error)s, finished_at = clock_timestamp(),
                    next_attempt_at = NULL
    WHERE id = %(job)s AND status = 'processing' AND attempts = %(attempt)s
      AND worker_id IS NOT DISTINCT FROM %(worker)s
    RETURNING id, order_id, started_at, finished_at
), a AS ({_RECORD_ATTEMPT.format(outcome="%(outcome)s", error="%(error)s", next_attempt_at="NULL")}
), o AS (
    UPDATE orders SET status = 'failed', updated_at = j.finished_at FROM j
    WHERE orders.id = j.order_id
)
SELECT order_id FROM j
"""

# A job as a worker looks at it when its claim matched nothing (JobLook's fields): also which
# run of its worker holds it, its order id, and whether that order's row exists.
JOB_STATUS = """
SELECT j.status, j.worker_id, j.attempts, j.attempts - j.replay_base AS since_replay,
       j.started_at, j.worker_instance, j.order_id, o.id IS NOT NULL
FROM jobs j LEFT JOIN orders o ON o.id = j.order_id WHERE j.id = %s
"""

# A claim of this run of the worker, as CLAIM_JOB returns one: its reply was lost (PostgreSQL
# went away after the commit) and the message came back to the same run.
OWN_CLAIM = """
SELECT j.id, j.order_id, j.attempts, j.attempts - j.replay_base AS since_replay, o.product
FROM jobs j JOIN orders o ON o.id = j.order_id
WHERE j.id = %(job)s AND j.status = 'processing' AND j.worker_instance = %(instance)s
"""

#: Does an order exist? (What a dead letter of a message naming no job says about its order.)
ORDER_EXISTS = "SELECT EXISTS (SELECT FROM orders WHERE id = %s)"

# A job whose order row is gone (deleted with the foreign key bypassed): dead at once, with
# the reason, guarded on the row as JOB_STATUS showed it. No attempt is counted for the
# delivery that found it; a claim its dead worker never ended is recorded as crashed.
BURY_ORPHAN = """
WITH j AS (
    UPDATE jobs SET status = 'dead', last_error = %(error)s, finished_at = clock_timestamp(),
                    next_attempt_at = NULL
    WHERE id = %(job)s AND status = %(status)s AND attempts = %(attempt)s
      AND worker_id IS NOT DISTINCT FROM %(worker)s
      AND NOT EXISTS (SELECT FROM orders WHERE orders.id = jobs.order_id)
    RETURNING id, started_at, finished_at
), a AS (
    INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome)
    SELECT id, %(attempt)s, %(worker)s, started_at, finished_at, 'crashed' FROM j
    WHERE %(status)s = 'processing' AND %(worker)s::text IS NOT NULL AND started_at IS NOT NULL
      AND %(attempt)s::int4 >= 1
    ON CONFLICT (job_id, attempt) DO NOTHING
)
SELECT id FROM j
"""

# A worker hands a job back to the queue (a second stop, a lost claim): the job is pending
# again, naming no worker, before its message is back on the queue, so that no job waits on
# the queue while PostgreSQL says someone works it. Guarded on the claim it undoes (status,
# worker and attempts as the worker last saw them): a claim made since, by another worker,
# is left alone. attempts stays: it counts claims. The attempt is recorded as handed back
# (its start from `prev`: the release clears started_at). Returns a row when it released.
RELEASE_JOB = """
WITH prev AS (
    SELECT id, started_at FROM jobs WHERE id = %(job)s
), j AS (
    UPDATE jobs SET status = 'pending', worker_id = NULL, started_at = NULL FROM prev
    WHERE jobs.id = prev.id AND jobs.status = %(status)s AND jobs.attempts = %(attempt)s
      AND jobs.worker_id IS NOT DISTINCT FROM %(worker)s
    RETURNING jobs.id, jobs.order_id, prev.started_at
), a AS (
    INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome)
    SELECT id, %(attempt)s, %(worker)s, started_at, clock_timestamp(), 'handed_back' FROM j
    WHERE %(status)s = 'processing' AND %(worker)s::text IS NOT NULL AND started_at IS NOT NULL
      AND %(attempt)s >= 1
    ON CONFLICT (job_id, attempt) DO NOTHING
), o AS (
    UPDATE orders SET status = 'pending', updated_at = clock_timestamp() FROM j
    WHERE orders.id = j.order_id
)
SELECT order_id FROM j
"""

ORDER_COLUMNS = (
    "o.id, o.product, o.quantity, o.price, o.status, o.created_at, o.updated_at, "
    "o.completed_at, j.id"
)
JOB_COLUMNS = (
    "id, order_id, status, worker_id, attempts, last_error, enqueued_at, started_at, finished_at, "
    "next_attempt_at"
)
SELECT_ORDERS = f"""
SELECT {ORDER_COLUMNS} FROM orders o LEFT JOIN LATERAL (
    SELECT id FROM jobs WHERE jobs.order_id = o.id ORDER BY enqueued_at DESC LIMIT 1
) j ON true
"""
SELECT_JOBS = f"SELECT {JOB_COLUMNS} FROM jobs"

COUNT_BY_STATUS = """
SELECT 'orders', status, count(*) FROM orders GROUP BY status
UNION ALL
SELECT 'jobs', status, count(*) FROM jobs GROUP BY status
"""

# The API's reads: newest first, paged; one row by id.
LIST_ORDERS = f"{SELECT_ORDERS} ORDER BY o.id DESC LIMIT %s OFFSET %s"
ORDER_BY_ID = f"{SELECT_ORDERS} WHERE o.id = %s"
LIST_JOBS = f"{SELECT_JOBS} ORDER BY enqueued_at DESC, id DESC LIMIT %s OFFSET %s"
JOB_BY_ID = f"{SELECT_JOBS} WHERE id = %s"
# The same, and the attempts before its last replay (`mqlab dead show` numbers the attempts
# since it).
JOB_AND_REPLAY_BY_ID = f"SELECT {JOB_COLUMNS}, replay_base FROM jobs WHERE id = %s"

#: The health check's question: does PostgreSQL answer at all?
PING = "SELECT 1"

# Jobs completed in the last %(seconds)s seconds, by worker id: each host's throughput in
# /stats (mqlab.system.observe), by PostgreSQL's clock, the one every host's processes share.
# jobs_completed_at_idx (sql/schema.sql) makes it a range scan of the last seconds' rows:
# without it, every /stats scanned all the jobs.
COMPLETED_BY_WORKER = """
SELECT worker_id, count(*) FROM jobs
WHERE status = 'completed' AND finished_at > now() - make_interval(secs => %(seconds)s)
GROUP BY worker_id
"""

# -- the lab's reads: what the runner and the bench measure, from PostgreSQL's clock -------

COUNT_COMPLETED = "SELECT count(*) FROM jobs WHERE status = 'completed'"

# Each job's timestamps as epoch seconds (results.JobTiming's fields, in its order).
JOB_TIMINGS = """
SELECT id, order_id, worker_id, attempts, extract(epoch FROM enqueued_at)::float8,
       extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8, status
FROM jobs ORDER BY enqueued_at, id
"""

# The attempts that did not complete, by outcome (job_attempts alone: the TUI asks 5 times a
# second, and needs no scan of jobs for the completions, which its status counts have).
ATTEMPT_OUTCOMES = "SELECT outcome, count(*) FROM job_attempts GROUP BY outcome ORDER BY outcome"

# The drain: completed jobs, first start to last finish, and how many were delivered again.
DRAIN_FIGURES = """
SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8,
       count(*) FILTER (WHERE attempts > 1)
FROM jobs WHERE status = 'completed'
"""

# The dispatch: enqueue -> start, and enqueue -> finish (None while a job runs), in seconds.
DISPATCH_TIMES = """
SELECT extract(epoch FROM started_at - enqueued_at)::float8,
       extract(epoch FROM finished_at - enqueued_at)::float8
FROM jobs WHERE started_at IS NOT NULL
"""


async def count_completed(conn: psycopg.AsyncConnection[Any]) -> int:
    """How many jobs are completed now."""
    row = await (await conn.execute(COUNT_COMPLETED)).fetchone()
    return int(row[0]) if row else 0


async def job_timings(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
    """Every job's id, order, worker, attempts, timestamps (epoch seconds) and status."""
    return await (await conn.execute(JOB_TIMINGS)).fetchall()


async def attempt_outcomes(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """How many attempts ended each way but completed (only the outcomes that occurred)."""
    rows = await (await conn.execute(ATTEMPT_OUTCOMES)).fetchall()
    return {str(outcome): int(n) for outcome, n in rows}


async def completed_by_worker(conn: psycopg.AsyncConnection[Any], seconds: float) -> dict[str, int]:
    """Worker id -> jobs it completed in the last `seconds` (PostgreSQL's clock)."""
    cur = await conn.execute(COMPLETED_BY_WORKER, {"seconds": seconds})
    return {str(worker): int(n) for worker, n in await cur.fetchall()}


def drain_figures(conn: psycopg.Connection[Any]) -> tuple[int, float, int]:
    """Completed jobs, seconds from the first start to the last finish, redelivered jobs."""
    row = conn.execute(DRAIN_FIGURES).fetchone()
    assert row is not None  # an aggregate always answers one row
    return int(row[0]), float(row[1] or 0), int(row[2])


def dispatch_times(conn: psycopg.Connection[Any]) -> list[tuple[float, float | None]]:
    """(enqueue -> start, enqueue -> finish) in seconds for every job that started."""
    rows = conn.execute(DISPATCH_TIMES).fetchall()
    return [(float(r[0]), None if r[1] is None else float(r[1])) for r in rows]


def iso(value: dt.datetime | None) -> str | None:
    """ISO-8601 in UTC with a Z, as the API promises."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_epoch(seconds: float | None) -> str | None:
    """Epoch seconds (Redis's clock, a heartbeat's fields) as iso() writes them."""
    return None if seconds is None else iso(dt.datetime.fromtimestamp(seconds, dt.UTC))


def order_json(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row of SELECT_ORDERS as the API's camelCase JSON."""
    oid, product, quantity, price, status, created, updated, completed, job_id = row
    return {
        "id": oid,
        "orderId": oid,
        "product": product,
        "quantity": quantity,
        "price": float(price) if isinstance(price, Decimal) else price,
        "status": status,
        "jobId": job_id,
        "createdAt": iso(created),
        "updatedAt": iso(updated),
        "completedAt": iso(completed),
    }


def job_json(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row of SELECT_JOBS as the API's camelCase JSON."""
    jid, order_id, status, worker, attempts, error, enqueued, started, finished, due = row
    return {
        "id": jid,
        "jobId": jid,
        "orderId": order_id,
        "status": status,
        "workerId": worker,
        "attempts": attempts,
        "lastError": error,
        "enqueuedAt": iso(enqueued),
        "startedAt": iso(started),
        "finishedAt": iso(finished),
        "nextAttemptAt": iso(due),
    }


def counts_by_status(rows: list[tuple[Any, ...]]) -> dict[str, dict[str, int]]:
    """COUNT_BY_STATUS rows as {"orders": {status: n, ...}, "jobs": {...}} with every status."""
    out: dict[str, dict[str, int]] = {
        "orders": dict.fromkeys(ORDER_STATUSES, 0),
        "jobs": dict.fromkeys(JOB_STATUSES, 0),
    }
    for table, status, count in rows:
        out[table][status] = int(count)
    return out


def reset_data(conn: psycopg.Connection[Any], restart_ids: bool = True) -> None:
    """Empty both tables and (unless told not to) restart the ids (the lab's reset; tests
    between cases). The TUI's rows keep counting: its lanes span rows, and an order #1 of
    each row would repeat on a lane.

    DELETE rather than TRUNCATE: TRUNCATE gives the tables new files, and the first orders
    after it (the ones an experiment measures) pay for creating them (measured: ~5 ms more
    for the first burst after a reset).
    """
    with conn.transaction():
        conn.execute("DELETE FROM jobs")
        conn.execute("DELETE FROM orders")
        if restart_ids:
            conn.execute("SELECT setval(pg_get_serial_sequence('orders', 'id'), 1, false)")


# -- dead letters and replay (mqlab.system.dead_letters: `mqlab dead`, GET /jobs?status=,
# GET /jobs/{id}'s history, POST /jobs/{id}/retry) -----------------------------------------

# The jobs of one status, newest first, paged (GET /jobs?status=).
LIST_JOBS_BY_STATUS = (
    f"{SELECT_JOBS} WHERE status = %s ORDER BY enqueued_at DESC, id DESC LIMIT %s OFFSET %s"
)

# The dead jobs as `mqlab dead list` shows them: most recently buried first. Also a job whose
# order row is gone (no product then): the worker buried it for that.
LIST_DEAD_JOBS = """
SELECT j.id, j.order_id, o.product, j.attempts, j.last_error, j.finished_at
FROM jobs j LEFT JOIN orders o ON o.id = j.order_id
WHERE j.status = 'dead'
ORDER BY j.finished_at DESC NULLS LAST, j.id DESC
LIMIT %s
"""

COUNT_DEAD_JOBS = "SELECT count(*) FROM jobs WHERE status = 'dead'"

# Every attempt of one job, in order (job_history: the attempts that did not complete, and the
# job's own row as its completed or running one), as ATTEMPT_FIELDS names the columns.
JOB_ATTEMPTS = """
SELECT attempt, worker_id, started_at, finished_at, outcome, error, next_attempt_at
FROM job_history WHERE job_id = %(job)s ORDER BY attempt
"""

# Replay: dead jobs are pending again, in one guarded UPDATE (only rows still dead, so two
# replays at once queue a job once: the second finds it pending and returns nothing). The
# retry policy counts since_replay = attempts - replay_base, so a replayed job gets its full
# attempts again; attempts itself keeps counting claims. last_error stays, for the record;
# started_at goes, as a hand-back's does (a pending job has not started). %(ids)s NULL: every
# dead job. Returns what the queue message needs: id, order id, and enqueued_at as the API
# writes it.
REPLAY_JOBS = """
WITH j AS (
    UPDATE jobs SET status = 'pending', replay_base = attempts, worker_id = NULL,
                    next_attempt_at = NULL, finished_at = NULL, started_at = NULL
    WHERE status = 'dead' AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))
    RETURNING id, order_id, enqueued_at
), o AS (
    UPDATE orders SET status = 'pending', updated_at = clock_timestamp(), completed_at = NULL
    FROM j WHERE orders.id = j.order_id
)
SELECT id, order_id, enqueued_at FROM j ORDER BY enqueued_at, id
"""

# The status of each of some jobs (why a replay left them alone).
STATUS_OF_JOBS = "SELECT id, status FROM jobs WHERE id = ANY(%s::text[])"

# Purge: the dead jobs' orders go, and with them (ON DELETE CASCADE) the jobs and their
# attempts; a dead job whose order row was already gone goes by itself. Returns the orders'
# ids.
PURGE_DEAD = """
WITH o AS (
    DELETE FROM orders WHERE id IN (SELECT order_id FROM jobs WHERE status = 'dead')
    RETURNING id
), orphans AS (
    DELETE FROM jobs WHERE status = 'dead'
      AND NOT EXISTS (SELECT FROM orders WHERE orders.id = jobs.order_id)
    RETURNING order_id
)
SELECT id FROM o UNION ALL SELECT order_id FROM orphans
"""

#: The fields of a JOB_ATTEMPTS row in the API's camelCase, in its column order.
ATTEMPT_FIELDS = (
    "attempt", "workerId", "startedAt", "finishedAt", "outcome", "error", "nextAttemptAt"
)  # fmt: skip


def attempt_json(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row of JOB_ATTEMPTS as the API's camelCase JSON (timestamps as iso())."""
    return {
        name: iso(value) if isinstance(value, dt.datetime) else value
        for name, value in zip(ATTEMPT_FIELDS, row, strict=True)
    }


# -- the reconciler (mqlab.system.reconciler): jobs PostgreSQL expects to run that Redis lost

# The jobs that should be somewhere in Redis, and have been in their state longer than the
# grace (seconds): pending since enqueued, retrying since the attempt failed (finished_at;
# its due time only when that is missing), processing since claimed. The grace keeps out the
# job the API has committed but not pushed yet, and the one a worker is between two steps
# with. Served by jobs_status_idx: it costs what the live jobs number, not the whole table.
# delay: seconds until a retrying job is due (PostgreSQL's clock; <= 0 when due).
RECONCILE_CANDIDATES = """
SELECT id, order_id, status, worker_id, attempts, enqueued_at,
       extract(epoch FROM next_attempt_at - clock_timestamp())::float8 AS delay
FROM jobs
WHERE status IN ('pending', 'retrying', 'processing')
  AND coalesce(CASE status WHEN 'pending' THEN enqueued_at
                           WHEN 'retrying' THEN coalesce(finished_at, next_attempt_at)
                           ELSE started_at END,
               enqueued_at) < clock_timestamp() - make_interval(secs => %(grace)s)
ORDER BY enqueued_at, id
"""

# The waiting candidates (pending, retrying) that are still as the candidates' query saw
# them: a job claimed, finished or replayed since (attempts moved, or its status) is left
# alone. The query ran before Redis was scanned, so this is what keeps a job that completed
# in between (and so left Redis) from being queued again.
RECHECK_WAITING = """
SELECT j.id FROM jobs j
JOIN unnest(%(ids)s::text[], %(statuses)s::text[], %(attempts)s::int4[])
     AS c(id, status, attempts)
  ON j.id = c.id AND j.status = c.status AND j.attempts = c.attempts
"""

# Processing candidates whose worker is gone and whose message Redis lost: the attempt that
# was running is 'reclaimed', the job pending again (no worker) and its order pending, before
# the message is pushed (no job waits on the queue while PostgreSQL says someone works it).
# Guarded on the claim as seen (worker and attempts): a claim made since is left alone.
# attempts stays: it counts claims, and the reclaimed one was one.
RECLAIM_JOBS = """
WITH c AS (
    SELECT * FROM unnest(%(ids)s::text[], %(workers)s::text[], %(attempts)s::int4[])
        AS c(id, worker, attempts)
), prev AS (
    SELECT jobs.id, jobs.started_at FROM jobs JOIN c ON jobs.id = c.id
), j AS (
    UPDATE jobs SET status = 'pending', worker_id = NULL, started_at = NULL
    FROM c JOIN prev ON prev.id = c.id
    WHERE jobs.id = c.id AND jobs.status = 'processing' AND jobs.attempts = c.attempts
      AND jobs.worker_id IS NOT DISTINCT FROM c.worker
    RETURNING jobs.id, jobs.order_id, jobs.attempts, c.worker, prev.started_at
), a AS (
    INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome)
    SELECT id, attempts, worker, started_at, clock_timestamp(), 'reclaimed' FROM j
    WHERE worker IS NOT NULL AND started_at IS NOT NULL AND attempts >= 1
    ON CONFLICT (job_id, attempt) DO NOTHING
), o AS (
    UPDATE orders SET status = 'pending', updated_at = clock_timestamp() FROM j
    WHERE orders.id = j.order_id
)
SELECT id FROM j
"""


# -- the Kata 4 lab's reads (mqlab.lab.runner, mqlab.figures.ledger): settled jobs, every attempt

# Jobs that will not move again on their own: completed, and dead (a row's wait ends on both).
COUNT_SETTLED = """
SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'dead')
FROM jobs
"""

# Every attempt of every job (job_history), times as epoch seconds (ledger.Attempt's fields):
# the ledger's figures and the timelines' bars.
ATTEMPT_TIMES = """
SELECT job_id, attempt, worker_id, extract(epoch FROM started_at)::float8,
       extract(epoch FROM finished_at)::float8, outcome, error,
       extract(epoch FROM next_attempt_at)::float8
FROM job_history ORDER BY job_id, attempt
"""


async def count_settled(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
    """(completed jobs, dead jobs) now."""
    row = await (await conn.execute(COUNT_SETTLED)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


async def attempt_times(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
    """Every attempt of every job, in order (see ATTEMPT_TIMES)."""
    return await (await conn.execute(ATTEMPT_TIMES)).fetchall()
