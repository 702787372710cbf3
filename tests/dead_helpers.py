"""Dead jobs made by hand, as the worker makes them (BURY_JOB, then its dead letter).

Written straight into PostgreSQL and Redis, so that the dead-letter tests do not depend on
the worker's failure paths: a job dead after `attempts` failed attempts, its order failed,
and its message wrapped as a dead letter naming it on orders:dead.
"""

from __future__ import annotations

import time

import psycopg
import redis

from mqlab.protocol import keys
from mqlab.protocol.messages import dead_letter, encode_message


def make_dead(
    url: str,
    rds: redis.Redis,
    product: str = "Widget",
    attempts: int = 3,
    error: str = "boom: transient failure",
    letter: bool = True,
) -> tuple[str, int]:
    """A dead job with `attempts` failed attempts (and its dead letter): (job id, order id)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO orders (product, quantity, price, status) VALUES (%s, 1, 5, 'failed') "
            "RETURNING id",
            [product],
        ).fetchone()
        assert row is not None
        order_id = int(row[0])
        job_id = f"job-{order_id}-1700000000000"
        conn.execute(
            "INSERT INTO jobs (id, order_id, status, worker_id, attempts, last_error, "
            "started_at, finished_at) VALUES (%s, %s, 'dead', 'w1', %s, %s, "
            "clock_timestamp() - interval '1 second', clock_timestamp())",
            [job_id, order_id, attempts, error],
        )
        for n in range(1, attempts + 1):
            conn.execute(
                "INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, "
                "outcome, error) VALUES (%s, %s, 'w1', clock_timestamp(), clock_timestamp(), "
                "'failed', %s)",
                [job_id, n, f"{error} (attempt {n})"],
            )
    if letter:
        message = encode_message(job_id, order_id, "2026-01-01T00:00:00.000Z")
        rds.lpush(keys.DEAD, dead_letter(message, error, "w1", time.time(), job_id=job_id))
    return job_id, order_id


def push_unparseable(rds: redis.Redis, raw: bytes = b"{not json", reason: str = "") -> None:
    """The dead letter a worker makes of a queue entry that is no job message."""
    why = reason or "not JSON: unexpected character: line 1 column 2 (char 1)"
    rds.lpush(keys.DEAD, dead_letter(raw, why, "w2", time.time()))
