"""Failures of the API's own: a JSON 500 with no traceback in it, logged once, nothing written.

On a real API process: an exception provoked through the test-only route (MQLAB_API_TEST_HOOKS),
a row that PostgreSQL holds but the API cannot read, and an order that PostgreSQL refuses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import redis

from mqlab.lab.supervisor import Supervisor
from mqlab.settings import Settings
from mqlab.system.api.app import TEST_HOOKS_ENV
from tests.conftest import counts
from tests.helpers import eventually

INTERNAL = {"error": "internal error", "details": []}


class Log:
    """Every line the API printed, in order (the supervisor's own tail keeps only 500)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, _: str, line: str) -> None:
        self.lines.append(line)

    def after(self, start: int, marker: str) -> list[str]:
        """The lines since `start`, once `marker` is among them and the output is quiet."""
        eventually(lambda: any(marker in line for line in self.lines[start:]), timeout=10)
        time.sleep(0.5)  # a second copy of the traceback, if any, would come right after
        return self.lines[start:]


@pytest.fixture(scope="module")
def log() -> Log:
    return Log()


@pytest.fixture(scope="module")
def hooked(settings: Settings, log: Log) -> Iterator[str]:
    """An API of its own, started with the test hooks on."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(TEST_HOOKS_ENV, "1")
        sup = Supervisor(settings, on_line=log)
        sup.start_api()
    assert sup.api_url is not None
    yield sup.api_url
    sup.close()


def assert_internal_error(res: httpx.Response) -> None:
    assert res.status_code == 500
    assert res.headers["content-type"] == "application/json"
    assert res.json() == INTERNAL


def tracebacks(lines: list[str]) -> int:
    return sum(line.startswith("Traceback (most recent call last)") for line in lines)


@pytest.mark.slow
def test_an_unexpected_exception_is_a_json_500_logged_once(hooked: str, log: Log) -> None:
    start = len(log.lines)
    res = httpx.get(f"{hooked}/_test/fail", timeout=10)
    assert_internal_error(res)
    lines = log.after(start, "RuntimeError: provoked")
    assert tracebacks(lines) == 1, "\n".join(lines)
    assert sum("GET /_test/fail failed" in line for line in lines) == 1
    assert not [line for line in lines if "Exception in ASGI application" in line]
    # The process goes on serving.
    assert httpx.get(f"{hooked}/health", timeout=10).status_code == 200


@pytest.mark.slow
def test_a_row_the_api_cannot_read_is_a_json_500(
    hooked: str, log: Log, clean: None, pg: psycopg.Connection
) -> None:
    # PostgreSQL holds 'infinity' timestamps; Python's datetime has none (psycopg refuses it).
    row = pg.execute(
        "INSERT INTO orders (product, quantity, price, created_at) "
        "VALUES ('x', 1, 1, 'infinity') RETURNING id"
    ).fetchone()
    assert row is not None
    for path in ("/orders", f"/orders/{row[0]}"):
        start = len(log.lines)
        res = httpx.get(f"{hooked}{path}", timeout=10)
        assert_internal_error(res)
        lines = log.after(start, "DataError")
        assert tracebacks(lines) == 1, "\n".join(lines)
        assert "infinity" not in res.text  # the driver's words stay in the log


def test_an_order_the_database_refuses_is_a_json_500_and_leaves_nothing(
    hooked: str, log: Log, clean: None, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    # A trigger refusing one product: the statement fails in PostgreSQL, as a new CHECK or a
    # DBA's trigger would make it fail. Other products (the warm-up's too) pass.
    pg.execute(
        """
        CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.product = 'refused-by-trigger' THEN RAISE EXCEPTION 'refused'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_refuse BEFORE INSERT ON orders
            FOR EACH ROW EXECUTE FUNCTION test_refuse();
        """
    )
    try:
        start = len(log.lines)
        order = {"product": "refused-by-trigger", "quantity": 1, "price": 1}
        res = httpx.post(f"{hooked}/orders", json=order, timeout=10)
        assert_internal_error(res)
        lines = log.after(start, "RaiseException")
        assert tracebacks(lines) == 1, "\n".join(lines)
        assert sum("POST /orders failed" in line for line in lines) == 1
        assert counts(pg, rds) == {"orders": 0, "jobs": 0, "queue": 0}
        # The next order is accepted as usual.
        order["product"] = "Laptop"
        assert httpx.post(f"{hooked}/orders", json=order, timeout=10).status_code == 202
    finally:
        pg.execute("DROP TRIGGER test_refuse ON orders; DROP FUNCTION test_refuse()")


def test_the_test_hook_is_off_unless_asked_for(client: httpx.Client) -> None:
    assert client.get("/_test/fail").status_code == 404


def test_a_full_redis_is_a_503_not_a_500() -> None:
    """Valkey out of memory (maxmemory, noeviction) refuses the push: the order is not taken,
    and the client is told to come back (docs/production.md measured a 500 before)."""
    from mqlab.system.api.backends import redis_failure

    full = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'")
    answer = redis_failure("POST /orders", full)
    assert answer.status_code == 503 and "Retry-After" in answer.headers
    assert b"Redis is full" in answer.body
    assert redis_failure("POST /orders", redis.exceptions.ConnectionError()).status_code == 503
    assert (
        redis_failure("POST /orders", redis.exceptions.ResponseError("WRONGTYPE")).status_code
        == 500
    )
