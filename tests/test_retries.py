"""Kata 4 in the engine: transient failures retried with backoff, poison and spent attempts
dead, a job that kills its worker every time dead too, duplicates dropped, and the delayed
set promoted once per job however many workers promote it. Real servers throughout."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis
import redis.asyncio as aioredis

from mqlab.lab.supervisor import Supervisor
from mqlab.protocol import delayed, keys
from mqlab.protocol.messages import read_dead_letter
from mqlab.settings import Settings
from mqlab.system.spec import WorkerSpec
from tests.helpers import eventually, job, post_order


@pytest.fixture
def raw_rds(settings: Settings) -> Iterator[redis.Redis]:
    """A client that answers bytes, as the worker's does."""
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


def attempts_of(pg: psycopg.Connection, job_id: object) -> list[tuple[Any, ...]]:
    """(attempt, worker, outcome, error, started, finished, next due) of each attempt."""
    return pg.execute(
        "SELECT attempt, worker_id, outcome, error, extract(epoch FROM started_at)::float8, "
        "extract(epoch FROM finished_at)::float8, extract(epoch FROM next_attempt_at)::float8 "
        "FROM job_history WHERE job_id = %s ORDER BY attempt",
        [job_id],
    ).fetchall()


def order_status(pg: psycopg.Connection, order_id: object) -> str:
    row = pg.execute("SELECT status FROM orders WHERE id = %s", [order_id]).fetchone()
    assert row is not None
    return str(row[0])


def events_of(rds: redis.Redis, job_id: object) -> list[str]:
    return [f["type"] for _, f in rds.xrange(keys.EVENTS) if f.get("job") == job_id]


@pytest.mark.slow
def test_transient_failures_back_off_within_the_policy_and_end_dead(
    sup: Supervisor, client: httpx.Client, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    """Every attempt fails: 4 attempts, each wait inside [ceiling/2, ceiling] (plus the
    promotion's lag) and longer than the one before; then dead, its order failed."""
    spec = WorkerSpec(worker_id="w1", job_seconds=0.1, max_attempts=4, backoff_base=0.4,
                      backoff_max=10, fail_rate=1, seed=1)  # fmt: skip
    sup.start_worker(spec)
    policy = spec.policy
    assert policy is not None
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "dead", timeout=20)
    rows = attempts_of(pg, created["jobId"])
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert [r[2] for r in rows] == ["failed"] * 4
    assert all("injected transient failure" in r[3] for r in rows)
    waits = [rows[n + 1][4] - rows[n][5] for n in range(3)]
    for n, wait in enumerate(waits, start=1):
        ceiling = policy.ceiling(n)
        # The due time is drawn in [ceiling/2, ceiling]; promotion adds up to its interval,
        # and the claim a few milliseconds more (generous: the machine is shared).
        assert ceiling / 2 - 0.05 <= wait <= ceiling + delayed.PROMOTE_INTERVAL + 0.5, (n, wait)
        assert rows[n - 1][6] is not None  # each failed attempt said when the next was due
    assert waits[0] < waits[1] < waits[2]
    assert rows[3][6] is None  # the last one: no next attempt
    final = job(client, created["jobId"])
    assert final["attempts"] == 4
    assert "no attempts left" in str(final["lastError"])
    assert order_status(pg, created["orderId"]) == "failed"
    entries = [read_dead_letter(e) for e in rds.lrange(keys.DEAD, 0, -1)]
    assert [e.job_id for e in entries] == [created["jobId"]]
    assert rds.zcard(keys.DELAYED) == 0
    kinds = events_of(rds, created["jobId"])
    assert kinds.count("job_failed") == 3 and kinds.count("job_dead") == 1


@pytest.mark.slow
def test_transient_failures_are_retried_until_completed(
    sup: Supervisor, client: httpx.Client, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    """Half the attempts fail: every order completes all the same, some after retries."""
    spec = WorkerSpec(job_seconds=0.02, max_attempts=25, backoff_base=0.05, backoff_max=0.2,
                      fail_rate=0.5, seed=7)  # fmt: skip
    sup.start_workers(2, spec)
    created = [post_order(client, f"item {n}") for n in range(20)]
    eventually(
        lambda: all(job(client, c["jobId"])["status"] == "completed" for c in created),
        timeout=30,
    )
    counts = [int(job(client, c["jobId"])["attempts"]) for c in created]  # type: ignore[call-overload]
    assert sum(counts) > len(created)  # some were retried
    retried = next(c for c, n in zip(created, counts, strict=True) if n > 1)
    outcomes = [r[2] for r in attempts_of(pg, retried["jobId"])]
    assert outcomes[-1] == "completed" and set(outcomes[:-1]) == {"failed"}
    assert order_status(pg, retried["orderId"]) == "completed"
    assert rds.llen(keys.DEAD) == 0 and rds.zcard(keys.DELAYED) == 0


@pytest.mark.slow
def test_a_poison_order_is_dead_after_one_attempt_and_the_worker_goes_on(
    sup: Supervisor, client: httpx.Client, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    w1 = sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=0.05))
    poison = post_order(client, "a poison pill")
    eventually(lambda: job(client, poison["jobId"])["status"] == "dead")
    rows = attempts_of(pg, poison["jobId"])
    assert [(r[0], r[2]) for r in rows] == [(1, "failed")]
    assert "poison order" in rows[0][3]
    assert order_status(pg, poison["orderId"]) == "failed"
    [entry] = [read_dead_letter(e) for e in rds.lrange(keys.DEAD, 0, -1)]
    assert entry.job_id == poison["jobId"] and "poison" in entry.reason
    assert orjson.loads(entry.message)["jobId"] == poison["jobId"]  # the message, whole
    # The worker is alive and takes the next order.
    fine = post_order(client, "Laptop")
    eventually(lambda: job(client, fine["jobId"])["status"] == "completed")
    assert w1.alive()
    assert rds.llen(keys.processing_key("w1")) == 0


@pytest.mark.slow
def test_the_poison_pattern_is_configurable(
    sup: Supervisor, client: httpx.Client, pg: psycopg.Connection
) -> None:
    sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=0, poison=r"^bad\b"))
    fine = post_order(client, "poison, but not by this pattern")
    bad = post_order(client, "bad apple")
    eventually(lambda: job(client, bad["jobId"])["status"] == "dead")
    eventually(lambda: job(client, fine["jobId"])["status"] == "completed")


@pytest.mark.slow
def test_a_job_that_kills_its_worker_every_time_ends_dead(
    sup: Supervisor, client: httpx.Client, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    """Attempts are counted at the claim: the job that crashes every worker that takes it is
    dead after the policy's attempts, instead of crashing workers for ever. The same worker
    id is restarted each time: at start it takes back what its previous life held."""
    spec = WorkerSpec(
        worker_id="w1", job_seconds=0.2, max_attempts=3, backoff_base=0.1, backoff_max=1
    )
    created = post_order(client)
    for life in range(3):
        # Not waited for as ready: it may take the job and die before it is seen idle.
        child = sup.start_worker(replace(spec, crash_rate=1), wait=False)
        eventually(lambda c=child: not c.alive(), timeout=15)  # type: ignore[misc]
        assert child.proc.returncode == 70, (life, child.tail())
    # The fourth claim finds the third never ended, and no attempt left.
    sup.start_worker(spec)
    eventually(lambda: job(client, created["jobId"])["status"] == "dead", timeout=15)
    rows = attempts_of(pg, created["jobId"])
    assert [(r[0], r[2]) for r in rows] == [(1, "crashed"), (2, "crashed"), (3, "crashed")]
    final = job(client, created["jobId"])
    assert final["attempts"] == 3
    assert "died during each of its 3 attempts" in str(final["lastError"])
    assert order_status(pg, created["orderId"]) == "failed"
    assert [read_dead_letter(e).job_id for e in rds.lrange(keys.DEAD, 0, -1)] == [created["jobId"]]
    assert rds.llen(keys.QUEUE) == 0 and rds.llen(keys.processing_key("w1")) == 0


@pytest.mark.slow
def test_a_duplicate_delivery_of_a_completed_job_is_dropped_unworked(
    sup: Supervisor, client: httpx.Client, pg: psycopg.Connection, raw_rds: redis.Redis
) -> None:
    sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=0.05))
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "completed")
    message = orjson.dumps({"jobId": created["jobId"], "orderId": created["orderId"]})
    raw_rds.lpush(keys.QUEUE, message)
    eventually(lambda: raw_rds.llen(keys.QUEUE) == 0)
    eventually(lambda: raw_rds.llen(keys.processing_key("w1")) == 0)
    final = job(client, created["jobId"])
    assert final["attempts"] == 1 and final["status"] == "completed"
    assert len(attempts_of(pg, created["jobId"])) == 1
    started = [
        f for _, f in raw_rds.xrange(keys.EVENTS)
        if f.get(b"job") == str(created["jobId"]).encode() and f.get(b"type") == b"job_started"
    ]  # fmt: skip
    assert len(started) == 1


def test_many_promoting_at_once_move_each_due_job_once(
    settings: Settings, clean: None, raw_rds: redis.Redis
) -> None:
    """The promotion script runs alone on the server: 8 promoters racing over 1,000 due jobs
    move each exactly once, and leave the jobs not yet due."""
    due = {f"m{n}".encode(): 0.0 for n in range(1000)}  # due at the epoch: long due
    later = {b"later": 4_000_000_000.0}  # in 2096
    raw_rds.zadd(keys.DELAYED, {**due, **later})
    # Each promoter stops when the set holds only the job that is not due.
    conns = [aioredis.Redis.from_url(settings.redis_url) for _ in range(8)]

    async def race() -> int:
        async def drain(conn: aioredis.Redis) -> int:
            total = 0
            while True:
                n, wait = await delayed.promote(conn, batch=7)
                total += n
                if n == 0:
                    assert wait is not None and wait > 1_000_000
                    return total

        try:
            return sum(await asyncio.gather(*(drain(c) for c in conns)))
        finally:
            for conn in conns:
                await conn.aclose()

    assert asyncio.run(race()) == 1000
    queued = raw_rds.lrange(keys.QUEUE, 0, -1)
    assert Counter(queued) == Counter(due.keys())  # each once, none lost
    assert raw_rds.zrange(keys.DELAYED, 0, -1) == [b"later"]


@pytest.mark.slow
def test_retries_wait_in_the_delayed_set_while_no_worker_is_alive(
    sup: Supervisor, client: httpx.Client, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    """A retry due while no worker runs stays in the delayed set (PostgreSQL says retrying,
    and when) and is taken by the next worker to start."""
    # A first wait of 2-4 s: longer than the stop below takes, so w1 cannot retry it.
    spec = WorkerSpec(job_seconds=0.05, max_attempts=3, backoff_base=4, backoff_max=4)
    w1 = sup.start_worker(replace(spec, worker_id="w1", fail_rate=1))
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "retrying")
    sup.stop("w1")
    assert not w1.alive()
    assert rds.zcard(keys.DELAYED) == 1
    retrying = job(client, created["jobId"])
    assert retrying["nextAttemptAt"] is not None
    assert order_status(pg, created["orderId"]) == "retrying"
    sup.start_worker(replace(spec, worker_id="w2"))
    eventually(lambda: job(client, created["jobId"])["status"] == "completed", timeout=15)
    assert rds.zcard(keys.DELAYED) == 0
    assert [r[2] for r in attempts_of(pg, created["jobId"])] == ["failed", "completed"]


@pytest.mark.slow
def test_a_poison_order_replayed_with_the_pattern_off_completes(
    sup: Supervisor, client: httpx.Client, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    """The whole way round, through the API: dead after one attempt, replayed (202; a second
    replay is 409 and queues nothing more), completed by a worker that poisons nothing, with
    both attempts in its history and a fresh attempt budget."""
    spec = WorkerSpec(job_seconds=0.05, max_attempts=1)
    sup.start_worker(replace(spec, worker_id="w1"))
    created = post_order(client, "a poison pill")
    eventually(lambda: job(client, created["jobId"])["status"] == "dead")
    sup.stop("w1")
    first = client.post(f"/jobs/{created['jobId']}/retry")
    assert first.status_code == 202, first.text
    again = client.post(f"/jobs/{created['jobId']}/retry")
    assert again.status_code == 409 and "pending" in again.json()["error"]
    assert rds.llen(keys.QUEUE) == 1 and rds.llen(keys.DEAD) == 0
    sup.start_worker(replace(spec, worker_id="w2", poison=""))
    eventually(lambda: job(client, created["jobId"])["status"] == "completed")
    history = job(client, created["jobId"])["history"]
    assert [(h["attempt"], h["workerId"], h["outcome"]) for h in history] == [  # type: ignore[attr-defined]
        (1, "w1", "failed"),
        (2, "w2", "completed"),
    ]
    assert order_status(pg, created["orderId"]) == "completed"
    # The policy counts attempts since the replay: the second attempt was its first.
    assert pg.execute(
        "SELECT attempts, replay_base FROM jobs WHERE id = %s", [created["jobId"]]
    ).fetchone() == (2, 1)
