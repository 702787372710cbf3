"""The reconciler: jobs PostgreSQL expects to run that Redis lost are queued again, once,
by one reconciler at a time; jobs Redis holds, or that are too young, are left alone."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import psycopg
import pytest
import redis
import redis.asyncio as aioredis

from mqlab.lab.supervisor import Supervisor
from mqlab.procs import free_port
from mqlab.protocol import keys
from mqlab.protocol.events import EventKind
from mqlab.protocol.messages import parse_message
from mqlab.settings import Settings
from mqlab.system import reconciler as reconciler_module
from mqlab.system.reconciler import (
    LockBusy,
    ReconcileConfig,
    Reconciler,
    ReconcilerError,
    reconcile_now,
)
from mqlab.system.reconciler_record import parse_run
from mqlab.system.spec import WorkerSpec
from tests.helpers import eventually, insert_job, job, post_order

#: The reconciler's own keys, which the `clean` fixture does not know of.
OWN_KEYS = (keys.RECONCILER_LOCK, keys.RECONCILER, keys.DELAYED)


@pytest.fixture
def fresh(rds: redis.Redis, clean: None) -> Iterator[None]:
    """No lock, no record of a run and no delayed job, before and after the test."""
    rds.delete(*OWN_KEYS)
    yield
    rds.delete(*OWN_KEYS)


@pytest.fixture
def raw_rds(settings: Settings) -> Iterator[redis.Redis]:
    """A client that answers bytes: a queue entry need not be UTF-8."""
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


@pytest.fixture
async def ards(settings: Settings, fresh: None) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client answering bytes, as the worker's does."""
    client = aioredis.Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


def make_job(
    settings: Settings,
    job_id: str,
    status: str = "pending",
    age: float = 60.0,
    worker: str | None = None,
    due_in: float = 0.0,
) -> bytes:
    """A job in `status` for `age` seconds (its last change), as the worker leaves it; the
    message the API would have pushed for it."""
    raw = insert_job(settings.database_url, job_id)
    params = {"job": job_id, "age": age, "worker": worker, "due": due_in}
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET enqueued_at = now() - make_interval(secs => %(age)s + 1) "
            "WHERE id = %(job)s",
            params,
        )
        if status == "retrying":
            conn.execute(
                "UPDATE jobs SET status = 'retrying', attempts = 1, last_error = 'boom', "
                "finished_at = now() - make_interval(secs => %(age)s), "
                "next_attempt_at = now() + make_interval(secs => %(due)s) WHERE id = %(job)s",
                params,
            )
        elif status == "processing":
            conn.execute(
                "UPDATE jobs SET status = 'processing', attempts = 1, worker_id = %(worker)s, "
                "started_at = now() - make_interval(secs => %(age)s) WHERE id = %(job)s",
                params,
            )
    return raw


def queued_ids(client: redis.Redis) -> list[str]:
    return [parse_message(m).job_id for m in client.lrange(keys.QUEUE, 0, -1)]


def row(pg: psycopg.Connection, sql: str, *args: object) -> tuple:
    found = pg.execute(sql, args).fetchone()
    assert found is not None
    return found


# -- one run, on the real servers, without workers -------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("where", ["queue", "delayed", "processing", "live worker"])
async def test_a_job_redis_holds_is_left_alone_and_a_lost_one_is_requeued(
    settings: Settings, ards: aioredis.Redis, rds: redis.Redis, raw_rds: redis.Redis, where: str
) -> None:
    status = {"delayed": "retrying", "processing": "processing"}.get(where, "pending")
    held = make_job(settings, "job-held", status, worker="wgone")
    lost = make_job(settings, "job-lost")
    if where == "queue":
        rds.lpush(keys.QUEUE, held)
    elif where == "delayed":
        rds.zadd(keys.DELAYED, {held: time.time() + 30})
    elif where == "processing":
        rds.lpush(keys.processing_key("wgone"), held)
    else:  # a live worker works it, though its message is nowhere (its heartbeat says so)
        rds.hset(keys.worker_key("wlive"), mapping={"state": "busy", "job": "job-held"})
        rds.expire(keys.worker_key("wlive"), 30)
    # An entry that is not a job message is skipped, not a reason to fail.
    rds.lpush(keys.QUEUE, b"\xff not json")
    reconciler = Reconciler(ards, settings.database_url, "wt", grace=10)
    try:
        result = await reconciler.run()
    finally:
        await reconciler.aclose()
        rds.delete(keys.worker_key("wlive"))
    assert (result.checked, result.found, result.requeued) == (2, 1, ("job-lost",))
    queue = raw_rds.lrange(keys.QUEUE, 0, -1)
    ids = [parse_message(m).job_id for m in queue if m != b"\xff not json"]
    assert sorted(ids) == (["job-held", "job-lost"] if where == "queue" else ["job-lost"])
    assert parse_message(lost) in [parse_message(m) for m in queue[:1]]  # the newest entry


async def test_a_job_younger_than_the_grace_is_left_alone(
    settings: Settings, ards: aioredis.Redis, rds: redis.Redis
) -> None:
    make_job(settings, "job-young", age=3)
    make_job(settings, "job-young-retry", "retrying", age=3, due_in=0)
    make_job(settings, "job-young-claim", "processing", age=3, worker="wgone")
    make_job(settings, "job-old", age=6)
    reconciler = Reconciler(ards, settings.database_url, "wt", grace=5)
    try:
        result = await reconciler.run()
    finally:
        await reconciler.aclose()
    assert (result.checked, result.requeued) == (1, ("job-old",))
    assert queued_ids(rds) == ["job-old"]


async def test_a_retrying_job_goes_back_to_the_delayed_set_at_its_due_time(
    settings: Settings, ards: aioredis.Redis, rds: redis.Redis
) -> None:
    """Lost from the delayed set, a retrying job is put back there, still due when it was
    (not at once, and not only once it is due); a job already due goes to the queue."""
    waiting = make_job(settings, "job-waits", "retrying", due_in=30)
    make_job(settings, "job-due", "retrying", due_in=-5)
    reconciler = Reconciler(ards, settings.database_url, "wt", grace=10)
    try:
        result = await reconciler.run()
    finally:
        await reconciler.aclose()
    assert sorted(result.requeued) == ["job-due", "job-waits"]
    assert queued_ids(rds) == ["job-due"]
    members = rds.zrange(keys.DELAYED, 0, -1, withscores=True)
    assert [parse_message(m) for m, _ in members] == [parse_message(waiting)]
    seconds, micros = rds.time()
    redis_now = seconds + micros / 1e6
    assert 25 < members[0][1] - redis_now <= 30


@pytest.mark.slow
async def test_a_processing_job_of_a_dead_worker_is_reclaimed(
    settings: Settings, ards: aioredis.Redis, rds: redis.Redis, pg: psycopg.Connection
) -> None:
    make_job(settings, "job-orphan", "processing", worker="wgone")
    pg.execute(
        "UPDATE orders SET status = 'processing' FROM jobs "
        "WHERE jobs.order_id = orders.id AND jobs.id = 'job-orphan'"
    )
    reconciler = Reconciler(ards, settings.database_url, "wt", grace=10)
    try:
        result = await reconciler.run()
    finally:
        await reconciler.aclose()
    assert result.requeued == ("job-orphan",)
    assert queued_ids(rds) == ["job-orphan"]
    job = row(pg, "SELECT status, worker_id, attempts FROM jobs WHERE id = 'job-orphan'")
    assert job == ("pending", None, 1)
    order = row(pg, "SELECT o.status FROM orders o JOIN jobs j ON j.order_id = o.id")
    assert order == ("pending",)
    attempt = row(pg, "SELECT outcome, finished_at IS NOT NULL FROM job_attempts")
    assert attempt == ("reclaimed", True)


@pytest.mark.slow
async def test_a_job_that_moved_on_since_the_query_is_not_requeued(
    settings: Settings,
    ards: aioredis.Redis,
    rds: redis.Redis,
    pg: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The guarded re-check: PostgreSQL is asked before Redis is scanned, and a job finished
    or claimed again in between (gone from Redis, and rightly) stays as it is."""
    make_job(settings, "job-done")
    make_job(settings, "job-orphan", "processing", worker="wgone")
    scan = reconciler_module.held_job_ids

    async def scan_after_they_moved_on(client: aioredis.Redis) -> set[str]:
        pg.execute("UPDATE jobs SET status = 'completed' WHERE id = 'job-done'")
        pg.execute("UPDATE jobs SET attempts = 2, worker_id = 'w9' WHERE id = 'job-orphan'")
        return await scan(client)

    monkeypatch.setattr(reconciler_module, "held_job_ids", scan_after_they_moved_on)
    reconciler = Reconciler(ards, settings.database_url, "wt", grace=10)
    try:
        result = await reconciler.run()
    finally:
        await reconciler.aclose()
    assert (result.checked, result.found, result.requeued) == (2, 2, ())
    assert rds.llen(keys.QUEUE) == 0
    # Nothing ended: the orphan's attempt is still the one under way (no record yet).
    assert row(pg, "SELECT count(*) FROM job_attempts") == (0,)


# -- the lock, the record, the settings ------------------------------------------------------


async def test_two_reconcilers_at_once_only_one_runs(
    settings: Settings, ards: aioredis.Redis, rds: redis.Redis
) -> None:
    make_job(settings, "job-lost")
    first = Reconciler(ards, settings.database_url, "wa", grace=10, interval=30)
    second = Reconciler(ards, settings.database_url, "wb", grace=10, interval=30)
    try:
        results = await asyncio.gather(first.tick(), second.tick())
        ran = [r for r in results if r is not None]
        assert len(ran) == 1, results
        assert ran[0].requeued == ("job-lost",)
        assert queued_ids(rds) == ["job-lost"]
        # The run leaves a rest mark for its interval: no reconciler runs meanwhile, each
        # tick costing one SET NX and nothing in PostgreSQL.
        third = Reconciler(ards, settings.database_url, "wc", grace=10, interval=30)
        assert await third.tick() is None
        assert third.pg.conn is None  # no connection opened
        assert rds.get(keys.RECONCILER_LOCK) == f"rest:{ran[0].by}"
        assert 25_000 < rds.pttl(keys.RECONCILER_LOCK) <= 30_000
        # `mqlab reconcile` takes a rest mark over, and leaves one of its own.
        assert (await reconcile_now(settings.redis_url, settings.database_url, 10)).by == "cli"
        assert rds.get(keys.RECONCILER_LOCK) == "rest:cli"
        # A run in progress (its lock is no rest mark) makes it wait, then give up.
        rds.set(keys.RECONCILER_LOCK, "w7 0123abcd", px=30_000)
        began = time.monotonic()
        with pytest.raises(LockBusy, match=r"running in w7$"):
            await reconcile_now(settings.redis_url, settings.database_url, 10, wait=0.5)
        assert time.monotonic() - began >= 0.5
        assert rds.get(keys.RECONCILER_LOCK) == "w7 0123abcd"  # not ours: left alone
    finally:
        await first.aclose()
        await second.aclose()


async def test_the_run_is_recorded_and_announced(
    settings: Settings, ards: aioredis.Redis, rds: redis.Redis
) -> None:
    for i in range(12):
        make_job(settings, f"job-{i:02d}", age=60 - i)
    reconciler = Reconciler(ards, settings.database_url, "w3", grace=10, interval=1)
    try:
        result = await reconciler.run()
        assert len(result.requeued) == 12
        recorded = parse_run(rds.hgetall(keys.RECONCILER))
        assert recorded is not None
        assert (recorded.by, recorded.checked, recorded.found, recorded.requeued) == (
            "w3", 12, 12, 12,
        )  # fmt: skip
        assert recorded.requeued_jobs == [f"job-{i:02d}" for i in range(10)]  # oldest first
        assert recorded.last_requeue_at == recorded.at == pytest.approx(result.at)
        events = [f for _, f in rds.xrange(keys.EVENTS) if f["type"] == EventKind.RECONCILED]
        assert len(events) == 1
        assert (events[0]["requeued"], events[0]["found"]) == ("12", "12")
        # A run that requeues nothing is recorded, keeps the last requeue's time, says
        # nothing in the event stream.
        rds.delete(keys.RECONCILER_LOCK)
        again = await reconciler.run()
        assert again.requeued == ()
        later = parse_run(rds.hgetall(keys.RECONCILER))
        assert later is not None
        assert (later.requeued, later.requeued_jobs) == (0, [])
        assert later.last_requeue_at == recorded.at < later.at
        assert (
            len([f for _, f in rds.xrange(keys.EVENTS) if f["type"] == EventKind.RECONCILED]) == 1
        )
    finally:
        await reconciler.aclose()


def test_a_record_written_by_hand_reads_as_none() -> None:
    assert parse_run({}) is None
    assert parse_run({b"at": b"soon"}) is None
    assert parse_run({"at": "nan", "by": "x"}) is None
    assert parse_run({"at": "1700000000", "by": "w1"}) is not None


async def test_tick_never_raises_when_a_backend_is_away(
    ards: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = f"postgresql://mqlab@127.0.0.1:{free_port()}/mqlab?connect_timeout=1"
    reconciler = Reconciler(ards, nowhere, "wt", grace=10, interval=5)
    try:
        with caplog.at_level(logging.WARNING, "mqlab.system.reconciler"):
            assert await reconciler.tick() is None
        assert "reconciler run failed" in caplog.text
        assert await ards.get(keys.RECONCILER_LOCK) == b"rest:wt"  # released all the same
        assert await reconciler.tick() is None  # not before its interval: no new attempt
        assert caplog.text.count("reconciler run failed") == 1
    finally:
        await reconciler.aclose()
    away = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_timeout=1)
    reconciler = Reconciler(away, nowhere, "wt")
    try:
        assert await reconciler.tick() is None
    finally:
        await reconciler.aclose()
        await away.aclose()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MQLAB_RECONCILE_GRACE": "ten"}, "MQLAB_RECONCILE_GRACE takes a number of seconds"),
        ({"MQLAB_RECONCILE_GRACE": "0"}, "must be from 1 to 86400 seconds, not 0.0"),
        ({"MQLAB_RECONCILE_GRACE": "nan"}, "must be from 1 to 86400 seconds, not nan"),
        ({"MQLAB_RECONCILE_INTERVAL": "-5"}, "MQLAB_RECONCILE_INTERVAL must be from 1"),
        ({"MQLAB_RECONCILE_INTERVAL": "inf"}, "MQLAB_RECONCILE_INTERVAL must be from 1"),
    ],
)
def test_settings_refuse_what_is_not_a_sane_number_of_seconds(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ReconcilerError, match=message):
        ReconcileConfig.from_env(env)


def test_settings_from_the_environment() -> None:
    assert ReconcileConfig.from_env({}) == ReconcileConfig(10.0, 5.0)
    env = {"MQLAB_RECONCILE_GRACE": "2", "MQLAB_RECONCILE_INTERVAL": "1.5"}
    assert ReconcileConfig.from_env(env) == ReconcileConfig(2.0, 1.5)


# -- the command line ------------------------------------------------------------------------


def mqlab(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, COLUMNS="200", **env)
    full.update(settings.to_env())
    return subprocess.run(
        [sys.executable, "-m", "mqlab", *args], capture_output=True, text=True, env=full, timeout=60
    )


@pytest.mark.slow
def test_mqlab_reconcile_requeues_and_lists_what_it_requeued(
    settings: Settings, fresh: None, rds: redis.Redis, client: httpx.Client
) -> None:
    assert client.get("/health").json()["reconciler"] is None
    for i in range(23):
        make_job(settings, f"job-{i:02d}", age=60 - i)
    make_job(settings, "job-young", age=0)
    out = mqlab(settings, "reconcile", "--grace", "30")
    assert out.returncode == 0, out.stderr
    assert "checked 23 job(s)" in out.stdout
    assert "requeued 23:" in out.stdout
    listed = [line.strip() for line in out.stdout.splitlines() if line.startswith("  job-")]
    assert listed == [f"job-{i:02d}" for i in range(20)]
    assert "  and 3 more" in out.stdout
    assert sorted(queued_ids(rds)) == [f"job-{i:02d}" for i in range(23)]
    health = client.get("/health")
    assert health.status_code == 200
    shown = health.json()["reconciler"]
    assert (shown["by"], shown["checked"], shown["found"], shown["requeued"]) == ("cli", 23, 23, 23)
    assert shown["requeuedJobs"] == [f"job-{i:02d}" for i in range(10)]
    assert shown["lastRequeueAt"] == shown["lastRun"]
    status = mqlab(settings, "status")
    assert status.returncode == 0, status.stderr
    # Ages of any number of digits: four CLI runs on a loaded machine took 10 s once.
    line = r"reconciler: last ran \d+s ago by cli, requeued 23 \(last requeue: \d+s ago\)"
    assert re.search(line, status.stdout), status.stdout
    # Everything is queued now: a second run finds nothing, and says so.
    again = mqlab(settings, "reconcile", "--grace", "30")
    assert again.returncode == 0, again.stderr
    assert "requeued 0: nothing was missing from Redis" in again.stdout
    line = r"by cli, requeued 0 \(last requeue: \d+s ago\)"
    status = mqlab(settings, "status")
    assert re.search(line, status.stdout), status.stdout


@pytest.mark.slow
def test_mqlab_reconcile_says_clearly_what_is_wrong(settings: Settings) -> None:
    port = free_port()
    down = mqlab(
        settings,
        "reconcile",
        "--redis-url",
        f"redis://127.0.0.1:{port}",
        "--database-url",
        f"postgresql://mqlab@127.0.0.1:{port}/mqlab",
    )
    assert down.returncode == 1
    assert "error: Redis failed" in down.stderr
    assert "Traceback" not in down.stderr
    bad = mqlab(settings, "reconcile", "--grace", "0")
    assert bad.returncode == 2
    assert "--grace must be from 1 to 86400 seconds" in bad.stderr
    env = mqlab(settings, "worker", MQLAB_RECONCILE_INTERVAL="often")
    assert env.returncode == 1
    assert "MQLAB_RECONCILE_INTERVAL takes a number of seconds, not 'often'" in env.stderr
    assert "Traceback" not in env.stderr


# -- with workers ----------------------------------------------------------------------------


@pytest.mark.slow
def test_workers_requeue_a_lost_job_and_complete_it(
    settings: Settings, sup: Supervisor, fresh: None, pg: psycopg.Connection
) -> None:
    """A pending job and a dead worker's processing job, both lost by Redis: a worker's
    reconciler queues them again and workers complete them; the reclaimed attempt says so."""
    make_job(settings, "job-lost")
    make_job(settings, "job-orphan", "processing", worker="wgone")
    sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=0.05))

    def done() -> bool:
        rows = pg.execute("SELECT status FROM jobs").fetchall()
        return [r[0] for r in rows] == ["completed", "completed"]

    eventually(done, timeout=30)
    attempts = pg.execute(
        "SELECT job_id, attempt, worker_id, outcome FROM job_history ORDER BY job_id, attempt"
    ).fetchall()
    assert attempts == [
        ("job-lost", 1, "w1", "completed"),
        ("job-orphan", 1, "wgone", "reclaimed"),
        ("job-orphan", 2, "w1", "completed"),
    ]


@pytest.mark.slow
@pytest.mark.skipif(
    bool(os.environ.get("REDIS_URL")),
    reason="FLUSHALL only on the tests' own embedded Redis, never on a REDIS_URL server",
)
def test_after_flushall_every_queued_order_completes(
    settings: Settings,
    sup: Supervisor,
    fresh: None,
    client: httpx.Client,
    rds: redis.Redis,
    pg: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's acceptance test: 300 orders queued, Redis loses everything, and workers
    (grace 2 s) complete all 300, each once, within the grace plus the drain time.

    Slow by design (about 10 s): 300 real orders, the grace, and the drain.
    """
    orders = 300
    for i in range(orders):
        post_order(client, f"Item{i}")
    assert rds.llen(keys.QUEUE) == orders
    assert rds.flushall()
    monkeypatch.setenv("MQLAB_RECONCILE_GRACE", "2")
    monkeypatch.setenv("MQLAB_RECONCILE_INTERVAL", "1")
    lost_at = time.monotonic()
    sup.start_workers(4, WorkerSpec(job_seconds=0.01))
    eventually(lambda: db_count(pg, "completed") == orders, timeout=60, interval=0.2)
    took = time.monotonic() - lost_at
    assert took < 30, took
    # Each order's work ran once: no job was queued twice.
    assert row(pg, "SELECT count(*) FROM jobs WHERE attempts <> 1") == (0,)
    runs = [f for _, f in rds.xrange(keys.EVENTS) if f.get("type") == EventKind.RECONCILED]
    assert sum(int(f["requeued"]) for f in runs) == orders
    shown = client.get("/health").json()["reconciler"]
    assert shown is not None and shown["by"] in {"w1", "w2", "w3", "w4"}
    assert shown["lastRequeueAt"] is not None


def db_count(pg: psycopg.Connection, status: str) -> int:
    return int(row(pg, "SELECT count(*) FROM jobs WHERE status = %s", status)[0])


@pytest.mark.slow
async def test_a_job_a_live_worker_runs_is_not_reclaimed_while_its_beat_is_missing(
    settings: Settings,
    sup: Supervisor,
    fresh: None,
    client: httpx.Client,
    pg: psycopg.Connection,
    rds: redis.Redis,
) -> None:
    """Redis lost its keys (what FLUSHALL leaves: no processing list, no heartbeat until the
    worker's next beat): the run waits for the live workers' beats before it reclaims, so
    the job w1 runs is neither queued again nor run twice (it was reclaimed at once)."""
    sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=5))
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "processing")
    time.sleep(1.5)  # older than the grace below
    rds.delete(keys.processing_key("w1"), keys.worker_key("w1"))
    result = await reconcile_now(settings.redis_url, settings.database_url, grace=1)
    assert (result.found, result.requeued) == (1, ())
    eventually(lambda: job(client, created["jobId"])["status"] == "completed", timeout=10)
    attempts = pg.execute(
        "SELECT attempt, worker_id, outcome FROM job_history WHERE job_id = %s",
        [created["jobId"]],
    ).fetchall()
    assert attempts == [(1, "w1", "completed")]
