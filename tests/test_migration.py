"""sql/schema.sql migrates a database made before Kata 4 in place: the statuses' CHECKs gain
`retrying` (an order is `failed`, a job `dead`), the new columns and job_attempts appear, the
rows stay, and applying it again changes nothing. Run in a schema of its own, dropped after,
so that the session's tables are not touched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mqlab.db import schema_path

BEFORE = Path(__file__).parent / "data" / "schema_before_kata4.sql"


@pytest.fixture
def old(pg: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """The connection, its search_path on a fresh schema holding the tables as they were."""
    pg.execute("DROP SCHEMA IF EXISTS before_kata4 CASCADE")
    pg.execute("CREATE SCHEMA before_kata4")
    pg.execute("SET search_path TO before_kata4")
    try:
        pg.execute(BEFORE.read_text())  # type: ignore[arg-type]
        yield pg
    finally:
        pg.execute("RESET search_path")
        pg.execute("DROP SCHEMA before_kata4 CASCADE")


def test_a_database_from_before_kata4_is_migrated_in_place(old: psycopg.Connection) -> None:
    old.execute(
        "INSERT INTO orders (id, product, quantity, price, status) VALUES "
        "(1, 'kept', 1, 1, 'completed'), (2, 'was dead', 1, 1, 'dead'), (3, 'p', 1, 1, 'pending')"
    )
    old.execute(
        "INSERT INTO jobs (id, order_id, status, attempts) VALUES "
        "('job-1', 1, 'completed', 1), ('job-2', 2, 'failed', 3), ('job-3', 3, 'pending', 0)"
    )
    for _ in range(2):  # idempotent: the second time is a no-op
        old.execute(schema_path().read_text())  # type: ignore[arg-type]
    assert old.execute("SELECT id, status FROM orders ORDER BY id").fetchall() == [
        (1, "completed"),
        (2, "failed"),
        (3, "pending"),
    ]
    assert old.execute(
        "SELECT id, status, attempts, replay_base FROM jobs ORDER BY id"
    ).fetchall() == [
        ("job-1", "completed", 1, 0),
        ("job-2", "dead", 3, 0),
        ("job-3", "pending", 0, 0),
    ]
    # The new statuses are allowed, the old misfits are not.
    old.execute("UPDATE jobs SET status = 'retrying', next_attempt_at = now() WHERE id = 'job-3'")
    old.execute("UPDATE orders SET status = 'retrying' WHERE id = 3")
    with pytest.raises(psycopg.errors.CheckViolation):
        old.execute("UPDATE jobs SET status = 'failed' WHERE id = 'job-3'")
    with pytest.raises(psycopg.errors.CheckViolation):
        old.execute("UPDATE orders SET status = 'dead' WHERE id = 3")
    old.execute(
        "INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome) "
        "VALUES ('job-3', 1, 'w1', now(), now(), 'failed')"
    )
    checks = old.execute(
        "SELECT count(*) FROM pg_constraint WHERE conname IN "
        "('jobs_status_check', 'orders_status_check') AND connamespace = "
        "'before_kata4'::regnamespace"
    ).fetchone()
    assert checks == (2,)  # replaced, not added beside the old ones
